//! What the engine answers about projects, deployments and functions: read-only views,
//! filtered by who asks (another user's project is not found).

use chrono::{DateTime, Utc};

use crate::dataplane::gateway::Route;
pub use crate::dataplane::pool::{InstanceInfo, PoolCounts};
use crate::engine::auth::Principal;
use crate::engine::error::{EngineError, Result};
use crate::engine::Platform;

pub use crate::manifest::FunctionType;
pub use crate::infra::store::{BuildState, CronRunRow, DeploymentRow, DeploymentStatus, FunctionRow, ProjectRow, RunStatus, RunTrigger};

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
    /// Cron functions: when the schedule fires next, and the latest run.
    pub next_run: Option<DateTime<Utc>>,
    pub last_run: Option<CronRunRow>,
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
            .ok_or_else(|| self.project_not_found(who, name))
    }

    /// `name` is not one of `who`'s projects: the closest of theirs, and how to list them.
    fn project_not_found(&self, who: &Principal, name: &str) -> EngineError {
        let mine: Vec<String> =
            self.store.projects().unwrap_or_default().into_iter().filter(|p| who.owns(p.owner.as_deref())).map(|p| p.name).collect();
        let hint = match crate::manifest::suggest(name, mine.iter().map(String::as_str)) {
            Some(s) => format!("; did you mean `{s}`? (`eserveless ls` lists your projects)"),
            None => "; `eserveless ls` lists your projects".to_string(),
        };
        EngineError::ProjectNotFound { project: name.to_string(), hint }
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
        let mut functions = Vec::new();
        for f in live.as_ref().map(|d| self.store.functions(d.id)).transpose()?.unwrap_or_default() {
            let (instances, instance_list) = match routes.as_ref().and_then(|r| r.get(&f.name)) {
                Some(Route::Http(pool)) => (Some(pool.counts()), pool.instance_list()),
                _ => (None, Vec::new()),
            };
            let next_run = f.schedule.as_deref().and_then(|s| crate::manifest::parse_schedule(s).ok()?.find_next_occurrence(&Utc::now(), false).ok());
            let last_run = match f.kind {
                FunctionType::Cron => self.store.cron_runs(name, &f.name, 1)?.into_iter().next(),
                FunctionType::Http => None,
            };
            functions.push(LiveFunction {
                memory_bytes: f.options.memory_bytes.unwrap_or(self.config.limits.memory_bytes()),
                cpu_millis: f.options.cpu_millis.unwrap_or(self.config.limits.cpu_millis()),
                instances,
                instance_list,
                next_run,
                last_run,
                function: f,
            });
        }
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

    /// The live function `function` of a project `who` may see; when there is none, the
    /// error names the closest live name, or the project's functions.
    pub(crate) fn live_function(&self, who: &Principal, project: &str, function: &str) -> Result<FunctionRow> {
        let p = self.owned_project(who, project)?;
        let mut functions = match p.live_deployment_id {
            Some(id) => self.store.functions(id)?,
            None => Vec::new(),
        };
        if let Some(i) = functions.iter().position(|f| f.name == function) {
            return Ok(functions.swap_remove(i));
        }
        let names: Vec<&str> = functions.iter().map(|f| f.name.as_str()).collect();
        let hint = match (names.is_empty(), crate::manifest::suggest(function, names.iter().copied())) {
            (true, _) => "; it has no live deployment".to_string(),
            (false, Some(s)) => format!("; did you mean `{s}`? (names are case-sensitive)"),
            (false, None) => format!("; its functions: {}", names.join(", ")),
        };
        Err(EngineError::FunctionNotFound { project: project.to_string(), function: function.to_string(), hint })
    }

    /// The latest cron runs of a live cron function, newest first (an http function has none:
    /// an error that says where its output is).
    pub fn function_runs(&self, who: &Principal, project: &str, function: &str, limit: u32) -> Result<Vec<CronRunRow>> {
        let f = self.live_function(who, project, function)?;
        Self::require_cron(project, &f, "it has no cron runs")?;
        Ok(self.store.cron_runs(project, function, limit)?)
    }

    /// The names of a project's secrets.
    pub fn secrets(&self, who: &Principal, project: &str) -> Result<Vec<SecretInfo>> {
        self.owned_project(who, project)?;
        Ok(self.store.secrets(project)?.into_iter().map(|s| SecretInfo { name: s.name, updated_at: s.updated_at }).collect())
    }
}
