//! Human and machine output: tables for people, JSON for scripts.

use comfy_table::{presets::NOTHING, Table};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(header.iter().map(|h| h.to_string()));
    for r in rows {
        t.add_row(r);
    }
    // comfy-table pads the first column with a leading space; trim for copy-paste friendliness.
    t.to_string()
        .lines()
        .map(|l| l.trim_start_matches(' ').trim_end())
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a delete prints: the name for people, `{"name": …, "deleted": true}` for scripts.
pub fn deleted(fmt: Format, name: &str) {
    match fmt {
        Format::Json => println!("{}", serde_json::json!({"name": name, "deleted": true})),
        Format::Table => println!("{name}"),
    }
}

pub fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// A time for people, in the one format every command uses: RFC 3339 in UTC with
/// milliseconds (`2026-11-29T19:30:00.123Z`); "-" for none.
pub fn time(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| "-".into())
}

/// "1.2s", "3m04s": how long between two timestamps.
pub fn span(from_ms: i64, to_ms: i64) -> String {
    if from_ms <= 0 || to_ms < from_ms {
        return "-".into();
    }
    let d = to_ms - from_ms;
    if d < 60_000 {
        format!("{:.1}s", d as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", d / 60_000, (d % 60_000) / 1000)
    }
}
