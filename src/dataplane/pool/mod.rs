//! Instance pools: per (project, function, revision) containers, readiness probing,
//! concurrency, pause/resume, idle removal, draining of retired revisions, adoption after a
//! restart, and eviction of dead containers.
//!
//! Every instance state change goes through [`InstanceState::can_become`]. Locks here are
//! plain mutexes held only for bookkeeping, never across I/O.
//!
//! This file holds the types and the wiring; each operation has its own file: `state`
//! (instance states and the one transition table), `acquire`, `start`, `reap` (pause and
//! remove idle instances), `adopt` (after a restart), `metrics`. The decisions in them
//! (`acquire::choose`, `reap::plan_reap`, `adopt::belongs_to`) are pure functions, tested
//! without Docker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::dataplane::Workload;
use crate::infra::driver::{labels, Driver};
use crate::manifest::Scaling;
use crate::infra::metrics::Metrics;
use crate::infra::logs::LineSource;
use crate::infra::store::{LogSource, Store};
use crate::dataplane::upstream::Endpoint;

mod acquire;
mod adopt;
mod metrics;
mod reap;
mod start;
mod state;

pub use metrics::FunctionMetrics;
use metrics::PoolMetrics;
pub use state::InstanceState;
use adopt::config_digest;
use state::Instance;

/// The port every http function listens on inside its container.
pub const FUNCTION_PORT: u16 = 8080;

/// One deployed revision of an http function.
#[derive(Debug, Clone)]
pub struct Revision {
    pub workload: Workload,
    /// Needs the project's invoke key.
    pub private: bool,
    pub scaling: Scaling,
}

super::deref_workload!(Revision);

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
    /// No node of the cluster has room for another instance (swarm): an answer at once, not
    /// a wait until the timeout.
    #[error("function `{function}` cannot start another instance: {detail}")]
    NoRoom { function: String, detail: String },
    /// The revision was replaced while the request looked it up; look the route up again.
    #[error("revision retired")]
    Retired,
}

/// What the engine said of a container while it was being probed for readiness.
#[derive(Debug, Default)]
pub(crate) struct Probing {
    /// It died (or was lost) before it accepted connections.
    pub(crate) dead: AtomicBool,
    /// It was lost with its node, rather than exiting on its own.
    pub(crate) lost: AtomicBool,
}

/// Why an instance did not start.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StartError {
    /// The engine has no room for it anywhere (its message says what was asked and why).
    #[error("{0}")]
    NoRoom(String),
    /// It was lost while starting (its node died, or it vanished): another start may work.
    #[error("{0}")]
    Lost(String),
    #[error("{0}")]
    Failed(String),
}

impl From<String> for StartError {
    fn from(s: String) -> Self {
        StartError::Failed(s)
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

/// Counts of instances by state, for status and metrics (and the API's `instances`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct PoolCounts {
    pub starting: u32,
    pub ready: u32,
    pub paused: u32,
    pub draining: u32,
    pub in_flight: u32,
    pub waiting: u32,
}

/// One instance, for the operator: its id, state and (swarm) node.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct InstanceInfo {
    pub id: String,
    pub state: String,
    /// The node it runs on; absent on the single-host engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
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
    /// Upgraded connections (WebSocket): their grace after a redeploy, and their idle timeout.
    pub upgrades: crate::config::UpgradeLimits,
}

impl Default for PoolConfig {
    fn default() -> Self {
        // The operator-facing defaults are declared once, on the `serve` settings.
        let settings = crate::config::PoolSettings::default();
        PoolConfig {
            start_timeout: Duration::from_secs(30),
            queue_depth: settings.queue_depth,
            queue_timeout: settings.queue_timeout,
            reap_interval: Duration::from_millis(500),
            log_bytes: usize::try_from(settings.log_bytes).unwrap_or(usize::MAX),
            upgrades: crate::config::UpgradeLimits { grace: settings.upgrade_grace, idle: settings.upgrade_idle_timeout },
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
    probing: Mutex<HashMap<String, Arc<Probing>>>,
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
    /// Cancelled when the revision is retired: its upgraded connections start their grace.
    retiring: tokio_util::sync::CancellationToken,
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
            retiring: Default::default(),
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
                        Ok(ev) if ev.action == "die" || ev.action == "oom" || ev.action == "destroy" || ev.action == "lost" => {
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
        if let Some(p) = self.shared.probing.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            p.lost.store(why == "lost", Ordering::Release);
            p.dead.store(true, Ordering::Release);
        }
        for pool in self.live_pools() {
            if let Some(i) = lock(&pool.inner).instances.iter().find(|i| &*i.id == id) {
                // Requests waiting on it give up now (and may go to another instance) rather
                // than at their timeout: a lost node sends nothing more, not even a reset.
                i.endpoint.mark_gone();
            }
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
        remove_container(&self.shared, &project, &get(labels::FUNCTION), get(labels::REVISION).parse().unwrap_or(0), &c.id).await;
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

async fn remove_container(shared: &Arc<Shared>, project: &str, function: &str, revision: i64, id: &str) {
    if !project.is_empty() {
        let src = LogSource {
            project: project.to_string(),
            function: function.to_string(),
            revision,
            kind: LineSource::Instance,
            container: id.to_string(),
            run: None,
        };
        crate::dataplane::save_output(shared.driver.as_ref(), &shared.store, src, shared.config.log_bytes).await;
    }
    if let Err(e) = shared.driver.remove(id).await {
        tracing::warn!(container = %id, error = %e, "could not remove container");
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

    /// Cancelled once this revision no longer takes traffic (a redeploy, a removal).
    pub fn retiring(&self) -> tokio_util::sync::CancellationToken {
        self.retiring.clone()
    }

    /// The limits of this pool's upgraded connections.
    pub fn upgrade_limits(&self) -> crate::config::UpgradeLimits {
        self.shared.config.upgrades
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

    /// Each instance with its state and node.
    pub fn instance_list(&self) -> Vec<InstanceInfo> {
        let g = lock(&self.inner);
        g.instances
            .iter()
            .filter(|i| i.state != InstanceState::Removed)
            .map(|i| InstanceInfo { id: i.id.to_string(), state: i.state.as_str().to_string(), node: i.endpoint.node().map(str::to_string) })
            .collect()
    }

    /// True when the pool has any instance (or one starting).
    pub fn has_instances(&self) -> bool {
        let g = lock(&self.inner);
        g.starting > 0 || g.instances.iter().any(|i| i.state != InstanceState::Draining)
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
        let (p, f, r) = (self.revision.project.clone(), self.revision.function.clone(), self.revision.deployment_id);
        tokio::spawn(async move { remove_container(&shared, &p, &f, r, &id).await });
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
        self.retiring.cancel();
        let ids: Vec<Arc<str>> = lock(&self.inner).instances.iter().map(|i| i.id.clone()).collect();
        for id in ids {
            self.evict(&id, "revision retired");
        }
    }

    /// Removes every instance now, in-flight or not (project deletion).
    pub async fn shutdown(&self) -> usize {
        self.retired.store(true, Ordering::Release);
        self.retiring.cancel();
        let ids: Vec<String> = {
            let mut g = lock(&self.inner);
            g.instances.drain(..).map(|i| i.id.to_string()).collect()
        };
        self.changed.notify_waiters();
        let n = ids.len();
        for id in ids {
            remove_container(&self.shared, &self.revision.project, &self.revision.function, self.revision.deployment_id, &id).await;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infra::driver::{Env, Limits};

    #[tokio::test]
    async fn a_burst_at_a_paused_instance_joins_its_resume_instead_of_starting_cold() {
        use crate::infra::driver::fake::FakeDriver;
        let driver = Arc::new(FakeDriver { unpause_for: Duration::from_millis(150), ..FakeDriver::default() });
        let store = Arc::new(Store::in_memory().expect("store"));
        let pools = PoolManager::new(driver.clone(), store, PoolConfig::default(), Arc::new(Metrics::default()));
        let revision = revision(Scaling { concurrency: 16, ..Scaling::default() });
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
            node: None,
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

    fn revision(scaling: Scaling) -> Revision {
        Revision {
            workload: Workload {
                project: "p".into(),
                function: "API".into(),
                deployment_id: 7,
                image: "img".into(),
                env: Env::default(),
                limits: Limits::default(),
                timeout: Duration::from_secs(5),
            },
            private: false,
            scaling,
        }
    }

    #[tokio::test]
    async fn no_room_anywhere_is_answered_at_once_not_at_the_deadline() {
        use crate::infra::driver::fake::FakeDriver;
        let driver = Arc::new(FakeDriver { no_room: true, ..FakeDriver::reachable_at("127.0.0.1") });
        let pools = PoolManager::new(driver.clone(), Arc::new(Store::in_memory().expect("store")), PoolConfig::default(), Arc::new(Metrics::default()));
        let pool = pools.pool(revision(Scaling::default()));
        let t0 = Instant::now();
        let Err(e) = pool.acquire(t0 + Duration::from_secs(10)).await else { panic!("served without room") };
        assert!(matches!(e, AcquireError::NoRoom { .. }), "{e:?}");
        assert!(e.to_string().contains("no suitable node"), "says why: {e}");
        assert!(t0.elapsed() < Duration::from_secs(2), "answered at once, took {:?}", t0.elapsed());
    }

    #[tokio::test]
    async fn an_engine_that_cannot_pause_keeps_idle_instances_warm_until_the_idle_timeout() {
        use crate::infra::driver::fake::FakeDriver;
        for cannot_pause in [false, true] {
            let driver = Arc::new(FakeDriver { cannot_pause, ..FakeDriver::default() });
            let pools = PoolManager::new(driver.clone(), Arc::new(Store::in_memory().expect("store")), PoolConfig::default(), Arc::new(Metrics::default()));
            let scaling = Scaling { pause_after: Duration::ZERO, idle_timeout: Duration::from_secs(600), ..Scaling::default() };
            let r = revision(scaling);
            let pool = pools.pool(r.clone());
            let mut l = labels::for_container("p", "API", 7, "http");
            l.insert(labels::CONFIG.to_string(), config_digest(&r));
            *driver.managed.lock().expect("lock") = vec![crate::infra::driver::ManagedContainer {
                id: "idle-one".into(),
                labels: l,
                running: true,
                paused: false,
                stopped: false,
                ip: Some("127.0.0.1".into()),
                node: Some("node-2".into()),
            }];
            assert_eq!(pools.adopt().await.expect("adopt"), (1, 0));
            assert_eq!(pool.instance_list()[0].node.as_deref(), Some("node-2"), "the node is kept for the API");
            pool.reap().await;
            let c = pool.counts();
            if cannot_pause {
                assert_eq!((c.ready, c.paused), (1, 0), "kept warm: {c:?}");
                assert_eq!(driver.pauses.load(Ordering::Acquire), 0, "not even tried: a pausing instance makes requests wait");
            } else {
                assert_eq!((c.ready, c.paused), (0, 1), "paused: {c:?}");
            }
        }
    }
}
