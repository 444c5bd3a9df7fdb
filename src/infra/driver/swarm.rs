//! The Docker Swarm engine (issue 12): each instance a one-replica service, each cron run a
//! replicated-job service, driven through a swarm manager's Docker API.
//!
//! The mapping, and why:
//! - One service per instance (1 replica, restart `none`): the pool keeps choosing which
//!   instance serves and which one goes, so an instance cannot be one replica of a scaled
//!   service. Service id = the instance's id everywhere in the [`Driver`] API.
//! - Endpoint mode `dnsrr` and no published port: the lab's kernel has no IPVS (no virtual IP,
//!   no routing mesh); the gateway reaches a task at its own address on the project's overlay.
//! - One attachable overlay per project (`esl-<owner>-<project>`): overlays have no
//!   `icc=false`, so projects are kept apart by network instead. A global "anchor" service per
//!   project ([`anchor`]) keeps the overlay up on every node between instances.
//! - Memory reservation = memory limit, so Swarm's placement never overcommits a node, and an
//!   instance no node can take fails at once with [`DriverError::NoCapacity`].
//!
//! Task state comes from `GET /tasks`, read as raw JSON: bollard's `Task` model has no
//! `NetworksAttachments` (the Engine API's spec omits the field the daemon sends), and that
//! field holds the one thing the gateway needs, the task's overlay address.

pub mod anchor;
pub mod attach;
pub mod prune;
pub mod registry;
pub mod watch;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use bollard::models::{
    EndpointSpec, EndpointSpecModeEnum, Limit, LocalNodeState, Mount, MountTmpfsOptions, MountType,
    NetworkAttachmentConfig, NetworkCreateRequest, NodeState, ResourceObject, ResourcesUlimits, ServiceSpec,
    ServiceSpecMode, ServiceSpecModeReplicated, ServiceSpecModeReplicatedJob, SystemInfo, TaskSpec,
    TaskSpecContainerSpec, TaskSpecContainerSpecPrivileges, TaskSpecLogDriver, TaskSpecResources,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum,
};
use bollard::query_parameters::{InspectNetworkOptions, ListServicesOptionsBuilder, LogsOptionsBuilder};
use bollard::Docker;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::time::Instant;

use crate::infra::logs::RawLine;

pub mod guard;

use super::{
    build_image_on, connect_engine, ensure_bridge_network, image_exists_on, labels, remove_image_on, BuildRequest,
    ContainerEvent, ContainerSpec, Driver, DriverError, Limits, LogRead, LogTail, ManagedContainer, NodeCapacity, Result, Started,
    engine_log_options,
};

/// How long `run` waits for an instance's task to run (no registry pull in the lab: the task
/// ran after ~1.9 s there; a slow pull on a real cluster needs the margin).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Task polling while an instance starts: a start is ~2 s, so 100 ms costs little latency.
const START_POLL: Duration = Duration::from_millis(100);
/// Task polling while a job runs: runs last seconds to minutes.
const WAIT_POLL: Duration = Duration::from_millis(500);
/// Task and node polling behind [`Driver::events`].
const EVENTS_POLL: Duration = Duration::from_secs(1);
/// Service logs go through the manager, which asks the task's node: a node that went down
/// would hold the read until the client's timeout.
const LOGS_TIMEOUT: Duration = Duration::from_secs(30);
/// How often finished cron runs' containers are swept off the nodes (when there were runs).
const SWEEP_EVERY: Duration = Duration::from_secs(600);
/// How long `rm` retries removing a project's overlay while its last tasks stop.
const NETWORK_REMOVAL: Duration = Duration::from_secs(30);

/// Swarm's limit on a service name (a DNS label).
const SERVICE_NAME_MAX: usize = 63;

/// What a service is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An http instance: runs until removed.
    Instance,
    /// A cron run: runs to completion once.
    Job,
}

/// The Docker Swarm driver.
pub struct SwarmDriver {
    docker: Docker,
    owner: String,
    /// This manager's node: its id, and its address in the swarm.
    node_id: String,
    node_addr: String,
    /// Where the nodes get images; `None` only in tests and probes (then only images every
    /// node already has can run).
    registry: Option<registry::Registry>,
    /// Local tag → reference by digest in the registry, for the images pushed by this process.
    pinned: std::sync::Mutex<HashMap<String, String>>,
    /// The gateway's way into each project's overlay.
    attach: attach::Attachments,
    /// The server's own image on every node (the node guard's): runs the image prune.
    tool_image: std::sync::Mutex<Option<String>>,
    /// Cron runs started, and the sweep of their finished containers on the nodes.
    runs_started: std::sync::Arc<std::sync::atomic::AtomicU64>,
    sweeper: std::sync::Mutex<Option<tokio_util::task::AbortOnDropHandle<()>>>,
    /// Nodes that stopped answering, seen before Swarm marks them down (see [`watch`]).
    suspects: watch::Suspects,
    _watch: tokio_util::task::AbortOnDropHandle<()>,
    /// The manager-local bridge network image builds run on.
    build_network: String,
    /// Project overlay name → network id, for the overlays known to exist. An async lock held
    /// across the create: two first starts of one project must not both create its overlay.
    overlays: tokio::sync::Mutex<HashMap<String, String>>,
    start_timeout: Duration,
}

/// Where an instance's task runs, for the operator (and the probe).
#[derive(Debug, Clone)]
pub struct Placement {
    pub task_id: String,
    /// The node's hostname (its id when the node is unknown).
    pub node: String,
    pub state: String,
    /// The scheduler's or the node's last word on the task.
    pub message: String,
    pub address: Option<String>,
}

/// A node as the driver needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub id: String,
    pub hostname: String,
    pub ready: bool,
    pub memory_bytes: i64,
    pub nano_cpus: i64,
}

impl SwarmDriver {
    /// Connects to the engine named by DOCKER_HOST (or the default socket), which must be a
    /// swarm manager, and makes sure the build network exists on it.
    /// `attach_image` is an image on the manager with `sleep` (the run image).
    pub async fn connect(owner: &str, build_network: &str, attach_image: &str) -> Result<Self> {
        let docker = connect_engine().await?;
        let info = docker.info().await?;
        check_manager(&info)?;
        ensure_bridge_network(&docker, build_network).await?;
        let swarm = info.swarm.unwrap_or_default();
        let (suspects, watch) = watch::spawn(docker.clone(), swarm.node_id.clone().unwrap_or_default());
        Ok(SwarmDriver {
            suspects,
            _watch: tokio_util::task::AbortOnDropHandle::new(watch),
            attach: attach::Attachments::new(docker.clone(), owner, attach_image),
            docker,
            owner: owner.to_string(),
            node_id: swarm.node_id.unwrap_or_default(),
            node_addr: swarm.node_addr.unwrap_or_default(),
            registry: None,
            tool_image: std::sync::Mutex::new(None),
            runs_started: Default::default(),
            sweeper: std::sync::Mutex::new(None),
            pinned: std::sync::Mutex::new(HashMap::new()),
            build_network: build_network.to_string(),
            overlays: tokio::sync::Mutex::new(HashMap::new()),
            start_timeout: START_TIMEOUT,
        })
    }

    /// How long `run` waits for an instance's task to run.
    pub fn with_start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// The manager's engine connection.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The image with the server's binary that every node can pull (the node guard's), which
    /// `rm` of a project runs to remove the project's images from every node.
    pub fn set_tool_image(&self, image: &str) {
        *self.tool_image.lock().unwrap_or_else(|p| p.into_inner()) = Some(image.to_string());
        // Swarm 20.10 leaves a finished job's container on its node when the job's service is
        // removed: every SWEEP_EVERY, when runs were started since the last sweep, a global
        // job of this image removes them on every node.
        let (docker, owner, image, runs) = (self.docker.clone(), self.owner.clone(), image.to_string(), self.runs_started.clone());
        let task = tokio::spawn(async move {
            let mut swept = 0;
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                let now = runs.load(std::sync::atomic::Ordering::Relaxed);
                if now == swept {
                    continue;
                }
                match prune::prune_project_images(&docker, prune::prune_spec(&owner, None, &image)).await {
                    Ok(()) => swept = now,
                    Err(e) => tracing::warn!(error = %e, "could not sweep finished runs off the nodes"),
                }
            }
        });
        *self.sweeper.lock().unwrap_or_else(|p| p.into_inner()) = Some(tokio_util::task::AbortOnDropHandle::new(task));
    }

    /// This manager's node id and its address in the swarm.
    pub fn manager(&self) -> (&str, &str) {
        (&self.node_id, &self.node_addr)
    }

    /// Images are pushed to `registry` after each build and run from it by digest.
    pub fn with_registry(mut self, registry: registry::Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The reference every node runs `image` by: its digest in the registry (pushed now if
    /// this manager's copy was never pushed), or `image` itself without a registry.
    async fn pinned_image(&self, image: &str) -> Result<String> {
        let Some(registry) = &self.registry else { return Ok(image.to_string()) };
        if let Some(r) = self.pinned.lock().unwrap_or_else(|p| p.into_inner()).get(image) {
            return Ok(r.clone());
        }
        let r = match registry::pushed_reference(&self.docker, registry, image).await? {
            Some(r) => r,
            None => registry.push(&self.docker, image).await?,
        };
        self.pinned.lock().unwrap_or_else(|p| p.into_inner()).insert(image.to_string(), r.clone());
        Ok(r)
    }

    /// The host pid of a task's container when it runs on this manager (for the Unix-socket
    /// fast path); `None` on other nodes.
    async fn local_pid(&self, task: &SwarmTask) -> Option<u32> {
        if task.node_id != self.node_id {
            return None;
        }
        let id = task.status.container_status.as_ref().map(|c| c.container_id.as_str()).filter(|c| !c.is_empty())?;
        let c = self.docker.inspect_container(id, None).await.ok()?;
        c.state.and_then(|s| s.pid).and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0)
    }

    /// Node id → hostname.
    async fn hostnames(&self) -> HashMap<String, String> {
        self.nodes().await.map(|ns| ns.into_iter().map(|n| (n.id, n.hostname)).collect()).unwrap_or_default()
    }

    /// The swarm's nodes.
    pub async fn nodes(&self) -> Result<Vec<NodeView>> {
        let nodes = self.docker.list_nodes(None).await?;
        Ok(nodes
            .into_iter()
            .map(|n| {
                let d = n.description.unwrap_or_default();
                let r = d.resources.unwrap_or_default();
                let id = n.id.unwrap_or_default();
                NodeView {
                    hostname: d.hostname.unwrap_or_else(|| id.clone()),
                    ready: n.status.and_then(|s| s.state) == Some(NodeState::READY),
                    memory_bytes: r.memory_bytes.unwrap_or(0),
                    nano_cpus: r.nano_cpus.unwrap_or(0),
                    id,
                }
            })
            .collect())
    }

    /// Where the service's current task runs.
    pub async fn placement(&self, id: &str) -> Result<Option<Placement>> {
        let tasks = self.tasks_of(id).await?;
        let Some(t) = current_task(&tasks) else { return Ok(None) };
        let nodes = self.nodes().await?;
        let node = nodes.iter().find(|n| n.id == t.node_id).map_or_else(|| t.node_id.clone(), |n| n.hostname.clone());
        let message = if t.status.err.is_empty() { t.status.message.clone() } else { t.status.err.clone() };
        Ok(Some(Placement {
            task_id: t.id.clone(),
            node,
            state: t.status.state.clone(),
            message,
            address: t.address_on(None),
        }))
    }

    /// Removes a project's overlay (its services must be gone first). A missing one is fine.
    pub async fn remove_project_network(&self, project: &str) -> Result<()> {
        let name = overlay_name(&self.owner, project);
        self.overlays.lock().await.remove(&name);
        match self.docker.remove_network(&name).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The id of the project's overlay, created when missing.
    async fn ensure_overlay(&self, project: &str) -> Result<String> {
        let name = overlay_name(&self.owner, project);
        let mut known = self.overlays.lock().await;
        if let Some(id) = known.get(&name) {
            return Ok(id.clone());
        }
        let id = match self.inspect_network_id(&name).await? {
            Some(id) => id,
            None => {
                let req = NetworkCreateRequest {
                    name: name.clone(),
                    driver: Some("overlay".into()),
                    scope: Some("swarm".into()),
                    // Attachable: the gateway's side of the overlay is a container, not a task.
                    attachable: Some(true),
                    labels: Some(HashMap::from([
                        (labels::MANAGED.to_string(), "true".to_string()),
                        (labels::OWNER.to_string(), self.owner.clone()),
                        (labels::PROJECT.to_string(), project.to_string()),
                    ])),
                    ..Default::default()
                };
                match self.docker.create_network(req).await {
                    Ok(created) if !created.id.is_empty() => created.id,
                    // Created meanwhile by another server, or an answer without the id: ask.
                    Ok(_) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) => self
                        .inspect_network_id(&name)
                        .await?
                        .ok_or_else(|| DriverError::Engine(format!("network {name} was created but cannot be found")))?,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        // Once per overlay and process: made with the overlay, adopted after a restart.
        self.anchor(project, &id).await;
        known.insert(name, id.clone());
        Ok(id)
    }

    /// Makes (or adopts) `project`'s anchor on its overlay `network` ([`anchor`]). Not fatal:
    /// without it a cold start on a worker sets the overlay up first, as it did before.
    async fn anchor(&self, project: &str, network: &str) {
        let image = self.tool_image.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(image) = image else {
            tracing::warn!(project, "no per-node image published: the project's overlay gets no anchor (cold starts on workers set it up first)");
            return;
        };
        if let Err(e) = anchor::ensure_anchor(&self.docker, anchor::anchor_spec(&self.owner, project, network, &image)).await {
            tracing::warn!(project, error = %e, "the project's anchor could not be made: cold starts on workers set its overlay up first");
        }
    }

    async fn inspect_network_id(&self, name: &str) -> Result<Option<String>> {
        match self.docker.inspect_network(name, None::<InspectNetworkOptions>).await {
            Ok(n) => Ok(Some(n.id.unwrap_or_else(|| name.to_string()))),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates the service for `spec`; returns its id.
    async fn create(&self, spec: &ContainerSpec, kind: Kind) -> Result<String> {
        let project = spec
            .labels
            .get(labels::PROJECT)
            .ok_or_else(|| DriverError::Engine(format!("`{}` has no {} label: no overlay to put it on", spec.name, labels::PROJECT)))?;
        let mut pinned = spec.clone();
        pinned.image = self.pinned_image(&spec.image).await?;
        let mut retried = false;
        loop {
            let network = self.ensure_overlay(project).await?;
            let mut service = service_spec(&pinned, &self.owner, &network, kind)?;
            avoid_nodes(&mut service, &self.suspects.all());
            match self.docker.create_service(service, None).await {
                Ok(r) => return r.id.ok_or_else(|| DriverError::Engine("the engine created a service without an id".into())),
                // The overlay was removed behind the cache's back (a project removed by
                // another server, or by hand): forget it and create it again, once.
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, message })
                    if !retried && message.contains("network") =>
                {
                    retried = true;
                    self.overlays.lock().await.remove(&overlay_name(&self.owner, project));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The tasks of one service; a missing service is [`DriverError::NoSuchContainer`].
    async fn tasks_of(&self, id: &str) -> Result<Vec<SwarmTask>> {
        let filters = filters_query(&[("service", &[id])]);
        match get_json(&self.docker, &format!("/tasks?filters={filters}")).await {
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                Err(DriverError::NoSuchContainer(id.to_string()))
            }
            other => Ok(other?),
        }
    }

    /// Waits until the new instance's task runs; returns its overlay address.
    async fn await_running(&self, id: &str, network: &str, asked: &str, image: &str) -> Result<(String, SwarmTask)> {
        let deadline = Instant::now() + self.start_timeout;
        loop {
            let tasks = self.tasks_of(id).await?;
            let task = current_task(&tasks);
            if let Some(t) = task.filter(|t| !t.node_id.is_empty() && self.suspects.contains(&t.node_id)) {
                // Placed on a node that has just died (before it was seen dead): Swarm would
                // say so only when it marks the node down, 10-15 s from now.
                return Err(DriverError::NodeLost(format!("the node the instance was placed on ({}) stopped answering", t.node_id)));
            }
            match start_progress(task, network, asked, image) {
                Progress::Done(ip) => return Ok((ip, task.cloned().unwrap_or_default())),
                Progress::Failed(e) => return Err(e),
                Progress::Waiting => {}
            }
            if Instant::now() >= deadline {
                let last = task.map_or_else(|| "no task yet".to_string(), SwarmTask::describe);
                return Err(DriverError::Engine(format!(
                    "the instance's task was not running after {:?} ({last})",
                    self.start_timeout
                )));
            }
            tokio::time::sleep(START_POLL).await;
        }
    }

    /// Waits until the new job's task is placed on a node (or cannot be).
    async fn await_placed(&self, id: &str, asked: &str, image: &str) -> Result<()> {
        let deadline = Instant::now() + self.start_timeout;
        loop {
            let tasks = self.tasks_of(id).await?;
            let task = current_task(&tasks);
            match job_progress(task, asked, image) {
                Progress::Done(()) => return Ok(()),
                Progress::Failed(e) => return Err(e),
                Progress::Waiting => {}
            }
            if Instant::now() >= deadline {
                let last = task.map_or_else(|| "no task yet".to_string(), SwarmTask::describe);
                return Err(DriverError::Engine(format!("the run was not placed on a node within {:?} ({last})", self.start_timeout)));
            }
            tokio::time::sleep(START_POLL).await;
        }
    }
}

/// Refuses an engine that cannot drive a swarm, saying how to make it one.
pub fn check_manager(info: &SystemInfo) -> Result<()> {
    let swarm = info.swarm.clone().unwrap_or_default();
    if swarm.control_available == Some(true) {
        return Ok(());
    }
    let host = info.name.as_deref().unwrap_or("this host");
    let message = match swarm.local_node_state {
        Some(LocalNodeState::ACTIVE) => format!(
            "the Docker engine on {host} is a swarm worker, not a manager: run the server on a manager node \
             (where `docker node ls` works), or promote this one from a manager with `docker node promote {host}`"
        ),
        Some(LocalNodeState::LOCKED) => {
            format!("the swarm manager on {host} is locked: unlock it with `docker swarm unlock`")
        }
        state => {
            let state = state.map_or_else(|| "inactive".to_string(), |s| s.to_string());
            let error = swarm.error.filter(|e| !e.is_empty()).map(|e| format!(" ({e})")).unwrap_or_default();
            format!(
                "the Docker engine on {host} is not a swarm manager (swarm state: {state}{error}): \
                 make it one with `docker swarm init`, or use the single-host engine"
            )
        }
    };
    Err(DriverError::NotSwarmManager(message))
}

/// The name of a project's overlay: the owner's prefix keeps servers sharing a swarm apart.
pub fn overlay_name(owner: &str, project: &str) -> String {
    let owner: String = owner.chars().filter(char::is_ascii_alphanumeric).take(8).collect();
    format!("esl-{owner}-{}", dns_part(project))
}

/// Lower-case letters, digits and single dashes.
fn dns_part(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

/// A service name Swarm accepts (a DNS label of at most 63 characters): a longer name keeps
/// its start and ends with a digest of the whole, so two long names stay apart.
pub fn service_name(name: &str) -> String {
    let clean = dns_part(name);
    let clean = if clean.is_empty() { "esl".to_string() } else { clean };
    if clean.len() <= SERVICE_NAME_MAX {
        return clean;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(name.as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    let head = clean[..SERVICE_NAME_MAX - hex.len() - 1].trim_end_matches('-');
    format!("{head}-{hex}")
}

/// A size as Docker writes them (`64m`, `1g`, `512k`, `100`): binary multiples.
pub fn parse_size(text: &str) -> Option<i64> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let t = t.strip_suffix('i').unwrap_or(t);
    let (number, shift) = match t.chars().last()? {
        'k' => (&t[..t.len() - 1], 10),
        'm' => (&t[..t.len() - 1], 20),
        'g' => (&t[..t.len() - 1], 30),
        't' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let number = number.trim();
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    number.parse::<i64>().ok()?.checked_mul(1i64 << shift)
}

/// What an instance or a run asks of a node, for messages.
pub fn asked(limits: &Limits) -> String {
    let mib = limits.memory_bytes / (1024 * 1024);
    let millis = limits.cpu_millis();
    format!("{mib} MiB of memory (reserved) and {}.{:02} CPU", millis / 1000, (millis % 1000) / 10)
}

/// The service that runs `spec`, on the overlay `network` (an id), owned by `owner`.
pub fn service_spec(spec: &ContainerSpec, owner: &str, network: &str, kind: Kind) -> Result<ServiceSpec> {
    let l = &spec.limits;
    if let Some(runtime) = &l.oci_runtime {
        // TaskSpec.Runtime names the executor (container or plugin), not the OCI runtime.
        return Err(DriverError::Unsupported(format!(
            "the OCI runtime `{runtime}` cannot be chosen per service in swarm mode: make it the default runtime \
             of every node's dockerd (\"default-runtime\" in daemon.json) and drop --oci-runtime"
        )));
    }
    let tmpfs_bytes = parse_size(&l.tmpfs_size)
        .ok_or_else(|| DriverError::Engine(format!("tmpfs size `{}` is not a size such as 64m", l.tmpfs_size)))?;
    let mut labels = spec.labels.clone();
    labels.insert(labels::OWNER.to_string(), owner.to_string());
    let container = TaskSpecContainerSpec {
        image: Some(spec.image.clone()),
        labels: Some(labels.clone()),
        env: Some(spec.env.0.clone()),
        user: Some(l.user.clone()),
        read_only: Some(true),
        mounts: Some(vec![Mount {
            target: Some("/tmp".into()),
            typ: Some(MountType::TMPFS),
            // Mode 1777 as `--tmpfs` gives: the function's user is not root.
            tmpfs_options: Some(MountTmpfsOptions { size_bytes: Some(tmpfs_bytes), mode: Some(0o1777), options: None }),
            ..Default::default()
        }]),
        // API 1.41 (Docker 20.10) takes CapabilityDrop; "ALL" empties every set.
        capability_drop: Some(vec!["ALL".into()]),
        // Not in API 1.41: a 20.10 engine ignores it (see the security notes); newer ones apply it.
        privileges: Some(TaskSpecContainerSpecPrivileges { no_new_privileges: Some(true), ..Default::default() }),
        // As the single-host engine: the function's own process is PID 1, whatever the
        // daemon's default.
        init: Some(false),
        // Removal kills at once, as the single-host engine's forced removal does (the pool
        // drains an instance before removing it; a run past its timeout is killed). Swarm's
        // default of 10 s kept a removed instance's memory reserved on its node for 10 s in
        // the lab (a PID 1 without a SIGTERM handler ignores it).
        stop_grace_period: Some(0),
        ulimits: Some(vec![ResourcesUlimits { name: Some("nofile".into()), soft: Some(l.nofile), hard: Some(l.nofile) }]),
        ..Default::default()
    };
    let task = TaskSpec {
        container_spec: Some(container),
        resources: Some(TaskSpecResources {
            limits: Some(Limit { nano_cpus: Some(l.nano_cpus), memory_bytes: Some(l.memory_bytes), pids: Some(l.pids) }),
            // Reserved = limit: the scheduler places a task only where its whole limit fits,
            // so a node is never overcommitted and "no room" is known at once.
            reservations: Some(ResourceObject { memory_bytes: Some(l.memory_bytes), ..Default::default() }),
            ..Default::default()
        }),
        // The pool replaces instances itself; a cron run runs once.
        restart_policy: Some(TaskSpecRestartPolicy {
            condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
            max_attempts: Some(0),
            ..Default::default()
        }),
        networks: Some(vec![NetworkAttachmentConfig { target: Some(network.to_string()), ..Default::default() }]),
        log_driver: Some(TaskSpecLogDriver { name: Some("json-file".into()), options: Some(engine_log_options()) }),
        ..Default::default()
    };
    let mode = match kind {
        Kind::Instance => ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
            ..Default::default()
        },
        Kind::Job => ServiceSpecMode {
            replicated_job: Some(ServiceSpecModeReplicatedJob { max_concurrent: Some(1), total_completions: Some(1) }),
            ..Default::default()
        },
    };
    Ok(ServiceSpec {
        name: Some(service_name(&spec.name)),
        labels: Some(labels),
        task_template: Some(task),
        mode: Some(mode),
        // No virtual IP (no IPVS here) and no published port: tasks are reached at their addresses.
        endpoint_spec: Some(EndpointSpec { mode: Some(EndpointSpecModeEnum::DNSRR), ports: None }),
        ..Default::default()
    })
}

/// Keeps a new service off `nodes` (ids), which do not answer: Swarm would still place tasks
/// there until it marks them down.
pub fn avoid_nodes(service: &mut ServiceSpec, nodes: &HashSet<String>) {
    if nodes.is_empty() {
        return;
    }
    let mut ids: Vec<&String> = nodes.iter().collect();
    ids.sort();
    let task = service.task_template.get_or_insert_with(Default::default);
    let placement = task.placement.get_or_insert_with(Default::default);
    placement.constraints.get_or_insert_with(Vec::new).extend(ids.into_iter().map(|id| format!("node.id!={id}")));
}

/// A task as `GET /tasks` returns it: the fields the driver reads, `NetworksAttachments` included.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct SwarmTask {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    #[serde(rename = "NodeID")]
    pub node_id: String,
    pub created_at: String,
    pub status: TaskStatusRaw,
    pub desired_state: String,
    pub networks_attachments: Vec<NetworkAttachmentRaw>,
    pub spec: TaskSpecRaw,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct TaskSpecRaw {
    pub container_spec: ContainerSpecRaw,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct ContainerSpecRaw {
    pub labels: HashMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct TaskStatusRaw {
    pub state: String,
    pub message: String,
    pub err: String,
    pub container_status: Option<ContainerStatusRaw>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct ContainerStatusRaw {
    #[serde(rename = "ContainerID")]
    pub container_id: String,
    pub exit_code: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct NetworkAttachmentRaw {
    pub network: AttachedNetworkRaw,
    /// CIDR notation: `10.0.1.5/24`.
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct AttachedNetworkRaw {
    #[serde(rename = "ID")]
    pub id: String,
    pub spec: AttachedNetworkSpecRaw,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct AttachedNetworkSpecRaw {
    pub name: String,
    pub ingress: bool,
}

impl SwarmTask {
    /// A task of an instance or a run (or of an unlabelled service): not of the server's own
    /// services (node guard, project anchors, registry, prune), which the pool never counts.
    pub fn is_the_pools(&self) -> bool {
        self.spec.container_spec.labels.get(labels::ROLE).map_or(true, |r| matches!(r.as_str(), "http" | "cron"))
    }

    /// The task will not run (again): it ended, failed, was refused or taken down.
    pub fn is_final(&self) -> bool {
        matches!(self.status.state.as_str(), "complete" | "failed" | "rejected" | "shutdown" | "orphaned" | "remove")
    }

    /// Told to stop (its service removed, its node drained): still running for a moment, but
    /// gone for the pool, as a container is once a forced removal starts.
    pub fn is_going(&self) -> bool {
        matches!(self.desired_state.as_str(), "shutdown" | "remove")
    }

    /// The task's address on `network` (a name or an id), or on its first non-ingress network.
    pub fn address_on(&self, network: Option<&str>) -> Option<String> {
        let usable = |a: &&NetworkAttachmentRaw| !a.network.spec.ingress && !a.addresses.is_empty();
        let attachment = match network {
            Some(n) => self.networks_attachments.iter().filter(usable).find(|a| a.network.spec.name == n || a.network.id == n),
            None => self.networks_attachments.iter().find(usable),
        }?;
        let cidr = attachment.addresses.first()?;
        Some(cidr.split('/').next().unwrap_or(cidr).to_string())
    }

    /// The scheduler could place it nowhere: the reason, when that is what its status says.
    /// Swarmkit leaves such a task `pending` with `no suitable node (insufficient resources
    /// on N nodes)` in its error, and retries on its own; the caller should not wait for it.
    pub fn unschedulable(&self) -> Option<&str> {
        if !matches!(self.status.state.as_str(), "new" | "allocated" | "pending") {
            return None;
        }
        [&self.status.err, &self.status.message]
            .into_iter()
            .find(|m| {
                let m = m.to_ascii_lowercase();
                m.contains("no suitable node") || m.contains("insufficient resources")
            })
            .map(String::as_str)
    }

    /// State and reason, for messages.
    pub fn describe(&self) -> String {
        let why = if self.status.err.is_empty() { &self.status.message } else { &self.status.err };
        if why.is_empty() { self.status.state.clone() } else { format!("{}: {why}", self.status.state) }
    }

    fn exit_code(&self) -> Option<i64> {
        self.status.container_status.as_ref().and_then(|c| c.exit_code)
    }

    /// The error of a task that never ran its program.
    fn never_ran(&self, image: &str) -> DriverError {
        let err = self.status.err.to_ascii_lowercase();
        if err.contains("no such image") || err.contains("image not found") || err.contains("pull access denied") {
            // Not MissingImage: the manager may well hold it; the node the task went to does not.
            return DriverError::Engine(format!(
                "image `{image}` is not on the node the task was placed on ({}): in swarm mode every node needs it, from a registry",
                self.status.err
            ));
        }
        if err.contains("http response to https client") {
            let registry = image.split('/').next().unwrap_or(image);
            return DriverError::Engine(format!("the task did not run: {}", registry::explain_pull_error(registry, &self.status.err)));
        }
        DriverError::Engine(format!("the task did not run ({})", self.describe()))
    }
}

/// The service's current task: the newest (with restart `none` there is one, unless a node's
/// task was replaced by hand).
pub fn current_task(tasks: &[SwarmTask]) -> Option<&SwarmTask> {
    let created = |t: &SwarmTask| chrono::DateTime::parse_from_rfc3339(&t.created_at).ok();
    tasks.iter().max_by(|a, b| created(a).cmp(&created(b)).then_with(|| a.id.cmp(&b.id)))
}

/// Where a start stands.
#[derive(Debug)]
pub enum Progress<T> {
    Done(T),
    Waiting,
    Failed(DriverError),
}

/// An instance's start, from its current task: running with an address on `network`, or a
/// failure to report at once (no node has room, the image is missing, the program exited).
pub fn start_progress(task: Option<&SwarmTask>, network: &str, asked: &str, image: &str) -> Progress<String> {
    let Some(t) = task else { return Progress::Waiting };
    if let Some(why) = t.unschedulable() {
        return Progress::Failed(DriverError::NoCapacity(format!("an instance of {asked} ({why})")));
    }
    match t.status.state.as_str() {
        // Running without an address yet cannot last: the address is allocated before the
        // task is even assigned. Keep polling until the deadline if it does.
        "running" => t.address_on(Some(network)).map_or(Progress::Waiting, Progress::Done),
        "complete" | "failed" if t.status.container_status.is_some() => Progress::Failed(DriverError::Engine(format!(
            "the instance exited at once with status {} ({}); see the function's logs",
            t.exit_code().map_or_else(|| "unknown".to_string(), |c| c.to_string()),
            t.describe()
        ))),
        _ if t.is_final() => Progress::Failed(t.never_ran(image)),
        _ => Progress::Waiting,
    }
}

/// A run's start: placed on a node (or already over), or refused at once.
pub fn job_progress(task: Option<&SwarmTask>, asked: &str, image: &str) -> Progress<()> {
    let Some(t) = task else { return Progress::Waiting };
    if let Some(why) = t.unschedulable() {
        return Progress::Failed(DriverError::NoCapacity(format!("a run of {asked} ({why})")));
    }
    match t.status.state.as_str() {
        "new" | "allocated" | "pending" => Progress::Waiting,
        // Refused before its program ran: say why now (wait would only say "no exit code").
        "rejected" => Progress::Failed(t.never_ran(image)),
        _ => Progress::Done(()),
    }
}

/// A run's end, from its current task: its exit code, an error, or not yet (`None`).
/// `node_ready` is whether the task's node is up.
pub fn wait_outcome(task: &SwarmTask, node_ready: bool, image: &str) -> Option<Result<i64>> {
    if let Some(why) = task.unschedulable() {
        return Some(Err(DriverError::NoCapacity(format!("the task ({why})"))));
    }
    match task.status.state.as_str() {
        "complete" => Some(Ok(task.exit_code().unwrap_or(0))),
        _ if task.is_final() => Some(match task.exit_code() {
            Some(code) => Ok(code),
            None => Err(task.never_ran(image)),
        }),
        // A down node reports nothing more: its task would stay "running" for ever.
        "running" | "starting" | "assigned" | "accepted" | "preparing" | "ready" if !node_ready && !task.node_id.is_empty() => {
            Some(Err(DriverError::Engine(format!("the node running task {} went down", task.id))))
        }
        _ => None,
    }
}

/// Whether a service's instance is alive, as events see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    Dead,
    /// Its node is down (or does not answer): the task may still run, but not for the pool.
    Lost,
}

/// Liveness of each service, from its current task and the nodes' states.
pub fn liveness(tasks: &[SwarmTask], ready_nodes: &HashSet<String>) -> HashMap<String, Liveness> {
    let mut by_service: HashMap<&str, Vec<SwarmTask>> = HashMap::new();
    for t in tasks {
        by_service.entry(t.service_id.as_str()).or_default().push(t.clone());
    }
    by_service
        .into_iter()
        .filter_map(|(service, tasks)| {
            let t = current_task(&tasks)?;
            let node_down = !t.node_id.is_empty() && !ready_nodes.contains(&t.node_id);
            let state = if t.is_final() || t.is_going() {
                Liveness::Dead
            } else if node_down && t.status.state != "pending" {
                Liveness::Lost
            } else {
                Liveness::Alive
            };
            Some((service.to_string(), state))
        })
        .collect()
}

/// The events between two snapshots: `die` for a service that died (its task ended or its
/// node went down), `destroy` for one that is gone.
pub fn diff_liveness(before: &HashMap<String, Liveness>, now: &HashMap<String, Liveness>) -> Vec<ContainerEvent> {
    let mut events: Vec<ContainerEvent> = now
        .iter()
        .filter(|(id, l)| **l != Liveness::Alive && !matches!(before.get(*id), Some(b) if *b != Liveness::Alive))
        .map(|(id, l)| ContainerEvent { id: id.clone(), action: if *l == Liveness::Lost { "lost" } else { "die" }.into() })
        .collect();
    events.extend(
        before.keys().filter(|id| !now.contains_key(*id)).map(|id| ContainerEvent { id: id.clone(), action: "destroy".into() }),
    );
    events.sort_by(|a, b| (&a.action, &a.id).cmp(&(&b.action, &b.id)));
    events
}

/// Managed services as the pool sees containers: `running` while the task runs on a ready
/// node; `stopped` once it ended or its node is down; `ip` its address on the project's overlay.
/// The node guard ([`guard`]) and the project anchors ([`anchor`]) are no function
/// containers: left out, so that the pool never adopts or removes them.
pub fn managed_containers(
    services: Vec<(String, HashMap<String, String>)>,
    tasks: &[SwarmTask],
    ready_nodes: &HashSet<String>,
    owner: &str,
) -> Vec<ManagedContainer> {
    services
        .into_iter()
        .filter(|(_, labels)| !matches!(labels.get(labels::ROLE).map(String::as_str), Some(guard::GUARD_ROLE | anchor::ANCHOR_ROLE)))
        .map(|(id, labels)| {
            let mine: Vec<SwarmTask> = tasks.iter().filter(|t| t.service_id == id).cloned().collect();
            let task = current_task(&mine);
            let node_down = task.is_some_and(|t| !t.node_id.is_empty() && !ready_nodes.contains(&t.node_id));
            let running = task.is_some_and(|t| t.status.state == "running" && !t.is_going()) && !node_down;
            let stopped = task.is_some_and(|t| t.is_final() || t.is_going() || (node_down && t.status.state != "pending"));
            let network = labels.get(labels::PROJECT).map(|p| overlay_name(owner, p));
            let ip = task.and_then(|t| t.address_on(network.as_deref()));
            ManagedContainer { id, labels, running, paused: false, stopped, ip, node: None }
        })
        .collect()
}

/// Percent-encodes a query value (everything but RFC 3986's unreserved characters).
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An Engine API `filters` query value.
fn filters_query(filters: &[(&str, &[&str])]) -> String {
    let map: HashMap<&str, &[&str]> = filters.iter().copied().collect();
    query_escape(&serde_json::to_string(&map).unwrap_or_else(|_| "{}".into()))
}

/// `GET path` on the engine, decoded from JSON into a type of ours. bollard has no generic
/// request, so this rides on a GET whose answer it hands over raw (a container export) on a
/// clone of the client whose request hook swaps the path: same transport, API version and
/// error handling as every other call.
async fn get_json<T: serde::de::DeserializeOwned>(docker: &Docker, path: &str) -> std::result::Result<T, bollard::errors::Error> {
    const CARRIER: &str = "esl-raw-get";
    let target = path.to_string();
    let client = docker.clone().with_request_modifier(move |mut req| {
        let uri = req.uri().clone();
        let mut parts = uri.into_parts();
        // Keep whatever bollard put before the path proper (a version prefix, if it sends one).
        let prefix = parts
            .path_and_query
            .as_ref()
            .map(|pq| pq.path())
            .and_then(|p| p.find(&format!("/containers/{CARRIER}/")).map(|i| p[..i].to_string()));
        if let Some(prefix) = prefix {
            if let Ok(pq) = format!("{prefix}{target}").parse() {
                parts.path_and_query = Some(pq);
                if let Ok(uri) = http::Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
        }
        req
    });
    let mut body = client.export_container(CARRIER);
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        bytes.extend_from_slice(&chunk?);
    }
    serde_json::from_slice(&bytes).map_err(|e| bollard::errors::Error::JsonDataError {
        message: format!("{e} in {path}: {}", String::from_utf8_lossy(&bytes[..bytes.len().min(256)])),
        column: e.column(),
    })
}

/// Every task of this owner's services, and which nodes are ready.
async fn snapshot(docker: &Docker, owner: &str, suspects: &watch::Suspects) -> Result<(Vec<SwarmTask>, HashSet<String>)> {
    let managed = format!("{}=true", labels::MANAGED);
    let owned = format!("{}={owner}", labels::OWNER);
    // The label filter of /tasks matches the labels of the task's service.
    let filters = filters_query(&[("label", &[&managed, &owned])]);
    let mut tasks: Vec<SwarmTask> = get_json(docker, &format!("/tasks?filters={filters}")).await?;
    tasks.retain(SwarmTask::is_the_pools);
    let nodes = docker.list_nodes(None).await?;
    let ready = nodes
        .into_iter()
        .filter(|n| n.status.as_ref().and_then(|s| s.state) == Some(NodeState::READY))
        .filter_map(|n| n.id)
        .filter(|id| !suspects.contains(id))
        .collect();
    Ok((tasks, ready))
}

fn node_is_ready(nodes: &[bollard::models::Node], id: &str) -> bool {
    nodes.iter().any(|n| n.id.as_deref() == Some(id) && n.status.as_ref().and_then(|s| s.state) == Some(NodeState::READY))
}

#[async_trait]
impl Driver for SwarmDriver {
    async fn ping(&self) -> Result<()> {
        self.docker.ping().await.map(|_| ()).map_err(|e| DriverError::Unreachable(e.to_string()))
    }

    /// On the manager, where builds run (base images are never pushed: builds use them here).
    async fn image_exists(&self, image: &str) -> Result<bool> {
        image_exists_on(&self.docker, image).await
    }

    async fn image_info(&self, image: &str) -> Result<Option<super::ImageInfo>> {
        super::image_info_on(&self.docker, image).await
    }

    async fn image_tags(&self, pattern: &str) -> Result<Vec<String>> {
        super::image_tags_on(&self.docker, pattern).await
    }

    /// Builds on the manager, as the single-host engine builds on its host, then pushes to
    /// the registry (only the layers it lacks travel) and remembers the digest to run.
    async fn build_image(&self, req: BuildRequest) -> Result<String> {
        let tag = req.tag.clone();
        let publish = req.publish;
        let mut log = build_image_on(&self.docker, &self.build_network, req).await?;
        if let (true, Some(registry)) = (publish, &self.registry) {
            let t0 = Instant::now();
            let pinned = registry.push(&self.docker, &tag).await.map_err(|e| DriverError::BuildFailed { message: e.to_string(), log: log.clone() })?;
            log.push_str(&format!("pushed {pinned} in {} ms\n", t0.elapsed().as_millis()));
            self.pinned.lock().unwrap_or_else(|p| p.into_inner()).insert(tag, pinned);
        }
        Ok(log)
    }

    /// Removes the manager's copy and the registry's tag. Nodes that ran it keep their copy
    /// until their engine prunes it (see docs/scale-out.md).
    async fn remove_image(&self, image: &str) -> Result<bool> {
        self.pinned.lock().unwrap_or_else(|p| p.into_inner()).remove(image);
        if let Some(registry) = &self.registry {
            registry.delete(image).await?;
            registry::untag_pushed(&self.docker, registry, image).await;
        }
        remove_image_on(&self.docker, image).await
    }

    async fn run(&self, spec: ContainerSpec) -> Result<Started> {
        let asked = asked(&spec.limits);
        let image = spec.image.clone();
        let network = spec.labels.get(labels::PROJECT).map(|p| overlay_name(&self.owner, p)).unwrap_or_default();
        let id = self.create(&spec, Kind::Instance).await?;
        match self.await_running(&id, &network, &asked, &image).await {
            Ok((ip, task)) => {
                let pid = self.local_pid(&task).await;
                let node = self.hostnames().await.remove(&task.node_id).or(Some(task.node_id));
                Ok(Started { id, ip, pid, node })
            }
            Err(e) => {
                let _ = self.remove(&id).await;
                Err(e)
            }
        }
    }

    async fn start_job(&self, spec: ContainerSpec) -> Result<String> {
        self.runs_started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let asked = asked(&spec.limits);
        let image = spec.image.clone();
        let id = self.create(&spec, Kind::Job).await?;
        match self.await_placed(&id, &asked, &image).await {
            Ok(()) => Ok(id),
            Err(e) => {
                let _ = self.remove(&id).await;
                Err(e)
            }
        }
    }

    fn can_pause(&self) -> bool {
        false
    }

    async fn largest_node(&self) -> Result<Option<NodeCapacity>> {
        Ok(self.nodes().await?.into_iter().filter(|n| n.ready).max_by_key(|n| n.memory_bytes).map(|n| NodeCapacity {
            name: format!("node {}", n.hostname),
            memory_bytes: u64::try_from(n.memory_bytes).unwrap_or(0),
            cpu_millis: u32::try_from(n.nano_cpus / 1_000_000).unwrap_or(u32::MAX),
        }))
    }

    async fn connector(&self, project: &str) -> Result<Option<std::sync::Arc<crate::infra::netns::NetnsConnector>>> {
        self.ensure_overlay(project).await?;
        let network = overlay_name(&self.owner, project);
        Ok(Some(self.attach.connector(project, &network).await?))
    }

    /// Every step runs whatever the one before it met: a cron run or an instance still
    /// stopping on some node keeps the overlay and its image busy for a few seconds after its
    /// service is gone, so the prune (which force-removes the project's containers on every
    /// node) goes first and the overlay's removal is retried until its last task has left.
    /// The project's anchor, on the overlay on every node, is removed before all of them.
    async fn forget_project(&self, project: &str) -> Result<()> {
        let mut failed = Vec::new();
        if let Err(e) = anchor::remove_anchor(&self.docker, &self.owner, project).await {
            failed.push(format!("anchor service: {e}"));
        }
        if let Err(e) = self.attach.remove(project).await {
            failed.push(format!("attach container: {e}"));
        }
        let tool = self.tool_image.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let (Some(registry), Some(image)) = (&self.registry, tool) {
            // Functions' images (`<project>-<function>`, in the registry and as built) and
            // the shared and cache images built on the manager (`<project>.base`, `.cache`).
            let prefixes = [
                format!("{}/eserveless/{project}-", registry.addr()),
                format!("eserveless/{project}-"),
                format!("eserveless/{project}."),
            ];
            let spec = prune::prune_spec(&self.owner, Some((project, &prefixes)), &image);
            if let Err(e) = prune::prune_project_images(&self.docker, spec).await {
                failed.push(format!("images: {e}"));
            }
        }
        let deadline = tokio::time::Instant::now() + NETWORK_REMOVAL;
        loop {
            match self.remove_project_network(project).await {
                Ok(()) => break,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    failed.push(format!("overlay {}: {e}", overlay_name(&self.owner, project)));
                    break;
                }
                Err(e) => tracing::debug!(project, error = %e, "overlay still in use; retrying"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(DriverError::Engine(failed.join("; ")))
        }
    }

    async fn init_pid(&self, id: &str) -> Result<Option<u32>> {
        let tasks = self.tasks_of(id).await?;
        Ok(match current_task(&tasks) {
            Some(t) => self.local_pid(t).await,
            None => None,
        })
    }

    async fn pause(&self, _id: &str) -> Result<()> {
        Err(DriverError::Unsupported(
            "pause is not supported in swarm mode: idle instances stay warm until their idle timeout".into(),
        ))
    }

    async fn unpause(&self, _id: &str) -> Result<()> {
        Err(DriverError::Unsupported("resume is not supported in swarm mode: instances are never paused".into()))
    }

    async fn remove(&self, id: &str) -> Result<()> {
        match self.docker.delete_service(id).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn wait(&self, id: &str) -> Result<i64> {
        let image = String::new();
        loop {
            let tasks = self.tasks_of(id).await?;
            if let Some(t) = current_task(&tasks) {
                let node_ready = if t.node_id.is_empty() || t.is_final() {
                    true
                } else {
                    node_is_ready(&self.docker.list_nodes(None).await?, &t.node_id) && !self.suspects.contains(&t.node_id)
                };
                if let Some(outcome) = wait_outcome(t, node_ready, &image) {
                    return outcome;
                }
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    async fn logs(&self, id: &str, max_bytes: usize) -> Result<String> {
        let opts = LogsOptionsBuilder::default().stdout(true).stderr(true).tail("all").build();
        let mut tail = LogTail::new(max_bytes);
        let read = super::read_logs(self.docker.service_logs(id, Some(opts)), id, &mut tail);
        match tokio::time::timeout(LOGS_TIMEOUT, read).await {
            Ok(Ok(())) => Ok(tail.finish()),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                let mut text = tail.finish();
                text.push_str(&format!("[eserveless: the swarm sent no more output within {LOGS_TIMEOUT:?}; its node may be down]\n"));
                Ok(text)
            }
        }
    }

    fn log_lines(&self, id: &str, read: LogRead) -> BoxStream<'static, Result<RawLine>> {
        let opts = read.options();
        let docker = self.docker.clone().with_timeout(Duration::from_secs(u64::MAX / 4));
        let lines = super::timed_lines(docker.service_logs(id, Some(opts)), id);
        if read.follow {
            lines
        } else {
            // A node that is down sends nothing and never ends the stream.
            lines.take_until(tokio::time::sleep(LOGS_TIMEOUT)).boxed()
        }
    }

    async fn list_managed(&self) -> Result<Vec<ManagedContainer>> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{}=true", labels::MANAGED), format!("{}={}", labels::OWNER, self.owner)],
        )]);
        let opts = ListServicesOptionsBuilder::default().filters(&filters).build();
        let services = self.docker.list_services(Some(opts)).await?;
        let (tasks, ready) = snapshot(&self.docker, &self.owner, &self.suspects).await?;
        // Instances and runs only: the registry (and other services of the server's own) are
        // not the pool's to adopt or remove.
        let services = services
            .into_iter()
            .filter_map(|s| Some((s.id?, s.spec.and_then(|sp| sp.labels).unwrap_or_default())))
            .filter(|(_, l)| matches!(l.get(labels::ROLE).map(String::as_str), Some("http" | "cron")))
            .collect();
        let hostnames = self.hostnames().await;
        let mut list = managed_containers(services, &tasks, &ready, &self.owner);
        for c in &mut list {
            let task_node = tasks.iter().filter(|t| t.service_id == c.id).max_by(|a, b| a.created_at.cmp(&b.created_at)).map(|t| t.node_id.clone());
            c.node = task_node.filter(|n| !n.is_empty()).map(|n| hostnames.get(&n).cloned().unwrap_or(n));
        }
        Ok(list)
    }

    /// Polls tasks and nodes every second: Docker 20.10 has no task events (service events
    /// are only create/update/remove of the service object) and a node's `down` event would
    /// still need the tasks to know which instances it took; one poll answers both.
    fn events(&self) -> BoxStream<'static, Result<ContainerEvent>> {
        struct State {
            docker: Docker,
            owner: String,
            suspects: watch::Suspects,
            before: HashMap<String, Liveness>,
            queue: VecDeque<ContainerEvent>,
            first: bool,
        }
        let state = State {
            docker: self.docker.clone(),
            owner: self.owner.clone(),
            suspects: self.suspects.clone(),
            before: HashMap::new(),
            queue: VecDeque::new(),
            first: true,
        };
        futures_util::stream::unfold(state, |mut st| async move {
            loop {
                if let Some(ev) = st.queue.pop_front() {
                    return Some((Ok(ev), st));
                }
                if !std::mem::take(&mut st.first) {
                    tokio::time::sleep(EVENTS_POLL).await;
                }
                match snapshot(&st.docker, &st.owner, &st.suspects).await {
                    Ok((tasks, ready)) => {
                        let now = liveness(&tasks, &ready);
                        st.queue.extend(diff_liveness(&st.before, &now));
                        st.before = now;
                    }
                    Err(e) => return Some((Err(e), st)),
                }
            }
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infra::driver::Env;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "esl-shop-api-7-1a2b3".into(),
            image: "eserveless/run:bookworm".into(),
            env: Env(vec!["PORT=8080".into(), "SECRET=s3cr3t".into()]),
            labels: labels::for_container("shop", "api", 7, "http"),
            limits: Limits::default(),
        }
    }

    #[test]
    fn an_instance_is_one_replica_that_is_never_restarted_reached_by_dnsrr() {
        let s = service_spec(&spec(), "0123456789abcdef", "net-id", Kind::Instance).expect("spec");
        assert_eq!(s.name.as_deref(), Some("esl-shop-api-7-1a2b3"));
        assert_eq!(s.mode.as_ref().and_then(|m| m.replicated.as_ref()).and_then(|r| r.replicas), Some(1));
        assert!(s.mode.as_ref().is_some_and(|m| m.replicated_job.is_none() && m.global.is_none()));
        let e = s.endpoint_spec.as_ref().expect("endpoint");
        assert_eq!(e.mode, Some(EndpointSpecModeEnum::DNSRR));
        assert!(e.ports.is_none(), "no published port");
        let t = s.task_template.as_ref().expect("task");
        let r = t.restart_policy.as_ref().expect("restart");
        assert_eq!(r.condition, Some(TaskSpecRestartPolicyConditionEnum::NONE));
        let nets = t.networks.as_ref().expect("networks");
        assert_eq!(nets.len(), 1);
        assert_eq!(nets[0].target.as_deref(), Some("net-id"));
        // The wire form the 1.41 API reads.
        let json = serde_json::to_value(&s).expect("json");
        assert_eq!(json["EndpointSpec"]["Mode"], "dnsrr");
        assert_eq!(json["TaskTemplate"]["RestartPolicy"]["Condition"], "none");
        assert_eq!(json["Mode"]["Replicated"]["Replicas"], 1);
    }

    #[test]
    fn labels_are_on_the_service_and_the_container_with_the_owner() {
        let s = service_spec(&spec(), "0123456789abcdef", "n", Kind::Instance).expect("spec");
        let c = s.task_template.as_ref().and_then(|t| t.container_spec.as_ref()).expect("container");
        for l in [s.labels.as_ref().expect("service labels"), c.labels.as_ref().expect("container labels")] {
            assert_eq!(l.get(labels::MANAGED).map(String::as_str), Some("true"));
            assert_eq!(l.get(labels::OWNER).map(String::as_str), Some("0123456789abcdef"));
            assert_eq!(l.get(labels::PROJECT).map(String::as_str), Some("shop"));
            assert_eq!(l.get(labels::FUNCTION).map(String::as_str), Some("api"));
            assert_eq!(l.get(labels::REVISION).map(String::as_str), Some("7"));
            assert_eq!(l.get(labels::ROLE).map(String::as_str), Some("http"));
        }
    }

    #[test]
    fn limits_are_enforced_and_memory_is_reserved_as_much_as_limited() {
        let mut sp = spec();
        sp.limits.memory_bytes = 512 * 1024 * 1024;
        sp.limits.nano_cpus = 500_000_000;
        sp.limits.pids = 64;
        sp.limits.nofile = 1024;
        let s = service_spec(&sp, "o", "n", Kind::Instance).expect("spec");
        let t = s.task_template.as_ref().expect("task");
        let res = t.resources.as_ref().expect("resources");
        let lim = res.limits.as_ref().expect("limits");
        assert_eq!(lim.memory_bytes, Some(512 * 1024 * 1024));
        assert_eq!(lim.nano_cpus, Some(500_000_000));
        assert_eq!(lim.pids, Some(64));
        let rsv = res.reservations.as_ref().expect("reservations");
        assert_eq!(rsv.memory_bytes, lim.memory_bytes, "reservation = limit: no overcommit");
        let c = t.container_spec.as_ref().expect("container");
        let u = &c.ulimits.as_ref().expect("ulimits")[0];
        assert_eq!((u.name.as_deref(), u.soft, u.hard), (Some("nofile"), Some(1024), Some(1024)));
    }

    #[test]
    fn the_sandbox_is_read_only_without_capabilities_with_a_sized_tmp_as_the_user() {
        let mut sp = spec();
        sp.limits.tmpfs_size = "32m".into();
        let s = service_spec(&sp, "o", "n", Kind::Instance).expect("spec");
        let t = s.task_template.as_ref().expect("task");
        let c = t.container_spec.as_ref().expect("container");
        assert_eq!(c.image.as_deref(), Some("eserveless/run:bookworm"));
        assert_eq!(c.env.as_deref(), Some(&["PORT=8080".to_string(), "SECRET=s3cr3t".to_string()][..]));
        assert_eq!(c.user.as_deref(), Some("65534:65534"));
        assert_eq!(c.read_only, Some(true));
        assert_eq!(c.capability_drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert!(c.capability_add.is_none());
        assert_eq!(c.init, Some(false));
        assert_eq!(c.stop_grace_period, Some(0), "removal kills at once");
        let m = &c.mounts.as_ref().expect("mounts")[0];
        assert_eq!(m.target.as_deref(), Some("/tmp"));
        assert_eq!(m.typ, Some(MountType::TMPFS));
        let o = m.tmpfs_options.as_ref().expect("tmpfs options");
        assert_eq!(o.size_bytes, Some(32 * 1024 * 1024));
        assert_eq!(o.mode, Some(0o1777));
        let log = t.log_driver.as_ref().expect("log driver");
        assert_eq!(log.name.as_deref(), Some("json-file"));
        assert_eq!(log.options.as_ref().and_then(|o| o.get("max-size")).map(String::as_str), Some(super::super::ENGINE_LOG_FILE_BYTES));
        let json = serde_json::to_value(&s).expect("json");
        let cj = &json["TaskTemplate"]["ContainerSpec"];
        assert_eq!(cj["CapabilityDrop"][0], "ALL");
        assert_eq!(cj["ReadOnly"], true);
        assert_eq!(cj["Mounts"][0]["Type"], "tmpfs");
        assert_eq!(cj["Mounts"][0]["TmpfsOptions"]["SizeBytes"], 32 * 1024 * 1024);
        assert_eq!(json["TaskTemplate"]["Resources"]["Limits"]["Pids"], 256);
    }

    #[test]
    fn a_job_runs_once_and_an_oci_runtime_or_a_bad_tmpfs_size_is_refused() {
        let s = service_spec(&spec(), "o", "n", Kind::Job).expect("spec");
        let j = s.mode.as_ref().and_then(|m| m.replicated_job.as_ref()).expect("replicated job");
        assert_eq!((j.max_concurrent, j.total_completions), (Some(1), Some(1)));
        assert!(s.mode.as_ref().is_some_and(|m| m.replicated.is_none()));
        let r = s.task_template.as_ref().and_then(|t| t.restart_policy.as_ref()).expect("restart");
        assert_eq!(r.condition, Some(TaskSpecRestartPolicyConditionEnum::NONE));

        let mut sp = spec();
        sp.limits.oci_runtime = Some("runsc".into());
        let e = service_spec(&sp, "o", "n", Kind::Instance).expect_err("runtime");
        assert!(matches!(e, DriverError::Unsupported(_)) && e.to_string().contains("default-runtime"), "{e}");
        let mut sp = spec();
        sp.limits.tmpfs_size = "lots".into();
        assert!(service_spec(&sp, "o", "n", Kind::Instance).is_err());
    }

    #[test]
    fn sizes_names_and_overlays() {
        assert_eq!(parse_size("64m"), Some(64 << 20));
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("2mb"), Some(2 << 20));
        assert_eq!(parse_size("2MiB"), Some(2 << 20));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("m"), None);
        assert_eq!(parse_size("-1m"), None);
        assert_eq!(parse_size("99999999999999t"), None, "overflow");

        assert_eq!(service_name("esl-shop-api-7-1a2b3"), "esl-shop-api-7-1a2b3");
        assert_eq!(service_name("esl-Shop_API--7"), "esl-shop-api-7");
        let long = format!("esl-{}-api-7-1a2b3", "p".repeat(80));
        let (a, b) = (service_name(&long), service_name(&format!("{long}x")));
        assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
        assert!(a.starts_with("esl-ppp") && a != b, "{a} {b}");

        assert_eq!(overlay_name("0123456789abcdef", "shop"), "esl-01234567-shop");
        assert_eq!(overlay_name("0123456789abcdef", "My_Shop"), "esl-01234567-my-shop");
        assert_eq!(asked(&Limits::default()), "256 MiB of memory (reserved) and 1.00 CPU");
    }

    #[test]
    fn only_a_manager_is_accepted_and_the_refusal_says_how_to_fix_it() {
        use bollard::models::SwarmInfo;
        let info = |state: Option<LocalNodeState>, control: Option<bool>| SystemInfo {
            name: Some("node-1".into()),
            swarm: Some(SwarmInfo { local_node_state: state, control_available: control, ..Default::default() }),
            ..Default::default()
        };
        assert!(check_manager(&info(Some(LocalNodeState::ACTIVE), Some(true))).is_ok());
        let e = check_manager(&info(Some(LocalNodeState::INACTIVE), Some(false))).expect_err("inactive");
        assert!(matches!(e, DriverError::NotSwarmManager(_)));
        assert!(e.to_string().contains("docker swarm init"), "{e}");
        let e = check_manager(&info(None, None)).expect_err("no swarm section");
        assert!(e.to_string().contains("docker swarm init"), "{e}");
        let e = check_manager(&info(Some(LocalNodeState::ACTIVE), Some(false))).expect_err("worker");
        assert!(e.to_string().contains("worker") && e.to_string().contains("docker node promote node-1"), "{e}");
        let e = check_manager(&info(Some(LocalNodeState::LOCKED), None)).expect_err("locked");
        assert!(e.to_string().contains("docker swarm unlock"), "{e}");
    }

    /// Tasks as Docker 20.10 answers `GET /tasks` (fields trimmed).
    fn task(json: serde_json::Value) -> SwarmTask {
        serde_json::from_value(json).expect("task json")
    }

    fn running(id: &str, service: &str, node: &str, created: &str) -> SwarmTask {
        task(serde_json::json!({
            "ID": id, "ServiceID": service, "NodeID": node, "CreatedAt": created,
            "Version": {"Index": 42}, "Slot": 1, "DesiredState": "running",
            "Status": {"Timestamp": created, "State": "running", "Message": "started",
                       "ContainerStatus": {"ContainerID": "c0ffee", "PID": 1234, "ExitCode": 0}, "PortStatus": {}},
            "NetworksAttachments": [{
                "Network": {"ID": "netid1", "Spec": {"Name": "esl-01234567-shop", "Labels": {}, "Scope": "swarm"}},
                "Addresses": ["10.0.1.7/24"]
            }]
        }))
    }

    const ASKED: &str = "256 MiB of memory (reserved) and 1.00 CPU";

    #[test]
    fn a_running_task_gives_its_overlay_address() {
        let t = running("t1", "s1", "n1", "2026-12-01T15:00:01.5Z");
        assert_eq!(t.address_on(Some("esl-01234567-shop")).as_deref(), Some("10.0.1.7"));
        assert_eq!(t.address_on(Some("netid1")).as_deref(), Some("10.0.1.7"));
        assert_eq!(t.address_on(Some("other")), None);
        match start_progress(Some(&t), "esl-01234567-shop", ASKED, "img") {
            Progress::Done(ip) => assert_eq!(ip, "10.0.1.7"),
            other => panic!("{other:?}"),
        }
        let pending = task(serde_json::json!({"ID": "t", "Status": {"State": "preparing", "Message": "preparing"}}));
        assert!(matches!(start_progress(Some(&pending), "n", ASKED, "img"), Progress::Waiting));
        assert!(matches!(start_progress(None, "n", ASKED, "img"), Progress::Waiting));
    }

    #[test]
    fn a_task_no_node_can_take_is_no_capacity_at_once() {
        let t = task(serde_json::json!({
            "ID": "t9", "ServiceID": "s9", "CreatedAt": "2026-12-01T15:00:00Z", "DesiredState": "running",
            "Status": {"State": "pending", "Message": "pending task scheduling",
                       "Err": "no suitable node (insufficient resources on 3 nodes)"}
        }));
        assert_eq!(t.unschedulable(), Some("no suitable node (insufficient resources on 3 nodes)"));
        match start_progress(Some(&t), "n", ASKED, "img") {
            Progress::Failed(e @ DriverError::NoCapacity(_)) => {
                let m = e.to_string();
                assert!(m.contains("256 MiB") && m.contains("insufficient resources on 3 nodes"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(job_progress(Some(&t), ASKED, "img"), Progress::Failed(DriverError::NoCapacity(_))));
        assert!(matches!(wait_outcome(&t, true, "img"), Some(Err(DriverError::NoCapacity(_)))));
        // Merely pending (not yet looked at by the scheduler) is not a refusal.
        let fresh = task(serde_json::json!({"ID": "t", "Status": {"State": "pending", "Message": "pending task scheduling"}}));
        assert_eq!(fresh.unschedulable(), None);
        assert!(matches!(job_progress(Some(&fresh), ASKED, "img"), Progress::Waiting));
    }

    #[test]
    fn a_task_that_never_ran_or_exited_at_once_fails_the_start() {
        let rejected = task(serde_json::json!({"ID": "t", "Status": {"State": "rejected", "Message": "preparing",
            "Err": "No such image: eserveless/fn:abc"}}));
        match start_progress(Some(&rejected), "n", ASKED, "img") {
            Progress::Failed(DriverError::Engine(m)) => assert!(m.contains("`img`") && m.contains("every node"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(job_progress(Some(&rejected), ASKED, "img"), Progress::Failed(DriverError::Engine(_))));
        let exited = task(serde_json::json!({"ID": "t", "Status": {"State": "failed", "Message": "started",
            "Err": "task: non-zero exit (1)", "ContainerStatus": {"ContainerID": "c", "ExitCode": 1}}}));
        match start_progress(Some(&exited), "n", ASKED, "img") {
            Progress::Failed(DriverError::Engine(m)) => assert!(m.contains("status 1"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_run_ends_with_its_exit_code_or_a_reason() {
        let done = |state: &str, code: Option<i64>| {
            task(serde_json::json!({"ID": "t", "NodeID": "n1", "Status": {"State": state, "Message": "finished",
                "ContainerStatus": {"ContainerID": "c", "ExitCode": code}}}))
        };
        assert!(matches!(wait_outcome(&done("complete", Some(0)), true, ""), Some(Ok(0))));
        assert!(matches!(wait_outcome(&done("failed", Some(3)), true, ""), Some(Ok(3))));
        assert!(matches!(wait_outcome(&done("shutdown", Some(137)), true, ""), Some(Ok(137))));
        assert!(matches!(wait_outcome(&done("rejected", None), true, ""), Some(Err(_))));
        assert!(wait_outcome(&done("running", None), true, "").is_none());
        match wait_outcome(&done("running", None), false, "") {
            Some(Err(e)) => assert!(e.to_string().contains("went down"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_newest_task_is_the_current_one() {
        let old = running("t-old", "s1", "n1", "2026-12-01T15:00:01.123456789Z");
        let new = running("t-new", "s1", "n2", "2026-12-01T15:00:01.9Z");
        assert_eq!(current_task(&[new.clone(), old.clone()]).map(|t| t.id.as_str()), Some("t-new"));
        assert_eq!(current_task(&[old, new]).map(|t| t.id.as_str()), Some("t-new"));
        assert!(current_task(&[]).is_none());
    }

    #[test]
    fn tasks_map_to_managed_containers() {
        let owner = "0123456789abcdef";
        let ready: HashSet<String> = ["n1".to_string()].into();
        let mut l = labels::for_container("shop", "api", 7, "http");
        l.insert(labels::OWNER.into(), owner.into());
        let finished = task(serde_json::json!({"ID": "t2", "ServiceID": "s2", "NodeID": "n1",
            "Status": {"State": "complete", "ContainerStatus": {"ExitCode": 0}}}));
        let pending = task(serde_json::json!({"ID": "t4", "ServiceID": "s4", "Status": {"State": "pending"}}));
        let mut going = running("t6", "s6", "n1", "2026-12-01T15:00:01Z");
        going.desired_state = "shutdown".into();
        let tasks = vec![
            running("t1", "s1", "n1", "2026-12-01T15:00:01Z"),
            finished,
            running("t3", "s3", "n-down", "2026-12-01T15:00:01Z"),
            pending,
            going,
        ];
        let services = ["s1", "s2", "s3", "s4", "s5", "s6"].iter().map(|s| (s.to_string(), l.clone())).collect();
        let got = managed_containers(services, &tasks, &ready, owner);
        let by: HashMap<&str, &ManagedContainer> = got.iter().map(|c| (c.id.as_str(), c)).collect();
        let s1 = by["s1"];
        assert!(s1.running && !s1.stopped && !s1.paused);
        assert_eq!(s1.ip.as_deref(), Some("10.0.1.7"));
        assert_eq!(s1.labels.get(labels::PROJECT).map(String::as_str), Some("shop"));
        assert!(!by["s2"].running && by["s2"].stopped, "a finished task");
        assert!(!by["s3"].running && by["s3"].stopped, "a task on a down node");
        assert!(!by["s4"].running && !by["s4"].stopped, "pending: neither");
        assert!(!by["s5"].running && !by["s5"].stopped && by["s5"].ip.is_none(), "no task yet");
        assert!(!by["s6"].running && by["s6"].stopped, "told to shut down");

        // The node guard is not a function container: never listed, so never removed.
        let mut g = HashMap::from([(labels::MANAGED.to_string(), "true".to_string()), (labels::OWNER.to_string(), owner.to_string())]);
        g.insert(labels::ROLE.into(), guard::GUARD_ROLE.into());
        // Nor is a project's anchor, though it carries the project's label.
        let mut a = g.clone();
        a.insert(labels::ROLE.into(), anchor::ANCHOR_ROLE.into());
        a.insert(labels::PROJECT.into(), "shop".into());
        let services = vec![("guard".to_string(), g), ("anchor".to_string(), a), ("s1".to_string(), l.clone())];
        let got = managed_containers(services, &tasks, &ready, owner);
        assert_eq!(got.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), vec!["s1"]);
    }

    #[test]
    fn only_the_tasks_of_instances_and_runs_reach_the_pool() {
        let with_role = |role: &str| task(serde_json::json!({"Spec": {"ContainerSpec": {"Labels": {"eserveless.role": role}}}}));
        assert!(with_role("http").is_the_pools());
        assert!(with_role("cron").is_the_pools());
        assert!(task(serde_json::json!({"ID": "t"})).is_the_pools(), "a task without labels is not hidden");
        for role in [anchor::ANCHOR_ROLE, guard::GUARD_ROLE, "registry", "prune"] {
            assert!(!with_role(role).is_the_pools(), "{role}: one of the server's own services");
        }
    }

    #[test]
    fn events_report_deaths_node_losses_and_removals_once() {
        let ready: HashSet<String> = ["n1".to_string(), "n2".to_string()].into();
        let a = running("ta", "sa", "n1", "2026-12-01T15:00:01Z");
        let b = running("tb", "sb", "n2", "2026-12-01T15:00:01Z");
        let c = running("tc", "sc", "n2", "2026-12-01T15:00:01Z");
        let t0 = liveness(&[a.clone(), b.clone(), c.clone()], &ready);
        assert!(diff_liveness(&HashMap::new(), &t0).is_empty(), "all alive: nothing to say");

        // sa's task exits, n2 goes down (sb and sc are on it), then sc is removed.
        let mut a_done = a.clone();
        a_done.status.state = "failed".into();
        let only_n1: HashSet<String> = ["n1".to_string()].into();
        let t1 = liveness(&[a_done.clone(), b.clone(), c.clone()], &only_n1);
        let ev: Vec<(String, String)> = diff_liveness(&t0, &t1).into_iter().map(|e| (e.action, e.id)).collect();
        // Exited on its own: `die`; taken with its node: `lost` (another start may work).
        assert_eq!(ev, vec![("die".into(), "sa".into()), ("lost".into(), "sb".into()), ("lost".into(), "sc".into())]);
        assert!(diff_liveness(&t1, &t1).is_empty(), "reported once");
        // Lost, then seen final: already reported.
        let mut b_done = b.clone();
        b_done.status.state = "orphaned".into();
        let t1b = liveness(&[a_done.clone(), b_done, c.clone()], &only_n1);
        assert!(diff_liveness(&t1, &t1b).is_empty(), "a lost instance is not reported again when it ends");
        // A removed service's task runs on while its node stops it: dead for the pool already.
        let mut b_going = b.clone();
        b_going.desired_state = "remove".into();
        let t_going = liveness(&[b_going], &ready);
        assert_eq!(t_going.get("sb"), Some(&Liveness::Dead));
        let t2 = liveness(&[a_done, b], &only_n1);
        let ev: Vec<(String, String)> = diff_liveness(&t1, &t2).into_iter().map(|e| (e.action, e.id)).collect();
        assert_eq!(ev, vec![("destroy".into(), "sc".into())]);
    }

    /// One HTTP exchange on loopback: answers `status` and `body`, returns the request line.
    async fn one_exchange(status: &'static str, body: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = format!("tcp://{}", listener.local_addr().expect("addr"));
        let served = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.expect("read");
                assert!(n > 0, "request cut short");
                req.extend_from_slice(&buf[..n]);
            }
            let answer = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(answer.as_bytes()).await.expect("write");
            String::from_utf8_lossy(&req).lines().next().unwrap_or_default().to_string()
        });
        (addr, served)
    }

    #[tokio::test]
    async fn raw_gets_reach_the_asked_path_and_keep_what_bollard_drops() {
        let body = r#"[{"ID":"t1","ServiceID":"s1","NodeID":"n1","Status":{"State":"running"},
            "NetworksAttachments":[{"Network":{"ID":"x","Spec":{"Name":"esl-o-p"}},"Addresses":["10.0.9.2/24"]}]}]"#;
        let (addr, served) = one_exchange("200 OK", body).await;
        let v = bollard::ClientVersion { major_version: 1, minor_version: 41 };
        let docker = Docker::connect_with_http(&addr, 5, &v).expect("client");
        let filters = filters_query(&[("service", &["s1"])]);
        let tasks: Vec<SwarmTask> = get_json(&docker, &format!("/tasks?filters={filters}")).await.expect("tasks");
        // bollard 0.21 joins an absolute path onto `/v1.41/`, which drops the version: whatever
        // prefix it sends, the raw GET keeps it and replaces only the carrier's path.
        let line = served.await.expect("server");
        assert!(line.starts_with("GET ") && line.ends_with(&format!("/tasks?filters={filters} HTTP/1.1")), "{line}");
        assert!(!line.contains("containers"), "{line}");
        assert_eq!(tasks[0].address_on(Some("esl-o-p")).as_deref(), Some("10.0.9.2"));

        // The engine's errors come back as bollard's, status included.
        let (addr, served) = one_exchange("404 Not Found", r#"{"message":"service s9 not found"}"#).await;
        let docker = Docker::connect_with_http(&addr, 5, &v).expect("client");
        match get_json::<Vec<SwarmTask>>(&docker, "/tasks").await {
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, message }) => {
                assert_eq!(message, "service s9 not found");
            }
            other => panic!("{other:?}"),
        }
        assert!(served.await.expect("server").ends_with("/tasks HTTP/1.1"));
    }

    #[test]
    fn filters_are_escaped_for_the_query() {
        let q = filters_query(&[("label", &["eserveless.managed=true"])]);
        assert_eq!(q, "%7B%22label%22%3A%5B%22eserveless.managed%3Dtrue%22%5D%7D");
    }
}
