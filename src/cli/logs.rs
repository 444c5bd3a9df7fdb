//! `logs` and `runs`: a function's output (a stream of timed lines, followed with `-f`) and
//! its cron runs.

use std::io::Write;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;

use super::client::{split_target, Client, ClientArgs, Format};
use super::output::{or_dash, time};
use crate::api::types::{LogLine, LogsQuery, RunList};

/// A function's output as one stream of lines, each with its time, instance (or cron run) and
/// revision: PROJECT/FUNCTION
#[derive(Debug, clap::Args)]
pub struct Logs {
    pub target: String,
    /// Keep printing lines as they are written, new instances and cron runs included, until Ctrl-C
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only lines since a time: a duration back from now (30s, 10m, 2h, 1d) or RFC 3339 (2026-12-01T21:40:00Z)
    #[arg(long, value_name = "DURATION|TIME")]
    pub since: Option<String>,
    /// Only the last N lines (of all instances and runs together), then follow if -f
    #[arg(long, value_name = "N")]
    pub tail: Option<String>,
    /// Only the lines of this deployment's instances and runs
    #[arg(long, value_name = "DEPLOYMENT")]
    pub revision: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Longest NDJSON line read from the server (its lines are capped far below this).
const MAX_WIRE_LINE: usize = 1 << 20;

impl Logs {
    /// The API query these flags make; checked here first, with the server's own parser, so a
    /// bad value is refused before any request.
    fn query(&self) -> Result<String> {
        let q = LogsQuery {
            follow: self.follow.then(|| "true".to_string()),
            since: self.since.clone(),
            tail: self.tail.clone(),
            revision: self.revision.clone(),
        };
        q.parse(chrono::Utc::now()).map_err(|m| anyhow!("--{m}"))?;
        let mut url = reqwest::Url::parse("http://query.invalid/")?;
        {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in [("follow", &q.follow), ("since", &q.since), ("tail", &q.tail), ("revision", &q.revision)] {
                if let Some(v) = v {
                    pairs.append_pair(k, v);
                }
            }
        }
        Ok(url.query().map(|q| format!("?{q}")).unwrap_or_default())
    }

    pub async fn run(self) -> Result<i32> {
        let (project, function) = split_target(&self.target)?;
        let query = self.query()?;
        let c = Client::new(&self.client)?;
        let resp = c.get_stream(&format!("/api/projects/{project}/functions/{function}/logs{query}")).await?;
        let mut body = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let mut out = std::io::stdout().lock();
        while let Some(chunk) = body.next().await {
            buf.extend_from_slice(&chunk.context("the server closed the log stream")?);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let wire: Vec<u8> = buf.drain(..=nl).collect();
                // An empty line is the server's keep-alive.
                if nl > 0 {
                    print_line(&mut out, &wire[..nl], c.format)?;
                }
            }
            if buf.len() > MAX_WIRE_LINE {
                bail!("the server sent a log line longer than {MAX_WIRE_LINE} bytes; is it an eserveless server of this version?");
            }
        }
        Ok(0)
    }
}

/// One NDJSON line from the server, printed as text (`LogLine::to_text`) or as compact JSON.
fn print_line(out: &mut impl Write, wire: &[u8], format: Format) -> Result<()> {
    let line: LogLine = serde_json::from_slice(wire)
        .context("the server sent a log line in a form this client does not know (a different version?)")?;
    match format {
        Format::Json => writeln!(out, "{}", serde_json::to_string(&line)?)?,
        Format::Text => writeln!(out, "{}", line.to_text())?,
    }
    // Lines go out as they come, a pipe included (`logs -f | grep`).
    out.flush()?;
    Ok(())
}

/// Cron run history: PROJECT/FUNCTION
#[derive(Debug, clap::Args)]
pub struct Runs {
    pub target: String,
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    #[command(flatten)]
    pub client: ClientArgs,
}

impl Runs {
    pub async fn run(self) -> Result<i32> {
        let (project, function) = split_target(&self.target)?;
        let c = Client::new(&self.client)?;
        let v: RunList = c.get(&format!("/api/projects/{project}/functions/{function}/runs?limit={}", self.limit)).await?;
        if c.print_json(&v)? {
            return Ok(0);
        }
        println!("{:<8} {:<10} {:<8} {:<27} {:>9}  OUTPUT", "RUN", "STATUS", "TRIGGER", "STARTED", "DURATION");
        for r in v.runs {
            let out = r.output.lines().last().unwrap_or("");
            println!("{:<8} {:<10} {:<8} {:<27} {:>7}ms  {}", r.id, r.status, r.trigger, time(&r.started_at), or_dash(r.duration_ms), out);
        }
        Ok(0)
    }
}
