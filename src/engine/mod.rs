//! The engine: accepts deployments, runs them (checkout → manifest → build → go live),
//! switches routes and schedules, restores everything at start, and deletes projects.
//! It speaks no HTTP: methods return typed results or an [`EngineError`].
//!
//! One type, [`Platform`], split by operation: `deploy` (running a deployment), `activate`
//! (going live), `history` (deployment history, rollback), `cron` (runs by hand), `delete`,
//! `access` (users, tokens, authentication), `views` (read-only answers).

pub(crate) mod access;
mod activate;
pub mod auth;
pub(crate) mod build;
mod cron;
mod delete;
pub(crate) mod deploy;
pub mod logs;
pub(crate) mod error;
pub(crate) mod history;
pub mod runtime;
pub(crate) mod source;
mod submit;
pub mod upload;
pub(crate) mod views;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::ServerConfig;
use crate::dataplane::gateway::{Gateway, RouteTable};
use crate::dataplane::pool::{PoolConfig, PoolManager};
use crate::dataplane::scheduler::Scheduler;
use crate::engine::runtime::Templates;
use crate::engine::source::SourcePolicy;
use crate::infra::driver::{Driver, DriverError};
use crate::infra::store::{EnqueueRequest, Store};
use crate::names::{GitRef, ProjectName};

pub use crate::engine::auth::Principal;
pub use crate::engine::delete::Deleted;
pub use crate::engine::error::EngineError;
pub use crate::engine::submit::UploadRequest;
pub use crate::infra::store::SourceKind;

/// A deployment request, as received.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// A git URL (`https://host/owner/repo`) or `owner/repo`.
    #[schema(min_length = 1)]
    pub repository: String,
    /// A branch, tag or commit; default: the repository's default branch.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 255)]
    pub git_ref: Option<String>,
    /// The project's name; default: from the repository's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub name: Option<String>,
}

/// What a deployment request led to.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Submitted {
    pub project: String,
    pub deployment_id: i64,
    /// The git commit (an upload's checkout HEAD; empty for an upload of a plain directory).
    pub commit: String,
    pub source: SourceKind,
    /// Uploads of a git checkout: whether it had uncommitted changes.
    pub dirty: Option<bool>,
    /// Uploads: `sha256:<hex>` of the tar.
    pub digest: Option<String>,
    pub status: SubmitStatus,
    /// The project's invoke key, when this request issued it: the first deployment whose
    /// manifest has `auth: private` functions (shown this once).
    pub invoke_key: Option<String>,
}

/// Whether a deployment request queued a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SubmitStatus {
    /// A build is queued (or already on its way for the same commit).
    Queued,
    /// The commit is live already; nothing was queued.
    Unchanged,
}

/// The engine. Opaque: the API asks it to act and reads typed answers, and never reaches
/// the store, the driver, the pools or the routes itself.
pub struct Platform {
    metrics: Arc<crate::infra::metrics::Metrics>,
    store: Arc<Store>,
    driver: Arc<dyn Driver>,
    pools: PoolManager,
    routes: Arc<RouteTable>,
    scheduler: Scheduler,
    templates: Templates,
    config: ServerConfig,
    source_policy: SourcePolicy,
    secrets: crate::infra::secrets::SecretBox,
    project_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Cancelled when the project is removed: its queued and running deployments stop at once
    /// instead of finishing a build nobody wants (and holding `rm` until they do).
    project_removals: Mutex<HashMap<String, tokio_util::sync::CancellationToken>>,
}

/// Why a deployment stopped when its project was removed.
const REMOVED_DURING_DEPLOY: &str = "the project was removed while this deployment was in progress";

/// Runs `f` unless `cancel` fires first.
async fn unless_cancelled<T>(cancel: &tokio_util::sync::CancellationToken, f: impl std::future::Future<Output = T>) -> Result<T, String> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(REMOVED_DURING_DEPLOY.to_string()),
        r = f => Ok(r),
    }
}

/// How often the engine's containers are compared with the pools, events or not.
const RECONCILE_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

impl Platform {
    pub fn new(store: Arc<Store>, driver: Arc<dyn Driver>, templates: Templates, config: ServerConfig) -> anyhow::Result<Arc<Self>> {
        let pool_config = PoolConfig {
            queue_depth: config.queue_depth,
            queue_timeout: config.queue_timeout,
            log_bytes: config.log_bytes,
            upgrades: config.upgrades,
            ..PoolConfig::default()
        };
        let secrets = crate::infra::secrets::SecretBox::open_dir(&config.data_dir)?;
        let metrics = Arc::new(crate::infra::metrics::Metrics::default());
        let pools = PoolManager::new(driver.clone(), store.clone(), pool_config, metrics.clone());
        let source_policy = SourcePolicy {
            allow_local: config.allow_local_repos,
            allow_private: config.allow_private_repos,
            allow_submodules: config.allow_submodules,
            clone_timeout: config.clone_timeout,
            ..SourcePolicy::default()
        };
        Ok(Arc::new(Platform {
            metrics,
            scheduler: Scheduler::new(driver.clone(), store.clone(), config.log_bytes),
            routes: Arc::new(RouteTable::default()),
            store,
            driver,
            pools,
            templates,
            config,
            source_policy,
            secrets,
            project_locks: Mutex::new(HashMap::new()),
            project_removals: Mutex::new(HashMap::new()),
        }))
    }

    fn removal_token(&self, project: &str) -> tokio_util::sync::CancellationToken {
        self.project_removals.lock().unwrap_or_else(|p| p.into_inner()).entry(project.to_string()).or_default().clone()
    }

    fn project_lock(&self, project: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.project_locks.lock().unwrap_or_else(|p| p.into_inner()).entry(project.to_string()).or_default().clone()
    }

    /// Brings back what was live before a restart.
    pub async fn restore(self: &Arc<Self>) -> anyhow::Result<()> {
        // Sources (checkouts, uploads) a previous run left behind: the data directory is locked
        // to this server, and nothing is accepted before this returns.
        let work = self.config.data_dir.join("work");
        if let Err(e) = std::fs::remove_dir_all(&work) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %work.display(), error = %e, "cannot remove the previous run's work directory");
            }
        }
        for id in self.store.unfinished_deployments()? {
            self.store.fail_deployment(id, "the server stopped while this deployment was in progress; deploy again")?;
        }
        let abandoned = self.store.abandon_running_cron_runs()?;
        if abandoned > 0 {
            tracing::info!(abandoned, "cron runs interrupted by the restart marked failed");
        }
        for p in self.store.projects()? {
            if let Some(id) = p.live_deployment_id {
                self.activate(&p.name, id, false).await?;
            }
        }
        let (adopted, removed) = self.pools.adopt().await?;
        tracing::info!(adopted, removed, "containers from the previous run reconciled");
        self.pools.spawn_background();
        let me = self.clone();
        tokio::spawn(async move { me.reconcile_loop().await });
        Ok(())
    }

    /// Keeps the engine's containers and the pools' view of them in agreement: after the event
    /// stream comes back (events may have been missed: an engine restart stops every
    /// container), and every [`RECONCILE_EVERY`] in case a removal failed.
    async fn reconcile_loop(self: Arc<Self>) {
        let reconnected = self.pools.reconnected();
        loop {
            tokio::select! {
                _ = reconnected.notified() => {}
                _ = tokio::time::sleep(RECONCILE_EVERY) => {}
            }
            if let Err(e) = self.reconcile().await {
                tracing::debug!(error = %e, "reconciliation with the engine postponed");
            }
        }
    }

    /// Removes this server's containers that stopped running (their output kept first), and
    /// takes out of the pools every instance whose container is no longer running.
    pub async fn reconcile(&self) -> Result<(), DriverError> {
        // Taken before listing: an instance started after the list was made is not judged by it.
        let known = self.pools.instance_ids();
        let list = self.driver.list_managed().await?;
        let claimed = self.scheduler.active_containers();
        let mut removed = 0;
        for c in list.iter().filter(|c| c.stopped && !claimed.contains(&c.id)) {
            self.pools.remove_stopped(c).await;
            removed += 1;
        }
        let running: std::collections::HashSet<&str> = list.iter().filter(|c| c.running).map(|c| c.id.as_str()).collect();
        let mut evicted = 0;
        for id in known.iter().filter(|id| !running.contains(id.as_str())) {
            self.pools.on_container_gone(id, "not running on the engine");
            evicted += 1;
        }
        if removed + evicted > 0 {
            tracing::info!(removed, evicted, "reconciled with the engine");
        }
        Ok(())
    }

    /// Validates a request, resolves the commit, and queues the build unless it is live
    /// already. The commit is fetched and its manifest checked first: a request that cannot
    /// deploy is refused (422) and records nothing, not even its project.
    pub async fn submit(self: &Arc<Self>, req: DeployRequest, who: &Principal) -> error::Result<Submitted> {
        let url = source::parse_repository(&req.repository, &self.source_policy)?;
        let git_ref = req
            .git_ref
            .as_deref()
            .map(GitRef::parse)
            .transpose()
            .map_err(|e| EngineError::invalid("invalid_ref", e.to_string()))?;
        let name = match req.name.as_deref() {
            Some(n) => ProjectName::parse(n),
            None => ProjectName::from_repository(url.as_str()),
        }
        .map_err(|e| EngineError::invalid("invalid_name", e.to_string()))?;
        self.check_name_free(&name, who)?;
        let commit = source::resolve_commit(&url, git_ref.as_ref(), &self.source_policy).await?;
        let enqueue = |commit| EnqueueRequest {
            project: name.as_str(),
            repository: url.as_str(),
            git_ref: git_ref.as_ref().map(GitRef::as_str),
            commit,
            owner: &who.name,
            source: SourceKind::Git,
            digest: None,
            dirty: None,
            invoke_key_hash: None,
        };
        // Live already, or on its way: nothing to fetch.
        if let Some(done) = self.shortcut(&enqueue(&commit), who)? {
            return Ok(done);
        }
        let work = self.work_dir("checkout-").map_err(|e| self.or_full(e))?;
        let (dir, sha) = source::checkout(&url, &commit, git_ref.as_ref(), work.path(), &self.source_policy)
            .await
            .map_err(|e| self.or_full(e.into()))?;
        let described = format!("checked out {} at {sha}", url.as_str());
        let prepared = self.prepare(work, dir, sha.clone(), described)?;
        self.enqueue_and_start(enqueue(&sha), prepared, who)
    }

    /// Sets and removes secrets of a project, then recycles its running instances so they
    /// see the change: new instances start first where old ones were serving, and the old ones
    /// finish their requests before they go (as in a redeploy).
    pub async fn change_secrets(self: &Arc<Self>, project: &str, set: &[(String, String)], remove: &[String]) -> error::Result<()> {
        for (name, value) in set {
            crate::infra::secrets::validate_name(name).map_err(|m| EngineError::invalid(m.code(), m.to_string()))?;
            crate::infra::secrets::validate_value(name, value).map_err(|m| EngineError::invalid(m.code(), m.to_string()))?;
        }
        let lock = self.project_lock(project);
        let _held = lock.lock().await;
        // Removed while this request waited for the lock (`delete` holds it): a 404, not a
        // store error on the secret's missing project.
        if self.store.project(project)?.is_none() {
            return Err(EngineError::project_not_found(project));
        }
        let existing: Vec<String> = self.store.secrets(project)?.into_iter().map(|s| s.name).collect();
        let after = existing.iter().chain(set.iter().map(|(n, _)| n)).collect::<std::collections::BTreeSet<_>>().len();
        if after > crate::infra::secrets::MAX_PER_PROJECT {
            return Err(EngineError::invalid(
                "too_many_secrets",
                format!("a project may hold at most {} secrets; remove some first", crate::infra::secrets::MAX_PER_PROJECT),
            ));
        }
        for name in remove {
            if !self.store.delete_secret(project, name)? {
                return Err(EngineError::SecretNotFound { project: project.to_string(), secret: name.clone() });
            }
        }
        for (name, value) in set {
            self.store.put_secret(project, name, &self.secrets.seal(project, name, value))?;
        }
        if let Some(live) = self.store.project(project)?.and_then(|p| p.live_deployment_id) {
            self.activate(project, live, true)
                .await
                .map_err(|e| EngineError::RestartFailed(e.into()))?;
        }
        tracing::info!(project, set = set.len(), removed = remove.len(), "secrets changed; instances recycled");
        Ok(())
    }

    /// Makes a new invoke key for the project (replacing any old one at once) and returns it.
    pub fn rotate_invoke_key(&self, project: &str) -> error::Result<String> {
        let (key, hash) = crate::engine::auth::new_invoke_key();
        if !self.store.set_invoke_key_hash(project, &hash)? {
            return Err(EngineError::project_not_found(project));
        }
        self.routes.set_invoke_key(project, &hash);
        Ok(key)
    }

    /// The gateway that serves this engine's routes.
    pub fn gateway(&self) -> Gateway {
        Gateway::new(self.routes.clone())
    }

    /// The metrics in the OpenMetrics text format.
    pub fn metrics_text(&self) -> String {
        self.metrics.render()
    }

    /// Whether the container engine answers and the data directory has room.
    pub async fn health(&self) -> Health {
        Health {
            docker: self.driver.ping().await.err().map(|e| e.to_string()),
            storage: crate::infra::datadir::storage_problem(&self.config.data_dir),
        }
    }
}

/// What is wrong with the server's dependencies; `None` where all is well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub docker: Option<String>,
    pub storage: Option<String>,
}

impl Health {
    pub fn ok(&self) -> bool {
        self.docker.is_none() && self.storage.is_none()
    }
}
