//! The engine: accepts deployments, runs them (checkout → manifest → build → go live),
//! switches routes and schedules, restores everything at start, and deletes projects.

pub mod auth;
pub mod build;
pub mod manifest;
pub mod runtime;
pub mod source;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;

use crate::engine::build::{SourceFacts};
use crate::config::ServerConfig;
use crate::infra::driver::{labels, BuildRequest, Driver, DriverError, Env, Limits};
use crate::api::error::ApiError;
use crate::dataplane::gateway::{Route, RouteTable};
use crate::engine::manifest::{Access, FunctionOptions, FunctionType, Manifest, ParseContext, MANIFEST_FILE};
use crate::names::{FunctionName, GitRef, ProjectName};
use crate::dataplane::pool::{PoolConfig, PoolManager, Revision};
use crate::engine::runtime::{TemplateVars, Templates, BUILD_DIR};
use crate::dataplane::scheduler::{CronJob, Scheduler};
use crate::engine::source::{SourceError, SourcePolicy};
use crate::infra::store::{BuildState, Enqueued, NewFunction, Store};

/// A deployment request, as received.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    pub repository: String,
    #[serde(default, rename = "ref")]
    pub git_ref: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// What a deployment request led to.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Submitted {
    pub project: String,
    pub deployment_id: i64,
    pub commit: String,
    pub status: SubmitStatus,
    /// The invoke key of a project this request created (shown this once).
    pub invoke_key: Option<String>,
}

/// Whether a deployment request queued a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubmitStatus {
    /// A build is queued (or already on its way for the same commit).
    Queued,
    /// The commit is live already; nothing was queued.
    Unchanged,
}

fn name_taken(name: &ProjectName) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "name_taken",
        format!("the project name `{name}` is taken by another user; deploy under another `name`"),
    )
}

pub struct Platform {
    pub metrics: Arc<crate::infra::metrics::Metrics>,
    pub store: Arc<Store>,
    pub driver: Arc<dyn Driver>,
    pub pools: PoolManager,
    pub routes: Arc<RouteTable>,
    pub scheduler: Scheduler,
    pub templates: Templates,
    pub config: ServerConfig,
    pub source_policy: SourcePolicy,
    pub secrets: crate::infra::secrets::SecretBox,
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

fn source_error(e: SourceError) -> ApiError {
    match e {
        SourceError::BadUrl(m) => ApiError::unprocessable("invalid_repository", m),
        SourceError::Timeout(..) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "repository_timeout", e.to_string()),
        SourceError::NoSuchRef { .. } => ApiError::unprocessable("ref_not_found", e.to_string()),
        _ => ApiError::unprocessable("repository_unreachable", e.to_string()),
    }
}

impl Platform {
    pub fn new(store: Arc<Store>, driver: Arc<dyn Driver>, templates: Templates, config: ServerConfig) -> anyhow::Result<Arc<Self>> {
        let pool_config = PoolConfig {
            queue_depth: config.queue_depth,
            queue_timeout: config.queue_timeout,
            log_bytes: config.log_bytes,
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

    /// Validates a request, resolves the commit, and queues the build unless it is live already.
    pub async fn submit(self: &Arc<Self>, req: DeployRequest, who: &crate::engine::auth::Principal) -> Result<Submitted, ApiError> {
        let url = source::parse_repository(&req.repository, &self.source_policy).map_err(source_error)?;
        let git_ref = req
            .git_ref
            .as_deref()
            .map(GitRef::parse)
            .transpose()
            .map_err(|e| ApiError::unprocessable("invalid_ref", e.to_string()))?;
        let name = match req.name.as_deref() {
            Some(n) => ProjectName::parse(n),
            None => ProjectName::from_repository(url.as_str()),
        }
        .map_err(|e| ApiError::unprocessable("invalid_name", e.to_string()))?;
        let existing = self.store.project(name.as_str())?;
        if let Some(p) = &existing {
            if !who.owns(p.owner.as_deref()) {
                return Err(name_taken(&name));
            }
        }
        let commit = source::resolve_commit(&url, git_ref.as_ref(), &self.source_policy).await.map_err(source_error)?;

        // Decided in one store transaction: two requests racing for a new project must not
        // both create it (only one invoke key can be the project's) or both queue one commit.
        // Not under the project lock: that is held by a running build, and answering must not wait for it.
        let (invoke_key, key_hash) = crate::engine::auth::new_invoke_key();
        let decided = self.store.enqueue_deployment(
            &crate::infra::store::EnqueueRequest {
                project: name.as_str(),
                repository: url.as_str(),
                git_ref: git_ref.as_ref().map(GitRef::as_str),
                commit: &commit,
                owner: &who.name,
                new_invoke_key_hash: key_hash,
            },
            |owner| who.owns(owner),
        )?;
        let submitted = |deployment_id, status, invoke_key| Submitted { project: name.to_string(), deployment_id, commit: commit.clone(), status, invoke_key };
        let (id, invoke_key) = match decided {
            Enqueued::NameTaken => return Err(name_taken(&name)),
            Enqueued::Unchanged(id) => return Ok(submitted(id, SubmitStatus::Unchanged, None)),
            Enqueued::Following(id) => return Ok(submitted(id, SubmitStatus::Queued, None)),
            Enqueued::Queued { id, created_project } => {
                if created_project {
                    self.routes.set_invoke_key(name.as_str(), &key_hash);
                }
                (id, created_project.then_some(invoke_key))
            }
        };
        tracing::info!(project = %name, deployment = id, commit = %commit, "deployment queued");
        let me = self.clone();
        let project = name.to_string();
        let commit_for_build = commit.clone();
        let removed = self.removal_token(&project);
        tokio::spawn(async move {
            let commit = commit_for_build;
            let lock = me.project_lock(&project);
            let run = async {
                let _one_at_a_time = unless_cancelled(&removed, lock.lock()).await?;
                me.run_deployment(id, &project, &url, &commit, git_ref.as_ref(), &removed).await
            };
            if let Err(message) = run.await {
                tracing::warn!(project = %project, deployment = id, error = %message, "deployment failed");
                if let Err(e) = me.store.fail_deployment(id, &message) {
                    tracing::error!(error = %e, "could not record a failed deployment");
                }
            }
        });
        Ok(Submitted { project: name.to_string(), deployment_id: id, commit, status: SubmitStatus::Queued, invoke_key })
    }

    fn log(&self, id: i64, line: &str) {
        if let Err(e) = self.store.append_deployment_log(id, line) {
            tracing::warn!(error = %e, "could not append to a deployment log");
        }
    }

    async fn run_deployment(
        self: &Arc<Self>,
        id: i64,
        project: &str,
        url: &source::RepoUrl,
        commit: &str,
        git_ref: Option<&GitRef>,
        removed: &tokio_util::sync::CancellationToken,
    ) -> Result<(), String> {
        let store_err = |e: crate::infra::store::StoreError| format!("internal store error: {e}");
        self.store.set_deployment_started(id).map_err(store_err)?;
        let work_root = self.config.data_dir.join("work");
        std::fs::create_dir_all(&work_root).map_err(|e| format!("cannot create {}: {e}", work_root.display()))?;
        let work = tempfile::Builder::new()
            .prefix(&format!("deploy-{id}-"))
            .tempdir_in(&work_root)
            .map_err(|e| format!("cannot create a work directory: {e}"))?;
        self.log(id, &format!("checking out {} at {commit}", url.as_str()));
        let (checkout, sha) = unless_cancelled(removed, source::checkout(url, commit, git_ref, work.path(), &self.source_policy))
            .await?
            .map_err(|e| e.to_string())?;
        let facts = SourceFacts::read(&checkout).map_err(|e| e.to_string())?;
        let manifest_path = checkout.join(MANIFEST_FILE);
        let text = match std::fs::symlink_metadata(&manifest_path) {
            Ok(m) if m.is_file() && m.len() <= 256 * 1024 => {
                std::fs::read_to_string(&manifest_path).map_err(|e| format!("cannot read {MANIFEST_FILE}: {e}"))?
            }
            Ok(m) if m.is_file() => return Err(format!("{MANIFEST_FILE} is larger than 256 KiB")),
            Ok(_) => return Err(format!("{MANIFEST_FILE} must be a regular file, not a link or directory")),
            Err(_) => {
                return Err(format!(
                    "the repository has no {MANIFEST_FILE} at its root (commit {}); add one that lists the functions, see the README",
                    &sha[..sha.len().min(12)]
                ))
            }
        };
        let runtimes = self.templates.runtimes();
        let manifest: Manifest = manifest::parse(
            &text,
            &ParseContext {
                known_runtimes: &runtimes,
                root_files: &facts.root_files,
                defaults: &self.config.scaling,
                caps: self.config.caps,
            },
        )
        .map_err(|e| e.to_string())?;
        let mut warnings = manifest.warnings.clone();
        self.store.set_deployment_building(id, &manifest.runtime, &warnings).map_err(store_err)?;
        for w in &warnings {
            self.log(id, &format!("warning: {w}"));
        }

        if manifest.runtime == "golang" {
            let names: Vec<&FunctionName> = manifest.functions.iter().map(|f| &f.name).collect();
            build::check_go_exports(&checkout, &names)?;
        }
        let base_images: Vec<&str> = match manifest.runtime.as_str() {
            "node" => vec![&self.config.node_image],
            "golang" => vec![&self.config.go_image, &self.config.run_image],
            _ => vec![],
        };
        for image in base_images {
            if !self.driver.image_exists(image).await.map_err(|e| e.to_string())? {
                return Err(DriverError::MissingImage(image.to_string()).to_string());
            }
        }

        let project_name = ProjectName::parse(project).map_err(|e| e.to_string())?;
        let images: Vec<String> =
            manifest.functions.iter().map(|f| build::image_tag(&project_name, &f.name, &sha)).collect();
        let scalings: Vec<_> = manifest.functions.iter().map(|f| f.scaling.clone()).collect();
        let rows: Vec<NewFunction<'_>> = manifest
            .functions
            .iter()
            .zip(&images)
            .zip(&scalings)
            .map(|((f, image), scaling)| NewFunction {
                name: f.name.as_str(),
                kind: f.kind.function_type(),
                schedule: f.kind.schedule(),
                env: &f.env,
                timeout_ms: f.timeout.as_millis() as u64,
                scaling,
                options: &f.options,
                image,
            })
            .collect();
        self.store.add_functions(id, &rows).map_err(store_err)?;

        let go_module = facts.go_module().unwrap_or_else(|| "eserveless.local/function".to_string());
        let mut built = Vec::new();
        for (f, image) in manifest.functions.iter().zip(&images) {
            let name = f.name.as_str();
            self.store.set_build_state(id, name, BuildState::Building, None).map_err(store_err)?;
            self.log(id, &format!("building {name} ({}) as {image}", f.kind.as_str()));
            let vars = TemplateVars {
                function: name.to_string(),
                kind: f.kind.function_type(),
                project: project.to_string(),
                commit: sha.clone(),
                node_image: self.config.node_image.clone(),
                go_image: self.config.go_image.clone(),
                run_image: self.config.run_image.clone(),
                port: crate::dataplane::pool::FUNCTION_PORT,
                has_package_json: facts.has_package_json,
                has_package_lock: facts.has_package_lock,
                has_go_mod: facts.go_mod.is_some(),
                go_module: go_module.clone(),
            };
            let result = async {
                let rendered = self.templates.render(&manifest.runtime, f.kind.as_str(), &vars).map_err(|e| {
                    let mut m = e.to_string();
                    if let Some(s) = std::error::Error::source(&e) {
                        m.push_str(&format!(": {s}"));
                    }
                    (m, String::new())
                })?;
                let checkout = checkout.clone();
                let (tar, ctx_warnings) = tokio::task::spawn_blocking(move || build::build_context(&checkout, &rendered))
                    .await
                    .map_err(|e| (e.to_string(), String::new()))?
                    .map_err(|e| (e.to_string(), String::new()))?;
                let req = BuildRequest {
                    context_tar: tar,
                    dockerfile: format!("{BUILD_DIR}/Dockerfile"),
                    tag: image.clone(),
                    labels: HashMap::from([
                        (labels::MANAGED.to_string(), "true".to_string()),
                        (labels::PROJECT.to_string(), project.to_string()),
                        (labels::FUNCTION.to_string(), name.to_string()),
                        (labels::REVISION.to_string(), id.to_string()),
                        (labels::COMMIT.to_string(), sha.clone()),
                    ]),
                    timeout: self.config.build_timeout,
                };
                // Dropping the build's stream on removal makes the engine stop the build.
                let outcome = unless_cancelled(removed, self.driver.build_image(req)).await.map_err(|m| (m, String::new()))?;
                let log = outcome.map_err(|e| match e {
                    DriverError::BuildFailed { message, log } => (message, log),
                    DriverError::BuildTimeout(d, log) => {
                        (format!("the build took longer than its limit of {}", humantime::format_duration(d)), log)
                    }
                    other => (other.to_string(), String::new()),
                })?;
                Ok::<_, (String, String)>((log, ctx_warnings))
            }
            .await;
            match result {
                Ok((log, ctx_warnings)) => {
                    self.store.set_build_state(id, name, BuildState::Built, Some(&log)).map_err(store_err)?;
                    built.push(image.clone());
                    if !ctx_warnings.is_empty() {
                        for w in &ctx_warnings {
                            if !warnings.contains(w) {
                                warnings.push(w.clone());
                            }
                        }
                        self.store.set_deployment_building(id, &manifest.runtime, &warnings).map_err(store_err)?;
                    }
                }
                Err((message, log)) => {
                    let full_log = if log.is_empty() { message.clone() } else { log };
                    self.store.set_build_state(id, name, BuildState::Failed, Some(&full_log)).map_err(store_err)?;
                    self.log(id, &format!("{name} failed to build"));
                    // Images of a failed deployment are never used: remove them.
                    for image in &built {
                        let _ = self.driver.remove_image(image).await;
                    }
                    let user_line = full_log
                        .lines()
                        .rev()
                        .find(|l| l.starts_with("eserveless:"))
                        .map(|l| format!("{message}\n{l}"))
                        .unwrap_or(message);
                    return Err(format!("function `{name}` failed to build: {user_line}"));
                }
            }
        }

        // Past this point the deployment goes live as one step: a removal waits for it.
        if removed.is_cancelled() {
            return Err(REMOVED_DURING_DEPLOY.to_string());
        }
        let previous = self.store.project(project).map_err(store_err)?.and_then(|p| p.live_deployment_id);
        self.activate(project, id, true).await.map_err(|e| format!("could not switch to the new deployment: {e}"))?;
        self.store.make_live(id).map_err(store_err)?;
        self.log(id, "live");
        tracing::info!(project, deployment = id, commit = %sha, "deployment live");
        // Keep the previous deployment's images for a rollback; remove older ones.
        if let Some(prev) = previous {
            self.remove_old_images(project, &[id, prev]).await;
        }
        Ok(())
    }

    async fn remove_old_images(&self, project: &str, keep: &[i64]) {
        let mut keep_images = Vec::new();
        for d in keep {
            if let Ok(fns) = self.store.functions(*d) {
                keep_images.extend(fns.into_iter().filter_map(|f| f.image));
            }
        }
        if let Ok(all) = self.store.project_images(project) {
            for image in all.into_iter().filter(|i| !keep_images.contains(i)) {
                let _ = self.driver.remove_image(&image).await;
            }
        }
    }

    /// Makes `deployment_id` the serving revision of `project`. With `prewarm`, functions that
    /// had live instances get one ready instance of the new revision before routes switch.
    pub async fn activate(self: &Arc<Self>, project: &str, deployment_id: i64, prewarm: bool) -> anyhow::Result<()> {
        let functions = self.store.functions(deployment_id)?;
        let secrets = self.secret_env(project)?;
        let old = self.routes.project(project);
        let mut routes = HashMap::new();
        let mut jobs = Vec::new();
        for f in functions {
            let image = f.image.clone().ok_or_else(|| anyhow::anyhow!("function {} has no image", f.name))?;
            // Secrets last: an operator's secret wins over a repository's `meta` of the same name.
            let mut env: Vec<String> = f.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            env.extend(secrets.iter().cloned());
            let env = Env(env);
            let limits = self.function_limits(&f.options);
            let timeout = std::time::Duration::from_millis(f.timeout_ms);
            if f.kind == FunctionType::Cron {
                jobs.push(CronJob {
                    project: project.to_string(),
                    function: f.name.clone(),
                    deployment_id,
                    image,
                    env,
                    limits,
                    timeout,
                    schedule: f.schedule.clone().unwrap_or_default(),
                });
                routes.insert(f.name.clone(), Route::Cron);
            } else {
                let pool = self.pools.pool(Revision {
                    project: project.to_string(),
                    function: f.name.clone(),
                    deployment_id,
                    image,
                    env,
                    limits,
                    private: f.options.auth == Access::Private,
                    timeout,
                    scaling: f.scaling.clone(),
                });
                let had_instances = matches!(
                    old.as_ref().and_then(|o| o.get(&f.name)),
                    Some(Route::Http(p)) if p.has_instances()
                );
                if prewarm && had_instances {
                    if let Err(e) = pool.prewarm().await {
                        tracing::warn!(project, function = %f.name, error = %e, "new revision failed to start ahead of traffic");
                    }
                }
                routes.insert(f.name.clone(), Route::Http(pool));
            }
        }
        if let Some(h) = self.store.invoke_key_hash(project)? {
            self.routes.set_invoke_key(project, &h);
        }
        let old = self.routes.set_project(project, routes);
        for route in old.iter().flat_map(|o| o.values()) {
            if let Route::Http(pool) = route {
                pool.retire();
            }
        }
        self.scheduler.set_project(project, jobs);
        Ok(())
    }

    /// The project's secrets as `KEY=VALUE`, opened for a container's environment.
    fn secret_env(&self, project: &str) -> anyhow::Result<Vec<String>> {
        self.store
            .secrets(project)?
            .into_iter()
            .map(|s| Ok(format!("{}={}", s.name, self.secrets.open(project, &s.name, &s.sealed)?)))
            .collect()
    }

    /// A function's container limits: its manifest's asks, within the operator's ceilings
    /// (which may have been lowered since it was deployed).
    fn function_limits(&self, o: &FunctionOptions) -> Limits {
        let mut l = self.config.limits.clone();
        if let Some(m) = o.memory_bytes {
            l.memory_bytes = m.min(self.config.caps.max_memory_bytes) as i64;
        }
        if let Some(c) = o.cpu_millis {
            l.nano_cpus = i64::from(c.min(self.config.caps.max_cpu_millis)) * 1_000_000;
        }
        l
    }

    /// Sets and removes secrets of a project, then recycles its running instances so they
    /// see the change: new instances start first where old ones were serving, and the old ones
    /// finish their requests before they go (as in a redeploy).
    pub async fn change_secrets(self: &Arc<Self>, project: &str, set: &[(String, String)], remove: &[String]) -> Result<(), ApiError> {
        for (name, value) in set {
            crate::infra::secrets::validate_name(name).map_err(|e| ApiError::unprocessable(e.code(), e.to_string()))?;
            crate::infra::secrets::validate_value(name, value).map_err(|e| ApiError::unprocessable(e.code(), e.to_string()))?;
        }
        let lock = self.project_lock(project);
        let _held = lock.lock().await;
        let existing: Vec<String> = self.store.secrets(project)?.into_iter().map(|s| s.name).collect();
        let after = existing.iter().chain(set.iter().map(|(n, _)| n)).collect::<std::collections::BTreeSet<_>>().len();
        if after > crate::infra::secrets::MAX_PER_PROJECT {
            return Err(ApiError::unprocessable(
                "too_many_secrets",
                format!("a project may hold at most {} secrets; remove some first", crate::infra::secrets::MAX_PER_PROJECT),
            ));
        }
        for name in remove {
            if !self.store.delete_secret(project, name)? {
                return Err(ApiError::not_found("secret_not_found", format!("project `{project}` has no secret `{name}`")));
            }
        }
        for (name, value) in set {
            self.store.put_secret(project, name, &self.secrets.seal(project, name, value))?;
        }
        if let Some(live) = self.store.project(project)?.and_then(|p| p.live_deployment_id) {
            self.activate(project, live, true)
                .await
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "restart_failed",
                        format!("the secrets are saved, but the functions could not be restarted with them: {e}"),
                    )
                })?;
        }
        tracing::info!(project, set = set.len(), removed = remove.len(), "secrets changed; instances recycled");
        Ok(())
    }

    /// Makes a new invoke key for the project (replacing any old one at once) and returns it.
    pub fn rotate_invoke_key(&self, project: &str) -> Result<String, ApiError> {
        let (key, hash) = crate::engine::auth::new_invoke_key();
        if !self.store.set_invoke_key_hash(project, &hash)? {
            return Err(ApiError::not_found("project_not_found", format!("no project `{project}`")));
        }
        self.routes.set_invoke_key(project, &hash);
        Ok(key)
    }

    /// Removes a project's containers, images, schedules and records.
    pub async fn delete(self: &Arc<Self>, project: &str) -> Result<serde_json::Value, ApiError> {
        if self.store.project(project)?.is_none() {
            return Err(ApiError::not_found("project_not_found", format!("no project `{project}`")));
        }
        // Builds in progress or queued for this project stop now; a deploy after this one
        // gets a fresh token.
        if let Some(t) = self.project_removals.lock().unwrap_or_else(|p| p.into_inner()).remove(project) {
            t.cancel();
        }
        let lock = self.project_lock(project);
        let _held = lock.lock().await;
        self.scheduler.remove_project(project);
        let mut containers = 0;
        if let Some(old) = self.routes.remove_project(project) {
            for route in old.values() {
                if let Route::Http(pool) = route {
                    containers += pool.shutdown().await;
                }
            }
        }
        match self.driver.list_managed().await {
            Ok(list) => {
                for c in list.into_iter().filter(|c| c.labels.get(labels::PROJECT).map(String::as_str) == Some(project)) {
                    if self.driver.remove(&c.id).await.is_ok() {
                        containers += 1;
                    }
                }
            }
            Err(e) => return Err(ApiError::unavailable("docker_unavailable", e.to_string())),
        }
        let images = self.store.project_images(project)?;
        let mut removed_images = 0;
        for image in &images {
            match self.driver.remove_image(image).await {
                Ok(true) => removed_images += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(image, error = %e, "could not remove an image"),
            }
        }
        self.store.delete_project(project)?;
        tracing::info!(project, containers, images = removed_images, "project deleted");
        Ok(serde_json::json!({ "deleted": project, "containers_removed": containers, "images_removed": removed_images }))
    }
}
