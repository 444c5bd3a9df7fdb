//! One line of a function's output, as the engine reads it (with its time and stream), as
//! the store keeps it and as the API sends it; and the bounded buffers that read it.
//!
//! Memory is bounded however much a function writes: a line is cut at [`MAX_LINE_BYTES`],
//! and a container's saved output is its last `--log-bytes` of lines ([`LineTail`]).

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Longest line kept; the rest of a longer line is dropped and the line marked.
pub const MAX_LINE_BYTES: usize = 8 * 1024;

/// The marker ending a line cut at [`MAX_LINE_BYTES`].
pub const CUT_MARK: &str = " [eserveless: line cut]";

/// Which output a line was written to; `system` lines are the platform's own notes
/// (dropped output, a run's exit status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
    System,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::System => "system",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Stdout, Self::Stderr, Self::System].into_iter().find(|v| v.as_str() == s)
    }
}

/// What wrote a line: an http instance, or a cron run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LineSource {
    Instance,
    Run,
}

impl LineSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Instance => "instance",
            Self::Run => "run",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Instance, Self::Run].into_iter().find(|v| v.as_str() == s)
    }
}

/// One line of a function's output (`GET .../logs` sends one per line of NDJSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogLine {
    /// When the engine received the line (nanoseconds as Docker keeps them).
    pub time: DateTime<Utc>,
    pub source: LineSource,
    /// The container (or swarm service) that wrote it.
    pub instance: String,
    /// The cron run, for `source: run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<i64>,
    /// The deployment whose code wrote it.
    pub revision: i64,
    pub stream: LogStream,
    /// The text, without its line end; at most [`MAX_LINE_BYTES`] (then marked).
    pub line: String,
}

impl LogLine {
    /// The line for people: `TIME SOURCE REVISION  TEXT`, time in RFC 3339 with milliseconds,
    /// source the instance's short id or `run N`, revision `rN`; stderr and system lines say so.
    pub fn to_text(&self) -> String {
        let source = match self.run {
            Some(n) if self.source == LineSource::Run => format!("run {n}"),
            _ => self.instance.chars().take(12).collect(),
        };
        let mark = match self.stream {
            LogStream::Stdout => "",
            LogStream::Stderr => "[stderr] ",
            LogStream::System => "[eserveless] ",
        };
        format!("{} r{} {source}  {mark}{}", self.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), self.revision, self.line)
    }
}

/// A line as a container engine hands it over, before it is tied to its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLine {
    pub time: DateTime<Utc>,
    pub stream: LogStream,
    pub text: String,
}

/// `text` cut to at most [`MAX_LINE_BYTES`] on a character boundary, marked when cut.
pub fn cap_line(text: &str) -> String {
    if text.len() <= MAX_LINE_BYTES {
        return text.to_string();
    }
    let mut end = MAX_LINE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{CUT_MARK}", &text[..end])
}

/// Splits a line Docker sent with `timestamps=true` (`2026-12-01T21:40:15.123456789Z text`)
/// into its time and text; a line without a readable time (never from Docker) keeps `fallback`.
pub fn split_timestamp(line: &str, fallback: DateTime<Utc>) -> (DateTime<Utc>, &str) {
    if let Some((ts, rest)) = line.split_once(' ') {
        if let Ok(t) = DateTime::parse_from_rfc3339(ts) {
            return (t.with_timezone(&Utc), rest);
        }
    }
    (fallback, line)
}

/// Reassembles lines from an engine's frames, per stream, with a bounded buffer: a line
/// longer than [`MAX_LINE_BYTES`] is cut (the rest of it dropped up to its end).
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: [Vec<u8>; 2],
    overflow: [bool; 2],
}

impl LineSplitter {
    /// Feeds a frame of `stream` (stdout or stderr); returns the complete lines in it, their
    /// Docker timestamps parsed.
    pub fn push(&mut self, stream: LogStream, bytes: &[u8]) -> Vec<RawLine> {
        let k = usize::from(stream == LogStream::Stderr);
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let (piece, done) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], Some(i + 1)),
                None => (rest, None),
            };
            // Room for the timestamp in front of a capped line.
            let room = (MAX_LINE_BYTES + 40).saturating_sub(self.partial[k].len());
            if piece.len() > room {
                self.partial[k].extend_from_slice(&piece[..room]);
                self.overflow[k] = true;
            } else {
                self.partial[k].extend_from_slice(piece);
            }
            match done {
                Some(n) => {
                    out.push(self.take(k, stream));
                    rest = &rest[n..];
                }
                None => break,
            }
        }
        out
    }

    /// What is left without a line end (a container stopped mid-line).
    pub fn finish(&mut self) -> Vec<RawLine> {
        let mut out = Vec::new();
        for (k, stream) in [(0, LogStream::Stdout), (1, LogStream::Stderr)] {
            if !self.partial[k].is_empty() {
                out.push(self.take(k, stream));
            }
        }
        out
    }

    fn take(&mut self, k: usize, stream: LogStream) -> RawLine {
        let bytes = std::mem::take(&mut self.partial[k]);
        let cut = std::mem::take(&mut self.overflow[k]);
        let text = String::from_utf8_lossy(&bytes);
        let (time, text) = split_timestamp(&text, Utc::now());
        let text = text.strip_suffix('\r').unwrap_or(text);
        let mut text = cap_line(text);
        if cut && !text.ends_with(CUT_MARK) {
            text.push_str(CUT_MARK);
        }
        RawLine { time, stream, text }
    }
}

/// The last lines of a stream within a byte budget, in memory bounded by that budget, and
/// how many lines before them were dropped.
#[derive(Debug)]
pub struct LineTail {
    cap: usize,
    bytes: usize,
    lines: VecDeque<RawLine>,
    dropped: u64,
}

impl LineTail {
    pub fn new(cap: usize) -> Self {
        LineTail { cap, bytes: 0, lines: VecDeque::new(), dropped: 0 }
    }

    pub fn push(&mut self, line: RawLine) {
        self.bytes += line.text.len() + 1;
        self.lines.push_back(line);
        while self.bytes > self.cap && self.lines.len() > 1 {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.text.len() + 1;
                self.dropped += 1;
            }
        }
    }

    /// The kept lines, after a `system` line saying how many were dropped, if any.
    pub fn finish(self) -> Vec<RawLine> {
        let mut out = Vec::with_capacity(self.lines.len() + 1);
        if self.dropped > 0 {
            let time = self.lines.front().map_or_else(Utc::now, |l| l.time);
            out.push(RawLine {
                time,
                stream: LogStream::System,
                text: format!("{} earlier lines not kept (at most the last {} bytes of output are)", self.dropped, self.cap),
            });
        }
        out.extend(self.lines);
        out
    }
}

/// Lines as one text (a cron run's `output`, as `runs` shows it).
pub fn join_lines(lines: &[RawLine]) -> String {
    let mut out = String::new();
    for l in lines {
        if l.stream == LogStream::System {
            out.push_str("[eserveless: ");
            out.push_str(&l.text);
            out.push_str("]\n");
        } else {
            out.push_str(&l.text);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&Utc)
    }

    #[test]
    fn a_line_prints_time_in_ms_revision_and_source() {
        let mut l = LogLine {
            time: at("2026-12-01T21:40:15.123456789Z"),
            source: LineSource::Instance,
            instance: "a1b2c3d4e5f6a7b8c9".into(),
            run: None,
            revision: 12,
            stream: LogStream::Stdout,
            line: "hello".into(),
        };
        assert_eq!(l.to_text(), "2026-12-01T21:40:15.123Z r12 a1b2c3d4e5f6  hello");
        l.stream = LogStream::Stderr;
        assert_eq!(l.to_text(), "2026-12-01T21:40:15.123Z r12 a1b2c3d4e5f6  [stderr] hello");
        l.source = LineSource::Run;
        l.run = Some(7);
        l.stream = LogStream::System;
        assert_eq!(l.to_text(), "2026-12-01T21:40:15.123Z r12 run 7  [eserveless] hello");
    }

    #[test]
    fn the_json_line_has_its_fields_and_reads_back() {
        let l = LogLine {
            time: at("2026-12-01T21:40:15.5Z"),
            source: LineSource::Run,
            instance: "c".into(),
            run: Some(3),
            revision: 2,
            stream: LogStream::Stderr,
            line: "x".into(),
        };
        let v = serde_json::to_value(&l).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"time": "2026-12-01T21:40:15.500Z", "source": "run", "instance": "c", "run": 3,
                "revision": 2, "stream": "stderr", "line": "x"})
        );
        assert_eq!(serde_json::from_value::<LogLine>(v).expect("back"), l);
    }

    #[test]
    fn docker_timestamps_are_split_off() {
        let fallback = at("2000-01-01T00:00:00Z");
        let (t, text) = split_timestamp("2026-12-01T21:40:15.123456789Z hello world", fallback);
        assert_eq!((t, text), (at("2026-12-01T21:40:15.123456789Z"), "hello world"));
        assert_eq!(split_timestamp("no time here", fallback), (fallback, "no time here"));
    }

    #[test]
    fn frames_become_lines_per_stream_and_long_lines_are_cut() {
        let mut s = LineSplitter::default();
        assert!(s.push(LogStream::Stdout, b"2026-12-01T00:00:01Z hel").is_empty());
        let err = s.push(LogStream::Stderr, b"2026-12-01T00:00:02Z oops\n");
        assert_eq!(err.len(), 1);
        assert_eq!((err[0].stream, err[0].text.as_str()), (LogStream::Stderr, "oops"));
        let out = s.push(LogStream::Stdout, b"lo\r\n2026-12-01T00:00:03Z two\n2026-12-01T00:00:04Z tail");
        let texts: Vec<_> = out.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["hello", "two"]);
        assert_eq!(out[0].time, at("2026-12-01T00:00:01Z"));
        assert_eq!(s.finish()[0].text, "tail");

        let mut s = LineSplitter::default();
        let mut big = b"2026-12-01T00:00:01Z ".to_vec();
        big.extend(std::iter::repeat(b'x').take(100_000));
        for chunk in big.chunks(1000) {
            assert!(s.push(LogStream::Stdout, chunk).is_empty());
            assert!(s.partial[0].len() <= MAX_LINE_BYTES + 40, "bounded: {}", s.partial[0].len());
        }
        let out = s.push(LogStream::Stdout, b"\n");
        assert!(out[0].text.ends_with(CUT_MARK) && out[0].text.len() <= MAX_LINE_BYTES + CUT_MARK.len(), "{}", out[0].text.len());
    }

    #[test]
    fn a_tail_keeps_the_last_lines_within_its_budget_and_says_what_it_dropped() {
        let mut t = LineTail::new(100);
        for i in 0..1000 {
            t.push(RawLine { time: Utc::now(), stream: LogStream::Stdout, text: format!("line {i:04}") });
            assert!(t.bytes <= 100 + 10, "{}", t.bytes);
        }
        let out = t.finish();
        assert_eq!(out[0].stream, LogStream::System);
        assert!(out[0].text.starts_with("990 earlier lines not kept"), "{}", out[0].text);
        assert_eq!(out.last().map(|l| l.text.as_str()), Some("line 0999"));
        assert!(join_lines(&out).starts_with("[eserveless: 990 earlier lines not kept"));
    }
}
