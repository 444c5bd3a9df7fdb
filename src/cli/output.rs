//! How the CLI talks to people: tables and short forms of ids and times. The one place that
//! formats the API's typed answers for a terminal.

use std::fmt::Display;

use chrono::{DateTime, Utc};

/// `-` for an absent value, as in every table of the CLI.
pub(crate) fn or_dash<T: Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// A commit or container id shortened to 12 characters.
pub(crate) fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// A time as the API sends it (RFC 3339, UTC as `Z`, fractions only when there are any).
pub(crate) fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Bytes in the manifest's units: `128Mi`, `1Gi`, else `N bytes`.
pub(crate) fn bytes(n: u64) -> String {
    const MI: u64 = 1 << 20;
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{}Gi", n >> 30),
        n if n >= MI && n % MI == 0 => format!("{}Mi", n / MI),
        n => format!("{n} bytes"),
    }
}

/// Milli-CPUs as a CPU count: `0.5`, `2`.
pub(crate) fn cpus(millis: u32) -> String {
    format!("{}", f64::from(millis) / 1000.0)
}

/// Milliseconds in the manifest's units: `500ms`, `10s`, `5m`, `1h`.
pub(crate) fn millis(ms: u64) -> String {
    match ms {
        0 => "0s".to_string(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_forms() {
        assert_eq!(short("0123456789abcdef"), "0123456789ab");
        assert_eq!(short("abc"), "abc");
        assert_eq!(or_dash(None::<u32>), "-");
        assert_eq!(or_dash(Some(3)), "3");
        assert_eq!((bytes(128 << 20), bytes(2 << 30), bytes(1000)), ("128Mi".into(), "2Gi".into(), "1000 bytes".into()));
        assert_eq!((cpus(500), cpus(2000)), ("0.5".into(), "2".into()));
        assert_eq!([millis(500), millis(10_000), millis(300_000), millis(7_200_000), millis(1500)], ["500ms", "10s", "5m", "2h", "1500ms"]);
        let t = DateTime::<Utc>::from_timestamp(1_700_000_000, 5_000_000).expect("time");
        // The same text the API answered with, which the tables printed before they were typed.
        assert_eq!(serde_json::to_value(t).expect("json"), serde_json::Value::String(time(&t)));
        // Typed states keep the tables' column widths (their Display pads).
        use crate::api::types::{FunctionType, RunStatus};
        assert_eq!(format!("{:<6}|{:<10}|", FunctionType::Http, RunStatus::Failed), "http  |failed    |");
    }
}
