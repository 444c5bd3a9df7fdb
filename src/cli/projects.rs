//! `ls`, `show`, `rm` and `keys rotate`: projects as the API lists them.

use anyhow::Result;

use super::client::{Client, ClientArgs};
use super::output::{or_dash, short};
use crate::api::types::{InvokeKey, ProjectAnswer, ProjectDeleted, ProjectList};

/// List projects
#[derive(Debug, clap::Args)]
pub struct Ls {
    #[command(flatten)]
    pub client: ClientArgs,
}

impl Ls {
    pub async fn run(self) -> Result<i32> {
        let v: ProjectList = Client::new(&self.client)?.get("/api/projects").await?;
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
        println!("project     {}", v.name);
        println!("repository  {}", v.repository);
        let live = v.live.as_ref();
        println!("live        {} (deployment {})", or_dash(live.map(|l| &l.commit)), or_dash(live.map(|l| l.deployment)));
        let latest = v.latest_deployment.as_ref();
        println!("latest      deployment {} {}", or_dash(latest.map(|d| d.id)), or_dash(latest.map(|d| d.status.as_str())));
        if let Some(e) = latest.and_then(|d| d.error.as_deref()) {
            println!("error       {e}");
        }
        println!();
        println!("{:<24} {:<6} {:<18} INVOKE", "FUNCTION", "TYPE", "SCHEDULE");
        for f in &v.functions {
            let invoke = f.invoke_path.as_ref().map_or_else(|| "-".into(), |p| format!("{}{p}", c.base));
            println!("{:<24} {:<6} {:<18} {}", f.name, f.kind, or_dash(f.schedule.as_ref()), invoke);
        }
        let instances: Vec<_> = v.functions.iter().flat_map(|f| f.instance_list.iter().map(move |i| (&f.name, i))).collect();
        if !instances.is_empty() {
            println!();
            println!("{:<24} {:<26} {:<9} NODE", "FUNCTION", "INSTANCE", "STATE");
            for (f, i) in instances {
                println!("{:<24} {:<26} {:<9} {}", f, i.id.chars().take(25).collect::<String>(), i.state, or_dash(i.node.as_ref()));
            }
        }
        Ok(0)
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
        let v: ProjectDeleted = Client::new(&self.client)?.delete(&format!("/api/projects/{}", self.project)).await?;
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
