"""Cross-language check on the wire: a Python client (confluent-kafka + fastavro), using only
envelope.avsc and what schemas/README.md documents, produces signals and an orchestration start to
<prefix>.events (key = target id, murmur2) and reads the results back from <prefix>.state (JSON).

    python_client.py BROKERS PREFIX

Exits 0 when every result it waited for arrived; prints one line per check."""
import io
import json
import pathlib
import sys
import time
import uuid

import fastavro
from confluent_kafka import Consumer, Producer
from fastavro.schema import fingerprint, to_parsing_canonical_form

brokers, prefix = sys.argv[1], sys.argv[2]
root = pathlib.Path(__file__).resolve().parents[2]
raw = json.loads((root / "schemas" / "avro" / "envelope.avsc").read_text())
schema = fastavro.parse_schema(raw)
fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(raw), "CRC-64-AVRO"))


def envelope(target, branch, fields, event_id=None):
    event = {
        "id": event_id or str(uuid.uuid4()),
        "target": target,
        "source": "client:python",
        "origin": None,
        "timestamp": int(time.time() * 1000),
        "body": {"event": (branch, fields)},
    }
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, event)
    return b"\xc3\x01" + fp + buf.getvalue()


def payload(value):
    return {"content_type": "application/json", "data": json.dumps(value).encode()}


producer = Producer({"bootstrap.servers": brokers, "partitioner": "murmur2_random", "enable.idempotence": True})
counter = "entity:Counter:python"
retried = str(uuid.uuid4())
sent = 0
for i in range(20):
    op = {"operation": "add", "input": payload(2)}
    producer.produce(f"{prefix}.events", key=counter, value=envelope(counter, "durable.v1.EntityOperation", op))
    sent += 1
# A retried send with the same id is applied once.
for _ in range(2):
    op = {"operation": "add", "input": payload(100)}
    producer.produce(f"{prefix}.events", key=counter, value=envelope(counter, "durable.v1.EntityOperation", op, retried))
hello = "orch:HelloSequence:python"
start = {"input": payload(["Quito"])}
producer.produce(f"{prefix}.events", key=hello, value=envelope(hello, "durable.v1.StartOrchestration", start))
assert producer.flush(30) == 0, "not every event was acknowledged"
print(f"python: produced {sent + 3} events")

consumer = Consumer({"bootstrap.servers": brokers, "group.id": f"{prefix}-python", "auto.offset.reset": "earliest"})
consumer.subscribe([f"{prefix}.state"])
want = {counter: lambda r: r.get("state", {}) and r["state"].get("value") == 140,
        hello: lambda r: r.get("status") == "completed" and r.get("state") == ["Hello Quito!"]}
deadline = time.time() + 90
while want and time.time() < deadline:
    m = consumer.poll(1.0)
    if m is None or m.error():
        continue
    record = json.loads(m.value())
    assert m.key().decode() == record["instance"], (m.key(), record["instance"])
    check = want.get(record["instance"])
    if check and check(record):
        print(f"python: read {record['instance']} v{record['version']} {record['status']}")
        del want[record["instance"]]
consumer.close()
assert not want, f"no matching state record for {list(want)}"
print("python: 2 passed, 0 failed")
