//! `logs` and `runs`: a function's output and its cron runs.

use anyhow::Result;

use super::client::{split_target, Client, ClientArgs};
use super::output::{or_dash, short, time};
use crate::api::types::{FunctionLogsAnswer, RunList};

/// Output of a function's containers and cron runs: PROJECT/FUNCTION
#[derive(Debug, clap::Args)]
pub struct Logs {
    pub target: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

impl Logs {
    pub async fn run(self) -> Result<i32> {
        let (project, function) = split_target(&self.target)?;
        let c = Client::new(&self.client)?;
        let v: FunctionLogsAnswer = c.get(&format!("/api/projects/{project}/functions/{function}/logs")).await?;
        for e in v.entries {
            let id = e.container.as_deref().map_or_else(|| format!("run {}", or_dash(e.run)), |c| short(c).to_string());
            println!("==> {} {} {}{}", e.source, id, time(&e.at), if e.running { " (running)" } else { "" });
            print!("{}", e.output);
        }
        Ok(0)
    }
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
        println!("{:<8} {:<10} {:<8} {:<27} {:>9}  OUTPUT", "RUN", "STATUS", "TRIGGER", "STARTED", "DURATION");
        for r in v.runs {
            let out = r.output.lines().last().unwrap_or("");
            println!("{:<8} {:<10} {:<8} {:<27} {:>7}ms  {}", r.id, r.status, r.trigger, time(&r.started_at), or_dash(r.duration_ms), out);
        }
        Ok(0)
    }
}
