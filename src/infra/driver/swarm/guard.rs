//! Swarm mode's node guard: the host firewall of `infra/firewall.rs` on every node.
//!
//! A function task sits on its project's overlay and on `docker_gwbridge`, its default
//! route. Through that bridge it could reach the node's own ports (the API, swarm's 2377 and
//! 7946, the registry), other projects' overlay addresses (the packet leaves the node by its
//! uplink), the other nodes and the LAN, and link-local metadata. The single-host engine's
//! rules close the same holes for its bridge; here they are installed by `eserveless
//! node-guard` (`cli/node_guard.rs`), run on every node by one *global* service on the host's
//! network with `NET_ADMIN` and `NET_RAW`. Its image is the base image, Debian's `iptables`,
//! and the running server's own binary, so the guard always speaks the server's rules.
//!
//! The server calls [`start_node_guard`] at startup, once its registry is set on the driver.
//! It does:
//! 1. [`prepare_guard_image`]: builds `eserveless/node-guard:<digest of the binary>` on the
//!    manager unless it exists (the tag changes only with the binary, so a restart of the
//!    same server builds nothing), which the driver's build pushes to the registry;
//! 2. the reference by digest every node pulls (the registry's, or the tag without one);
//! 3. [`ensure_node_guard`]: creates or updates the service (no change when nothing
//!    changed), then waits until a guard runs that reference on every ready node.
//!
//! The service carries `managed`, `owner` and `role=guard` labels; the driver's
//! [`list_managed`](super::super::Driver::list_managed) leaves it out, so the pool never
//! adopts or removes it.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{
    EndpointSpec, EndpointSpecModeEnum, Limit, NetworkAttachmentConfig, Node, NodeSpecAvailabilityEnum, NodeState,
    ServiceSpec, ServiceSpecMode, ServiceSpecUpdateConfig, ServiceSpecUpdateConfigFailureActionEnum,
    ServiceSpecUpdateConfigOrderEnum, Task, TaskSpec, TaskSpecContainerSpec, TaskSpecLogDriver, TaskSpecPlacement,
    TaskSpecResources, TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{ListTasksOptionsBuilder, UpdateServiceOptionsBuilder};
use bollard::Docker;
use sha2::Digest;
use tokio::time::Instant;

use super::super::{engine_log_options, labels, BuildRequest, Driver, DriverError, Result};
use super::SwarmDriver;

/// The `role` label of the guard service.
pub const GUARD_ROLE: &str = "guard";
/// Repository of the guard image built on the manager.
pub const GUARD_IMAGE_REPO: &str = "eserveless/node-guard";
/// Where the binary sits in the guard image.
const GUARD_BINARY: &str = "/usr/local/bin/eserveless";
/// The address pool Docker gives overlays when `docker swarm init` was not told another.
pub const DEFAULT_OVERLAY_POOL: &str = "10.0.0.0/8";
/// Bumped when the service's shape changes, so that a new server updates an old service.
const GUARD_SPEC_VERSION: &str = "1";
/// How long [`ensure_node_guard`] waits for a guard on every node: each node pulls the image
/// from the registry first (about 130 MB, the base image's layers mostly shared).
const GUARD_START_TIMEOUT: Duration = Duration::from_secs(120);
const GUARD_POLL: Duration = Duration::from_millis(500);
/// The guard image's build: the Debian mirror may be slow.
const GUARD_BUILD_TIMEOUT: Duration = Duration::from_secs(600);

/// What the guard enforces: the server's sandbox settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardPolicy {
    /// Functions may open connections to the internet (`--egress`).
    pub egress: bool,
    /// Functions may not reach 10/8, 172.16/12, 192.168/16, 100.64/10.
    pub block_private: bool,
    /// Ranges always dropped; [`ensure_node_guard`] adds the swarm's overlay pools.
    pub deny: Vec<String>,
    /// Resolvers whose port 53 stays open, besides each node's `/etc/resolv.conf` ones
    /// (dockerd's `--dns` ones, which the guard cannot see).
    pub dns: Vec<String>,
    /// Seconds between two checks of the rules on a node.
    pub interval_secs: u64,
}

impl Default for GuardPolicy {
    fn default() -> Self {
        GuardPolicy { egress: true, block_private: true, deny: Vec::new(), dns: Vec::new(), interval_secs: 10 }
    }
}

impl GuardPolicy {
    /// The guard's command line after the binary (`node-guard ...`), as
    /// `cli::node_guard::NodeGuard` parses it.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "node-guard".to_string(),
            "--bridge=docker_gwbridge".to_string(),
            format!("--egress={}", self.egress),
            format!("--block-private={}", self.block_private),
            format!("--interval-secs={}", self.interval_secs),
        ];
        a.extend(self.deny.iter().map(|d| format!("--deny={d}")));
        a.extend(self.dns.iter().map(|d| format!("--dns={d}")));
        a
    }
}

/// The guard service's name: one per server (owner) sharing the swarm.
pub fn guard_service_name(owner: &str) -> String {
    let owner: String = owner.chars().filter(char::is_ascii_alphanumeric).take(8).collect();
    format!("esl-{}-node-guard", owner.to_ascii_lowercase())
}

/// The local tag of the guard image holding `binary`.
pub fn guard_image_tag(binary: &[u8]) -> String {
    let digest = sha2::Sha256::digest(binary);
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{GUARD_IMAGE_REPO}:{hex}")
}

/// The guard image's Dockerfile. `iptables` from Debian: Debian's alternatives make it the
/// nf_tables backend, as on the nodes; the guard switches to `iptables-legacy` by itself
/// where dockerd uses that one.
pub fn guard_dockerfile(base_image: &str) -> String {
    format!(
        "FROM {base_image}\n\
         RUN apt-get update \\\n \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables \\\n \
         && rm -rf /var/lib/apt/lists/*\n\
         COPY eserveless {GUARD_BINARY}\n\
         ENTRYPOINT [\"{GUARD_BINARY}\"]\n\
         CMD [\"node-guard\"]\n"
    )
}

/// The build of the guard image for `binary` (a Linux build of this program) on `base_image`.
pub fn guard_build_request(binary: &[u8], base_image: &str, owner: &str) -> Result<BuildRequest> {
    let dockerfile = guard_dockerfile(base_image);
    let mut tar = tar::Builder::new(Vec::with_capacity(binary.len() + 4096));
    let mut add = |name: &str, mode: u32, data: &[u8]| -> std::io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, name, data)
    };
    add("Dockerfile", 0o644, dockerfile.as_bytes())
        .and_then(|()| add("eserveless", 0o755, binary))
        .map_err(|e| DriverError::Engine(format!("cannot pack the node guard's build context: {e}")))?;
    let context_tar =
        tar.into_inner().map_err(|e| DriverError::Engine(format!("cannot pack the node guard's build context: {e}")))?;
    Ok(BuildRequest {
        context_tar,
        dockerfile: "Dockerfile".into(),
        tag: guard_image_tag(binary),
        labels: HashMap::from([
            (labels::ROLE.to_string(), GUARD_ROLE.to_string()),
            (labels::OWNER.to_string(), owner.to_string()),
        ]),
        timeout: GUARD_BUILD_TIMEOUT,
        target: None,
        publish: true,
        on_line: None,
    })
}

/// Builds the guard image from the running server's own binary on the manager, unless an
/// image with its tag exists already; returns the local tag (for the registry push).
pub async fn prepare_guard_image(driver: &SwarmDriver, base_image: &str) -> Result<String> {
    let binary = tokio::fs::read("/proc/self/exe")
        .await
        .map_err(|e| DriverError::Engine(format!("cannot read the server's own binary for the node guard: {e}")))?;
    let tag = guard_image_tag(&binary);
    if driver.image_exists(&tag).await? {
        return Ok(tag);
    }
    let req = guard_build_request(&binary, base_image, &driver.owner)?;
    drop(binary);
    tracing::info!(image = %tag, "building the node guard image");
    driver.build_image(req).await.map_err(|e| match e {
        DriverError::BuildFailed { message, log } => {
            DriverError::BuildFailed { message: format!("node guard image: {message}"), log }
        }
        other => other,
    })?;
    Ok(tag)
}

/// Builds (when needed) and pushes the guard image; returns its reference by digest. The
/// image also runs the server's other per-node work (the image prune after `rm`).
pub async fn publish_guard_image(driver: &SwarmDriver, base_image: &str) -> Result<String> {
    let local = prepare_guard_image(driver, base_image).await?;
    let reference = driver.pinned_image(&local).await?;
    driver.set_tool_image(&reference);
    Ok(reference)
}

/// Builds (when needed) and publishes the guard image, then [`ensure_node_guard`]: the one
/// call the server makes at startup, after [`SwarmDriver::with_registry`]. `base_image` is a
/// Debian bookworm image on the manager (the offline base or run image). Returns the image
/// reference the guards run.
pub async fn start_node_guard(driver: &SwarmDriver, base_image: &str, policy: &GuardPolicy) -> Result<String> {
    let reference = publish_guard_image(driver, base_image).await?;
    ensure_node_guard(&driver.docker, &driver.owner, &reference, policy).await?;
    tracing::info!(image = %reference, egress = policy.egress, block_private = policy.block_private,
        "node guard running on every ready node");
    Ok(reference)
}

/// The overlays' address pools of the swarm (`docker swarm init --default-addr-pool`),
/// Docker's default when the manager does not say.
pub async fn overlay_pools(docker: &Docker) -> Result<Vec<String>> {
    let info = docker.info().await?;
    let pools = info.swarm.and_then(|s| s.cluster).and_then(|c| c.default_addr_pool).unwrap_or_default();
    Ok(if pools.is_empty() { vec![DEFAULT_OVERLAY_POOL.to_string()] } else { pools })
}

/// A digest of what the service runs, kept in its `config` label: equal digests, no update.
fn spec_digest(image_ref: &str, args: &[String]) -> String {
    let mut h = sha2::Sha256::new();
    for part in std::iter::once(GUARD_SPEC_VERSION).chain(std::iter::once(image_ref)).chain(args.iter().map(String::as_str)) {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// The global service running the guard from `image_ref` with `policy`.
pub fn guard_service_spec(owner: &str, image_ref: &str, policy: &GuardPolicy) -> ServiceSpec {
    let args = policy.args();
    let labels = HashMap::from([
        (labels::MANAGED.to_string(), "true".to_string()),
        (labels::OWNER.to_string(), owner.to_string()),
        (labels::ROLE.to_string(), GUARD_ROLE.to_string()),
        (labels::CONFIG.to_string(), spec_digest(image_ref, &args)),
    ]);
    let container = TaskSpecContainerSpec {
        image: Some(image_ref.to_string()),
        labels: Some(labels.clone()),
        command: Some(vec![GUARD_BINARY.to_string()]),
        args: Some(args),
        // iptables needs both: NET_ADMIN to change the tables, NET_RAW for its sockets.
        // API 1.41 (Docker 20.10) has CapabilityAdd; the default set keeps the rest.
        capability_add: Some(vec!["CAP_NET_ADMIN".into(), "CAP_NET_RAW".into()]),
        // The guard removes its rules on SIGTERM: a few iptables calls.
        stop_grace_period: Some(10_000_000_000),
        ..Default::default()
    };
    let task = TaskSpec {
        container_spec: Some(container),
        // The node's own network namespace: the rules are the node's.
        networks: Some(vec![NetworkAttachmentConfig { target: Some("host".into()), ..Default::default() }]),
        // Limited, never reserved: a full node must still get its guard.
        resources: Some(TaskSpecResources {
            limits: Some(Limit { memory_bytes: Some(128 * 1024 * 1024), nano_cpus: Some(250_000_000), pids: Some(64) }),
            ..Default::default()
        }),
        // A failed apply exits 1: try again; a SIGTERM (removal, update) exits 0.
        restart_policy: Some(TaskSpecRestartPolicy {
            condition: Some(TaskSpecRestartPolicyConditionEnum::ON_FAILURE),
            delay: Some(5_000_000_000),
            max_attempts: Some(0),
            ..Default::default()
        }),
        placement: Some(TaskSpecPlacement { constraints: Some(vec!["node.platform.os==linux".into()]), ..Default::default() }),
        log_driver: Some(TaskSpecLogDriver { name: Some("json-file".into()), options: Some(engine_log_options()) }),
        ..Default::default()
    };
    ServiceSpec {
        name: Some(guard_service_name(owner)),
        labels: Some(labels),
        task_template: Some(task),
        mode: Some(ServiceSpecMode { global: Some(HashMap::new()), ..Default::default() }),
        // The new guard starts before the old one stops: it takes the rules over (a newer
        // marker), and the old one leaves them in place when it stops, so no gap.
        update_config: Some(ServiceSpecUpdateConfig {
            parallelism: Some(0),
            order: Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST),
            failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::CONTINUE),
            ..Default::default()
        }),
        // No virtual IP (no IPVS on some kernels) and nothing published.
        endpoint_spec: Some(EndpointSpec { mode: Some(EndpointSpecModeEnum::DNSRR), ports: None }),
        ..Default::default()
    }
}

/// A node the guard must run on, and what its tasks say when it does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uncovered {
    pub node: String,
    pub why: String,
}

/// The ready, active nodes without a running guard task of the spec whose `config` label is
/// `config` (image and policy: after an update the old guards run on for a moment).
pub fn uncovered(nodes: &[Node], tasks: &[Task], config: &str) -> Vec<Uncovered> {
    let mut out = Vec::new();
    for n in nodes {
        let ready = n.status.as_ref().and_then(|s| s.state) == Some(NodeState::READY);
        let active = n.spec.as_ref().and_then(|s| s.availability) == Some(NodeSpecAvailabilityEnum::ACTIVE);
        let id = n.id.clone().unwrap_or_default();
        if !ready || !active {
            continue;
        }
        let mine: Vec<&Task> = tasks.iter().filter(|t| t.node_id.as_deref() == Some(id.as_str())).collect();
        let config_of = |t: &Task| {
            t.spec.as_ref().and_then(|s| s.container_spec.as_ref()).and_then(|c| c.labels.as_ref()).and_then(|l| l.get(labels::CONFIG).cloned())
        };
        let state = |t: &Task| t.status.as_ref().and_then(|s| s.state);
        let runs = mine.iter().any(|t| {
            state(t) == Some(TaskState::RUNNING)
                && t.desired_state == Some(TaskState::RUNNING)
                && config_of(t).as_deref() == Some(config)
        });
        if runs {
            continue;
        }
        let newest = mine.iter().max_by_key(|t| t.created_at.clone().unwrap_or_default());
        let why = newest.map_or_else(
            || "no task yet".to_string(),
            |t| {
                let s = t.status.clone().unwrap_or_default();
                let state = s.state.map_or_else(|| "unknown".to_string(), |x| x.to_string());
                let detail = s.err.filter(|e| !e.is_empty()).or(s.message).unwrap_or_default();
                format!("{state}: {detail}")
            },
        );
        let node = n.description.as_ref().and_then(|d| d.hostname.clone()).unwrap_or(id);
        out.push(Uncovered { node, why });
    }
    out
}

/// Creates the guard service, or updates it when its image or policy changed, then waits
/// until a guard runs `image_ref` on every ready node. `policy.deny` gets the swarm's
/// overlay pools. Idempotent: a server started again with the same binary and settings
/// leaves the running guards alone.
pub async fn ensure_node_guard(docker: &Docker, owner: &str, image_ref: &str, policy: &GuardPolicy) -> Result<()> {
    ensure_node_guard_within(docker, owner, image_ref, policy, GUARD_START_TIMEOUT).await
}

/// [`ensure_node_guard`] with its wait bounded by `timeout`.
pub async fn ensure_node_guard_within(
    docker: &Docker,
    owner: &str,
    image_ref: &str,
    policy: &GuardPolicy,
    timeout: Duration,
) -> Result<()> {
    let mut policy = policy.clone();
    for pool in overlay_pools(docker).await? {
        if !policy.deny.contains(&pool) {
            policy.deny.push(pool);
        }
    }
    let spec = guard_service_spec(owner, image_ref, &policy);
    let name = guard_service_name(owner);
    let wanted = spec.labels.as_ref().and_then(|l| l.get(labels::CONFIG)).cloned().unwrap_or_default();
    match docker.inspect_service(&name, None).await {
        Ok(existing) => {
            let have = existing.spec.as_ref().and_then(|s| s.labels.as_ref()).and_then(|l| l.get(labels::CONFIG)).cloned();
            if have.as_deref() != Some(wanted.as_str()) {
                let version = existing.version.and_then(|v| v.index).unwrap_or(0);
                let version = i32::try_from(version)
                    .map_err(|_| DriverError::Engine(format!("service {name} has version {version}, beyond the API's range")))?;
                let opts = UpdateServiceOptionsBuilder::default().version(version).build();
                docker.update_service(&name, spec, opts, None).await?;
                tracing::info!(service = %name, image = %image_ref, "node guard service updated");
            }
        }
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
            docker.create_service(spec, None).await?;
            tracing::info!(service = %name, image = %image_ref, "node guard service created");
        }
        Err(e) => return Err(e.into()),
    }
    let deadline = Instant::now() + timeout;
    let filters = HashMap::from([("service".to_string(), vec![name.clone()])]);
    loop {
        let nodes = docker.list_nodes(None).await?;
        let opts = ListTasksOptionsBuilder::default().filters(&filters).build();
        let tasks = docker.list_tasks(Some(opts)).await?;
        let missing = uncovered(&nodes, &tasks, &wanted);
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let list: Vec<String> = missing.iter().map(|u| format!("{} ({})", u.node, u.why)).collect();
            return Err(DriverError::Engine(format!(
                "the node guard (service {name}, image {image_ref}) is not running after {timeout:?} on: {}; \
                 functions placed there could reach the node's ports and other projects. See \
                 `docker service ps {name} --no-trunc`",
                list.join(", ")
            )));
        }
        tokio::time::sleep(GUARD_POLL).await;
    }
}

/// Removes the guard service (its guards take their rules away on SIGTERM). A missing one is fine.
pub async fn remove_node_guard(docker: &Docker, owner: &str) -> Result<()> {
    match docker.delete_service(&guard_service_name(owner)).await {
        Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    const OWNER: &str = "0123456789abcdef";

    #[test]
    fn a_global_host_network_service_with_net_admin_labelled_as_the_guard() {
        let s = guard_service_spec(OWNER, "127.0.0.1:5000/eserveless/node-guard@sha256:ab", &GuardPolicy::default());
        assert_eq!(s.name.as_deref(), Some("esl-01234567-node-guard"));
        let mode = s.mode.as_ref().expect("mode");
        assert!(mode.global.is_some() && mode.replicated.is_none());
        let l = s.labels.as_ref().expect("labels");
        assert_eq!(l.get(labels::MANAGED).map(String::as_str), Some("true"));
        assert_eq!(l.get(labels::OWNER).map(String::as_str), Some(OWNER));
        assert_eq!(l.get(labels::ROLE).map(String::as_str), Some(GUARD_ROLE));
        assert!(l.contains_key(labels::CONFIG));
        let t = s.task_template.as_ref().expect("task");
        let net = t.networks.as_ref().expect("networks");
        assert_eq!(net.len(), 1);
        assert_eq!(net[0].target.as_deref(), Some("host"));
        let c = t.container_spec.as_ref().expect("container");
        assert_eq!(c.image.as_deref(), Some("127.0.0.1:5000/eserveless/node-guard@sha256:ab"));
        assert_eq!(c.capability_add.as_deref(), Some(&["CAP_NET_ADMIN".to_string(), "CAP_NET_RAW".to_string()][..]));
        assert_eq!(c.command.as_deref(), Some(&[GUARD_BINARY.to_string()][..]));
        assert_eq!(c.args.as_ref().and_then(|a| a.first()).map(String::as_str), Some("node-guard"));
        let r = t.restart_policy.as_ref().expect("restart");
        assert_eq!(r.condition, Some(TaskSpecRestartPolicyConditionEnum::ON_FAILURE));
        let res = t.resources.as_ref().expect("resources");
        assert!(res.reservations.is_none(), "a full node must still take its guard");
        assert_eq!(
            s.update_config.as_ref().and_then(|u| u.order),
            Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST)
        );
    }

    #[test]
    fn the_args_parse_back_into_the_same_policy() {
        let p = GuardPolicy {
            egress: false,
            block_private: false,
            deny: vec!["10.0.0.0/8".into(), "10.128.0.0/9".into()],
            dns: vec!["10.0.0.2".into()],
            interval_secs: 7,
        };
        let argv: Vec<String> = std::iter::once("eserveless".to_string()).chain(p.args()).collect();
        let cli = crate::cli::Cli::try_parse_from(argv).expect("parse");
        let crate::cli::Command::NodeGuard(g) = cli.command else { panic!("not node-guard") };
        assert_eq!(g.bridge, "docker_gwbridge");
        assert_eq!((g.egress, g.block_private, g.interval_secs), (false, false, 7));
        assert_eq!(g.deny, p.deny);
        assert_eq!(g.dns, p.dns);
    }

    #[test]
    fn the_config_label_changes_with_the_image_or_the_policy_only() {
        let label = |image: &str, p: &GuardPolicy| {
            guard_service_spec(OWNER, image, p).labels.and_then(|l| l.get(labels::CONFIG).cloned()).expect("config")
        };
        let p = GuardPolicy::default();
        assert_eq!(label("a", &p), label("a", &p));
        assert_ne!(label("a", &p), label("b", &p));
        assert_ne!(label("a", &p), label("a", &GuardPolicy { egress: false, ..p.clone() }));
    }

    #[test]
    fn the_build_context_holds_the_dockerfile_and_the_binary() {
        let req = guard_build_request(b"\x7fELF fake", "eserveless/base:bookworm", OWNER).expect("request");
        assert!(req.tag.starts_with("eserveless/node-guard:") && req.tag.len() == "eserveless/node-guard:".len() + 16);
        assert_eq!(req.tag, guard_image_tag(b"\x7fELF fake"));
        assert_ne!(req.tag, guard_image_tag(b"\x7fELF other"));
        let mut files = HashMap::new();
        let mut archive = tar::Archive::new(req.context_tar.as_slice());
        for entry in archive.entries().expect("entries") {
            let mut e = entry.expect("entry");
            let path = e.path().expect("path").to_string_lossy().to_string();
            let mode = e.header().mode().expect("mode");
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).expect("read");
            files.insert(path, (mode, data));
        }
        let dockerfile = String::from_utf8(files["Dockerfile"].1.clone()).expect("utf8");
        assert!(dockerfile.starts_with("FROM eserveless/base:bookworm\n"), "{dockerfile}");
        assert!(dockerfile.contains("apt-get install -y --no-install-recommends iptables"), "{dockerfile}");
        assert!(dockerfile.contains("COPY eserveless /usr/local/bin/eserveless"), "{dockerfile}");
        assert_eq!(files["eserveless"], (0o755, b"\x7fELF fake".to_vec()));
        assert_eq!(req.labels.get(labels::ROLE).map(String::as_str), Some(GUARD_ROLE));
    }

    fn node(id: &str, ready: bool, availability: NodeSpecAvailabilityEnum) -> Node {
        serde_json::from_value(serde_json::json!({
            "ID": id,
            "Description": {"Hostname": format!("host-{id}")},
            "Spec": {"Availability": availability.to_string()},
            "Status": {"State": if ready { "ready" } else { "down" }},
        }))
        .expect("node")
    }

    fn task(node: &str, state: &str, desired: &str, config: &str, err: &str) -> Task {
        serde_json::from_value(serde_json::json!({
            "NodeID": node,
            "CreatedAt": "2026-12-01T15:00:00Z",
            "DesiredState": desired,
            "Status": {"State": state, "Err": err},
            "Spec": {"ContainerSpec": {"Image": "img", "Labels": {labels::CONFIG: config}}},
        }))
        .expect("task")
    }

    #[test]
    fn every_ready_active_node_needs_a_running_guard_of_the_current_spec() {
        let nodes = vec![
            node("a", true, NodeSpecAvailabilityEnum::ACTIVE),
            node("b", true, NodeSpecAvailabilityEnum::ACTIVE),
            node("c", false, NodeSpecAvailabilityEnum::ACTIVE),
            node("d", true, NodeSpecAvailabilityEnum::DRAIN),
        ];
        let tasks = vec![
            task("a", "running", "running", "cfg-new", ""),
            // An old guard (another image or policy) still running on b, the new one refused.
            task("b", "running", "shutdown", "cfg-old", ""),
            task("b", "rejected", "running", "cfg-new", "No such image: img:new"),
        ];
        let missing = uncovered(&nodes, &tasks, "cfg-new");
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert_eq!(missing[0].node, "host-b");
        assert!(missing[0].why.contains("No such image"), "{missing:?}");
        let all = vec![task("a", "running", "running", "cfg-new", ""), task("b", "running", "running", "cfg-new", "")];
        assert!(uncovered(&nodes, &all, "cfg-new").is_empty());
        assert_eq!(uncovered(&nodes, &[], "cfg-new")[0].why, "no task yet");
    }
}
