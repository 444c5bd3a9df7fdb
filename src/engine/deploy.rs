//! Running one deployment, step by step: check out the commit, read its manifest, record its
//! functions, build their images, then go live. Each step's failure is the message recorded
//! on the deployment (what the user reads with `eserveless status`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::engine::build::{self, SourceFacts};
use crate::manifest::{self, FunctionSpec, Manifest, ParseContext, MANIFEST_FILE};
use crate::engine::runtime::{FunctionVar, TemplateError, TemplateVars, BUILD_DIR, CACHE_STAGE, DEPS_STAGE, TOOLCHAIN_FILE};
use crate::engine::{unless_cancelled, Platform, REMOVED_DURING_DEPLOY};
use crate::infra::driver::{labels, BuildRequest, DriverError, LineSink};
use crate::infra::store::{BuildState, NewFunction, StoreError};
use crate::names::{FunctionName, ProjectName};

/// The message recorded when the store fails mid-deployment.
fn store_err(e: StoreError) -> String {
    format!("internal store error: {e}")
}

/// The largest manifest read: a manifest is a short list of functions.
const MAX_MANIFEST_BYTES: u64 = 256 * 1024;

/// A source on disk: a checked-out commit, or an unpacked upload (whose `sha` is its
/// content digest, so that its images are tagged by content).
pub(super) struct Checkout {
    pub(super) dir: PathBuf,
    pub(super) sha: String,
    pub(super) facts: SourceFacts,
}

/// A source on disk with its manifest read (`engine/submit.rs` makes it when it accepts a
/// request): what a queued deployment builds.
pub(super) struct Prepared {
    /// Removed with the deployment's job.
    pub(super) _work: tempfile::TempDir,
    pub(super) checkout: Checkout,
    pub(super) manifest: Manifest,
    /// The deployment log's first line.
    pub(super) described: String,
}

/// One deployment's build: what every build step of it needs.
struct Job<'a> {
    id: i64,
    project: &'a str,
    checkout: &'a Checkout,
    manifest: &'a Manifest,
    /// The functions' image tags, in manifest order.
    images: &'a [String],
    removed: &'a CancellationToken,
}

/// A function's image build failed: the short message and the build's log (may be empty).
struct BuildFailure {
    message: String,
    log: String,
}

impl BuildFailure {
    fn message(message: impl Into<String>) -> Self {
        BuildFailure { message: message.into(), log: String::new() }
    }
}

/// The labels of a deployment's image (of a function's, with `function`).
fn image_labels(id: i64, project: &str, function: Option<&str>, sha: &str) -> HashMap<String, String> {
    let mut labels = HashMap::from([
        (labels::MANAGED.to_string(), "true".to_string()),
        (labels::PROJECT.to_string(), project.to_string()),
        (labels::REVISION.to_string(), id.to_string()),
        (labels::COMMIT.to_string(), sha.to_string()),
    ]);
    if let Some(f) = function {
        labels.insert(labels::FUNCTION.to_string(), f.to_string());
    }
    labels
}

/// Moves a build's labels from the engine's build options into one `LABEL` line at the end
/// of the rendered Dockerfile: the legacy builder makes a step (a container and a commit,
/// about 0.1 s) of each label it is given; one line is one step.
fn labels_into_dockerfile(rendered: &mut [(std::path::PathBuf, String)], req: &mut BuildRequest) {
    if let Some((_, text)) = rendered.iter_mut().find(|(p, _)| p.as_os_str() == "Dockerfile") {
        text.push_str(&build::label_line(&req.labels));
        req.labels.clear();
    }
}

/// A template that does not render, as a build failure.
fn template_failure(e: TemplateError) -> BuildFailure {
    let mut m = e.to_string();
    if let Some(s) = std::error::Error::source(&e) {
        m.push_str(&format!(": {s}"));
    }
    BuildFailure::message(m)
}

/// The build's message, followed by the last `eserveless:` line of its log when it has one.
fn user_line(message: &str, log: &str) -> String {
    log.lines()
        .rev()
        .find(|l| l.starts_with("eserveless:"))
        .map(|l| format!("{message}\n{l}"))
        .unwrap_or_else(|| message.to_string())
}

impl Platform {
    pub(super) fn log(&self, id: i64, line: &str) {
        if let Err(e) = self.store.append_deployment_log(id, line) {
            tracing::warn!(error = %e, "could not append to a deployment log");
        }
    }

    /// Builds a deployment whose source is on disk and whose manifest was read when it was
    /// accepted ([`Prepared`]), and makes it live.
    pub(super) async fn run_deployment(
        self: &Arc<Self>,
        id: i64,
        project: &str,
        prepared: Prepared,
        removed: &CancellationToken,
    ) -> Result<(), String> {
        // The work directory goes when this function returns, whatever the outcome.
        let Prepared { _work, checkout, manifest, described } = prepared;
        self.store.set_deployment_started(id).map_err(store_err)?;
        self.log(id, &described);
        let mut warnings = manifest.warnings.clone();
        self.store.set_deployment_building(id, &manifest.runtime, &warnings).map_err(store_err)?;
        for w in &warnings {
            self.log(id, &format!("warning: {w}"));
        }
        if manifest.runtime == "golang" {
            let names: Vec<&FunctionName> = manifest.functions.iter().map(|f| &f.name).collect();
            build::check_go_exports(&checkout.dir, &names)?;
        }
        self.check_base_images(&manifest).await?;
        self.check_fits(&manifest).await?;
        let images = self.record_functions(id, project, &checkout.sha, &manifest)?;
        let job = Job { id, project, checkout: &checkout, manifest: &manifest, images: &images, removed };
        self.build_functions(&job, &mut warnings).await?;
        self.go_live(id, project, &checkout.sha, removed).await
    }

    /// Reads and parses the manifest at the checkout's root.
    pub(super) fn read_manifest(&self, checkout: &Checkout) -> Result<Manifest, String> {
        let missing = format!("there is no {MANIFEST_FILE} at the root of the source");
        read_manifest(&checkout.dir, &missing, &self.templates, &checkout.facts.root_files, &self.config.scaling, self.config.caps)
    }

    /// Fails early, before any build, when a function asks more than the largest machine it
    /// could run on has: it would never start, and each request would say so only then.
    async fn check_fits(&self, manifest: &Manifest) -> Result<(), String> {
        let largest = self.driver.largest_node().await.map_err(|e| e.to_string())?;
        match largest {
            Some(node) => fits(manifest, &self.config.limits, &node),
            None => Ok(()),
        }
    }

    /// Fails early, before any build, when a base image the runtime needs is missing.
    async fn check_base_images(&self, manifest: &Manifest) -> Result<(), String> {
        let base_images: Vec<&str> = match manifest.runtime.as_str() {
            "node" => vec![&self.config.node_image],
            "golang" => vec![&self.config.go_image, &self.config.run_image],
            "python" => vec![&self.config.python_image],
            _ => vec![],
        };
        for image in base_images {
            if !self.driver.image_exists(image).await.map_err(|e| e.to_string())? {
                return Err(DriverError::MissingImage(image.to_string()).to_string());
            }
        }
        Ok(())
    }

    /// Records the deployment's functions with their image tags; returns the tags in manifest order.
    fn record_functions(&self, id: i64, project: &str, sha: &str, manifest: &Manifest) -> Result<Vec<String>, String> {
        let project_name = ProjectName::parse(project).map_err(|e| e.to_string())?;
        let images: Vec<String> =
            manifest.functions.iter().map(|f| build::image_tag(&project_name, &f.name, sha)).collect();
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
                timeout_ms: u64::try_from(f.timeout.as_millis()).unwrap_or(u64::MAX),
                scaling,
                options: &f.options,
                image,
            })
            .collect();
        self.store.add_functions(id, &rows).map_err(store_err)?;
        Ok(images)
    }

    /// The template variables every image of this deployment shares.
    fn template_vars(&self, project: &str, checkout: &Checkout, manifest: &Manifest) -> TemplateVars {
        let facts = &checkout.facts;
        let functions: Vec<FunctionVar> =
            manifest.functions.iter().map(|f| FunctionVar { name: f.name.to_string(), kind: f.kind.function_type() }).collect();
        TemplateVars {
            function: String::new(),
            kind: crate::manifest::FunctionType::Http,
            project: project.to_string(),
            commit: checkout.sha.clone(),
            node_image: self.config.node_image.clone(),
            go_image: self.config.go_image.clone(),
            run_image: self.config.run_image.clone(),
            python_image: self.config.python_image.clone(),
            port: crate::dataplane::pool::FUNCTION_PORT,
            has_package_json: facts.has_package_json,
            has_package_lock: facts.has_package_lock,
            has_go_mod: facts.go_mod.is_some(),
            go_module: facts.go_module().unwrap_or_else(|| "eserveless.local/function".to_string()),
            has_requirements: facts.has_file("requirements.txt"),
            has_pyproject: facts.has_file("pyproject.toml"),
            has_http: functions.iter().any(|f| f.kind == crate::manifest::FunctionType::Http),
            functions,
            base_image: String::new(),
            cache_image: String::new(),
            deps_seed: String::new(),
            toolchain_image: String::new(),
        }
    }

    /// Builds the deployment's images. A runtime with a `base/` set builds one shared image
    /// (its `cache` stage first, kept for the next deployment), then each function's thin
    /// image on top, in parallel; another runtime builds one full image per function, in
    /// parallel. On the first failure the images built so far are removed and the deployment
    /// fails with the build's own `eserveless:` line for the user.
    async fn build_functions(&self, job: &Job<'_>, warnings: &mut Vec<String>) -> Result<(), String> {
        let Job { id, project, checkout, manifest, images, .. } = *job;
        if manifest.runtime == manifest::CONTAINER_RUNTIME {
            return self.build_own_images(job, warnings).await;
        }
        let mut vars = self.template_vars(project, checkout, manifest);
        let mut shared_built = Vec::new();
        let two_phase = self.templates.has_base(&manifest.runtime);
        if two_phase {
            for f in &manifest.functions {
                self.store.set_build_state(id, f.name.as_str(), BuildState::Building, None).map_err(store_err)?;
            }
            match self.build_base(job, &mut vars).await {
                Ok((base, ctx_warnings)) => {
                    self.add_warnings(id, manifest, warnings, ctx_warnings)?;
                    vars.base_image = base.clone();
                    shared_built.push(base);
                }
                Err(BuildFailure { message, log }) => {
                    let full_log = if log.is_empty() { message.clone() } else { log };
                    let line = user_line(&message, &full_log);
                    // The functions the check names failed; the others were stopped with them.
                    let named: Vec<&str> = manifest
                        .functions
                        .iter()
                        .map(|f| f.name.as_str())
                        .filter(|n| line.contains(&format!("\"{n}\"")))
                        .collect();
                    for f in &manifest.functions {
                        let name = f.name.as_str();
                        let state = if named.is_empty() || named.contains(&name) { BuildState::Failed } else { BuildState::Cancelled };
                        self.store.set_build_state(id, name, state, Some(&full_log)).map_err(store_err)?;
                    }
                    self.log(id, "the shared image failed to build");
                    return Err(match named.as_slice() {
                        [one] => format!("function `{one}` failed to build: {line}"),
                        _ => format!("the build failed: {line}"),
                    });
                }
            }
        }
        let vars = &vars;
        let limit = tokio::sync::Semaphore::new(self.config.build_parallelism.max(1));
        let builds = manifest.functions.iter().zip(images).map(|(f, image)| {
            let limit = &limit;
            async move {
                let _permit = limit.acquire().await.map_err(|_| BuildFailure::message("the build queue closed"))?;
                let name = f.name.as_str();
                if !two_phase {
                    // (With a shared image, every function has been `building` since it began.)
                    self.store.set_build_state(id, name, BuildState::Building, None).map_err(|e| BuildFailure::message(store_err(e)))?;
                }
                self.log(id, &format!("building {name} ({}) as {image}", f.kind.as_str()));
                let mut vars = vars.clone();
                vars.function = name.to_string();
                vars.kind = f.kind.function_type();
                self.build_function(job, f, image, &vars, !two_phase).await
            }
        });
        let results = futures_util::future::join_all(builds).await;
        let mut built = Vec::new();
        let mut failure = None;
        for ((f, image), result) in manifest.functions.iter().zip(images).zip(results) {
            let name = f.name.as_str();
            match result {
                Ok((log, ctx_warnings)) => {
                    self.store.set_build_state(id, name, BuildState::Built, Some(&log)).map_err(store_err)?;
                    built.push(image.clone());
                    self.add_warnings(id, manifest, warnings, ctx_warnings)?;
                }
                Err(BuildFailure { message, log }) => {
                    let full_log = if log.is_empty() { message.clone() } else { log };
                    self.store.set_build_state(id, name, BuildState::Failed, Some(&full_log)).map_err(store_err)?;
                    self.log(id, &format!("{name} failed to build"));
                    if failure.is_none() {
                        failure = Some(format!("function `{name}` failed to build: {}", user_line(&message, &full_log)));
                    }
                }
            }
        }
        if let Some(failure) = failure {
            // Images of a failed deployment are never used: remove them.
            for image in built.iter().chain(&shared_built) {
                let _ = self.driver.remove_image(image).await;
            }
            return Err(failure);
        }
        Ok(())
    }

    /// Builds each function of a `container` project from the repository's own Dockerfile,
    /// one after the other: functions that share a Dockerfile share its layers, so every build
    /// after the first is taken from the cache (it differs only in its labels).
    async fn build_own_images(&self, job: &Job<'_>, warnings: &mut Vec<String>) -> Result<(), String> {
        let Job { id, project, checkout, manifest, images, removed } = *job;
        let dir = checkout.dir.clone();
        let (tar, ctx_warnings) = tokio::task::spawn_blocking(move || build::own_dockerfile_context(&dir))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        self.add_warnings(id, manifest, warnings, ctx_warnings)?;
        let mut built = Vec::new();
        for (f, image) in manifest.functions.iter().zip(images) {
            let name = f.name.as_str();
            let dockerfile = f.dockerfile.clone().unwrap_or_else(|| manifest::DEFAULT_DOCKERFILE.to_string());
            self.store.set_build_state(id, name, BuildState::Building, None).map_err(store_err)?;
            self.log(id, &format!("building {name} ({}) from {dockerfile} as {image}", f.kind.as_str()));
            let result = match std::fs::symlink_metadata(checkout.dir.join(&dockerfile)) {
                Ok(m) if m.is_file() => {
                    let mut req = self.build_request(id, project, Some(name), &checkout.sha, tar.clone(), image, None, true);
                    req.dockerfile = dockerfile.clone();
                    self.run_build(req, removed).await
                }
                _ => Err(BuildFailure::message(format!(
                    "eserveless: {dockerfile} is not a file in the repository at commit {}; add it, or point `dockerfile:` of `{name}` in {MANIFEST_FILE} at the right one",
                    &checkout.sha[..checkout.sha.len().min(12)]
                ))),
            };
            match result {
                Ok(log) => {
                    self.store.set_build_state(id, name, BuildState::Built, Some(&log)).map_err(store_err)?;
                    built.push(image.clone());
                }
                Err(BuildFailure { message, log }) => {
                    let full_log = if log.is_empty() { message.clone() } else { log };
                    self.store.set_build_state(id, name, BuildState::Failed, Some(&full_log)).map_err(store_err)?;
                    self.log(id, &format!("{name} failed to build"));
                    for image in &built {
                        let _ = self.driver.remove_image(image).await;
                    }
                    return Err(format!("function `{name}` failed to build: {}", user_line(&message, &full_log)));
                }
            }
        }
        Ok(())
    }

    fn add_warnings(&self, id: i64, manifest: &Manifest, warnings: &mut Vec<String>, new: Vec<String>) -> Result<(), String> {
        let before = warnings.len();
        for w in new {
            if !warnings.contains(&w) {
                warnings.push(w);
            }
        }
        if warnings.len() > before {
            self.store.set_deployment_building(id, &manifest.runtime, warnings).map_err(store_err)?;
        }
        Ok(())
    }

    /// Builds the deployment's shared image; first, when its Dockerfile has them, the `deps`
    /// stage (the dependency install, kept per dependency files: see [`Self::deps_seed`]) and
    /// the `cache` stage (the project's cache image). Returns its tag and the context's
    /// warnings.
    async fn build_base(&self, job: &Job<'_>, vars: &mut TemplateVars) -> Result<(String, Vec<String>), BuildFailure> {
        let Job { id, project, checkout, manifest, removed, .. } = *job;
        let engine = |e: DriverError| BuildFailure::message(e.to_string());
        let base = build::base_tag(project, &checkout.sha);
        let cache = build::cache_tag(project);
        let previous_cache = self.driver.image_info(&cache).await.map_err(engine)?.map(|i| i.id);
        // By id, not by its tag: the tag moves to this build's cache stage before the whole
        // image is built, and that build must read what the stage read (a layer-cache hit).
        if let Some(id) = &previous_cache {
            vars.cache_image = id.clone();
        }
        let deps = build::deps_hash(&checkout.dir, &manifest.runtime).map_err(|e| BuildFailure::message(e.to_string()))?;
        if let Some(hash) = &deps {
            vars.deps_seed = self.deps_seed(project, hash).await.map_err(engine)?;
        }
        let mut rendered = self.templates.render_base(&manifest.runtime, vars).map_err(template_failure)?;
        if let Some(i) = rendered.iter().position(|(p, _)| p.as_os_str() == TOOLCHAIN_FILE) {
            let (_, text) = rendered.remove(i);
            vars.toolchain_image = self.ensure_toolchain(id, &manifest.runtime, &text, removed).await?;
            rendered = self.templates.render_base(&manifest.runtime, vars).map_err(template_failure)?;
            rendered.retain(|(p, _)| p.as_os_str() != TOOLCHAIN_FILE);
        }
        let dockerfile = rendered.iter().find(|(p, _)| p.as_os_str() == "Dockerfile").map(|(_, t)| t.clone()).unwrap_or_default();
        let deps = deps.filter(|_| build::has_stage(&dockerfile, DEPS_STAGE));
        // The whole image's labels go into its last stage's text (the stages built alone
        // before it do not see them).
        let mut full = self.build_request(id, project, None, &checkout.sha, Vec::new(), &base, None, false);
        if let Some(hash) = &deps {
            full.labels.insert(build::DEPS_LABEL.to_string(), hash.clone());
        }
        labels_into_dockerfile(&mut rendered, &mut full);
        let dir = checkout.dir.clone();
        let (tar, ctx_warnings) = tokio::task::spawn_blocking(move || build::build_context(&dir, &rendered))
            .await
            .map_err(|e| BuildFailure::message(e.to_string()))?
            .map_err(|e| BuildFailure::message(e.to_string()))?;
        let mut log = String::new();
        if let Some(hash) = &deps {
            let tag = build::deps_tag(project, hash);
            self.log(id, &format!("installing the dependencies as {tag}"));
            let before = self.driver.image_info(&tag).await.map_err(engine)?.map(|i| i.id);
            let mut req = self.build_request(id, project, None, &checkout.sha, tar.clone(), &tag, Some(DEPS_STAGE), false);
            // Labels of the install alone (not of this deployment's revision or commit): an
            // unchanged install is then the very same image, its tag does not move.
            req.labels.remove(labels::REVISION);
            req.labels.remove(labels::COMMIT);
            req.labels.insert(build::DEPS_LABEL.to_string(), hash.clone());
            req.labels.insert(build::DEPS_SEED_LABEL.to_string(), vars.deps_seed.clone());
            log.push_str(&self.run_build(req, removed).await?);
            let after = self.driver.image_info(&tag).await.ok().flatten().map(|i| i.id);
            if let (Some(old), Some(new)) = (before, after) {
                if old != new {
                    let _ = self.driver.remove_image(&old).await;
                }
            }
        }
        if build::has_stage(&dockerfile, CACHE_STAGE) {
            self.log(id, &format!("building the project's cache stage as {cache}"));
            let mut req = self.build_request(id, project, None, &checkout.sha, tar.clone(), &cache, Some(CACHE_STAGE), false);
            // The project's, of no deployment in particular (fewer label steps, too).
            req.labels.remove(labels::REVISION);
            req.labels.remove(labels::COMMIT);
            log.push_str(&self.run_build(req, removed).await?);
        }
        self.log(id, &format!("building the deployment's shared image {base}"));
        full.context_tar = tar;
        log.push_str(&self.run_build(full, removed).await.map_err(|mut f| {
            f.log = format!("{log}{}", f.log);
            f
        })?);
        // The previous cache image has handed on its caches: it is no longer needed.
        let now = self.driver.image_info(&cache).await.ok().flatten().map(|i| i.id);
        if let (Some(old), Some(now)) = (previous_cache, now) {
            if old != now {
                let _ = self.driver.remove_image(&old).await;
            }
        }
        Ok((base, ctx_warnings))
    }

    /// The runtime's toolchain image for this rendered `toolchain.Dockerfile`, built when
    /// missing. Named after its text and its base image's id, so a new base image (same
    /// tag, new content) gets a new toolchain; never a project's (no project label), so
    /// removing projects never removes it.
    async fn ensure_toolchain(&self, id: i64, runtime: &str, text: &str, removed: &CancellationToken) -> Result<String, BuildFailure> {
        use sha2::Digest;
        let engine = |e: DriverError| BuildFailure::message(e.to_string());
        let from = text.lines().find_map(|l| l.trim().strip_prefix("FROM ")).map(|f| f.split_whitespace().next().unwrap_or("").to_string());
        let from_id = match &from {
            Some(f) => self.driver.image_info(f).await.map_err(engine)?.map(|i| i.id).unwrap_or_default(),
            None => String::new(),
        };
        let digest = sha2::Sha256::digest(format!("{text}\n{from_id}").as_bytes());
        let hash: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        let tag = format!("eserveless/toolchain-{runtime}:{hash}");
        if self.driver.image_info(&tag).await.map_err(engine)?.is_some() {
            return Ok(tag);
        }
        self.log(id, &format!("building the {runtime} toolchain image {tag} (once per base image, shared by every project)"));
        let context_tar = build::rendered_context(&[(std::path::PathBuf::from("Dockerfile"), text.to_string())])
            .map_err(|e| BuildFailure::message(e.to_string()))?;
        let store = self.store.clone();
        let req = BuildRequest {
            context_tar,
            dockerfile: format!("{BUILD_DIR}/Dockerfile"),
            tag: tag.clone(),
            labels: HashMap::from([
                (labels::MANAGED.to_string(), "true".to_string()),
                (labels::ROLE.to_string(), "toolchain".to_string()),
            ]),
            timeout: self.config.build_timeout,
            target: None,
            publish: false,
            on_line: Some(Arc::new(move |line: &str| {
                let _ = store.append_deployment_log(id, &format!("  {line}"));
            })),
        };
        self.run_build(req, removed).await?;
        Ok(tag)
    }

    /// The image a dependency install starts its package manager's cache from.
    ///
    /// The install is a layer cached while the dependency files are unchanged, so a change
    /// to the code alone installs nothing; that only holds if the Dockerfile's text is the
    /// same as last time, seed included. So: dependency files installed before (their deps
    /// image exists) reuse the seed that install had; new ones start from the cache of the
    /// live deployment's install, so only what changed is downloaded. Per project: one
    /// project's install never reads another's cache.
    async fn deps_seed(&self, project: &str, hash: &str) -> Result<String, DriverError> {
        let candidate = match self.driver.image_info(&build::deps_tag(project, hash)).await? {
            // Installed before: the seed that install had (a seed since removed: no cache).
            Some(info) => info.labels.get(build::DEPS_SEED_LABEL).cloned().unwrap_or_default(),
            // New dependency files: the live deployment's install.
            None => {
                let live_base = self.store.project(project).ok().flatten().and_then(|p| p.live_deployment_id).and_then(|d| {
                    self.store.functions(d).ok()?.into_iter().find_map(|f| f.image).and_then(|i| build::base_of(project, &i))
                });
                let live_hash = match live_base {
                    Some(base) => self.driver.image_info(&base).await?.and_then(|i| i.labels.get(build::DEPS_LABEL).cloned()),
                    None => None,
                };
                live_hash.map(|h| build::deps_tag(project, &h)).unwrap_or_default()
            }
        };
        if candidate.is_empty() || self.driver.image_info(&candidate).await?.is_none() {
            return Ok(String::new());
        }
        Ok(candidate)
    }

    /// Builds one function's image: a full build from the checkout, or (`with_checkout`
    /// false) a thin one from its rendered Dockerfile alone. Returns the build log and the
    /// build context's warnings.
    #[allow(clippy::too_many_arguments)]
    async fn build_function(
        &self,
        job: &Job<'_>,
        f: &FunctionSpec,
        image: &str,
        vars: &TemplateVars,
        with_checkout: bool,
) -> Result<(String, Vec<String>), BuildFailure> {
        let Job { id, project, checkout, manifest, removed, .. } = *job;
        let name = f.name.as_str();
        let mut rendered = self.templates.render(&manifest.runtime, f.kind.as_str(), vars).map_err(template_failure)?;
        let mut req = self.build_request(id, project, Some(name), &checkout.sha, Vec::new(), image, None, true);
        labels_into_dockerfile(&mut rendered, &mut req);
        let (tar, ctx_warnings) = if with_checkout {
            let dir = checkout.dir.clone();
            tokio::task::spawn_blocking(move || build::build_context(&dir, &rendered))
                .await
                .map_err(|e| BuildFailure::message(e.to_string()))?
                .map_err(|e| BuildFailure::message(e.to_string()))?
        } else {
            (build::rendered_context(&rendered).map_err(|e| BuildFailure::message(e.to_string()))?, Vec::new())
        };
        req.context_tar = tar;
        if !with_checkout {
            // A thin image on the shared one: its few steps say nothing worth a log line.
            req.on_line = None;
        }
        Ok((self.run_build(req, removed).await?, ctx_warnings))
    }

    #[allow(clippy::too_many_arguments)]
    fn build_request(
        &self,
        id: i64,
        project: &str,
        function: Option<&str>,
        sha: &str,
        context_tar: Vec<u8>,
        tag: &str,
        target: Option<&str>,
        publish: bool,
    ) -> BuildRequest {
        let labels = image_labels(id, project, function, sha);
        // The build's steps reach the deployment's log as they happen (`eserveless deploy`
        // shows them live).
        let store = self.store.clone();
        let on_line: Option<LineSink> = Some(Arc::new(move |line: &str| {
            if let Err(e) = store.append_deployment_log(id, &format!("  {line}")) {
                tracing::warn!(error = %e, "could not append to a deployment log");
            }
        }));
        BuildRequest {
            context_tar,
            dockerfile: format!("{BUILD_DIR}/Dockerfile"),
            tag: tag.to_string(),
            labels,
            timeout: self.config.build_timeout,
            target: target.map(str::to_string),
            publish,
            on_line,
        }
    }

    /// Runs a build (stopped when the project is removed); a failure keeps the build's log.
    async fn run_build(&self, req: BuildRequest, removed: &CancellationToken) -> Result<String, BuildFailure> {
        // Dropping the build's stream on removal makes the engine stop the build.
        let outcome = unless_cancelled(removed, self.driver.build_image(req)).await.map_err(BuildFailure::message)?;
        outcome.map_err(|e| match e {
            DriverError::BuildFailed { message, log } => BuildFailure { message, log },
            DriverError::BuildTimeout(d, log) => BuildFailure {
                message: format!("the build took longer than its limit of {}", humantime::format_duration(d)),
                log,
            },
            other => BuildFailure::message(other.to_string()),
        })
    }

    /// Switches the project to the built deployment, then removes images no rollback needs.
    async fn go_live(self: &Arc<Self>, id: i64, project: &str, sha: &str, removed: &CancellationToken) -> Result<(), String> {
        // Past this point the deployment goes live as one step: a removal waits for it.
        if removed.is_cancelled() {
            return Err(REMOVED_DURING_DEPLOY.to_string());
        }
        self.activate(project, id, true).await.map_err(|e| format!("could not switch to the new deployment: {e}"))?;
        self.store.make_live(id).map_err(store_err)?;
        self.log(id, "live");
        tracing::info!(project, deployment = id, commit = %sha, "deployment live");
        // Keep the images of the last N deployments for a rollback; remove older ones.
        self.remove_old_images(project).await;
        Ok(())
    }

    /// Removes the images (functions' and shared) of all but the project's last
    /// `keep_deployments` live deployments.
    async fn remove_old_images(&self, project: &str) {
        let keep = match self.store.recent_ready_deployments(project, self.config.keep_deployments) {
            Ok(ids) => ids,
            Err(e) => return tracing::warn!(project, error = %e, "could not list the deployments to keep"),
        };
        let mut keep_images = Vec::new();
        for d in keep {
            if let Ok(fns) = self.store.functions(d) {
                keep_images.extend(fns.into_iter().filter_map(|f| f.image));
            }
        }
        let keep_bases: Vec<String> = keep_images.iter().filter_map(|i| build::base_of(project, i)).collect();
        let Ok(all) = self.store.project_images(project) else { return };
        let mut bases = Vec::new();
        for image in all.into_iter().filter(|i| !keep_images.contains(i)) {
            if let Some(b) = build::base_of(project, &image) {
                if !keep_bases.contains(&b) && !bases.contains(&b) {
                    bases.push(b);
                }
            }
            let _ = self.driver.remove_image(&image).await;
        }
        // After the functions' images, which are built upon them.
        for base in bases {
            let _ = self.driver.remove_image(&base).await;
        }
        // Dependency installs no kept deployment was built with.
        let mut keep_deps = Vec::new();
        for base in &keep_bases {
            if let Ok(Some(info)) = self.driver.image_info(base).await {
                keep_deps.extend(info.labels.get(build::DEPS_LABEL).map(|h| build::deps_tag(project, h)));
            }
        }
        if let Ok(tags) = self.driver.image_tags(&build::deps_pattern(project)).await {
            for tag in tags.into_iter().filter(|t| !keep_deps.contains(t)) {
                let _ = self.driver.remove_image(&tag).await;
            }
        }
    }
}

/// Reads and parses the manifest at the root of `dir`: the checks of every deployment, and of
/// `eserveless validate` on a developer's machine. `missing` says where it was looked for.
pub fn read_manifest(
    dir: &std::path::Path,
    missing: &str,
    templates: &crate::engine::runtime::Templates,
    root_files: &[String],
    defaults: &manifest::Scaling,
    caps: manifest::ResourceCaps,
) -> Result<Manifest, String> {
    let manifest_path = dir.join(MANIFEST_FILE);
    // Not followed if a link: the repository must not make the server read outside the checkout.
    let text = match std::fs::symlink_metadata(&manifest_path) {
        Ok(m) if m.is_file() && m.len() <= MAX_MANIFEST_BYTES => {
            std::fs::read_to_string(&manifest_path).map_err(|e| format!("cannot read {MANIFEST_FILE}: {e}"))?
        }
        Ok(m) if m.is_file() => return Err(format!("{MANIFEST_FILE} is larger than 256 KiB")),
        Ok(_) => return Err(format!("{MANIFEST_FILE} must be a regular file, not a link or directory")),
        Err(_) => return Err(format!("{missing}; add one that lists the functions, see the README")),
    };
    let mut runtimes = templates.runtimes();
    runtimes.push(manifest::CONTAINER_RUNTIME.to_string());
    manifest::parse(&text, &ParseContext { known_runtimes: &runtimes, root_files, defaults, caps }).map_err(|e| e.to_string())
}


/// Whether every function's memory and CPU fit on `node`; else which does not, and how to fix it.
fn fits(manifest: &Manifest, defaults: &crate::infra::driver::Limits, node: &crate::infra::driver::NodeCapacity) -> Result<(), String> {
    let mut problems = Vec::new();
    for f in &manifest.functions {
        let memory = f.options.memory_bytes.unwrap_or(defaults.memory_bytes());
        if node.memory_bytes > 0 && memory > node.memory_bytes {
            problems.push(format!(
                "function `{}` asks for {} of memory, more than any machine it can run on has (the largest, {}, has {}); lower its `memory` in {MANIFEST_FILE}",
                f.name,
                manifest::format_bytes(memory),
                node.name,
                manifest::format_bytes(node.memory_bytes),
            ));
        }
        let cpu = f.options.cpu_millis.unwrap_or(defaults.cpu_millis());
        if node.cpu_millis > 0 && cpu > node.cpu_millis {
            problems.push(format!(
                "function `{}` asks for {}m of CPU, more than any machine it can run on has (the largest, {}, has {}m); lower its `cpu` in {MANIFEST_FILE}",
                f.name, cpu, node.name, node.cpu_millis
            ));
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infra::driver::{Limits, NodeCapacity};
    use crate::manifest::{ResourceCaps, Scaling};

    fn manifest(yaml: &str) -> Manifest {
        let rt = vec!["node".to_string()];
        let files = vec!["functions.js".to_string(), "package.json".to_string()];
        let caps = ResourceCaps { max_memory_bytes: 1 << 40, max_cpu_millis: 64_000 };
        manifest::parse(yaml, &ParseContext { known_runtimes: &rt, root_files: &files, defaults: &Scaling::default(), caps })
            .expect("a valid manifest")
    }

    #[test]
    fn a_function_bigger_than_every_machine_is_refused_before_the_build() {
        let node = NodeCapacity { name: "node big-1".into(), memory_bytes: 8 << 30, cpu_millis: 4000 };
        let ok = manifest("runtime: node\nfunctions:\n  - name: API\n    type: http\n    memory: 8Gi\n    cpu: 4\n");
        assert_eq!(fits(&ok, &Limits::default(), &node), Ok(()));
        let big = manifest("runtime: node\nfunctions:\n  - name: API\n    type: http\n    memory: 9Gi\n  - name: Crunch\n    type: cron\n    schedule: '* * * * *'\n    cpu: 6\n");
        let e = fits(&big, &Limits::default(), &node).expect_err("too big");
        assert!(e.contains("`API` asks for 9Gi of memory") && e.contains("node big-1, has 8Gi") && e.contains("lower its `memory`"), "{e}");
        assert!(e.contains("`Crunch` asks for 6000m of CPU") && e.contains("has 4000m"), "{e}");
        // The operator's default counts for a function that asks nothing.
        let plain = manifest("runtime: node\nfunctions:\n  - name: API\n    type: http\n");
        let huge_default = Limits { memory_bytes: 16 << 30, ..Limits::default() };
        assert!(fits(&plain, &huge_default, &node).is_err());
        // An engine that reports no size refuses nothing.
        let unknown = NodeCapacity { name: "x".into(), memory_bytes: 0, cpu_millis: 0 };
        assert_eq!(fits(&big, &Limits::default(), &unknown), Ok(()));
    }
}
