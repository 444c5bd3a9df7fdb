//! `deploy`: submits a repository, follows the build, and prints where the functions are.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::client::{Client, ClientArgs};
use super::output::short;
use super::projects::print_invoke_urls;
use crate::api::types::{BuildState, DeployAnswer, DeployRequest, DeploymentAnswer, DeploymentStatus, SubmitStatus};

/// Deploy a repository (URL, owner/repo, or a local path when the server allows it)
#[derive(Debug, clap::Args)]
pub struct Deploy {
    pub repository: String,
    /// Branch, tag or commit
    #[arg(long = "ref")]
    pub git_ref: Option<String>,
    /// Project name (default: derived from the URL)
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Prints above a spinner when there is one, else on stdout.
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn line(&self, line: String) {
        match &self.0 {
            Some(pb) => pb.println(line),
            None => println!("{line}"),
        }
    }
}

impl Deploy {
    pub async fn run(self) -> Result<i32> {
        let c = Client::new(&self.client)?;
        let req = DeployRequest { repository: self.repository, git_ref: self.git_ref, name: self.name };
        let v: DeployAnswer = c.post("/api/projects", &req).await?;
        let (project, id, commit) = (&v.project, v.deployment, short(&v.commit));
        if v.status == SubmitStatus::Unchanged {
            println!("{project}: commit {commit} is already live (deployment {id}); nothing to build");
            print_invoke_urls(&c, project).await?;
            return Ok(0);
        }
        println!("{project}: deployment {id} of commit {commit} queued");
        if let Some(key) = &v.invoke_key {
            println!("{project}: invoke key for its `auth: private` functions (shown once; `eserveless keys rotate {project}` makes a new one):\n  {key}");
        }
        let d = follow(&c, project, id).await?;
        for w in &d.deployment.warnings {
            println!("warning: {w}");
        }
        if d.deployment.status == DeploymentStatus::Failed {
            eprintln!("deployment {id} failed: {}", d.deployment.error.as_deref().unwrap_or("-"));
            for f in d.functions.iter().filter(|f| f.build_state == BuildState::Failed) {
                let tail: Vec<&str> = f.build_log.lines().rev().take(20).collect();
                eprintln!("--- build log of {} (last lines) ---", f.name);
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
            return Ok(1);
        }
        println!("deployment {id} is live");
        print_invoke_urls(&c, project).await?;
        Ok(0)
    }
}

/// Polls the deployment until it is ready or failed, printing each function's build state
/// and the deployment's status as they change.
async fn follow(c: &Client, project: &str, id: i64) -> Result<DeploymentAnswer> {
    let progress = Progress(std::io::stderr().is_terminal().then(|| {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    }));
    let mut seen: std::collections::HashMap<String, BuildState> = Default::default();
    let mut last_status = None;
    // How much of the deployment's log is printed: its build steps appear as they run.
    let mut printed = 0;
    let started = Instant::now();
    let mut slow_note = false;
    let d = loop {
        let d: DeploymentAnswer = c.get(&format!("/api/projects/{project}/deployments/{id}")).await?;
        let log = &d.deployment.log;
        if let Some(new) = log.get(printed..).filter(|_| log.len() > printed) {
            // Whole lines only: a line still being written is printed next time.
            let complete = new.rfind('\n').map_or(0, |i| i + 1);
            for line in new[..complete].lines() {
                progress.line(format!("  | {line}"));
            }
            printed += complete;
        }
        for f in &d.functions {
            if seen.get(&f.name) != Some(&f.build_state) {
                progress.line(format!("  {:<24} {}", f.name, f.build_state.as_str()));
                seen.insert(f.name.clone(), f.build_state);
            }
        }
        if last_status != Some(d.deployment.status) {
            progress.line(format!("deployment {id}: {}", d.deployment.status.as_str()));
            last_status = Some(d.deployment.status);
        }
        if let Some(pb) = &progress.0 {
            pb.set_message(format!("{} ({}s)", d.deployment.status.as_str(), started.elapsed().as_secs()));
        } else if !slow_note && started.elapsed() > Duration::from_secs(60) {
            println!("this is taking a while (builds can take minutes the first time)…");
            slow_note = true;
        }
        if d.deployment.status.is_final() {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if let Some(pb) = progress.0 {
        pb.finish_and_clear();
    }
    Ok(d)
}
