//! `deployments` and `rollback`: a project's history, and an earlier deployment made live again.

use anyhow::Result;

use super::client::{Client, ClientArgs};
use super::output::{or_dash, short};
use super::projects::print_invoke_urls;
use crate::api::types::{DeploymentList, DeploymentListItem, DeploymentStatus, RollbackAnswer, RollbackRequest};
use crate::infra::store::describe_source;

/// A project's deployments, newest first: which is live, and which can be rolled back to
#[derive(Debug, clap::Args)]
pub struct Deployments {
    pub project: String,
    /// At most this many (the newest)
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// What the NOTE column says of a deployment.
fn note(d: &DeploymentListItem) -> String {
    let mut parts = Vec::new();
    if let Some(of) = d.rollback_of {
        parts.push(format!("rollback to {of}"));
    }
    if d.status == DeploymentStatus::Failed {
        parts.push(d.error.as_deref().and_then(|e| e.lines().next()).unwrap_or("failed").to_string());
    }
    if d.images_present == Some(false) {
        parts.push("images removed: a rollback to it needs a new deploy".to_string());
    }
    parts.join("; ")
}

impl Deployments {
    pub async fn run(self) -> Result<i32> {
        let c = Client::new(&self.client)?;
        let v: DeploymentList = c.get(&format!("/api/projects/{}/deployments?limit={}", self.project, self.limit)).await?;
        if c.print_json(&v)? {
            return Ok(0);
        }
        println!("{:<6} {:<4} {:<9} {:<32} {:<14} {:<20} {:<12} NOTE", "ID", "LIVE", "STATUS", "SOURCE", "REF", "CREATED", "BY");
        for d in &v.deployments {
            println!(
                "{:<6} {:<4} {:<9} {:<32} {:<14} {:<20} {:<12} {}",
                d.id,
                if d.live { "*" } else { "" },
                d.status.as_str(),
                describe_source(d.source, &d.commit, d.dirty, d.digest.as_deref()),
                or_dash(d.git_ref.as_ref()),
                d.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                or_dash(d.submitted_by.as_ref()),
                note(d)
            );
        }
        if v.deployments.is_empty() {
            println!("(no deployments)");
        }
        Ok(0)
    }
}

/// Make an earlier successful deployment live again, from its images (no build): default, the one before the live one
#[derive(Debug, clap::Args)]
pub struct Rollback {
    pub project: String,
    /// The deployment to make live again (an id from `eserveless deployments PROJECT`)
    pub deployment: Option<i64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

impl Rollback {
    pub async fn run(self) -> Result<i32> {
        let c = Client::new(&self.client)?;
        let req = RollbackRequest { deployment: self.deployment };
        let v: RollbackAnswer = c.post(&format!("/api/projects/{}/rollback", self.project), &req).await?;
        if c.print_json(&v)? {
            return Ok(0);
        }
        println!(
            "{}: deployment {} (commit {}) is live again, as deployment {}; nothing was built (was: deployment {})",
            v.project,
            v.rollback_of,
            short(&v.commit),
            v.deployment,
            or_dash(v.previous)
        );
        print_invoke_urls(&c, &v.project).await?;
        Ok(0)
    }
}
