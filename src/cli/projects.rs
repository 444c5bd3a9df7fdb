//! `ls`, `show`, `rm` and `keys rotate`: projects as the API lists them.

use anyhow::Result;

use super::client::{Client, ClientArgs};
use super::output::{bytes, cpus, millis, or_dash, short, time};
use crate::api::types::{InvokeKey, ProjectAnswer, ProjectDeleted, ProjectFunction, ProjectList};

/// List projects
#[derive(Debug, clap::Args)]
pub struct Ls {
    #[command(flatten)]
    pub client: ClientArgs,
}

impl Ls {
    pub async fn run(self) -> Result<i32> {
        let c = Client::new(&self.client)?;
        let v: ProjectList = c.get("/api/projects").await?;
        if c.print_json(&v)? {
            return Ok(0);
        }
        println!("{:<32} {:<14} {:<10} REPOSITORY", "PROJECT", "LIVE COMMIT", "LATEST");
        for p in v.projects {
            let commit = p.live_commit.as_deref().map_or("-", short);
            let latest = or_dash(p.latest_deployment.map(|d| d.status.as_str()));
            println!("{:<32} {:<14} {:<10} {}", p.name, commit, latest, p.repository);
        }
        Ok(0)
    }
}

/// Show a project's functions and deployments
#[derive(Debug, clap::Args)]
pub struct Show {
    pub project: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

impl Show {
    pub async fn run(self) -> Result<i32> {
        let c = Client::new(&self.client)?;
        let v: ProjectAnswer = c.get(&format!("/api/projects/{}", self.project)).await?;
        if c.print_json(&v)? {
            return Ok(0);
        }
        println!("project     {}", v.name);
        println!("owner       {}", or_dash(v.owner.as_ref()));
        println!("repository  {}{}", v.repository, v.git_ref.as_ref().map_or_else(String::new, |r| format!(" (ref {r})")));
        match &v.live {
            Some(l) => println!("live        deployment {} of {} ({})", l.deployment, short(&l.commit), or_dash(l.runtime.as_ref())),
            None => println!("live        - (nothing deployed successfully yet)"),
        }
        if let Some(d) = v.latest_deployment.as_ref().filter(|d| v.live.as_ref().map(|l| l.deployment) != Some(d.id)) {
            println!("latest      deployment {} of {}: {}", d.id, short(&d.commit), d.status.as_str());
            if let Some(e) = &d.error {
                println!("error       {e}");
            }
        }
        for w in v.live.iter().flat_map(|l| &l.warnings) {
            println!("warning     {w}");
        }
        for f in &v.functions {
            println!();
            print_function(&c.base, f);
        }
        Ok(0)
    }
}

/// One function of `show`: where it is, what it runs with, and what it is doing now.
fn print_function(base: &str, f: &ProjectFunction) {
    match (&f.invoke_path, &f.schedule) {
        (Some(p), _) => println!("{} ({})  {base}{p}", f.name, f.kind),
        (None, s) => println!("{} ({})  schedule \"{}\"", f.name, f.kind, or_dash(s.as_ref())),
    }
    let auth = f.auth.map_or_else(String::new, |a| format!("  auth {}", serde_json::to_value(a).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()));
    println!("  memory {}  cpu {}  timeout {}{auth}", bytes(f.memory_bytes), cpus(f.cpu_millis), millis(f.timeout_ms));
    if let Some(s) = &f.scaling {
        println!(
            "  scaling concurrency {}, instances {}..{}, pause after {}, idle timeout {}",
            s.concurrency,
            s.min_instances,
            s.max_instances,
            millis(u64::try_from(s.pause_after.as_millis()).unwrap_or(u64::MAX)),
            millis(u64::try_from(s.idle_timeout.as_millis()).unwrap_or(u64::MAX))
        );
    }
    if let Some(n) = &f.instances {
        println!(
            "  instances {} ready, {} paused, {} starting, {} draining; {} in flight, {} waiting",
            n.ready, n.paused, n.starting, n.draining, n.in_flight, n.waiting
        );
    }
    for i in &f.instance_list {
        println!("    {:<14} {:<9} {}", short(&i.id), i.state, i.node.as_deref().unwrap_or(""));
    }
    if f.schedule.is_some() {
        println!("  next run {}", or_dash(f.next_run.as_ref().map(time)));
        match &f.last_run {
            Some(r) => println!(
                "  last run {} {} at {} ({} ms, exit code {})",
                r.id,
                r.status,
                time(&r.started_at),
                or_dash(r.duration_ms),
                or_dash(r.exit_code)
            ),
            None => println!("  last run - (never ran)"),
        }
    }
    if let Some(image) = &f.image {
        println!("  image {image}");
    }
}

/// Remove a project: its containers, images, schedules and records
#[derive(Debug, clap::Args)]
pub struct Rm {
    pub project: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

impl Rm {
    pub async fn run(self) -> Result<i32> {
        let c = Client::new(&self.client)?;
        let v: ProjectDeleted = c.delete(&format!("/api/projects/{}", self.project)).await?;
        if c.print_json(&v)? {
            return Ok(0);
        }
        println!("removed {} ({} containers, {} images)", v.deleted, v.containers_removed, v.images_removed);
        Ok(0)
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Make a new invoke key for a project's `auth: private` functions; the old one stops working
    Rotate { project: String },
}

/// Manage a project's invoke key
#[derive(Debug, clap::Args)]
pub struct Keys {
    #[command(subcommand)]
    pub command: KeysCommand,
    #[command(flatten)]
    pub client: ClientArgs,
}

impl Keys {
    pub async fn run(self) -> Result<i32> {
        let KeysCommand::Rotate { project } = self.command;
        let c = Client::new(&self.client)?;
        let v: InvokeKey = c.post(&format!("/api/projects/{project}/invoke-key"), &()).await?;
        if c.print_json(&v)? {
            return Ok(0);
        }
        println!("new invoke key of {project} (the old one no longer works; shown once):\n{}", v.invoke_key);
        println!("send it as `{}: <key>` to the project's `auth: private` functions", v.header);
        Ok(0)
    }
}

/// Prints each function's URL (http) or schedule (cron).
pub(crate) async fn print_invoke_urls(c: &Client, project: &str) -> Result<()> {
    let v: ProjectAnswer = c.get(&format!("/api/projects/{project}")).await?;
    for f in v.functions {
        match f.invoke_path {
            Some(p) => println!("  {:<24} {}{}", f.name, c.base, p),
            None => println!("  {:<24} cron {}", f.name, or_dash(f.schedule)),
        }
    }
    Ok(())
}
