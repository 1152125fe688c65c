"""Cross-language check: decode every golden vector with fastavro, using only envelope.avsc and
the wire format documented in schemas/README.md (C3 01, 8-byte LE Rabin fingerprint, datum).
Then re-encode with fastavro and check the bytes are identical."""
import io
import json
import pathlib
import sys

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

root = pathlib.Path(__file__).resolve().parent.parent
schema = fastavro.parse_schema(json.loads((root / "avro" / "envelope.avsc").read_text()))
# fastavro returns the CRC-64-AVRO fingerprint as hex of the little-endian bytes, as on the wire.
fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))

count = 0
for path in sorted((root / "golden").glob("*.hex")):
    data = bytes.fromhex(path.read_text().strip())
    assert data[:2] == b"\xc3\x01", f"{path.name}: magic"
    assert data[2:10] == fp, f"{path.name}: fingerprint {data[2:10].hex()} != {fp.hex()}"
    # return_record_name: union branches come back as (name, record), so writing picks the same branch.
    record = fastavro.schemaless_reader(io.BytesIO(data[10:]), schema, return_record_name=True)
    assert record["target"] and record["id"], path.name
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, record)
    assert out.getvalue() == data[10:], f"{path.name}: fastavro re-encodes differently"
    count += 1
assert count >= 16, count
print(f"fastavro: {count} passed, 0 failed")
