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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_forms() {
        assert_eq!(short("0123456789abcdef"), "0123456789ab");
        assert_eq!(short("abc"), "abc");
        assert_eq!(or_dash(None::<u32>), "-");
        assert_eq!(or_dash(Some(3)), "3");
        let t = DateTime::<Utc>::from_timestamp(1_700_000_000, 5_000_000).expect("time");
        // The same text the API answered with, which the tables printed before they were typed.
        assert_eq!(serde_json::to_value(t).expect("json"), serde_json::Value::String(time(&t)));
        // Typed states keep the tables' column widths (their Display pads).
        use crate::api::types::{FunctionType, RunStatus};
        assert_eq!(format!("{:<6}|{:<10}|", FunctionType::Http, RunStatus::Failed), "http  |failed    |");
    }
}
