//! Server configuration: flags win over environment variables, which win over an optional
//! TOML config file, which wins over built-in defaults. The settings are declared once, in
//! `config/settings.rs`; `config/file.rs` is the config file layer; this module composes them
//! for `serve` and checks the combination.

mod file;
mod settings;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::ArgMatches;

use crate::manifest::Scaling;

pub use file::ConfigFileError;
pub use settings::{
    BuildSettings, EngineKind, EngineSettings, ListenerSettings, PoolSettings, SandboxSettings, SourceSettings, DEFAULT_GO_IMAGE,
    DEFAULT_NODE_IMAGE, DEFAULT_RUN_IMAGE,
};

/// `eserveless serve` flags; each may also come from the environment or the config file.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub listener: ListenerSettings,
    #[command(flatten)]
    pub source: SourceSettings,
    #[command(flatten)]
    pub build: BuildSettings,
    #[command(flatten)]
    pub pools: PoolSettings,
    #[command(flatten)]
    pub sandbox: SandboxSettings,
    #[command(flatten)]
    pub engine: EngineSettings,
    /// A TOML file with any of the settings above (keys as in the flags, with `_`)
    #[arg(long, env = "ESERVELESS_CONFIG")]
    pub config: Option<PathBuf>,
}

/// The arg id of `--config`; the file may not name another file.
const CONFIG_ARG: &str = "config";

impl Default for ServeArgs {
    /// The declared defaults: `serve` with no flags, environment or file.
    fn default() -> Self {
        file::declared_defaults()
    }
}

/// The limits of an upgraded (WebSocket) connection through the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpgradeLimits {
    /// How long open connections of a replaced revision stay open after a redeploy.
    pub grace: Duration,
    /// No bytes either way for this long closes a connection.
    pub idle: Duration,
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
    pub python_image: String,
    /// Image builds at once.
    pub build_parallelism: usize,
    /// Deployments whose images a project keeps.
    pub keep_deployments: usize,
    pub scaling: Scaling,
    pub network: String,
    pub build_timeout: Duration,
    pub clone_timeout: Duration,
    /// Largest directory upload, compressed (the request body) and unpacked.
    pub max_upload: u64,
    pub queue_depth: u32,
    pub queue_timeout: Duration,
    /// Upgraded connections (WebSocket): grace after a redeploy, idle timeout.
    pub upgrades: UpgradeLimits,
    /// Limits of a function that asks for nothing (memory, CPU, pids, OCI runtime, ...).
    pub limits: crate::infra::driver::Limits,
    /// Ceilings on what a manifest may ask for.
    pub caps: crate::manifest::ResourceCaps,
    pub firewall: bool,
    pub egress: bool,
    /// Time a connection has to send a request head (from accept, and between requests).
    pub head_timeout: Duration,
    pub max_connections: usize,
    pub max_client_connections: u32,
    /// Output kept per instance and per cron run.
    pub log_bytes: usize,
    /// The container engine, and for a swarm where its nodes get images.
    pub engine: EngineSettings,
}

impl ServerConfig {
    /// The settings `serve` runs with: `args` and `matches` as clap parsed them (flags,
    /// environment, defaults), with the `--config` file filling what no flag or variable set.
    pub fn load(mut args: ServeArgs, matches: &ArgMatches) -> anyhow::Result<Self> {
        if let Some(path) = args.config.clone() {
            file::apply(&mut args, matches, &path, CONFIG_ARG)?;
        }
        Self::resolve(&args)
    }

    /// Checks the settings together and derives what the rest of the crate reads.
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Self> {
        let ServeArgs { listener, source, build, pools, sandbox, engine, config: _ } = args;
        let mut scaling = Scaling::default();
        if let Some(d) = pools.idle_timeout {
            scaling.idle_timeout = d;
        }
        if let Some(d) = pools.pause_after {
            scaling.pause_after = d;
        }
        if scaling.pause_after > scaling.idle_timeout {
            scaling.pause_after = scaling.idle_timeout;
        }
        let caps_default = crate::manifest::ResourceCaps::default();
        let caps = crate::manifest::ResourceCaps {
            max_memory_bytes: sandbox.max_memory.unwrap_or(caps_default.max_memory_bytes),
            max_cpu_millis: sandbox.max_cpu.unwrap_or(caps_default.max_cpu_millis),
        };
        let mut limits = crate::infra::driver::Limits::default();
        if let Some(m) = sandbox.default_memory {
            // Sizes are checked to at most 2^50 bytes when parsed, so this never saturates.
            limits.memory_bytes = i64::try_from(m).unwrap_or(i64::MAX);
        }
        if let Some(c) = sandbox.default_cpu {
            limits.nano_cpus = i64::from(c) * 1_000_000;
        }
        if let Some(p) = sandbox.pids_limit {
            anyhow::ensure!((16..=100_000).contains(&p), "pids_limit must be between 16 and 100000, got {p}");
            limits.pids = p;
        }
        limits.oci_runtime = sandbox.oci_runtime.clone().filter(|r| !r.trim().is_empty());
        anyhow::ensure!(
            limits.memory_bytes() <= caps.max_memory_bytes && limits.cpu_millis() <= caps.max_cpu_millis,
            "the default memory/CPU ({} bytes, {}m) is above the maximum ({} bytes, {}m); lower the default or raise the maximum",
            limits.memory_bytes,
            limits.nano_cpus / 1_000_000,
            caps.max_memory_bytes,
            caps.max_cpu_millis
        );
        let head_timeout = listener.head_timeout;
        anyhow::ensure!(
            (Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&head_timeout),
            "head_timeout must be between 100ms and 1h, got {}",
            humantime::format_duration(head_timeout)
        );
        let (max_connections, max_client_connections) = (listener.max_connections, listener.max_client_connections);
        anyhow::ensure!(
            max_connections >= 1 && max_client_connections >= 1,
            "max_connections and max_client_connections must be at least 1 (got {max_connections} and {max_client_connections})"
        );
        let log_bytes = pools.log_bytes;
        anyhow::ensure!(
            (1024..=(64 << 20)).contains(&log_bytes),
            "log_bytes must be between 1Ki and 64Mi (output kept per instance and per cron run), got {log_bytes}"
        );
        for (name, d) in [("upgrade_grace", pools.upgrade_grace), ("upgrade_idle_timeout", pools.upgrade_idle_timeout)] {
            anyhow::ensure!(
                (Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&d),
                "{name} (--{}) must be between 1s and 24h, got {}",
                name.replace('_', "-"),
                humantime::format_duration(d)
            );
        }
        if let (EngineKind::Docker, Some(registry)) = (engine.engine, &engine.registry) {
            anyhow::bail!("--registry {registry} is only used with --engine swarm (one host needs no registry); drop it or add --engine swarm");
        }
        Ok(ServerConfig {
            listen: listener.listen,
            data_dir: listener.data_dir.clone(),
            allow_local_repos: source.allow_local_repos,
            allow_private_repos: source.allow_private_repos,
            allow_submodules: source.allow_submodules,
            templates: build.templates.clone(),
            node_image: build.node_image.clone(),
            go_image: build.go_image.clone(),
            run_image: build.run_image.clone(),
            python_image: build.python_image.clone(),
            build_parallelism: build.build_parallelism as usize,
            keep_deployments: build.keep_deployments as usize,
            scaling,
            network: sandbox.network.clone(),
            build_timeout: build.build_timeout,
            clone_timeout: source.clone_timeout,
            max_upload: source.max_upload,
            queue_depth: pools.queue_depth,
            queue_timeout: pools.queue_timeout,
            upgrades: UpgradeLimits { grace: pools.upgrade_grace, idle: pools.upgrade_idle_timeout },
            limits,
            caps,
            firewall: sandbox.firewall,
            egress: sandbox.egress,
            head_timeout,
            max_connections,
            max_client_connections,
            log_bytes: usize::try_from(log_bytes).unwrap_or(usize::MAX),
            engine: engine.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches};

    /// `serve ARGV` as main parses it, the environment ignored unless `with_env`, then the file.
    fn load(argv: &[&str], with_env: bool) -> anyhow::Result<ServerConfig> {
        let mut cmd = ServeArgs::augment_args(clap::Command::new("serve"));
        if !with_env {
            cmd = cmd.mut_args(|a| a.env(None));
        }
        let matches = cmd.try_get_matches_from(std::iter::once("serve").chain(argv.iter().copied()))?;
        ServerConfig::load(ServeArgs::from_arg_matches(&matches)?, &matches)
    }

    #[test]
    fn flags_win_over_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("c.toml");
        let config = path.to_str().expect("utf8");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\nnode_image = \"from-file\"\nidle_timeout = \"2m\"\n").expect("w");
        let args = ["--config", config, "--node-image", "from-flag"];
        let c = load(&args, false).expect("resolve");
        assert_eq!(c.node_image, "from-flag");
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.scaling.idle_timeout, Duration::from_secs(120));
        assert_eq!(c.go_image, DEFAULT_GO_IMAGE);
        assert!(!c.allow_local_repos);

        assert_eq!(c.limits.memory_bytes, 256 << 20);
        assert!(c.firewall && c.egress);

        std::fs::write(&path, "max_memory = \"1Gi\"\ndefault_cpu = 0.5\noci_runtime = \"runsc\"\negress = false\n").expect("w");
        let c = load(&["--config", config], false).expect("resolve");
        assert_eq!((c.caps.max_memory_bytes, c.limits.nano_cpus), (1 << 30, 500_000_000));
        assert_eq!(c.limits.oci_runtime.as_deref(), Some("runsc"));
        assert!(!c.egress);
        std::fs::write(&path, "max_memory = \"64Mi\"\n").expect("w");
        let e = load(&["--config", config], false).expect_err("default above max");
        assert!(e.to_string().contains("above the maximum"), "{e}");

        std::fs::write(&path, "lisen = \"x\"\n").expect("w");
        let e = load(&args, false).expect_err("unknown key");
        assert!(e.to_string().contains("lisen"), "{e}");
    }

    #[test]
    fn defaults_are_the_ones_documented() {
        let c = ServerConfig::resolve(&ServeArgs::default()).expect("defaults resolve");
        assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 8000)));
        assert_eq!(c.data_dir, PathBuf::from(".eserveless"));
        assert_eq!((c.build_timeout, c.clone_timeout, c.queue_timeout), (Duration::from_secs(600), Duration::from_secs(120), Duration::from_secs(30)));
        assert_eq!((c.queue_depth, c.log_bytes, c.head_timeout), (100, 64 << 10, Duration::from_secs(10)));
        assert_eq!((c.max_connections, c.max_client_connections, c.network.as_str()), (4096, 256, "eserveless"));
        assert_eq!((c.node_image.as_str(), c.run_image.as_str()), (DEFAULT_NODE_IMAGE, DEFAULT_RUN_IMAGE));
        assert!(!c.allow_local_repos && !c.allow_private_repos && !c.allow_submodules && c.firewall && c.egress);
        assert_eq!(c.scaling, Scaling::default());
        assert_eq!(c.caps, crate::manifest::ResourceCaps::default());
    }

    #[test]
    fn flag_beats_file_beats_default_and_file_values_are_checked() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("layers.toml");
        let config = path.to_str().expect("utf8");
        std::fs::write(&path, "queue_timeout = \"1m\"\nbuild_timeout = \"1m\"\nlog_bytes = \"1Ki\"\nmax_memory = \"1Gi\"\nallow_local_repos = true\nfirewall = false\n").expect("w");
        let c = load(&["--config", config, "--queue-timeout", "3m", "--log-bytes", "3Ki", "--firewall"], false).expect("resolve");
        assert_eq!((c.queue_timeout, c.build_timeout, c.clone_timeout), (Duration::from_secs(180), Duration::from_secs(60), Duration::from_secs(120)));
        assert_eq!((c.log_bytes, c.caps.max_memory_bytes, c.limits.memory_bytes), (3 << 10, 1 << 30, 256 << 20));
        assert!(c.firewall && c.allow_local_repos && !c.allow_private_repos);

        std::fs::write(&path, "max_memory = \"1Gx\"\n").expect("w");
        let e = load(&["--config", config], false).expect_err("bad size").to_string();
        assert!(e.contains("layers.toml") && e.contains("`max_memory = \"1Gx\"`") && e.contains("unknown unit"), "{e}");
        // Validation that spans settings still runs on file values.
        std::fs::write(&path, "pids_limit = 2\n").expect("w");
        let e = load(&["--config", config], false).expect_err("pids").to_string();
        assert!(e.contains("pids_limit must be between 16 and 100000, got 2"), "{e}");
    }

    /// Environment variables are process-wide, so this runs in a child process of its own:
    /// [`env_layer_child`] with the variables set.
    #[test]
    fn flag_beats_env_beats_file() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("layers.toml");
        std::fs::write(
            &path,
            "queue_timeout = \"1m\"\nbuild_timeout = \"1m\"\nclone_timeout = \"1m\"\n\
             log_bytes = \"1Ki\"\nmax_memory = \"1Gi\"\ndefault_memory = \"128Mi\"\n\
             allow_local_repos = false\nallow_private_repos = true\nallow_submodules = true\n",
        )
        .expect("w");
        let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"));
        child.args(["--exact", "config::tests::env_layer_child", "--nocapture", "--test-threads=1"]);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ESERVELESS_") {
                child.env_remove(name);
            }
        }
        child
            .env("ESERVELESS_TEST_ENV_LAYER", "1")
            .env("ESERVELESS_CONFIG", &path)
            .env("ESERVELESS_QUEUE_TIMEOUT", "2m")
            .env("ESERVELESS_BUILD_TIMEOUT", "2m")
            .env("ESERVELESS_LOG_BYTES", "2Ki")
            .env("ESERVELESS_MAX_MEMORY", "2Gi")
            .env("ESERVELESS_ALLOW_LOCAL_REPOS", "false")
            .env("ESERVELESS_ALLOW_PRIVATE_REPOS", "false");
        let out = child.output().expect("run the child test");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("1 passed"), "{text}{}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn env_layer_child() {
        if std::env::var_os("ESERVELESS_TEST_ENV_LAYER").is_none() {
            return;
        }
        let c = load(&["--queue-timeout", "3m", "--log-bytes", "3Ki", "--allow-local-repos"], true).expect("resolve");
        // Durations: flag over env over file; env over file; file over default; default.
        assert_eq!(
            (c.queue_timeout, c.build_timeout, c.clone_timeout, c.head_timeout),
            (Duration::from_secs(180), Duration::from_secs(120), Duration::from_secs(60), Duration::from_secs(10))
        );
        // Sizes: flag over env over file; env over file; file over default.
        assert_eq!((c.log_bytes, c.caps.max_memory_bytes, c.limits.memory_bytes), (3 << 10, 2 << 30, 128 << 20));
        // Bools: flag over env; env over file; file over default; default.
        assert!(c.allow_local_repos && !c.allow_private_repos && c.allow_submodules && c.egress);
    }

    #[test]
    fn websocket_limits_have_defaults_flags_a_file_key_and_bounds() {
        let c = load(&[], false).expect("defaults");
        assert_eq!(c.upgrades, UpgradeLimits { grace: Duration::from_secs(30), idle: Duration::from_secs(300) });
        let c = load(&["--upgrade-grace", "3s", "--upgrade-idle-timeout", "1m"], false).expect("flags");
        assert_eq!(c.upgrades, UpgradeLimits { grace: Duration::from_secs(3), idle: Duration::from_secs(60) });
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "upgrade_grace = \"10s\"\n").expect("w");
        assert_eq!(load(&["--config", path.to_str().expect("utf8")], false).expect("file").upgrades.grace, Duration::from_secs(10));
        let e = load(&["--upgrade-grace", "0s"], false).expect_err("no grace").to_string();
        assert!(e.contains("--upgrade-grace") && e.contains("0s") && e.contains("between 1s and 24h"), "{e}");
        let e = load(&["--upgrade-idle-timeout", "2d"], false).expect_err("too long").to_string();
        assert!(e.contains("--upgrade-idle-timeout") && e.contains("2days"), "{e}");
    }

    #[test]
    fn the_engine_is_docker_unless_swarm_is_asked_and_a_registry_needs_the_swarm() {
        let c = load(&[], false).expect("defaults");
        assert_eq!((c.engine.engine, c.engine.registry.as_deref(), c.engine.registry_port), (EngineKind::Docker, None, 5000));
        let c = load(&["--engine", "swarm", "--registry", "http://10.0.0.5:5000/"], false).expect("swarm");
        assert_eq!((c.engine.engine, c.engine.registry.as_deref()), (EngineKind::Swarm, Some("10.0.0.5:5000")));
        let e = load(&["--registry", "10.0.0.5:5000"], false).expect_err("a registry without a swarm").to_string();
        assert!(e.contains("--registry 10.0.0.5:5000") && e.contains("--engine swarm"), "{e}");
        let e = load(&["--engine", "kubernetes"], false).expect_err("unknown engine").to_string();
        assert!(e.contains("kubernetes") && e.contains("docker") && e.contains("swarm"), "{e}");
        let e = load(&["--engine", "swarm", "--registry", "http://r:5000/v2/x"], false).expect_err("a path").to_string();
        assert!(e.contains("http://r:5000/v2/x") && e.contains("host:port"), "{e}");
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "engine = \"swarm\"\nregistry = \"reg.example:443\"\n").expect("w");
        let c = load(&["--config", path.to_str().expect("utf8")], false).expect("from the file");
        assert_eq!((c.engine.engine, c.engine.registry.as_deref()), (EngineKind::Swarm, Some("reg.example:443")));
    }
}
