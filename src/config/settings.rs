//! The `eserveless serve` settings, one struct per component. Each setting is declared once,
//! here: its flag, environment variable, config file key (the field name), parser, default
//! and help. Settings without a default here take theirs from the type they configure
//! (`Scaling`, `Limits`, `ResourceCaps`), which other code also builds without a server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::ArgAction;

/// Connected hosts' defaults; `scripts/offline-images` builds equivalents from Debian packages.
pub const DEFAULT_NODE_IMAGE: &str = "node:20-bookworm-slim";
pub const DEFAULT_GO_IMAGE: &str = "golang:1.22-bookworm";
pub const DEFAULT_RUN_IMAGE: &str = "debian:bookworm-slim";
pub const DEFAULT_PYTHON_IMAGE: &str = "python:3.11-slim-bookworm";

/// Where clients connect and how many may.
#[derive(Debug, Clone, clap::Args)]
pub struct ListenerSettings {
    /// Address to listen on
    #[arg(long, env = "ESERVELESS_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Where the SQLite database and working files live
    #[arg(long, env = "ESERVELESS_DATA_DIR", default_value = ".eserveless")]
    pub data_dir: PathBuf,
    /// Time a client connection has to send a request head, from accept and between keep-alive requests, e.g. 10s
    #[arg(long, env = "ESERVELESS_HEAD_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10s", hide_default_value = true)]
    pub head_timeout: Duration,
    /// Most open client connections (all clients together); more are closed at once
    #[arg(long, env = "ESERVELESS_MAX_CONNECTIONS", default_value_t = 4096, hide_default_value = true)]
    pub max_connections: usize,
    /// Most open connections from one client address; more are closed at once
    #[arg(long, env = "ESERVELESS_MAX_CLIENT_CONNECTIONS", default_value_t = 256, hide_default_value = true)]
    pub max_client_connections: u32,
}

/// Which repositories may be deployed, and how long fetching one may take.
#[derive(Debug, Clone, clap::Args)]
pub struct SourceSettings {
    /// Accept file:// URLs and absolute paths as repositories
    #[arg(long, env = "ESERVELESS_ALLOW_LOCAL_REPOS", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value_t = false, hide_default_value = true)]
    pub allow_local_repos: bool,
    /// Accept http(s) repositories on loopback, private or link-local addresses
    #[arg(long, env = "ESERVELESS_ALLOW_PRIVATE_REPOS", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value_t = false, hide_default_value = true)]
    pub allow_private_repos: bool,
    /// Fetch git submodules of deployed repositories (https/ssh URLs of public hosts only)
    #[arg(long, env = "ESERVELESS_ALLOW_SUBMODULES", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value_t = false, hide_default_value = true)]
    pub allow_submodules: bool,
    /// Longest a git clone or lookup may take, e.g. 2m
    #[arg(long, env = "ESERVELESS_CLONE_TIMEOUT", value_parser = humantime::parse_duration, default_value = "2m", hide_default_value = true)]
    pub clone_timeout: Duration,
    /// Largest directory upload (`eserveless deploy DIR`), compressed and unpacked, e.g. 64Mi
    #[arg(long, env = "ESERVELESS_MAX_UPLOAD", value_parser = parse_memory_arg, default_value = "64Mi", hide_default_value = true)]
    pub max_upload: u64,
}

/// How function images are built.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildSettings {
    /// A directory of runtime templates (DIR/<runtime>/<http|cron>/) overriding or adding to the embedded ones
    #[arg(long, env = "ESERVELESS_TEMPLATES")]
    pub templates: Option<PathBuf>,
    /// Base image for Node functions
    #[arg(long, env = "ESERVELESS_NODE_IMAGE", default_value = DEFAULT_NODE_IMAGE, hide_default_value = true)]
    pub node_image: String,
    /// Builder image with the Go toolchain
    #[arg(long, env = "ESERVELESS_GO_IMAGE", default_value = DEFAULT_GO_IMAGE, hide_default_value = true)]
    pub go_image: String,
    /// Minimal run stage for compiled functions
    #[arg(long, env = "ESERVELESS_RUN_IMAGE", default_value = DEFAULT_RUN_IMAGE, hide_default_value = true)]
    pub run_image: String,
    /// Base image for Python functions
    #[arg(long, env = "ESERVELESS_PYTHON_IMAGE", default_value = DEFAULT_PYTHON_IMAGE, hide_default_value = true)]
    pub python_image: String,
    /// Longest one image build may take, e.g. 10m
    #[arg(long, env = "ESERVELESS_BUILD_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10m", hide_default_value = true)]
    pub build_timeout: Duration,
    /// Images builds at once (a deployment's functions, and deployments of different projects)
    #[arg(long, env = "ESERVELESS_BUILD_PARALLELISM", value_parser = clap::value_parser!(u32).range(1..=64), default_value_t = 2)]
    pub build_parallelism: u32,
    /// A project's images are kept for its last N deployments (rollback without a rebuild)
    #[arg(long, env = "ESERVELESS_KEEP_DEPLOYMENTS", value_parser = clap::value_parser!(u32).range(1..=100), default_value_t = 3)]
    pub keep_deployments: u32,
}

/// Instance pools: when idle instances pause and go, how requests wait, how much output is kept.
#[derive(Debug, Clone, clap::Args)]
pub struct PoolSettings {
    /// Default idle time before an http instance is removed, e.g. 5m
    #[arg(long, env = "ESERVELESS_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Default idle time before an http instance is paused, e.g. 30s
    #[arg(long, env = "ESERVELESS_PAUSE_AFTER", value_parser = humantime::parse_duration)]
    pub pause_after: Option<Duration>,
    /// Requests allowed to wait per function when every instance is busy (more get 429)
    #[arg(long, env = "ESERVELESS_QUEUE_DEPTH", default_value_t = 100, hide_default_value = true)]
    pub queue_depth: u32,
    /// Longest a request waits for a busy function's capacity before 503, e.g. 10s
    #[arg(long, env = "ESERVELESS_QUEUE_TIMEOUT", value_parser = humantime::parse_duration, default_value = "30s", hide_default_value = true)]
    pub queue_timeout: Duration,
    /// Open WebSocket connections of a replaced revision are closed (code 1001) this long after a redeploy, e.g. 30s
    #[arg(long, env = "ESERVELESS_UPGRADE_GRACE", value_parser = humantime::parse_duration, default_value = "30s", hide_default_value = true)]
    pub upgrade_grace: Duration,
    /// A WebSocket connection with no bytes either way for this long is closed (code 1001), e.g. 5m
    #[arg(long, env = "ESERVELESS_UPGRADE_IDLE_TIMEOUT", value_parser = humantime::parse_duration, default_value = "5m", hide_default_value = true)]
    pub upgrade_idle_timeout: Duration,
    /// Output kept per instance and per cron run, and most returned per log entry, e.g. 64Ki
    #[arg(long, env = "ESERVELESS_LOG_BYTES", value_parser = parse_memory_arg, default_value = "64Ki", hide_default_value = true)]
    pub log_bytes: u64,
}

/// What a function container may use and reach.
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxSettings {
    /// Docker network the function containers join
    #[arg(long, env = "ESERVELESS_NETWORK", default_value = "eserveless", hide_default_value = true)]
    pub network: String,
    /// Memory limit of a function that does not set `memory`, e.g. 256Mi
    #[arg(long, env = "ESERVELESS_DEFAULT_MEMORY", value_parser = parse_memory_arg)]
    pub default_memory: Option<u64>,
    /// Most memory a manifest may ask for, e.g. 2Gi
    #[arg(long, env = "ESERVELESS_MAX_MEMORY", value_parser = parse_memory_arg)]
    pub max_memory: Option<u64>,
    /// CPU share of a function that does not set `cpu`, e.g. 1 or 500m
    #[arg(long, env = "ESERVELESS_DEFAULT_CPU", value_parser = parse_cpu_arg)]
    pub default_cpu: Option<u32>,
    /// Most CPU a manifest may ask for, e.g. 2
    #[arg(long, env = "ESERVELESS_MAX_CPU", value_parser = parse_cpu_arg)]
    pub max_cpu: Option<u32>,
    /// Most processes (threads included) in one function container
    #[arg(long, env = "ESERVELESS_PIDS_LIMIT")]
    pub pids_limit: Option<i64>,
    /// OCI runtime for function containers, as registered with Docker (e.g. runsc)
    #[arg(long, env = "ESERVELESS_OCI_RUNTIME")]
    pub oci_runtime: Option<String>,
    /// Install host firewall rules that keep functions off the host and link-local addresses
    #[arg(long, env = "ESERVELESS_FIREWALL", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value_t = true, hide_default_value = true)]
    pub firewall: bool,
    /// Let functions open connections to the internet
    #[arg(long, env = "ESERVELESS_EGRESS", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value_t = true, hide_default_value = true)]
    pub egress: bool,
}

/// Which container engine runs the functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    /// The Docker engine of this host: every instance on this machine
    Docker,
    /// A Docker Swarm, driven through its manager (this host): instances on any node
    Swarm,
}

/// The engine that runs function instances and cron runs, and where swarm nodes get images.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineSettings {
    /// Container engine: `docker` (this host) or `swarm` (this host must be a swarm manager)
    #[arg(long, env = "ESERVELESS_ENGINE", value_enum, default_value = "docker", hide_default_value = true)]
    pub engine: EngineKind,
    /// Swarm: registry the nodes pull function images from, e.g. http://10.0.0.5:5000; without it the server runs one on the manager
    #[arg(long, env = "ESERVELESS_REGISTRY", value_parser = parse_registry_arg)]
    pub registry: Option<String>,
    /// Swarm: port of the registry the server runs on the manager when no --registry is given
    #[arg(long, env = "ESERVELESS_REGISTRY_PORT", default_value_t = 5000, hide_default_value = true)]
    pub registry_port: u16,
}

// The defaults are the clap defaults above, so a struct built in code starts where `serve`
// does without flags, environment or file.
impl Default for ListenerSettings {
    fn default() -> Self {
        super::file::declared_defaults()
    }
}
impl Default for SourceSettings {
    fn default() -> Self {
        super::file::declared_defaults()
    }
}
impl Default for BuildSettings {
    fn default() -> Self {
        super::file::declared_defaults()
    }
}
impl Default for PoolSettings {
    fn default() -> Self {
        super::file::declared_defaults()
    }
}
impl Default for EngineSettings {
    fn default() -> Self {
        super::file::declared_defaults()
    }
}
impl Default for SandboxSettings {
    fn default() -> Self {
        super::file::declared_defaults()
    }
}

/// Sizes like `256Mi`, the same syntax as a manifest's `memory`; used by flag, env and file.
fn parse_memory_arg(s: &str) -> Result<u64, String> {
    crate::manifest::parse_memory(s)
}

/// CPU shares like `0.5` or `500m`, the same syntax as a manifest's `cpu`.
fn parse_cpu_arg(s: &str) -> Result<u32, String> {
    crate::manifest::parse_cpu(s)
}

/// A registry as `host:port` (what image references start with), from `host:port` or an
/// `http(s)://host:port` URL; a path, query or user part is refused, since image references
/// cannot carry them.
fn parse_registry_arg(s: &str) -> Result<String, String> {
    let t = s.trim();
    let rest = t.strip_prefix("http://").or_else(|| t.strip_prefix("https://")).unwrap_or(t);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let ok = !rest.is_empty()
        && rest.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        && !rest.starts_with(['.', '-', ':']);
    if ok {
        Ok(rest.to_string())
    } else {
        Err(format!("`{s}` is not a registry address; give host:port or http://host:port, e.g. http://10.0.0.5:5000"))
    }
}
