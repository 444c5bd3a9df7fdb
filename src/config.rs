//! Server configuration: flags win over environment variables, which win over an optional
//! TOML config file, which wins over built-in defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::engine::manifest::Scaling;

/// Connected hosts' defaults; `scripts/offline-images` builds equivalents from Debian packages.
pub const DEFAULT_NODE_IMAGE: &str = "node:20-bookworm-slim";
pub const DEFAULT_GO_IMAGE: &str = "golang:1.22-bookworm";
pub const DEFAULT_RUN_IMAGE: &str = "debian:bookworm-slim";

/// `eserveless serve` flags; each may also come from the environment or the config file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8000]
    #[arg(long, env = "ESERVELESS_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Where the SQLite database and working files live [default: ./.eserveless]
    #[arg(long, env = "ESERVELESS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Accept file:// URLs and absolute paths as repositories
    #[arg(long, env = "ESERVELESS_ALLOW_LOCAL_REPOS", num_args = 0..=1, default_missing_value = "true")]
    pub allow_local_repos: Option<bool>,
    /// Accept http(s) repositories on loopback, private or link-local addresses
    #[arg(long, env = "ESERVELESS_ALLOW_PRIVATE_REPOS", num_args = 0..=1, default_missing_value = "true")]
    pub allow_private_repos: Option<bool>,
    /// Fetch git submodules of deployed repositories (https/ssh URLs of public hosts only)
    #[arg(long, env = "ESERVELESS_ALLOW_SUBMODULES", num_args = 0..=1, default_missing_value = "true")]
    pub allow_submodules: Option<bool>,
    /// A directory of runtime templates (DIR/<runtime>/<http|cron>/) overriding or adding to the embedded ones
    #[arg(long, env = "ESERVELESS_TEMPLATES")]
    pub templates: Option<PathBuf>,
    /// Base image for Node functions
    #[arg(long, env = "ESERVELESS_NODE_IMAGE")]
    pub node_image: Option<String>,
    /// Builder image with the Go toolchain
    #[arg(long, env = "ESERVELESS_GO_IMAGE")]
    pub go_image: Option<String>,
    /// Minimal run stage for compiled functions
    #[arg(long, env = "ESERVELESS_RUN_IMAGE")]
    pub run_image: Option<String>,
    /// Default idle time before an http instance is removed, e.g. 5m
    #[arg(long, env = "ESERVELESS_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Default idle time before an http instance is paused, e.g. 30s
    #[arg(long, env = "ESERVELESS_PAUSE_AFTER", value_parser = humantime::parse_duration)]
    pub pause_after: Option<Duration>,
    /// Docker network the function containers join
    #[arg(long, env = "ESERVELESS_NETWORK")]
    pub network: Option<String>,
    /// Longest one image build may take, e.g. 10m
    #[arg(long, env = "ESERVELESS_BUILD_TIMEOUT", value_parser = humantime::parse_duration)]
    pub build_timeout: Option<Duration>,
    /// Longest a git clone or lookup may take, e.g. 2m
    #[arg(long, env = "ESERVELESS_CLONE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub clone_timeout: Option<Duration>,
    /// Requests allowed to wait per function when every instance is busy (more get 429)
    #[arg(long, env = "ESERVELESS_QUEUE_DEPTH")]
    pub queue_depth: Option<u32>,
    /// Longest a request waits for a busy function's capacity before 503, e.g. 10s
    #[arg(long, env = "ESERVELESS_QUEUE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub queue_timeout: Option<Duration>,
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
    #[arg(long, env = "ESERVELESS_FIREWALL", num_args = 0..=1, default_missing_value = "true")]
    pub firewall: Option<bool>,
    /// Let functions open connections to the internet
    #[arg(long, env = "ESERVELESS_EGRESS", num_args = 0..=1, default_missing_value = "true")]
    pub egress: Option<bool>,
    /// Time a client connection has to send a request head, from accept and between keep-alive requests, e.g. 10s
    #[arg(long, env = "ESERVELESS_HEAD_TIMEOUT", value_parser = humantime::parse_duration)]
    pub head_timeout: Option<Duration>,
    /// Most open client connections (all clients together); more are closed at once
    #[arg(long, env = "ESERVELESS_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most open connections from one client address; more are closed at once
    #[arg(long, env = "ESERVELESS_MAX_CLIENT_CONNECTIONS")]
    pub max_client_connections: Option<u32>,
    /// Output kept per instance and per cron run, and most returned per log entry, e.g. 64Ki
    #[arg(long, env = "ESERVELESS_LOG_BYTES", value_parser = parse_memory_arg)]
    pub log_bytes: Option<u64>,
    /// A TOML file with any of the settings above (keys as in the flags, with `_`)
    #[arg(long, env = "ESERVELESS_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    allow_local_repos: Option<bool>,
    allow_private_repos: Option<bool>,
    allow_submodules: Option<bool>,
    templates: Option<PathBuf>,
    node_image: Option<String>,
    go_image: Option<String>,
    run_image: Option<String>,
    #[serde(default, with = "opt_duration")]
    idle_timeout: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    pause_after: Option<Duration>,
    network: Option<String>,
    #[serde(default, with = "opt_duration")]
    build_timeout: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    clone_timeout: Option<Duration>,
    queue_depth: Option<u32>,
    #[serde(default, with = "opt_duration")]
    queue_timeout: Option<Duration>,
    default_memory: Option<String>,
    max_memory: Option<String>,
    default_cpu: Option<toml::Value>,
    max_cpu: Option<toml::Value>,
    pids_limit: Option<i64>,
    oci_runtime: Option<String>,
    firewall: Option<bool>,
    egress: Option<bool>,
    #[serde(default, with = "opt_duration")]
    head_timeout: Option<Duration>,
    max_connections: Option<usize>,
    max_client_connections: Option<u32>,
    log_bytes: Option<String>,
}

fn parse_memory_arg(s: &str) -> Result<u64, String> {
    crate::engine::manifest::parse_memory(s)
}

fn parse_cpu_arg(s: &str) -> Result<u32, String> {
    crate::engine::manifest::parse_cpu(s)
}

fn file_cpu(key: &str, v: Option<toml::Value>) -> anyhow::Result<Option<u32>> {
    let text = match v {
        None => return Ok(None),
        Some(toml::Value::String(s)) => s,
        Some(toml::Value::Integer(i)) => i.to_string(),
        Some(toml::Value::Float(f)) => f.to_string(),
        Some(other) => anyhow::bail!("config `{key}` must be a number of CPUs or a string like \"500m\", not {other}"),
    };
    crate::engine::manifest::parse_cpu(&text).map(Some).map_err(|e| anyhow::anyhow!("config `{key}`: {e}"))
}

fn file_memory(key: &str, v: Option<String>) -> anyhow::Result<Option<u64>> {
    v.map(|t| crate::engine::manifest::parse_memory(&t).map_err(|e| anyhow::anyhow!("config `{key}`: {e}"))).transpose()
}

mod opt_duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom)).transpose()
    }
}

/// The resolved server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub allow_local_repos: bool,
    pub allow_private_repos: bool,
    pub allow_submodules: bool,
    pub templates: Option<PathBuf>,
    pub node_image: String,
    pub go_image: String,
    pub run_image: String,
    pub scaling: Scaling,
    pub network: String,
    pub build_timeout: Duration,
    pub clone_timeout: Duration,
    pub queue_depth: u32,
    pub queue_timeout: Duration,
    /// Limits of a function that asks for nothing (memory, CPU, pids, OCI runtime, ...).
    pub limits: crate::infra::driver::Limits,
    /// Ceilings on what a manifest may ask for.
    pub caps: crate::engine::manifest::ResourceCaps,
    pub firewall: bool,
    pub egress: bool,
    /// Time a connection has to send a request head (from accept, and between requests).
    pub head_timeout: Duration,
    pub max_connections: usize,
    pub max_client_connections: u32,
    /// Output kept per instance and per cron run.
    pub log_bytes: usize,
}

impl ServerConfig {
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Self> {
        let file: FileConfig = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("invalid config file {}: {e}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let mut scaling = Scaling::default();
        if let Some(d) = args.idle_timeout.or(file.idle_timeout) {
            scaling.idle_timeout = d;
        }
        if let Some(d) = args.pause_after.or(file.pause_after) {
            scaling.pause_after = d;
        }
        if scaling.pause_after > scaling.idle_timeout {
            scaling.pause_after = scaling.idle_timeout;
        }
        let caps_default = crate::engine::manifest::ResourceCaps::default();
        let caps = crate::engine::manifest::ResourceCaps {
            max_memory_bytes: args.max_memory.or(file_memory("max_memory", file.max_memory)?).unwrap_or(caps_default.max_memory_bytes),
            max_cpu_millis: args.max_cpu.or(file_cpu("max_cpu", file.max_cpu)?).unwrap_or(caps_default.max_cpu_millis),
        };
        let mut limits = crate::infra::driver::Limits::default();
        if let Some(m) = args.default_memory.or(file_memory("default_memory", file.default_memory)?) {
            limits.memory_bytes = m as i64;
        }
        if let Some(c) = args.default_cpu.or(file_cpu("default_cpu", file.default_cpu)?) {
            limits.nano_cpus = i64::from(c) * 1_000_000;
        }
        if let Some(p) = args.pids_limit.or(file.pids_limit) {
            anyhow::ensure!((16..=100_000).contains(&p), "pids_limit must be between 16 and 100000, got {p}");
            limits.pids = p;
        }
        limits.oci_runtime = args.oci_runtime.clone().or(file.oci_runtime).filter(|r| !r.trim().is_empty());
        anyhow::ensure!(
            limits.memory_bytes as u64 <= caps.max_memory_bytes && (limits.nano_cpus / 1_000_000) as u32 <= caps.max_cpu_millis,
            "the default memory/CPU ({} bytes, {}m) is above the maximum ({} bytes, {}m); lower the default or raise the maximum",
            limits.memory_bytes,
            limits.nano_cpus / 1_000_000,
            caps.max_memory_bytes,
            caps.max_cpu_millis
        );
        let head_timeout = args.head_timeout.or(file.head_timeout).unwrap_or(Duration::from_secs(10));
        anyhow::ensure!(
            (Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&head_timeout),
            "head_timeout must be between 100ms and 1h, got {}",
            humantime::format_duration(head_timeout)
        );
        let max_connections = args.max_connections.or(file.max_connections).unwrap_or(4096);
        let max_client_connections = args.max_client_connections.or(file.max_client_connections).unwrap_or(256);
        anyhow::ensure!(
            max_connections >= 1 && max_client_connections >= 1,
            "max_connections and max_client_connections must be at least 1 (got {max_connections} and {max_client_connections})"
        );
        let log_bytes = args.log_bytes.or(file_memory("log_bytes", file.log_bytes)?).unwrap_or(64 << 10);
        anyhow::ensure!(
            (1024..=(64 << 20)).contains(&log_bytes),
            "log_bytes must be between 1Ki and 64Mi (output kept per instance and per cron run), got {log_bytes}"
        );
        Ok(ServerConfig {
            listen: args.listen.or(file.listen).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8000))),
            data_dir: args.data_dir.clone().or(file.data_dir).unwrap_or_else(|| PathBuf::from(".eserveless")),
            allow_local_repos: args.allow_local_repos.or(file.allow_local_repos).unwrap_or(false),
            allow_private_repos: args.allow_private_repos.or(file.allow_private_repos).unwrap_or(false),
            allow_submodules: args.allow_submodules.or(file.allow_submodules).unwrap_or(false),
            templates: args.templates.clone().or(file.templates),
            node_image: args.node_image.clone().or(file.node_image).unwrap_or_else(|| DEFAULT_NODE_IMAGE.into()),
            go_image: args.go_image.clone().or(file.go_image).unwrap_or_else(|| DEFAULT_GO_IMAGE.into()),
            run_image: args.run_image.clone().or(file.run_image).unwrap_or_else(|| DEFAULT_RUN_IMAGE.into()),
            scaling,
            network: args.network.clone().or(file.network).unwrap_or_else(|| "eserveless".into()),
            build_timeout: args.build_timeout.or(file.build_timeout).unwrap_or(Duration::from_secs(600)),
            clone_timeout: args.clone_timeout.or(file.clone_timeout).unwrap_or(Duration::from_secs(120)),
            queue_depth: args.queue_depth.or(file.queue_depth).unwrap_or(100),
            queue_timeout: args.queue_timeout.or(file.queue_timeout).unwrap_or(Duration::from_secs(30)),
            limits,
            caps,
            firewall: args.firewall.or(file.firewall).unwrap_or(true),
            egress: args.egress.or(file.egress).unwrap_or(true),
            head_timeout,
            max_connections,
            max_client_connections,
            log_bytes: log_bytes as usize,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\nnode_image = \"from-file\"\nidle_timeout = \"2m\"\n").expect("w");
        let args = ServeArgs {
            config: Some(path.clone()),
            node_image: Some("from-flag".into()),
            ..Default::default()
        };
        let c = ServerConfig::resolve(&args).expect("resolve");
        assert_eq!(c.node_image, "from-flag");
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.scaling.idle_timeout, Duration::from_secs(120));
        assert_eq!(c.go_image, DEFAULT_GO_IMAGE);
        assert!(!c.allow_local_repos);

        assert_eq!(c.limits.memory_bytes, 256 << 20);
        assert!(c.firewall && c.egress);

        std::fs::write(&path, "max_memory = \"1Gi\"\ndefault_cpu = 0.5\noci_runtime = \"runsc\"\negress = false\n").expect("w");
        let c = ServerConfig::resolve(&ServeArgs { config: Some(path.clone()), ..Default::default() }).expect("resolve");
        assert_eq!((c.caps.max_memory_bytes, c.limits.nano_cpus), (1 << 30, 500_000_000));
        assert_eq!(c.limits.oci_runtime.as_deref(), Some("runsc"));
        assert!(!c.egress);
        std::fs::write(&path, "max_memory = \"64Mi\"\n").expect("w");
        let e = ServerConfig::resolve(&ServeArgs { config: Some(path.clone()), ..Default::default() }).expect_err("default above max");
        assert!(e.to_string().contains("above the maximum"), "{e}");

        std::fs::write(&path, "lisen = \"x\"\n").expect("w");
        let e = ServerConfig::resolve(&args).expect_err("unknown key");
        assert!(e.to_string().contains("lisen"), "{e}");
    }
}
