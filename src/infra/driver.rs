//! The container engine seam: a [`Driver`] trait over build, create, start, pause, resume,
//! remove, logs and events, and its Docker Engine implementation through bollard.
//!
//! This is the only code that talks to Docker.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, HostConfigLogConfig, NetworkCreateRequest, NetworkingConfig, ResourcesUlimits,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, EventsOptionsBuilder, InspectContainerOptions,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder,
    WaitContainerOptions,
};
use bollard::Docker;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use crate::infra::logs::{LineSplitter, LineTail, LogStream, RawLine};

/// Removes terminal escape sequences (the classic builder colours step output).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters and intermediates, then one final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The last `cap` bytes of a stream of output, in memory bounded by twice `cap`, and how many
/// bytes before them were dropped. [`LogTail::finish`] marks a cut, so truncation is never silent.
#[derive(Debug)]
pub struct LogTail {
    cap: usize,
    buf: Vec<u8>,
    dropped: u64,
}

impl LogTail {
    pub fn new(cap: usize) -> Self {
        LogTail { cap, buf: Vec::new(), dropped: 0 }
    }

    pub fn push(&mut self, mut chunk: &[u8]) {
        if chunk.len() > self.cap {
            let skip = chunk.len() - self.cap;
            self.dropped += skip as u64;
            chunk = &chunk[skip..];
        }
        self.buf.extend_from_slice(chunk);
        // Trim only once the buffer doubles: the copy is then paid once per `cap` bytes.
        if self.buf.len() > 2 * self.cap {
            let cut = self.buf.len() - self.cap;
            self.dropped += cut as u64;
            self.buf.drain(..cut);
        }
    }

    /// The kept text, after a marker line when earlier bytes were dropped.
    pub fn finish(mut self) -> String {
        if self.buf.len() > self.cap {
            let cut = self.buf.len() - self.cap;
            self.dropped += cut as u64;
            self.buf.drain(..cut);
        }
        if self.dropped == 0 {
            return String::from_utf8_lossy(&self.buf).into_owned();
        }
        // The cut may split a line or a character: start at the next line when one is near.
        let start = match self.buf.iter().take(256).position(|&b| b == b'\n') {
            Some(nl) => nl + 1,
            None => 0,
        };
        let not_kept = self.dropped + start as u64;
        let text = String::from_utf8_lossy(&self.buf[start..]);
        format!("[eserveless: {not_kept} earlier bytes not kept; the last {} are below]\n{text}", self.buf.len() - start)
    }
}

/// Reads an engine log stream (a container's or a service's) into `tail`; a 404 is
/// [`DriverError::NoSuchContainer`].
pub(crate) async fn read_logs(
    stream: impl futures_util::Stream<Item = std::result::Result<bollard::container::LogOutput, bollard::errors::Error>>,
    id: &str,
    tail: &mut LogTail,
) -> Result<()> {
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => tail.push(&chunk.into_bytes()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                return Err(DriverError::NoSuchContainer(id.to_string()))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Which lines of a container's output [`Driver::log_lines`] reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogRead {
    /// Keep the stream open and send lines as they are written, until the container stops.
    pub follow: bool,
    /// Only lines from this time on (the engine filters by the second; callers filter exactly).
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only the last this many lines (before following).
    pub tail: Option<u64>,
}

impl LogRead {
    /// Docker's `since`: whole seconds since the epoch, rounded down (0: from the start).
    pub(crate) fn since_secs(&self) -> i32 {
        self.since.map_or(0, |t| i32::try_from(t.timestamp().max(0)).unwrap_or(i32::MAX))
    }
    /// The engine's log options for this read (containers and swarm services alike).
    pub(crate) fn options(&self) -> bollard::query_parameters::LogsOptions {
        let tail = self.tail.map_or_else(|| "all".to_string(), |n| n.to_string());
        LogsOptionsBuilder::default().stdout(true).stderr(true).timestamps(true).follow(self.follow).since(self.since_secs()).tail(&tail).build()
    }
}

/// An engine log stream read with `timestamps=true` as timed lines, through a
/// [`LineSplitter`](crate::infra::logs::LineSplitter) (bounded per line); a 404 is
/// [`DriverError::NoSuchContainer`].
pub(crate) fn timed_lines<'a>(
    stream: impl futures_util::Stream<Item = std::result::Result<bollard::container::LogOutput, bollard::errors::Error>> + Send + 'a,
    id: &str,
) -> BoxStream<'a, Result<RawLine>> {
    use bollard::container::LogOutput;
    let id = id.to_string();
    let state = (Box::pin(stream), LineSplitter::default(), std::collections::VecDeque::<RawLine>::new(), false);
    futures_util::stream::unfold(state, move |(mut stream, mut split, mut ready, mut done)| {
        let id = id.clone();
        async move {
            loop {
                if let Some(l) = ready.pop_front() {
                    return Some((Ok(l), (stream, split, ready, done)));
                }
                if done {
                    return None;
                }
                match stream.next().await {
                    Some(Ok(LogOutput::StdErr { message })) => ready.extend(split.push(LogStream::Stderr, &message)),
                    Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                        ready.extend(split.push(LogStream::Stdout, &message))
                    }
                    Some(Ok(LogOutput::StdIn { .. })) => {}
                    Some(Err(e)) => {
                        done = true;
                        let e = match e {
                            bollard::errors::Error::DockerResponseServerError { status_code: 404, .. } => {
                                DriverError::NoSuchContainer(id)
                            }
                            e => e.into(),
                        };
                        return Some((Err(e), (stream, split, ready, done)));
                    }
                    None => {
                        done = true;
                        ready.extend(split.finish());
                    }
                }
            }
        }
    })
    .boxed()
}

/// A stopped container's last lines within `max_bytes` (its saved output), marked when
/// earlier lines were dropped.
pub async fn read_saved_lines(driver: &dyn Driver, id: &str, max_bytes: usize) -> Result<Vec<RawLine>> {
    let mut tail = LineTail::new(max_bytes);
    let mut lines = driver.log_lines(id, LogRead::default());
    while let Some(l) = lines.next().await {
        tail.push(l?);
    }
    Ok(tail.finish())
}

/// Cap of a container's own log on the engine's disk: a function that prints without end
/// must not fill the machine. The engine keeps at most two files of this size.
const ENGINE_LOG_FILE_BYTES: &str = "8m";

/// The json-file log driver's options for every container the platform starts.
pub(crate) fn engine_log_options() -> HashMap<String, String> {
    HashMap::from([("max-size".to_string(), ENGINE_LOG_FILE_BYTES.to_string()), ("max-file".to_string(), "2".to_string())])
}

/// Label keys on every Docker object the platform creates.
pub mod labels {
    pub const MANAGED: &str = "eserveless.managed";
    pub const PROJECT: &str = "eserveless.project";
    pub const FUNCTION: &str = "eserveless.function";
    pub const REVISION: &str = "eserveless.revision";
    pub const COMMIT: &str = "eserveless.commit";
    pub const ROLE: &str = "eserveless.role";
    /// A cron run's container: the run's id.
    pub const RUN: &str = "eserveless.run";
    /// A digest of what an http instance was started with (image, environment, limits): an
    /// instance is adopted after a restart only if it still matches its revision.
    pub const CONFIG: &str = "eserveless.config";
    /// The server (data directory) that owns the object; servers sharing an engine never touch each other's.
    pub const OWNER: &str = "eserveless.owner";

    /// The labels of a function container; `role` is `http` or `cron`.
    pub fn for_container(project: &str, function: &str, revision: i64, role: &str) -> std::collections::HashMap<String, String> {
        std::collections::HashMap::from([
            (MANAGED.to_string(), "true".to_string()),
            (PROJECT.to_string(), project.to_string()),
            (FUNCTION.to_string(), function.to_string()),
            (REVISION.to_string(), revision.to_string()),
            (ROLE.to_string(), role.to_string()),
        ])
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("cannot reach the Docker engine ({0}); is dockerd running? `scripts/run` starts one")]
    Unreachable(String),
    #[error("image `{0}` is not present in the Docker engine; build it with `eval \"$(scripts/offline-images)\"` or pull it")]
    MissingImage(String),
    #[error("no such container `{0}`")]
    NoSuchContainer(String),
    #[error("image build failed: {message}")]
    BuildFailed { message: String, log: String },
    #[error("image build exceeded its time limit of {0:?}")]
    BuildTimeout(Duration, String),
    #[error("docker: {0}")]
    Engine(String),
    /// Swarm mode: no node has the resources (or is eligible) for what was asked; the message
    /// names what was asked and the scheduler's reason.
    #[error("no node of the swarm can take {0}")]
    NoCapacity(String),
    /// Swarm mode on an engine that cannot drive a swarm; the message says how to fix it.
    #[error("{0}")]
    NotSwarmManager(String),
    /// An operation the engine cannot do (e.g. pause in swarm mode); the message says why.
    #[error("{0}")]
    Unsupported(String),
    /// The node a container was placed on stopped answering (swarm): another try may work.
    #[error("{0}")]
    NodeLost(String),
}

impl From<bollard::errors::Error> for DriverError {
    fn from(e: bollard::errors::Error) -> Self {
        use bollard::errors::Error as E;
        match &e {
            E::DockerResponseServerError { status_code: 404, message } => {
                if message.contains("No such container") {
                    DriverError::NoSuchContainer(message.clone())
                } else {
                    DriverError::Engine(message.clone())
                }
            }
            E::DockerResponseServerError { message, .. } => DriverError::Engine(message.clone()),
            E::IOError { .. } | E::HyperResponseError { .. } | E::RequestTimeoutError => {
                DriverError::Unreachable(e.to_string())
            }
            _ => DriverError::Engine(e.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, DriverError>;

/// Memory of one build step's container (the engine takes an i32 here).
const BUILD_MEMORY_BYTES: i32 = 2_000_000_000;
/// CPU of one build step's container, in µs per 100 ms: one and a half CPUs, so a build
/// never takes the whole machine from the gateway.
const BUILD_CPU_QUOTA: i32 = 150_000;

/// Resource and isolation limits for a function container.
#[derive(Debug, Clone)]
pub struct Limits {
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    pub pids: i64,
    pub nofile: i64,
    pub tmpfs_size: String,
    pub user: String,
    pub oci_runtime: Option<String>,
}

impl Limits {
    /// The memory limit as the manifest and the API count it (Docker's i64, never negative here).
    pub fn memory_bytes(&self) -> u64 {
        u64::try_from(self.memory_bytes).unwrap_or(0)
    }

    /// The CPU share in thousandths of a CPU.
    pub fn cpu_millis(&self) -> u32 {
        u32::try_from(self.nano_cpus / 1_000_000).unwrap_or(u32::MAX)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 256 * 1024 * 1024,
            nano_cpus: 1_000_000_000,
            pids: 256,
            nofile: 4096,
            tmpfs_size: "64m".into(),
            user: "65534:65534".into(),
            oci_runtime: None,
        }
    }
}

/// A container's `KEY=VALUE` environment. It may hold secrets, so its `Debug` shows names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Env(pub Vec<String>);

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|kv| kv.split_once('=').map_or(kv.as_str(), |(k, _)| k))).finish()
    }
}

impl Env {
    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find_map(|kv| kv.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub env: Env,
    pub labels: HashMap<String, String>,
    pub limits: Limits,
}

/// A running container and how to reach it.
#[derive(Debug, Clone)]
pub struct Started {
    pub id: String,
    pub ip: String,
    /// The container's first process as the host sees it, when the engine says.
    pub pid: Option<u32>,
    /// The node it runs on (swarm), for the operator.
    pub node: Option<String>,
}

/// A container the platform created, as listed by the engine.
#[derive(Debug, Clone)]
pub struct ManagedContainer {
    pub id: String,
    pub labels: HashMap<String, String>,
    pub running: bool,
    pub paused: bool,
    /// Exited or dead: it will not run again.
    pub stopped: bool,
    pub ip: Option<String>,
    /// The node it runs on (swarm), for the operator.
    pub node: Option<String>,
}

/// What the largest machine an instance can land on has: the host, or a swarm's biggest ready node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCapacity {
    /// How messages name it: "this host", or the node's hostname.
    pub name: String,
    pub memory_bytes: u64,
    pub cpu_millis: u32,
}

/// A container lifecycle event.
#[derive(Debug, Clone)]
pub struct ContainerEvent {
    pub id: String,
    /// `die`, `oom`, `destroy`, ...
    pub action: String,
}

/// Receives a build's log lines as the engine reports them.
pub type LineSink = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

/// How an image is built.
pub struct BuildRequest {
    pub context_tar: Vec<u8>,
    pub dockerfile: String,
    pub tag: String,
    pub labels: HashMap<String, String>,
    pub timeout: Duration,
    /// Build only this stage of a multi-stage Dockerfile.
    pub target: Option<String>,
    /// Whether instances run this image (so a swarm engine pushes it to its registry); a
    /// deployment's shared and cache images are only built upon, where builds run.
    pub publish: bool,
    /// Each log line, live (the whole log is also returned at the end).
    pub on_line: Option<LineSink>,
}

#[async_trait]
pub trait Driver: Send + Sync + 'static {
    async fn ping(&self) -> Result<()>;
    async fn image_exists(&self, image: &str) -> Result<bool>;
    /// The id and labels of the image `image` names now, if there is one.
    async fn image_info(&self, image: &str) -> Result<Option<ImageInfo>>;
    /// The tags of the images whose reference matches `pattern` (`repo:*` wildcards).
    async fn image_tags(&self, pattern: &str) -> Result<Vec<String>>;
    /// Builds an image; returns its whole log.
    async fn build_image(&self, req: BuildRequest) -> Result<String>;
    /// Removes an image; `false` when there was none.
    async fn remove_image(&self, image: &str) -> Result<bool>;
    /// Creates and starts a container on the functions network; returns its address.
    async fn run(&self, spec: ContainerSpec) -> Result<Started>;
    /// Creates and starts a container that runs to completion (a cron run): no address is
    /// asked for, since a quick program may have exited before anyone could ask. Returns its id.
    async fn start_job(&self, spec: ContainerSpec) -> Result<String> {
        self.run(spec).await.map(|s| s.id)
    }
    async fn pause(&self, id: &str) -> Result<()>;
    async fn unpause(&self, id: &str) -> Result<()>;
    /// Removes a container, killing it if it runs. A missing container is not an error.
    async fn remove(&self, id: &str) -> Result<()>;
    /// Waits for the container to exit; returns its exit code.
    async fn wait(&self, id: &str) -> Result<i64>;
    /// The container's output so far (stdout and stderr interleaved): at most `max_bytes` of
    /// its tail, read through a bounded buffer, and marked when earlier output was dropped
    /// (see [`LogTail`]).
    async fn logs(&self, id: &str, max_bytes: usize) -> Result<String>;
    /// The container's output as lines with the engine's own times (stdout and stderr
    /// apart), read as it streams: nothing is held whole. With `follow`, it ends when the
    /// container stops.
    fn log_lines(&self, id: &str, read: LogRead) -> BoxStream<'static, Result<RawLine>>;
    async fn list_managed(&self) -> Result<Vec<ManagedContainer>>;
    /// The running container's first process as the host sees it, if the engine says.
    async fn init_pid(&self, _id: &str) -> Result<Option<u32>> {
        Ok(None)
    }
    /// Lifecycle events of managed containers.
    fn events(&self) -> BoxStream<'static, Result<ContainerEvent>>;
    /// The largest machine an instance can run on, when the engine says.
    async fn largest_node(&self) -> Result<Option<NodeCapacity>> {
        Ok(None)
    }
    /// Whether idle instances can be paused; when not, they stay warm until their idle timeout.
    fn can_pause(&self) -> bool {
        true
    }
    /// How the gateway opens connections to `project`'s instances when their addresses are
    /// not routed from the server's own network namespace (swarm overlays); `None`: directly.
    async fn connector(&self, _project: &str) -> Result<Option<std::sync::Arc<crate::infra::netns::NetnsConnector>>> {
        Ok(None)
    }
    /// Removes what the engine kept for a project beside its containers and images (a swarm
    /// project's network and the gateway's way into it). Called once they are gone.
    async fn forget_project(&self, _project: &str) -> Result<()> {
        Ok(())
    }
}

/// Connects to the engine named by DOCKER_HOST (or the default socket), negotiating the API
/// version. Shared by the single-host and the swarm drivers.
pub(crate) async fn connect_engine() -> Result<Docker> {
    let docker = Docker::connect_with_defaults().map_err(|e| DriverError::Unreachable(e.to_string()))?;
    docker
        .with_timeout(Duration::from_secs(120))
        .negotiate_version()
        .await
        .map_err(|e| DriverError::Unreachable(e.to_string()))
}

/// Makes sure the engine-local bridge network `name` exists: the functions network of the
/// single-host engine, the build network of the swarm engine.
pub(crate) async fn ensure_bridge_network(docker: &Docker, name: &str) -> Result<()> {
    match docker.inspect_network(name, None::<bollard::query_parameters::InspectNetworkOptions>).await {
        Ok(_) => return Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let req = NetworkCreateRequest {
        name: name.to_string(),
        driver: Some("bridge".into()),
        // Functions must not reach one another: no inter-container traffic on this bridge.
        options: Some(HashMap::from([("com.docker.network.bridge.enable_icc".to_string(), "false".to_string())])),
        labels: Some(HashMap::from([(labels::MANAGED.to_string(), "true".to_string())])),
        ..Default::default()
    };
    match docker.create_network(req).await {
        Ok(_) => Ok(()),
        // Another server created it at the same time.
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn image_exists_on(docker: &Docker, image: &str) -> Result<bool> {
    match docker.inspect_image(image).await {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// What the builds need to know of an image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageInfo {
    pub id: String,
    pub labels: HashMap<String, String>,
}

pub(crate) async fn image_info_on(docker: &Docker, image: &str) -> Result<Option<ImageInfo>> {
    match docker.inspect_image(image).await {
        Ok(i) => Ok(Some(ImageInfo {
            id: i.id.unwrap_or_default(),
            labels: i.config.and_then(|c| c.labels).unwrap_or_default(),
        })),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn image_tags_on(docker: &Docker, pattern: &str) -> Result<Vec<String>> {
    let filters = HashMap::from([("reference".to_string(), vec![pattern.to_string()])]);
    let opts = bollard::query_parameters::ListImagesOptionsBuilder::default().filters(&filters).build();
    let images = docker.list_images(Some(opts)).await?;
    Ok(images.into_iter().flat_map(|i| i.repo_tags).filter(|t| t != "<none>:<none>").collect())
}

pub(crate) async fn remove_image_on(docker: &Docker, image: &str) -> Result<bool> {
    let opts = RemoveImageOptionsBuilder::default().force(true).build();
    match docker.remove_image(image, Some(opts), None).await {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Builds an image on `docker` with the classic builder; its steps run on the bridge `network`
/// with memory and CPU capped. Returns the whole log. Shared by both drivers: the swarm engine
/// builds on its manager.
pub(crate) async fn build_image_on(docker: &Docker, network: &str, req: BuildRequest) -> Result<String> {
    let mut options = BuildImageOptionsBuilder::default();
    if let Some(target) = &req.target {
        options = options.target(target);
    }
    let options = options
        .dockerfile(&req.dockerfile)
        .t(&req.tag)
        .labels(&req.labels)
        .rm(true)
        .forcerm(true)
        // Build steps run untrusted code too (install scripts, the load check): on the
        // functions network, behind its firewall rules, with memory and CPU capped.
        .networkmode(network)
        .memory(BUILD_MEMORY_BYTES)
        .memswap(BUILD_MEMORY_BYTES)
        .cpuperiod(100_000)
        .cpuquota(BUILD_CPU_QUOTA)
        .build();
    let mut stream =
        docker.build_image(options, None, Some(bollard::body_full(bytes::Bytes::from(req.context_tar))));
    let mut log = String::new();
    let run = async {
        while let Some(item) = stream.next().await {
            let info = match item {
                Ok(info) => info,
                // The engine reports a failing build step as a stream error.
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    let error = strip_ansi(&error);
                    log.push_str(&error);
                    log.push('\n');
                    return Err(DriverError::BuildFailed { message: error, log: std::mem::take(&mut log) });
                }
                Err(e) => return Err(e.into()),
            };
            if let Some(text) = info.stream.as_deref().or(info.status.as_deref()) {
                let text = strip_ansi(text);
                let text = text.as_str();
                if let Some(sink) = &req.on_line {
                    for line in text.lines().filter(|l| !l.trim().is_empty()) {
                        sink(line);
                    }
                }
                log.push_str(text);
                if !text.ends_with('\n') {
                    log.push('\n');
                }
            }
            if let Some(detail) = info.error_detail {
                let message = detail.message.unwrap_or_else(|| "unknown build error".into());
                log.push_str(&message);
                log.push('\n');
                return Err(DriverError::BuildFailed { message, log: std::mem::take(&mut log) });
            }
        }
        Ok(())
    };
    match tokio::time::timeout(req.timeout, run).await {
        Ok(Ok(())) => Ok(log),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(DriverError::BuildTimeout(req.timeout, log)),
    }
}

/// The Docker Engine driver.
pub struct DockerDriver {
    docker: Docker,
    network: String,
    owner: String,
}

impl DockerDriver {
    /// Connects to the local engine (DOCKER_HOST or the default socket), negotiating the API
    /// version, and makes sure the functions network exists.
    pub async fn connect(network: &str, owner: &str) -> Result<Self> {
        let docker = connect_engine().await?;
        ensure_bridge_network(&docker, network).await?;
        Ok(DockerDriver { docker, network: network.to_string(), owner: owner.to_string() })
    }

    /// The OCI runtimes registered with the engine (`runc`, and e.g. `runsc` when configured).
    pub async fn runtimes(&self) -> Result<Vec<String>> {
        let info = self.docker.info().await?;
        Ok(info.runtimes.map(|r| r.into_keys().collect()).unwrap_or_default())
    }

    /// The engine connection (for host-side setup such as the firewall).
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Creates and starts a container from `spec` with the sandbox's limits; returns its id.
    async fn create_and_start(&self, spec: ContainerSpec) -> Result<String> {
        let l = &spec.limits;
        let host_config = HostConfig {
            network_mode: Some(self.network.clone()),
            memory: Some(l.memory_bytes),
            memory_swap: Some(l.memory_bytes),
            nano_cpus: Some(l.nano_cpus),
            pids_limit: Some(l.pids),
            ulimits: Some(vec![ResourcesUlimits { name: Some("nofile".into()), soft: Some(l.nofile), hard: Some(l.nofile) }]),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            readonly_rootfs: Some(true),
            tmpfs: Some(HashMap::from([("/tmp".to_string(), format!("rw,noexec,nosuid,size={}", l.tmpfs_size))])),
            runtime: l.oci_runtime.clone(),
            init: Some(false),
            log_config: Some(HostConfigLogConfig { typ: Some("json-file".into()), config: Some(engine_log_options()) }),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: Some(spec.env.0.clone()),
            labels: Some({
                let mut l = spec.labels.clone();
                l.insert(labels::OWNER.to_string(), self.owner.clone());
                l
            }),
            user: Some(l.user.clone()),
            host_config: Some(host_config),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(self.network.clone(), EndpointSettings::default())])),
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&spec.name).build();
        let created = match self.docker.create_container(Some(options), body).await {
            Ok(c) => c,
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, message })
                if message.contains("image") || message.contains("No such image") =>
            {
                return Err(DriverError::MissingImage(spec.image));
            }
            Err(e) => return Err(e.into()),
        };
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            let _ = self.remove(&created.id).await;
            return Err(e.into());
        }
        Ok(created.id)
    }

    /// The container's address on the functions network, and its first process's host pid.
    async fn container_addr(&self, id: &str) -> Result<(Option<String>, Option<u32>)> {
        let info = self.docker.inspect_container(id, None::<InspectContainerOptions>).await?;
        let pid = info.state.as_ref().and_then(|s| s.pid).and_then(|p| u32::try_from(p).ok()).filter(|&p| p > 0);
        let ip = info
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(&self.network))
            .and_then(|e| e.ip_address)
            .filter(|ip| !ip.is_empty());
        Ok((ip, pid))
    }
}

#[async_trait]
impl Driver for DockerDriver {
    async fn ping(&self) -> Result<()> {
        self.docker.ping().await.map(|_| ()).map_err(|e| DriverError::Unreachable(e.to_string()))
    }

    async fn largest_node(&self) -> Result<Option<NodeCapacity>> {
        let info = self.docker.info().await?;
        Ok(Some(NodeCapacity {
            name: "this host".into(),
            memory_bytes: u64::try_from(info.mem_total.unwrap_or(0)).unwrap_or(0),
            cpu_millis: u32::try_from(info.ncpu.unwrap_or(0)).unwrap_or(0).saturating_mul(1000),
        }))
    }

    async fn image_exists(&self, image: &str) -> Result<bool> {
        image_exists_on(&self.docker, image).await
    }

    async fn image_info(&self, image: &str) -> Result<Option<ImageInfo>> {
        image_info_on(&self.docker, image).await
    }

    async fn image_tags(&self, pattern: &str) -> Result<Vec<String>> {
        image_tags_on(&self.docker, pattern).await
    }

    async fn build_image(&self, req: BuildRequest) -> Result<String> {
        build_image_on(&self.docker, &self.network, req).await
    }

    async fn remove_image(&self, image: &str) -> Result<bool> {
        remove_image_on(&self.docker, image).await
    }

    async fn run(&self, spec: ContainerSpec) -> Result<Started> {
        let id = self.create_and_start(spec).await?;
        let (ip, pid) = match self.container_addr(&id).await {
            Ok((Some(ip), pid)) => (ip, pid),
            Ok((None, _)) => {
                // It exited before it could be given one: what it said is why.
                let output = self.logs(&id, 4096).await.unwrap_or_default();
                let _ = self.remove(&id).await;
                let tail: Vec<&str> = output.lines().rev().take(10).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(DriverError::Engine(if tail.is_empty() {
                    format!("container {id} exited at once, before it got an address on network {}", self.network)
                } else {
                    format!(
                        "container {id} exited at once, before it got an address on network {}; its output ends with:\n{}",
                        self.network,
                        tail.join("\n")
                    )
                }));
            }
            Err(e) => {
                let _ = self.remove(&id).await;
                return Err(e);
            }
        };
        Ok(Started { id, ip, pid, node: None })
    }

    async fn start_job(&self, spec: ContainerSpec) -> Result<String> {
        self.create_and_start(spec).await
    }

    async fn pause(&self, id: &str) -> Result<()> {
        Ok(self.docker.pause_container(id).await?)
    }

    async fn unpause(&self, id: &str) -> Result<()> {
        Ok(self.docker.unpause_container(id).await?)
    }

    async fn remove(&self, id: &str) -> Result<()> {
        let opts = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        match self.docker.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
            // Removal already in progress.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn wait(&self, id: &str) -> Result<i64> {
        let mut stream = self.docker.wait_container(id, None::<WaitContainerOptions>);
        match stream.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(e.into()),
            None => Err(DriverError::Engine(format!("wait on {id} ended without a status"))),
        }
    }

    async fn logs(&self, id: &str, max_bytes: usize) -> Result<String> {
        // Streamed through a bounded tail: what the engine holds (up to its log cap) never
        // sits in memory whole, however much the function wrote.
        let opts = LogsOptionsBuilder::default().stdout(true).stderr(true).tail("all").build();
        let mut tail = LogTail::new(max_bytes);
        read_logs(self.docker.logs(id, Some(opts)), id, &mut tail).await?;
        Ok(tail.finish())
    }

    fn log_lines(&self, id: &str, read: LogRead) -> BoxStream<'static, Result<RawLine>> {
        let opts = read.options();
        // A followed stream lives as long as the container: no request timeout.
        let docker = if read.follow { self.docker.clone().with_timeout(Duration::from_secs(u64::MAX / 4)) } else { self.docker.clone() };
        timed_lines(docker.logs(id, Some(opts)), id)
    }

    async fn list_managed(&self) -> Result<Vec<ManagedContainer>> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{}=true", labels::MANAGED), format!("{}={}", labels::OWNER, self.owner)],
        )]);
        let opts = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let list = self.docker.list_containers(Some(opts)).await?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let state = c.state.map(|s| s.to_string()).unwrap_or_default();
                let ip = c
                    .network_settings
                    .and_then(|n| n.networks)
                    .and_then(|mut n| n.remove(&self.network))
                    .and_then(|e| e.ip_address)
                    .filter(|ip| !ip.is_empty());
                Some(ManagedContainer {
                    id: c.id?,
                    labels: c.labels.unwrap_or_default(),
                    running: state == "running" || state == "paused",
                    paused: state == "paused",
                    stopped: state == "exited" || state == "dead",
                    ip,
                    node: None,
                })
            })
            .collect())
    }

    async fn init_pid(&self, id: &str) -> Result<Option<u32>> {
        Ok(self.container_addr(id).await?.1)
    }

    fn events(&self) -> BoxStream<'static, Result<ContainerEvent>> {
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("label".to_string(), vec![format!("{}=true", labels::MANAGED), format!("{}={}", labels::OWNER, self.owner)]),
            ("event".to_string(), vec!["die".to_string(), "oom".to_string(), "destroy".to_string()]),
        ]);
        let opts = EventsOptionsBuilder::default().filters(&filters).build();
        // The events stream is long-lived: use a client without a request timeout.
        let docker = self.docker.clone().with_timeout(Duration::from_secs(u64::MAX / 4));
        docker
            .events(Some(opts))
            .map(|e| {
                let e = e?;
                let actor = e.actor.unwrap_or_default();
                Ok(ContainerEvent { id: actor.id.unwrap_or_default(), action: e.action.unwrap_or_default() })
            })
            .boxed()
    }
}

pub mod fake;
pub mod swarm;

#[cfg(test)]
mod tests {
    #[test]
    fn log_tail_keeps_the_end_and_marks_the_cut() {
        let mut t = super::LogTail::new(100);
        t.push(b"short\n");
        assert_eq!(t.finish(), "short\n", "nothing cut, nothing marked");

        let mut t = super::LogTail::new(100);
        for i in 0..10_000 {
            t.push(format!("line {i:05}\n").as_bytes());
            assert!(t.buf.len() <= 200 + 11, "memory stays bounded: {}", t.buf.len());
        }
        let out = t.finish();
        let (marker, rest) = out.split_once('\n').expect("marker line");
        assert!(rest.ends_with("line 09999\n") && rest.starts_with("line "), "{rest:?}");
        assert!(rest.len() <= 100, "{}", rest.len());
        assert_eq!(marker, format!("[eserveless: {} earlier bytes not kept; the last {} are below]", 110_000 - rest.len(), rest.len()));

        let mut t = super::LogTail::new(10);
        t.push(&[b'x'; 1000]);
        let out = t.finish();
        assert!(out.starts_with("[eserveless: 990 earlier bytes not kept; the last 10 are below]\n"), "{out}");
    }

    #[test]
    fn ansi_sequences_are_removed() {
        assert_eq!(super::strip_ansi("\u{1b}[91meserveless: bad\u{1b}[0m\n"), "eserveless: bad\n");
        assert_eq!(super::strip_ansi("plain"), "plain");
        assert_eq!(super::strip_ansi("a\u{1b}[1;31mb"), "ab");
    }
}
