//! A project's deployment history and rollback: an earlier deployment made live again from
//! the images it was built with, through the same switch as a redeploy (new instances
//! prewarmed where the old ones served, routes swapped, old instances drained), with no build.
//!
//! A rollback is recorded as a new deployment (`rollback_of` = the one made live again) with
//! the same commit and a copy of its functions (images, settings); the project's secrets are
//! the current ones, as after any switch. A deployment whose images were pruned
//! (`--keep-deployments`) is refused with the command that rebuilds it: a rollback is the
//! quick, safe way back, and never turns into a build that could fail.

use std::sync::Arc;

use crate::engine::auth::Principal;
use crate::engine::error::{EngineError, Result};
use crate::engine::Platform;
use crate::infra::store::{DeploymentRow, DeploymentStatus};

/// A deployment in a project's history.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub deployment: DeploymentRow,
    /// It is the one serving now.
    pub live: bool,
    /// For a deployment that went live: whether every image of its functions is still on the
    /// engine (a rollback to it needs no build). `None` for the others, or when the engine
    /// did not answer.
    pub images_present: Option<bool>,
}

/// What a rollback made live.
#[derive(Debug, Clone)]
pub struct RolledBack {
    /// The new deployment that records the rollback (live now).
    pub deployment: i64,
    /// The earlier deployment made live again.
    pub target: DeploymentRow,
    /// The deployment that was live before.
    pub previous: Option<i64>,
}

/// The deployment a rollback or a rollback's target stands for: the build it serves.
fn built(d: &DeploymentRow) -> i64 {
    d.rollback_of.unwrap_or(d.id)
}

impl Platform {
    /// The project's deployments, newest first, with which is live and which can be rolled
    /// back to without a build.
    pub async fn history(&self, who: &Principal, project: &str, limit: u32) -> Result<Vec<HistoryEntry>> {
        let p = self.owned_project(who, project)?;
        let mut out = Vec::new();
        // A rollback has the images of the deployment it stands for: each is asked once.
        let mut known: std::collections::HashMap<i64, Option<bool>> = std::collections::HashMap::new();
        for d in self.store.deployments(project, limit)? {
            let images_present = match d.status {
                DeploymentStatus::Ready => match known.get(&built(&d)) {
                    Some(present) => *present,
                    None => {
                        let present = self.images_present(built(&d)).await.ok();
                        known.insert(built(&d), present);
                        present
                    }
                },
                _ => None,
            };
            out.push(HistoryEntry { live: p.live_deployment_id == Some(d.id), deployment: d, images_present });
        }
        Ok(out)
    }

    /// Whether every function image of deployment `id` is on the engine.
    async fn images_present(&self, id: i64) -> std::result::Result<bool, crate::infra::driver::DriverError> {
        let functions = self.store.functions(id).map_err(|e| crate::infra::driver::DriverError::Engine(e.to_string()))?;
        for image in functions.iter().filter_map(|f| f.image.as_deref()) {
            if self.driver.image_info(image).await?.is_none() {
                return Ok(false);
            }
        }
        Ok(!functions.is_empty())
    }

    /// Makes an earlier deployment of `project` live again: `target` as the caller gave it,
    /// else the newest deployment that went live by its own build before the live one.
    pub async fn rollback(self: &Arc<Self>, who: &Principal, project: &str, target: Option<i64>) -> Result<RolledBack> {
        self.owned_project(who, project)?;
        let list = || format!("see `eserveless deployments {project}`");
        if let Some(d) = self.store.latest_deployment(project)?.filter(|d| !d.status.is_final()) {
            return Err(EngineError::wrong_state(
                "deployment_in_progress",
                format!(
                    "deployment {} of `{project}` is {}; roll back once it has finished ({})",
                    d.id,
                    d.status.as_str(),
                    list()
                ),
            ));
        }
        // One switch at a time per project (a deploy going live, a secrets change, another
        // rollback), decided under it; never waited for: a build holds it for minutes.
        let lock = self.project_lock(project);
        let Ok(_held) = lock.try_lock() else {
            return Err(EngineError::wrong_state(
                "change_in_progress",
                format!("another change of `{project}` is going on (a deployment going live, a secrets change or a rollback); try again in a moment"),
            ));
        };
        let p = self.owned_project(who, project)?;
        let live = p.live_deployment_id.map(|id| self.store.deployment(id)).transpose()?.flatten();
        let target = match target {
            Some(id) => {
                let d = self
                    .store
                    .deployment(id)?
                    .filter(|d| d.project == project)
                    .ok_or_else(|| EngineError::DeploymentNotFound { project: project.to_string(), deployment: id.to_string() })?;
                if d.status != DeploymentStatus::Ready {
                    let why = match (&d.status, &d.error) {
                        (DeploymentStatus::Failed, Some(e)) => format!("failed ({})", e.lines().next().unwrap_or(e)),
                        (s, _) => s.as_str().to_string(),
                    };
                    return Err(EngineError::wrong_state(
                        "deployment_not_ready",
                        format!(
                            "deployment {id} of `{project}` {}{why}: only a deployment that went live can be made live again; {}",
                            if d.status == DeploymentStatus::Failed { "" } else { "is " },
                            list()
                        ),
                    ));
                }
                // A rollback stands for the deployment it made live again.
                match d.rollback_of {
                    Some(original) => self.store.deployment(original)?.ok_or_else(|| EngineError::DeploymentNotFound {
                        project: project.to_string(),
                        deployment: original.to_string(),
                    })?,
                    None => d,
                }
            }
            None => {
                let Some(live) = &live else {
                    return Err(EngineError::wrong_state(
                        "nothing_to_roll_back",
                        format!("`{project}` has no live deployment to roll back from; {}", list()),
                    ));
                };
                self.store.ready_build_before(project, built(live))?.ok_or_else(|| {
                    EngineError::wrong_state(
                        "no_earlier_deployment",
                        format!(
                            "`{project}` has no successful deployment older than deployment {} (commit {}) to roll back to; {}",
                            built(live),
                            short(&live.commit),
                            list()
                        ),
                    )
                })?
            }
        };
        if let Some(live) = live.as_ref().filter(|l| built(l) == target.id) {
            return Err(EngineError::wrong_state(
                "already_live",
                format!("deployment {} (commit {}) of `{project}` is live already (as deployment {})", target.id, short(&target.commit), live.id),
            ));
        }
        let present = self.images_present(target.id).await.map_err(EngineError::EngineUnavailable)?;
        if !present {
            return Err(EngineError::wrong_state(
                "images_removed",
                format!(
                    "deployment {} of `{project}` (commit {}) cannot be made live again without a build: its images were removed \
                     (the server keeps those of the last {} deployments, `--keep-deployments`); build that commit again with \
                     `eserveless deploy {} --ref {} --name {project}`",
                    target.id,
                    short(&target.commit),
                    self.config.keep_deployments,
                    target.repository,
                    target.commit
                ),
            ));
        }

        let previous = live.as_ref().map(|l| l.id);
        let id = self.store.record_rollback(target.id, &who.name)?;
        self.log(
            id,
            &format!(
                "rollback to deployment {} (commit {}) by {}: its images are still there, nothing is built",
                target.id, target.commit, who.name
            ),
        );
        if let Err(e) = self.activate(project, id, true).await {
            let message = format!("could not switch to deployment {}'s images: {e:#}", target.id);
            if let Err(se) = self.store.fail_deployment(id, &message) {
                tracing::error!(error = %se, "could not record a failed rollback");
            }
            return Err(EngineError::internal("the rollback could not switch the routes", e));
        }
        self.store.make_live(id)?;
        self.log(id, "live");
        tracing::info!(project, deployment = id, rollback_of = target.id, commit = %target.commit, by = %who.name, "rolled back");
        Ok(RolledBack { deployment: id, target, previous })
    }
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}
