//! `cron run`: a cron function's run started now, optionally waited for.

use std::time::Duration;

use anyhow::Result;

use super::client::{split_target, Client, ClientArgs};
use super::output::or_dash;
use crate::api::types::{CronRun, RunStarted, RunStatus};

#[derive(Debug, clap::Subcommand)]
pub enum CronCommand {
    /// Start a run of a cron function now (recorded like a scheduled one; refused while a run is going): PROJECT/FUNCTION
    Run {
        target: String,
        /// Wait for the run to end; print its status, exit code and output (exit code 1 if it failed)
        #[arg(long)]
        wait: bool,
    },
}

/// Cron functions by hand
#[derive(Debug, clap::Args)]
pub struct Cron {
    #[command(subcommand)]
    pub command: CronCommand,
    #[command(flatten)]
    pub client: ClientArgs,
}

impl Cron {
    pub async fn run(self) -> Result<i32> {
        let CronCommand::Run { target, wait } = self.command;
        let (project, function) = split_target(&target)?;
        let c = Client::new(&self.client)?;
        let started: RunStarted = c.post(&format!("/api/projects/{project}/functions/{function}/runs"), &()).await?;
        if !wait {
            if c.print_json(&started)? {
                return Ok(0);
            }
            println!("run {} of {project}/{function} started; see it with `eserveless runs {project}/{function}`", started.run);
            return Ok(0);
        }
        if c.format == super::client::Format::Text {
            println!("run {} of {project}/{function} started; waiting for it to end", started.run);
        }
        let run: CronRun = loop {
            let run: CronRun = c.get(&started.link).await?;
            if run.status != RunStatus::Running {
                break run;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let failed = !matches!(run.status, RunStatus::Succeeded);
        if !c.print_json(&run)? {
            println!("run {}: {}, exit code {}, {} ms", run.id, run.status, or_dash(run.exit_code), or_dash(run.duration_ms));
            print!("{}", run.output);
        }
        Ok(if failed { 1 } else { 0 })
    }
}
