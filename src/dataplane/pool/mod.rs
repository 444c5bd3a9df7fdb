//! Instance pools: per (project, function, revision) containers, readiness probing,
//! concurrency, pause/resume, idle removal, draining of retired revisions, adoption after a
//! restart, and eviction of dead containers.
//!
//! Every instance state change goes through [`InstanceState::can_become`]. Locks here are
//! plain mutexes held only for bookkeeping, never across I/O.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::infra::driver::{labels, ContainerSpec, Driver, Env, Limits};
use crate::engine::manifest::Scaling;
use crate::infra::metrics::Metrics;
use crate::infra::store::Store;
use crate::dataplane::upstream::{Endpoint, SOCKET_IN_CONTAINER};

mod metrics;

pub use metrics::FunctionMetrics;
use metrics::PoolMetrics;

/// The port every http function listens on inside its container.
pub const FUNCTION_PORT: u16 = 8080;

/// One deployed revision of an http function.
#[derive(Debug, Clone)]
pub struct Revision {
    pub project: String,
    pub function: String,
    pub deployment_id: i64,
    pub image: String,
    /// Environment for the container: `meta` and the project's secrets.
    pub env: Env,
    /// Memory, CPU and the other container limits.
    pub limits: Limits,
    /// Needs the project's invoke key.
    pub private: bool,
    pub timeout: Duration,
    pub scaling: Scaling,
}

/// How a request's instance was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireKind {
    Warm = 0,
    Resume = 1,
    Cold = 2,
}

impl AcquireKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AcquireKind::Warm => "warm",
            AcquireKind::Resume => "resume",
            AcquireKind::Cold => "cold",
        }
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AcquireError {
    #[error("function `{0}` is at capacity and its queue is full; retry shortly")]
    QueueFull(String),
    #[error("no instance of `{0}` became available before the request's deadline")]
    Deadline(String),
    #[error("function `{0}` did not become ready within the request's timeout")]
    StartDeadline(String),
    #[error("function `{function}` failed to start: {detail}")]
    StartFailed { function: String, detail: String },
    /// The revision was replaced while the request looked it up; look the route up again.
    #[error("revision retired")]
    Retired,
}

/// An instance's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    /// Serving; counts in-flight requests.
    Ready,
    /// Being frozen.
    Pausing,
    /// Frozen by the cgroup freezer.
    Paused,
    /// Being thawed for a request.
    Resuming,
    /// Takes no new requests; removed when its last request ends.
    Draining,
    /// Gone.
    Removed,
}

impl InstanceState {
    /// The legal transitions, all in one place.
    pub fn can_become(self, to: InstanceState) -> bool {
        use InstanceState::*;
        matches!(
            (self, to),
            (Ready, Pausing)
                | (Pausing, Paused)
                | (Pausing, Ready)
                | (Paused, Resuming)
                | (Resuming, Ready)
                | (Ready | Pausing | Paused | Resuming, Draining)
                | (Ready | Pausing | Paused | Resuming | Draining, Removed)
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Ready => "ready",
            InstanceState::Pausing => "pausing",
            InstanceState::Paused => "paused",
            InstanceState::Resuming => "resuming",
            InstanceState::Draining => "draining",
            InstanceState::Removed => "removed",
        }
    }
}

#[derive(Debug)]
struct Instance {
    id: Arc<str>,
    /// How the gateway reaches it, with its kept-alive connections.
    endpoint: Arc<Endpoint>,
    state: InstanceState,
    in_flight: u32,
    last_used: Instant,
}

impl Instance {
    fn set(&mut self, to: InstanceState) {
        debug_assert!(self.state.can_become(to), "illegal transition {:?} -> {:?}", self.state, to);
        if self.state.can_become(to) {
            self.state = to;
        } else {
            tracing::error!(container = %self.id, from = self.state.as_str(), to = to.as_str(), "illegal instance transition refused");
        }
    }
}

#[derive(Debug, Default)]
struct PoolInner {
    instances: Vec<Instance>,
    starting: u32,
    /// Requests in the queue for capacity (bounded by `queue_depth`).
    waiting: u32,
    /// Requests waiting for an instance that is starting, which will have room for them.
    joining: u32,
}

/// Counts of instances by state, for status and metrics.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq, Eq)]
pub struct PoolCounts {
    pub starting: u32,
    pub ready: u32,
    pub paused: u32,
    pub draining: u32,
    pub in_flight: u32,
    pub waiting: u32,
}

/// Settings shared by all pools.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Longest a container may take from start to accepting connections.
    pub start_timeout: Duration,
    /// Requests allowed to wait for capacity, per function.
    pub queue_depth: u32,
    /// Longest a request waits in the queue (bounded by its own deadline too).
    pub queue_timeout: Duration,
    /// How often the reaper looks at idle instances.
    pub reap_interval: Duration,
    /// Most output saved from one removed container.
    pub log_bytes: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            start_timeout: Duration::from_secs(30),
            queue_depth: 100,
            queue_timeout: Duration::from_secs(30),
            reap_interval: Duration::from_millis(500),
            log_bytes: 64 * 1024,
        }
    }
}

struct Shared {
    metrics: PoolMetrics,
    driver: Arc<dyn Driver>,
    store: Arc<Store>,
    config: PoolConfig,
    pools: Mutex<Vec<Weak<FunctionPool>>>,
    /// Containers being probed, with a flag the event watcher sets if they die.
    probing: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Told when the event stream comes back after failing.
    reconnected: Arc<Notify>,
    seq: AtomicU64,
}

/// Owns every pool; hands out new pools and runs the background reaper and event watcher.
#[derive(Clone)]
pub struct PoolManager {
    shared: Arc<Shared>,
}

/// The instances of one revision of one function.
pub struct FunctionPool {
    revision: Arc<Revision>,
    /// [`config_digest`] of the revision, carried by its containers as a label.
    config: String,
    /// `X-Forwarded-Prefix` for this function, made once.
    forwarded_prefix: http::HeaderValue,
    metrics: FunctionMetrics,
    inner: Mutex<PoolInner>,
    changed: Notify,
    retired: AtomicBool,
    shared: Arc<Shared>,
}

/// A request's hold on an instance; released on drop.
pub struct Lease {
    pool: Arc<FunctionPool>,
    id: Arc<str>,
    pub endpoint: Arc<Endpoint>,
    pub kind: AcquireKind,
    pub took: Duration,
}

impl Lease {
    /// The instance failed under this request: take it out of rotation.
    pub fn mark_broken(&self) {
        self.pool.evict(&self.id, "upstream connection failed");
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.release(&self.id);
    }
}

fn lock(m: &Mutex<PoolInner>) -> MutexGuard<'_, PoolInner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PoolManager {
    pub fn new(driver: Arc<dyn Driver>, store: Arc<Store>, config: PoolConfig, metrics: Arc<Metrics>) -> Self {
        let shared = Arc::new(Shared {
                metrics: PoolMetrics::register(&metrics),
                driver,
                store,
                config,
                pools: Mutex::new(Vec::new()),
                probing: Mutex::new(HashMap::new()),
                reconnected: Arc::new(Notify::new()),
                seq: AtomicU64::new(0),
            });
        // Instances by state and queue depth are read from the pools at each scrape.
        let weak = Arc::downgrade(&shared);
        metrics.on_scrape(move || {
            if let Some(shared) = weak.upgrade() {
                let pools = PoolManager { shared };
                let counts = pools.counts();
                pools.shared.metrics.set_counts(counts.iter().map(|(r, c)| (r.project.as_str(), r.function.as_str(), c.clone())));
            }
        });
        PoolManager { shared }
    }

    pub fn driver(&self) -> &Arc<dyn Driver> {
        &self.shared.driver
    }

    /// A new, empty pool for a revision.
    pub fn pool(&self, revision: Revision) -> Arc<FunctionPool> {
        let forwarded_prefix = http::HeaderValue::from_str(&format!("/invoke/{}/{}", revision.project, revision.function))
            .expect("project and function names are valid header text");
        let pool = Arc::new(FunctionPool {
            forwarded_prefix,
            config: config_digest(&revision),
            metrics: self.shared.metrics.for_function(&revision.project, &revision.function),
            revision: Arc::new(revision),
            inner: Mutex::new(PoolInner::default()),
            changed: Notify::new(),
            retired: AtomicBool::new(false),
            shared: self.shared.clone(),
        });
        let mut pools = self.shared.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|w| w.strong_count() > 0);
        pools.push(Arc::downgrade(&pool));
        pool
    }

    fn live_pools(&self) -> Vec<Arc<FunctionPool>> {
        let pools = self.shared.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.iter().filter_map(Weak::upgrade).collect()
    }

    /// Adopts running containers whose revision has a pool; removes every other managed one.
    pub async fn adopt(&self) -> Result<(usize, usize), crate::infra::driver::DriverError> {
        let containers = self.shared.driver.list_managed().await?;
        let pools = self.live_pools();
        let (mut adopted, mut removed) = (0, 0);
        for c in containers {
            let get = |k: &str| c.labels.get(k).map(String::as_str).unwrap_or("");
            let pool = pools.iter().find(|p| {
                let r = &p.revision;
                !p.retired.load(Ordering::Acquire)
                    && get(labels::ROLE) == "http"
                    && get(labels::PROJECT) == r.project
                    && get(labels::FUNCTION) == r.function
                    && get(labels::REVISION) == r.deployment_id.to_string()
                    // Started before a secret change or under other limits: not this revision's
                    // configuration any more, so it is replaced rather than adopted.
                    && get(labels::CONFIG) == p.config
            });
            match (pool, c.running, c.ip.as_deref().and_then(|ip| ip.parse().ok())) {
                (Some(pool), true, Some(ip)) => {
                    let pid = self.shared.driver.init_pid(&c.id).await.ok().flatten();
                    let endpoint =
                        Arc::new(Endpoint::for_container(SocketAddr::new(ip, FUNCTION_PORT), pid, pool.metrics.connects.clone()));
                    let mut g = lock(&pool.inner);
                    if g.instances.len() < pool.revision.scaling.max_instances as usize {
                        g.instances.push(Instance {
                            id: Arc::from(c.id.as_str()),
                            endpoint,
                            state: if c.paused { InstanceState::Paused } else { InstanceState::Ready },
                            in_flight: 0,
                            last_used: Instant::now(),
                        });
                        adopted += 1;
                        tracing::info!(container = %c.id, project = %pool.revision.project, function = %pool.revision.function, "instance adopted");
                        continue;
                    }
                }
                _ => {}
            }
            let project = c.labels.get(labels::PROJECT).cloned().unwrap_or_default();
            let function = c.labels.get(labels::FUNCTION).cloned().unwrap_or_default();
            remove_container(&self.shared, &project, &function, &c.id).await;
            removed += 1;
        }
        Ok((adopted, removed))
    }

    /// Runs the reaper and the event watcher until the process ends.
    pub fn spawn_background(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.shared.config.reap_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                for pool in me.live_pools() {
                    pool.reap().await;
                }
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt;
            let mut first = true;
            loop {
                let mut events = me.shared.driver.events();
                if !std::mem::take(&mut first) {
                    // Whatever happened while the stream was down (an engine restart stops
                    // every container) is found by listing, not by events.
                    me.shared.reconnected.notify_one();
                }
                while let Some(ev) = events.next().await {
                    match ev {
                        Ok(ev) if ev.action == "die" || ev.action == "oom" || ev.action == "destroy" => {
                            me.on_container_gone(&ev.id, &ev.action);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "docker event stream failed; reconnecting");
                            break;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// A container died or was removed: take it out of its pool at once.
    pub fn on_container_gone(&self, id: &str, why: &str) {
        if let Some(flag) = self.shared.probing.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            flag.store(true, Ordering::Release);
        }
        for pool in self.live_pools() {
            pool.evict(id, why);
        }
    }

    /// Ids of every instance in every pool, at this moment.
    pub fn instance_ids(&self) -> Vec<String> {
        self.live_pools().iter().flat_map(|p| lock(&p.inner).instances.iter().map(|i| i.id.to_string()).collect::<Vec<_>>()).collect()
    }

    /// Saves the output of a managed container that is no longer running, and removes it.
    pub async fn remove_stopped(&self, c: &crate::infra::driver::ManagedContainer) {
        let get = |k: &str| c.labels.get(k).cloned().unwrap_or_default();
        // A cron run's output belongs in its run record, written by the scheduler.
        let project = if get(labels::ROLE) == "http" { get(labels::PROJECT) } else { String::new() };
        remove_container(&self.shared, &project, &get(labels::FUNCTION), &c.id).await;
    }

    /// A notification each time the engine's event stream had to be reconnected: events may
    /// have been missed (the engine restarted, say), so the caller reconciles.
    pub fn reconnected(&self) -> Arc<Notify> {
        self.shared.reconnected.clone()
    }

    /// Instance counts over all pools, by project and function.
    pub fn counts(&self) -> Vec<(Arc<Revision>, PoolCounts)> {
        self.live_pools().iter().map(|p| (p.revision.clone(), p.counts())).collect()
    }
}

/// What an instance of `r` is started with, as a short digest: image, environment (secrets
/// included: `docker inspect` shows the environment itself anyway) and limits.
fn config_digest(r: &Revision) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(r.image.as_bytes());
    for var in &r.env.0 {
        h.update([0u8]);
        h.update(var.as_bytes());
    }
    // Each limit by name, in a fixed order: a stable encoding, where `Debug` output could
    // change with a harmless derive or field reorder and replace every container after an
    // upgrade. A new limit is appended here (and then replaces containers once, as it should).
    let l = &r.limits;
    let fields: [(&str, String); 7] = [
        ("memory_bytes", l.memory_bytes.to_string()),
        ("nano_cpus", l.nano_cpus.to_string()),
        ("pids", l.pids.to_string()),
        ("nofile", l.nofile.to_string()),
        ("tmpfs_size", l.tmpfs_size.clone()),
        ("user", l.user.clone()),
        ("oci_runtime", l.oci_runtime.clone().unwrap_or_default()),
    ];
    for (name, value) in fields {
        h.update([0u8]);
        h.update(name.as_bytes());
        h.update(b"=");
        h.update(value.as_bytes());
    }
    h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
}

async fn remove_container(shared: &Arc<Shared>, project: &str, function: &str, id: &str) {
    match shared.driver.logs(id, shared.config.log_bytes).await {
        Ok(out) if !out.is_empty() && !project.is_empty() => {
            let store = shared.store.clone();
            let (p, f, c) = (project.to_string(), function.to_string(), id.to_string());
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = store.save_function_log(&p, &f, &c, &out) {
                    tracing::warn!(error = %e, "could not save container output");
                }
            })
            .await;
        }
        _ => {}
    }
    if let Err(e) = shared.driver.remove(id).await {
        tracing::warn!(container = %id, error = %e, "could not remove container");
    }
}

async fn probe_ready(addr: SocketAddr, dead: &AtomicBool, until: Instant) -> Result<(), &'static str> {
    loop {
        if dead.load(Ordering::Acquire) {
            return Err("the container exited before it accepted connections");
        }
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err("the container did not accept connections in time");
        }
        // A short pause between probes; readiness is observed, not assumed.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

impl FunctionPool {
    pub fn revision(&self) -> &Arc<Revision> {
        &self.revision
    }

    pub fn forwarded_prefix(&self) -> &http::HeaderValue {
        &self.forwarded_prefix
    }

    pub fn metrics(&self) -> &FunctionMetrics {
        &self.metrics
    }

    pub fn counts(&self) -> PoolCounts {
        let g = lock(&self.inner);
        let mut c = PoolCounts { starting: g.starting, waiting: g.waiting, ..Default::default() };
        for i in &g.instances {
            c.in_flight += i.in_flight;
            match i.state {
                InstanceState::Ready | InstanceState::Resuming | InstanceState::Pausing => c.ready += 1,
                InstanceState::Paused => c.paused += 1,
                InstanceState::Draining => c.draining += 1,
                InstanceState::Removed => {}
            }
        }
        c
    }

    /// True when the pool has any instance (or one starting).
    pub fn has_instances(&self) -> bool {
        let g = lock(&self.inner);
        g.starting > 0 || g.instances.iter().any(|i| i.state != InstanceState::Draining)
    }

    /// Gets an instance for one request, waiting no later than `deadline`.
    pub async fn acquire(self: &Arc<Self>, deadline: Instant) -> Result<Lease, AcquireError> {
        let began = Instant::now();
        let queue_deadline = deadline.min(began + self.shared.config.queue_timeout);
        let scaling = &self.revision.scaling;
        let mut queued = false;
        let _waiting = WaitingGuard { pool: self, queued: &mut queued };
        loop {
            enum Next {
                Resume(Arc<str>, Arc<Endpoint>),
                /// Another request is resuming this instance and it has room: wait for it.
                JoinResume(Arc<str>, Arc<Endpoint>),
                Start,
                Wait,
                /// An instance is being paused: it can be resumed in a moment, sooner than a
                /// cold start. Not a place in the queue.
                WaitPausing,
                /// An instance is starting and will have room for this request too.
                WaitStarting,
            }
            // Created before the state is read: `notify_waiters` reaches it from here on, so a
            // release between the check and the wait is not missed (no registration lock needed).
            let notified = self.changed.notified();
            let next = {
                let mut g = lock(&self.inner);
                if self.retired.load(Ordering::Acquire) {
                    return Err(AcquireError::Retired);
                }
                let ready = g
                    .instances
                    .iter_mut()
                    .filter(|i| i.state == InstanceState::Ready && i.in_flight < scaling.concurrency)
                    // Pack requests onto the busiest instance with room, so others can idle out.
                    .max_by_key(|i| i.in_flight);
                if let Some(i) = ready {
                    i.in_flight += 1;
                    i.last_used = Instant::now();
                    return Ok(self.lease(i.id.clone(), i.endpoint.clone(), AcquireKind::Warm, began));
                }
                // An instance on its way back has room: joining it costs the rest of its resume
                // (milliseconds), where a cold start costs a new container (hundreds).
                if let Some(i) = g
                    .instances
                    .iter_mut()
                    .find(|i| i.state == InstanceState::Resuming && i.in_flight < scaling.concurrency)
                {
                    i.in_flight += 1;
                    i.last_used = Instant::now();
                    Next::JoinResume(i.id.clone(), i.endpoint.clone())
                } else if let Some(i) = g.instances.iter_mut().find(|i| i.state == InstanceState::Paused) {
                    i.set(InstanceState::Resuming);
                    i.in_flight += 1;
                    i.last_used = Instant::now();
                    Next::Resume(i.id.clone(), i.endpoint.clone())
                } else if g.joining < g.starting.saturating_mul(scaling.concurrency.saturating_sub(1)) {
                    // Each starting instance has room for `concurrency` requests, one of them
                    // its starter's: wait for it rather than start one more. A function that
                    // never comes up then costs one container, not one per request.
                    g.joining += 1;
                    Next::WaitStarting
                } else if g.instances.iter().any(|i| i.state == InstanceState::Pausing) {
                    Next::WaitPausing
                } else if (g.instances.iter().filter(|i| i.state != InstanceState::Draining).count() as u32 + g.starting)
                    < scaling.max_instances
                {
                    g.starting += 1;
                    Next::Start
                } else {
                    if !*_waiting.queued {
                        if g.waiting >= self.shared.config.queue_depth {
                            return Err(AcquireError::QueueFull(self.revision.function.clone()));
                        }
                        g.waiting += 1;
                        *_waiting.queued = true;
                    }
                    Next::Wait
                }
            };
            match next {
                Next::Resume(id, endpoint) => match self.shared.driver.unpause(&id).await {
                    Ok(()) => {
                        self.with_instance(&id, |i| i.set(InstanceState::Ready));
                        // Requests that joined this resume are waiting for it.
                        self.changed.notify_waiters();
                        return Ok(self.lease(id, endpoint, AcquireKind::Resume, began));
                    }
                    Err(e) => {
                        tracing::warn!(container = %id, error = %e, "resume failed; replacing the instance");
                        self.release(&id);
                        self.evict(&id, "resume failed");
                    }
                },
                Next::JoinResume(id, endpoint) => {
                    if self.join_resume(&id, deadline).await? {
                        return Ok(self.lease(id, endpoint, AcquireKind::Resume, began));
                    }
                    // The resume failed and the instance is gone: look again.
                }
                Next::WaitPausing => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return Err(AcquireError::Deadline(self.revision.function.clone()));
                    }
                }
                Next::WaitStarting => {
                    let _joined = JoinGuard(&self.inner);
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return Err(AcquireError::StartDeadline(self.revision.function.clone()));
                    }
                }
                Next::Start => {
                    let (tx, rx) = oneshot::channel();
                    let me = self.clone();
                    // The start runs on its own: if this request gives up, the instance still joins the pool.
                    tokio::spawn(async move {
                        let r = me.start_instance(true).await;
                        let _ = tx.send(r);
                    });
                    match tokio::time::timeout_at(deadline, rx).await {
                        Ok(Ok(Ok((id, endpoint)))) => {
                            return Ok(self.lease(Arc::from(id.as_str()), endpoint, AcquireKind::Cold, began))
                        }
                        Ok(Ok(Err(detail))) => {
                            return Err(AcquireError::StartFailed { function: self.revision.function.clone(), detail })
                        }
                        Ok(Err(_)) => {
                            return Err(AcquireError::StartFailed {
                                function: self.revision.function.clone(),
                                detail: "the start task ended unexpectedly".into(),
                            })
                        }
                        Err(_) => return Err(AcquireError::StartDeadline(self.revision.function.clone())),
                    }
                }
                Next::Wait => {
                    if tokio::time::timeout_at(queue_deadline, notified).await.is_err() {
                        return Err(AcquireError::Deadline(self.revision.function.clone()));
                    }
                }
            }
        }
    }

    /// Waits for the resuming instance `id`, on which the caller already holds a place.
    /// `Ok(true)`: it is ready; `Ok(false)`: its resume failed (the place is given back).
    async fn join_resume(self: &Arc<Self>, id: &str, deadline: Instant) -> Result<bool, AcquireError> {
        loop {
            let notified = self.changed.notified();
            let state = lock(&self.inner).instances.iter().find(|i| &*i.id == id).map(|i| i.state);
            match state {
                Some(InstanceState::Ready) => return Ok(true),
                Some(InstanceState::Resuming) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        self.release(id);
                        return Err(AcquireError::StartDeadline(self.revision.function.clone()));
                    }
                }
                _ => {
                    self.release(id);
                    return Ok(false);
                }
            }
        }
    }

    fn lease(
        self: &Arc<Self>,
        id: Arc<str>,
        endpoint: Arc<Endpoint>,
        kind: AcquireKind,
        began: Instant,
    ) -> Lease {
        Lease { pool: self.clone(), id, endpoint, kind, took: began.elapsed() }
    }

    /// Starts one container and waits for readiness. `claimed` counts the caller's request
    /// as in flight on it. The caller has already counted it in `starting`.
    async fn start_instance(self: &Arc<Self>, claimed: bool) -> Result<(String, Arc<Endpoint>), String> {
        let r = &self.revision;
        let seq = self.shared.seq.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let fn_part = crate::names::FunctionName::parse(&r.function).map(|f| f.docker_part()).unwrap_or_else(|_| "fn".into());
        let name = format!("esl-{}-{}-{}-{:x}{:x}", r.project, fn_part, r.deployment_id, nanos, seq);
        let mut env = r.env.clone();
        env.0.push(format!("PORT={FUNCTION_PORT}"));
        env.0.push(format!("ESERVELESS_SOCKET={SOCKET_IN_CONTAINER}"));
        let spec = ContainerSpec {
            name,
            image: r.image.clone(),
            env,
            labels: {
                let mut l = labels::for_container(&r.project, &r.function, r.deployment_id, "http");
                l.insert(labels::CONFIG.to_string(), self.config.clone());
                l
            },
            limits: r.limits.clone(),
        };
        let result = async {
            let t0 = Instant::now();
            let started = self.shared.driver.run(spec).await.map_err(|e| e.to_string())?;
            let engine_ms = t0.elapsed().as_millis();
            let ip: std::net::IpAddr =
                started.ip.parse().map_err(|_| format!("container address `{}` is not an IP", started.ip))?;
            let addr = SocketAddr::new(ip, FUNCTION_PORT);
            let dead = Arc::new(AtomicBool::new(false));
            self.shared.probing.lock().unwrap_or_else(|p| p.into_inner()).insert(started.id.clone(), dead.clone());
            let probed = probe_ready(addr, &dead, Instant::now() + self.shared.config.start_timeout).await;
            self.shared.probing.lock().unwrap_or_else(|p| p.into_inner()).remove(&started.id);
            tracing::debug!(container = %started.id, engine_ms, ready_ms = t0.elapsed().as_millis(), "cold start timings");
            if let Err(why) = probed {
                let logs = self.shared.driver.logs(&started.id, 4096).await.unwrap_or_default();
                remove_container(&self.shared, &r.project, &r.function, &started.id).await;
                let tail: String = logs.lines().rev().take(10).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
                return Err(if tail.is_empty() { why.to_string() } else { format!("{why}; its output ends with:\n{tail}") });
            }
            // Opened only now that the container is known to run (and was not seen to die).
            let endpoint = Arc::new(Endpoint::for_container(addr, started.pid, self.metrics.connects.clone()));
            Ok((started.id, endpoint))
        }
        .await;
        let mut g = lock(&self.inner);
        g.starting = g.starting.saturating_sub(1);
        if let Ok((id, endpoint)) = &result {
            tracing::info!(container = %id, project = %r.project, function = %r.function, "instance started");
            g.instances.push(Instance {
                id: Arc::from(id.as_str()),
                endpoint: endpoint.clone(),
                state: InstanceState::Ready,
                in_flight: u32::from(claimed),
                last_used: Instant::now(),
            });
        }
        drop(g);
        self.changed.notify_waiters();
        // Started for a revision that was replaced meanwhile: it serves its one request, then goes.
        if let Ok((id, _)) = &result {
            if self.retired.load(Ordering::Acquire) {
                self.evict(id, "revision retired during start");
            }
        }
        result
    }

    /// Starts an instance ahead of traffic (used before a revision goes live).
    pub async fn prewarm(self: &Arc<Self>) -> Result<(), String> {
        {
            let mut g = lock(&self.inner);
            g.starting += 1;
        }
        self.start_instance(false).await.map(|_| ())
    }

    fn with_instance(&self, id: &str, f: impl FnOnce(&mut Instance)) {
        let mut g = lock(&self.inner);
        if let Some(i) = g.instances.iter_mut().find(|i| &*i.id == id) {
            f(i);
        }
    }

    fn release(self: &Arc<Self>, id: &str) {
        let remove = {
            let mut g = lock(&self.inner);
            let Some(pos) = g.instances.iter().position(|i| &*i.id == id) else {
                drop(g);
                self.changed.notify_waiters();
                return;
            };
            let i = &mut g.instances[pos];
            i.in_flight = i.in_flight.saturating_sub(1);
            i.last_used = Instant::now();
            if i.state == InstanceState::Draining && i.in_flight == 0 {
                i.set(InstanceState::Removed);
                g.instances.remove(pos);
                true
            } else {
                false
            }
        };
        self.changed.notify_waiters();
        if remove {
            self.spawn_remove(id.to_string());
        }
    }

    fn spawn_remove(&self, id: String) {
        let shared = self.shared.clone();
        let (p, f) = (self.revision.project.clone(), self.revision.function.clone());
        tokio::spawn(async move { remove_container(&shared, &p, &f, &id).await });
    }

    /// Takes an instance out of rotation; it is removed once idle.
    fn evict(&self, id: &str, why: &str) {
        let remove = {
            let mut g = lock(&self.inner);
            let Some(pos) = g.instances.iter().position(|i| &*i.id == id) else { return };
            let i = &mut g.instances[pos];
            tracing::info!(container = %id, function = %self.revision.function, reason = why, "instance taken out of the pool");
            if i.in_flight == 0 {
                i.set(InstanceState::Removed);
                g.instances.remove(pos);
                true
            } else {
                if i.state != InstanceState::Draining {
                    i.set(InstanceState::Draining);
                }
                false
            }
        };
        self.changed.notify_waiters();
        if remove {
            self.spawn_remove(id.to_string());
        }
    }

    /// This revision no longer takes traffic: drain and remove its instances.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        let ids: Vec<Arc<str>> = lock(&self.inner).instances.iter().map(|i| i.id.clone()).collect();
        for id in ids {
            self.evict(&id, "revision retired");
        }
    }

    /// Removes every instance now, in-flight or not (project deletion).
    pub async fn shutdown(&self) -> usize {
        self.retired.store(true, Ordering::Release);
        let ids: Vec<String> = {
            let mut g = lock(&self.inner);
            g.instances.drain(..).map(|i| i.id.to_string()).collect()
        };
        self.changed.notify_waiters();
        let n = ids.len();
        for id in ids {
            remove_container(&self.shared, &self.revision.project, &self.revision.function, &id).await;
        }
        n
    }

    /// Pauses and removes idle instances, and keeps `min_instances` warm.
    async fn reap(self: &Arc<Self>) {
        let s = &self.revision.scaling;
        let retired = self.retired.load(Ordering::Acquire);
        let now = Instant::now();
        let (to_pause, to_remove, to_start) = {
            let mut g = lock(&self.inner);
            let mut to_pause = Vec::new();
            let mut to_remove = Vec::new();
            if retired {
                let idle: Vec<usize> = (0..g.instances.len()).filter(|&k| g.instances[k].in_flight == 0 && g.instances[k].state != InstanceState::Pausing && g.instances[k].state != InstanceState::Resuming).collect();
                for k in idle.into_iter().rev() {
                    to_remove.push(g.instances.remove(k).id.to_string());
                }
                (to_pause, to_remove, 0)
            } else {
                // The most recently used `min_instances` stay warm.
                let mut order: Vec<usize> = (0..g.instances.len()).collect();
                order.sort_by_key(|&k| std::cmp::Reverse(g.instances[k].last_used));
                let mut kept = 0u32;
                let mut remove_idx = Vec::new();
                for k in order {
                    let i = &mut g.instances[k];
                    let idle = now.saturating_duration_since(i.last_used);
                    let live = matches!(i.state, InstanceState::Ready | InstanceState::Paused);
                    if !live {
                        continue;
                    }
                    if kept < s.min_instances {
                        kept += 1;
                        continue;
                    }
                    if i.in_flight > 0 {
                        continue;
                    }
                    if idle >= s.idle_timeout {
                        i.set(InstanceState::Removed);
                        remove_idx.push(k);
                    } else if i.state == InstanceState::Ready && idle >= s.pause_after {
                        i.set(InstanceState::Pausing);
                        to_pause.push(i.id.to_string());
                    }
                }
                remove_idx.sort_unstable();
                for k in remove_idx.into_iter().rev() {
                    to_remove.push(g.instances.remove(k).id.to_string());
                }
                let live = g.instances.iter().filter(|i| i.state != InstanceState::Draining).count() as u32 + g.starting;
                let to_start = s.min_instances.saturating_sub(live);
                g.starting += to_start;
                (to_pause, to_remove, to_start)
            }
        };
        for id in to_remove {
            tracing::info!(container = %id, function = %self.revision.function, "idle instance removed");
            remove_container(&self.shared, &self.revision.project, &self.revision.function, &id).await;
        }
        for id in to_pause {
            let ok = self.shared.driver.pause(&id).await;
            {
                let mut g = lock(&self.inner);
                if let Some(i) = g.instances.iter_mut().find(|i| &*i.id == id) {
                    match ok {
                        Ok(()) if i.state == InstanceState::Pausing => i.set(InstanceState::Paused),
                        _ => {
                            if i.state == InstanceState::Pausing {
                                i.set(InstanceState::Ready);
                            }
                        }
                    }
                }
            }
            // A request that found only this (pausing) instance is waiting for it.
            self.changed.notify_waiters();
        }
        for _ in 0..to_start {
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.start_instance(false).await {
                    tracing::warn!(function = %me.revision.function, error = %e, "could not keep a warm instance");
                }
            });
        }
    }
}

/// A request's place among those waiting for a starting instance, given back however the
/// wait ends (the client may go away).
struct JoinGuard<'a>(&'a Mutex<PoolInner>);

impl Drop for JoinGuard<'_> {
    fn drop(&mut self) {
        let mut g = lock(self.0);
        g.joining = g.joining.saturating_sub(1);
    }
}

struct WaitingGuard<'a> {
    pool: &'a FunctionPool,
    queued: &'a mut bool,
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        if *self.queued {
            let mut g = lock(&self.pool.inner);
            g.waiting = g.waiting.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_digest_follows_env_and_limits() {
        let r = Revision {
            project: "p".into(),
            function: "f".into(),
            deployment_id: 1,
            image: "img".into(),
            env: Env(vec!["A=1".into()]),
            limits: Limits::default(),
            private: false,
            timeout: Duration::from_secs(1),
            scaling: Scaling::default(),
        };
        let d = config_digest(&r);
        assert_eq!(d.len(), 32);
        // Pinned: the encoding is part of the upgrade contract (a changed digest replaces
        // every running container); change this only on purpose.
        assert_eq!(d, "f7edc0db09f4763c25535ef62249a5c9", "the digest of a known revision changed");
        assert_eq!(d, config_digest(&r.clone()), "stable");
        let mut secret = r.clone();
        secret.env.0.push("TOKEN=new".into());
        assert_ne!(config_digest(&secret), d, "a secret change changes it");
        let mut smaller = r.clone();
        smaller.limits.memory_bytes /= 2;
        assert_ne!(config_digest(&smaller), d, "other limits change it");
        let mut gvisor = r.clone();
        gvisor.limits.oci_runtime = Some("runsc".into());
        assert_ne!(config_digest(&gvisor), d, "the OCI runtime changes it");
        let mut split = r.clone();
        split.env.0 = vec!["A=1B=2".into()];
        let mut two = r.clone();
        two.env.0 = vec!["A=1".into(), "B=2".into()];
        assert_ne!(config_digest(&split), config_digest(&two), "variables are delimited");
    }

    #[test]
    fn transitions() {
        use InstanceState::*;
        assert!(Ready.can_become(Pausing));
        assert!(Paused.can_become(Resuming));
        assert!(Resuming.can_become(Ready));
        assert!(!Paused.can_become(Ready), "a paused instance must be resumed first");
        assert!(!Removed.can_become(Ready));
        assert!(!Draining.can_become(Ready));
        assert!(Draining.can_become(Removed));
    }

    #[tokio::test]
    async fn a_burst_at_a_paused_instance_joins_its_resume_instead_of_starting_cold() {
        use crate::infra::driver::fake::FakeDriver;
        let driver = Arc::new(FakeDriver { unpause_for: Duration::from_millis(150), ..FakeDriver::default() });
        let store = Arc::new(Store::in_memory().expect("store"));
        let pools = PoolManager::new(driver.clone(), store, PoolConfig::default(), Arc::new(Metrics::default()));
        let revision = Revision {
            project: "p".into(),
            function: "API".into(),
            deployment_id: 7,
            image: "img".into(),
            env: Env::default(),
            limits: Limits::default(),
            private: false,
            timeout: Duration::from_secs(5),
            scaling: Scaling { concurrency: 16, ..Scaling::default() },
        };
        let pool = pools.pool(revision.clone());
        let mut l = labels::for_container("p", "API", 7, "http");
        l.insert(labels::CONFIG.to_string(), config_digest(&revision));
        *driver.managed.lock().expect("lock") = vec![crate::infra::driver::ManagedContainer {
            id: "paused-one".into(),
            labels: l,
            running: true,
            paused: true,
            stopped: false,
            ip: Some("127.0.0.1".into()),
        }];
        assert_eq!(pools.adopt().await.expect("adopt"), (1, 0));
        assert_eq!(pool.counts().paused, 1);

        let deadline = Instant::now() + Duration::from_secs(5);
        let leases = futures_util::future::join_all((0..4).map(|_| pool.acquire(deadline))).await;
        let kinds: Vec<AcquireKind> = leases.iter().map(|l| l.as_ref().expect("every request served").kind).collect();
        assert_eq!(kinds, vec![AcquireKind::Resume; 4], "all four wait for the one resume");
        assert_eq!(driver.runs(), 0, "no cold start while the resuming instance has room");
        assert_eq!(driver.unpauses.load(Ordering::Acquire), 1);
        let c = pool.counts();
        assert_eq!((c.ready, c.in_flight, c.starting), (1, 4, 0), "{c:?}");
        drop(leases);
        assert_eq!(pool.counts().in_flight, 0, "every place is given back");
    }
}
