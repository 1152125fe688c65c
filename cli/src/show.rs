//! How the command line prints what the API answers: summaries, timelines and tables people can
//! read (`--json` prints the API's JSON instead).

use std::time::Duration;

use serde_json::Value;

pub(crate) fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// The human summary `durable status` prints: one `field  value` line each.
pub(crate) fn summary(view: &Value) -> String {
    let mut out = String::new();
    let fields = [
        "instance",
        "status",
        "version",
        "input",
        "output",
        "failure",
        "reason",
        "custom_status",
        "state",
        "locked_by",
    ];
    for field in fields {
        match &view[field] {
            Value::Null => {}
            Value::String(s) => out.push_str(&format!("{field:<14}{s}\n")),
            v => out.push_str(&format!("{field:<14}{v}\n")),
        }
    }
    out
}

/// A time (ms since the Unix epoch) as UTC with milliseconds.
pub(crate) fn utc(ms: &Value) -> String {
    ms.as_u64()
        .map(|ms| humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string())
        .unwrap_or_else(|| "?".into())
}

/// JSON on one line, cut to `max` characters.
pub(crate) fn short(v: &Value, max: usize) -> String {
    let text = match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    if text.chars().count() <= max {
        text
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}

/// A history (the API's JSON) as a timeline people can read.
pub(crate) fn timeline(view: &Value) -> String {
    let mut out = format!("{}\n", view["instance"].as_str().unwrap_or("?"));
    if let Some(commands) = view["commands"].as_array() {
        out.push_str(&format!(
            "  {}  started {}  generation {}\n  input {}\n",
            view["status"].as_str().unwrap_or("?"),
            utc(&view["started_at"]),
            view["generation"],
            short(&view["input"], 100)
        ));
        let deliveries = view["deliveries"].as_array().cloned().unwrap_or_default();
        for (i, c) in commands.iter().enumerate() {
            let slot = c["slot"].as_u64().unwrap_or(i as u64);
            let what = format!("#{slot} {} {}", c["kind"].as_str().unwrap_or("?"), c["name"].as_str().unwrap_or(""));
            let answer = deliveries.iter().find(|d| d["slot"].as_u64() == Some(slot));
            let answer = match answer {
                None => "… waiting".to_owned(),
                Some(d) => {
                    let completion = &d["completion"];
                    let said = if completion == "done" {
                        "done".to_owned()
                    } else if !completion["failure"].is_null() {
                        format!(
                            "failed {}: {}",
                            completion["failure"]["kind"].as_str().unwrap_or("?"),
                            completion["failure"]["message"].as_str().unwrap_or("")
                        )
                    } else {
                        format!("→ {}", short(&completion["value"], 80))
                    };
                    format!("{said}  at {}", utc(&d["at"]))
                }
            };
            out.push_str(&format!("  {what:<36} {answer}\n"));
        }
        if let Some(inbox) = view["inbox"].as_array().filter(|i| !i.is_empty()) {
            for e in inbox {
                out.push_str(&format!("  inbox: {} {}\n", e["name"].as_str().unwrap_or("?"), short(&e["payload"], 80)));
            }
        }
        if let Some(locks) = view["locks"].as_object() {
            out.push_str(&format!("  locks {} (granted: {})\n", locks["participants"], locks["granted"]));
        }
    } else {
        out.push_str(&format!("  state {}\n", short(&view["state"], 200)));
        out.push_str(&format!("  locked by {}\n", view["locked_by"].as_str().unwrap_or("nobody")));
        for q in view["queued"].as_array().cloned().unwrap_or_default() {
            out.push_str(&format!(
                "  queued {} {}\n",
                q["event"].as_str().unwrap_or("?"),
                q["id"].as_str().unwrap_or("")
            ));
        }
    }
    let totals = &view["page"]["totals"];
    let limit = view["page"]["limit"].as_u64().unwrap_or(u64::MAX);
    if totals.as_object().is_some_and(|t| t.values().any(|n| n.as_u64().unwrap_or(0) > limit)) {
        out.push_str(&format!(
            "  (the first {limit} of each list: --json and the API's ?offset= page through the rest)\n"
        ));
    }
    out
}

/// Instance summaries as a table: id, status, when it last changed (UTC).
pub(crate) fn instances_table(instances: &[Value]) -> String {
    if instances.is_empty() {
        return "no instances\n".into();
    }
    let width = instances.iter().filter_map(|i| i["instance"].as_str()).map(str::len).max().unwrap_or(8).max(8);
    let mut out = format!("{:<width$}  {:<10}  UPDATED\n", "INSTANCE", "STATUS");
    for i in instances {
        let updated = i["updated_at"]
            .as_u64()
            .map(|ms| humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string())
            .unwrap_or_default();
        let (id, status) = (i["instance"].as_str().unwrap_or("?"), i["status"].as_str().unwrap_or("?"));
        out.push_str(&format!("{id:<width$}  {status:<10}  {updated}\n"));
    }
    out
}

/// Counts per type and status as a table, with the total.
pub(crate) fn counts_table(view: &Value) -> String {
    let rows: Vec<(String, String, u64)> = view["counts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    let kind_name =
                        format!("{}:{}", c["kind"].as_str().unwrap_or("?"), c["name"].as_str().unwrap_or("?"));
                    (kind_name, c["status"].as_str().unwrap_or("?").to_owned(), c["count"].as_u64().unwrap_or(0))
                })
                .collect()
        })
        .unwrap_or_default();
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(4).max(4);
    let mut out = format!("{:<width$}  {:<10}  {:>8}\n", "TYPE", "STATUS", "COUNT");
    for (kind_name, status, n) in &rows {
        out.push_str(&format!("{kind_name:<width$}  {status:<10}  {n:>8}\n"));
    }
    out.push_str(&format!("{:<width$}  {:<10}  {:>8}\n", "total", "", view["total"].as_u64().unwrap_or(0)));
    if view["complete"] == false {
        out.push_str("(incomplete: more instances are in view than one count reads; narrow it with --kind, --name or --status)\n");
    }
    out
}

/// Dead letters as a table: id, when (UTC), event and target, why.
pub(crate) fn letters_table(letters: &[Value]) -> String {
    if letters.is_empty() {
        return "no dead letters\n".into();
    }
    let mut out = String::from("ID        DEAD-LETTERED AT      EVENT → TARGET  —  REASON\n");
    for l in letters {
        let at = l["at"]
            .as_u64()
            .map(|ms| humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string())
            .unwrap_or_else(|| "?".into());
        let what = match (l["event"].as_str(), l["target"].as_str()) {
            (Some(e), Some(t)) => format!("{e} → {t}"),
            _ => format!("(undecodable, key {})", l["key"].as_str().unwrap_or("none")),
        };
        let id = l["id"].as_str().unwrap_or("?");
        let reason: String = l["reason"].as_str().unwrap_or("?").chars().take(200).collect();
        out.push_str(&format!("{id:<8}  {at}  {what}  —  {reason}\n"));
    }
    out
}
