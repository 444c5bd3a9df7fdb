//! What the engine answers about projects, deployments and functions: read-only views,
//! filtered by who asks (another user's project is not found).

use chrono::{DateTime, Utc};

use crate::dataplane::gateway::Route;
pub use crate::dataplane::pool::{InstanceInfo, PoolCounts};
use crate::engine::auth::Principal;
use crate::engine::error::{EngineError, Result};
use crate::engine::Platform;

pub use crate::manifest::FunctionType;
pub use crate::infra::store::{BuildState, CronRunRow, DeploymentRow, DeploymentStatus, FunctionRow, ProjectRow, RunStatus};

/// A project in a listing.
#[derive(Debug, Clone)]
pub struct ProjectSummary {
    pub project: ProjectRow,
    pub live_commit: Option<String>,
    pub latest: Option<DeploymentRow>,
}

/// A project with its live deployment and that deployment's functions.
#[derive(Debug, Clone)]
pub struct ProjectDetail {
    pub project: ProjectRow,
    pub live: Option<DeploymentRow>,
    pub latest: Option<DeploymentRow>,
    pub functions: Vec<LiveFunction>,
}

/// A live function with the resources it runs with and its instances right now.
#[derive(Debug, Clone)]
pub struct LiveFunction {
    pub function: FunctionRow,
    /// The manifest's ask, or the operator's default.
    pub memory_bytes: u64,
    pub cpu_millis: u32,
    /// `None` for cron functions (they have no pool).
    pub instances: Option<PoolCounts>,
    /// Each instance (http functions), with the node it runs on.
    pub instance_list: Vec<InstanceInfo>,
}

/// A deployment with its functions.
#[derive(Debug, Clone)]
pub struct DeploymentDetail {
    pub deployment: DeploymentRow,
    pub live: bool,
    pub functions: Vec<FunctionRow>,
}

/// A secret's name; its value never leaves the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    pub name: String,
    pub updated_at: DateTime<Utc>,
}

impl Platform {
    /// The project, if it exists and `who` may see it; another user's project is not found.
    pub fn owned_project(&self, who: &Principal, name: &str) -> Result<ProjectRow> {
        self.store
            .project(name)?
            .filter(|p| who.owns(p.owner.as_deref()))
            .ok_or_else(|| EngineError::project_not_found(name))
    }

    /// The projects `who` may see.
    pub fn projects(&self, who: &Principal) -> Result<Vec<ProjectSummary>> {
        let mut out = Vec::new();
        for p in self.store.projects()?.into_iter().filter(|p| who.owns(p.owner.as_deref())) {
            let live = p.live_deployment_id.map(|id| self.store.deployment(id)).transpose()?.flatten();
            let latest = self.store.latest_deployment(&p.name)?;
            out.push(ProjectSummary { live_commit: live.map(|d| d.commit), latest, project: p });
        }
        Ok(out)
    }

    /// One project with its live functions and their instances.
    pub fn project(&self, who: &Principal, name: &str) -> Result<ProjectDetail> {
        let p = self.owned_project(who, name)?;
        let live = p.live_deployment_id.map(|id| self.store.deployment(id)).transpose()?.flatten();
        let latest = self.store.latest_deployment(name)?;
        let routes = self.routes.project(name);
        let functions = match &live {
            Some(d) => self
                .store
                .functions(d.id)?
                .into_iter()
                .map(|f| {
                    let (instances, instance_list) = match routes.as_ref().and_then(|r| r.get(&f.name)) {
                        Some(Route::Http(pool)) => (Some(pool.counts()), pool.instance_list()),
                        _ => (None, Vec::new()),
                    };
                    LiveFunction {
                        memory_bytes: f.options.memory_bytes.unwrap_or(self.config.limits.memory_bytes()),
                        cpu_millis: f.options.cpu_millis.unwrap_or(self.config.limits.cpu_millis()),
                        instances,
                        instance_list,
                        function: f,
                    }
                })
                .collect(),
            None => Vec::new(),
        };
        Ok(ProjectDetail { project: p, live, latest, functions })
    }

    /// One deployment of a project; `id` as the caller gave it.
    pub fn deployment(&self, who: &Principal, project: &str, id: &str) -> Result<DeploymentDetail> {
        self.owned_project(who, project)?;
        let gone = || EngineError::DeploymentNotFound { project: project.to_string(), deployment: id.to_string() };
        let n: i64 = id.parse().map_err(|_| gone())?;
        let d = self.store.deployment(n)?.filter(|d| d.project == project).ok_or_else(gone)?;
        let live_id = self.store.project(project)?.and_then(|p| p.live_deployment_id);
        let functions = self.store.functions(n)?;
        Ok(DeploymentDetail { live: live_id == Some(d.id), deployment: d, functions })
    }

    /// Fails unless `function` is a live function of a project `who` may see.
    pub(crate) fn known_function(&self, who: &Principal, project: &str, function: &str) -> Result<()> {
        let p = self.owned_project(who, project)?;
        let found = match p.live_deployment_id {
            Some(id) => self.store.functions(id)?.iter().any(|f| f.name == function),
            None => false,
        };
        if found {
            Ok(())
        } else {
            Err(EngineError::FunctionNotFound { project: project.to_string(), function: function.to_string() })
        }
    }

    /// The latest cron runs of a live function, newest first.
    pub fn function_runs(&self, who: &Principal, project: &str, function: &str, limit: u32) -> Result<Vec<CronRunRow>> {
        self.known_function(who, project, function)?;
        Ok(self.store.cron_runs(project, function, limit)?)
    }

    /// The names of a project's secrets.
    pub fn secrets(&self, who: &Principal, project: &str) -> Result<Vec<SecretInfo>> {
        self.owned_project(who, project)?;
        Ok(self.store.secrets(project)?.into_iter().map(|s| SecretInfo { name: s.name, updated_at: s.updated_at }).collect())
    }
}
