//! Prometheus metrics: invocations, latency, how instances were obtained, acquisition time,
//! rejections, and (at scrape time) instances by state and queue depth.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::dataplane::pool::{AcquireKind, PoolManager};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FnLabels {
    pub project: String,
    pub function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub project: String,
    pub function: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub project: String,
    pub function: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabels {
    pub project: String,
    pub function: String,
    pub transport: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub project: String,
    pub function: String,
    pub state: String,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0].into_iter()
}

pub struct Metrics {
    registry: Registry,
    pub invocations: Family<StatusLabels, Counter>,
    pub latency: Family<FnLabels, Histogram, fn() -> Histogram>,
    pub acquisitions: Family<KindLabels, Counter>,
    pub acquire_time: Family<KindLabels, Histogram, fn() -> Histogram>,
    pub rejected: Family<StatusLabels, Counter>,
    pub upstream_connects: Family<TransportLabels, Counter>,
    instances: Family<StateLabels, Gauge>,
    queue_depth: Family<FnLabels, Gauge>,
}

fn new_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("eserveless");
        let invocations = Family::<StatusLabels, Counter>::default();
        let latency = Family::<FnLabels, Histogram, fn() -> Histogram>::new_with_constructor(new_histogram as fn() -> Histogram);
        let acquisitions = Family::<KindLabels, Counter>::default();
        let acquire_time = Family::<KindLabels, Histogram, fn() -> Histogram>::new_with_constructor(new_histogram as fn() -> Histogram);
        let rejected = Family::<StatusLabels, Counter>::default();
        let upstream_connects = Family::<TransportLabels, Counter>::default();
        let instances = Family::<StateLabels, Gauge>::default();
        let queue_depth = Family::<FnLabels, Gauge>::default();
        registry.register("invocations", "Invocations through the gateway, by answer status", invocations.clone());
        registry.register("invocation_duration_seconds", "Time to the response head through the gateway", latency.clone());
        registry.register("instance_acquisitions", "How each request's instance was obtained: warm, resume or cold", acquisitions.clone());
        registry.register("instance_acquire_seconds", "Time to obtain an instance", acquire_time.clone());
        registry.register("rejected_requests", "Requests refused for capacity (429 queue full, 503 deadline)", rejected.clone());
        registry.register(
            "upstream_connections",
            "Connections the gateway opened to instances, by transport (unix socket or tcp); kept alive and reused",
            upstream_connects.clone(),
        );
        registry.register("instances", "Instances by state", instances.clone());
        registry.register("queue_depth", "Requests waiting for an instance", queue_depth.clone());
        Metrics { registry, invocations, latency, acquisitions, acquire_time, rejected, upstream_connects, instances, queue_depth }
    }
}

/// One function's metric handles, looked up once when its pool is made, so the request
/// path neither hashes label sets nor allocates.
#[derive(Clone)]
pub struct FunctionMetrics {
    labels: FnLabels,
    latency: Histogram,
    ok: Counter,
    /// warm, resume, cold
    acquired: [(Counter, Histogram); 3],
    invocations: Family<StatusLabels, Counter>,
    rejected: Family<StatusLabels, Counter>,
    /// Connections opened to this function's instances: over the unix socket, over tcp.
    pub connects: ConnectCounters,
}

/// Counts the gateway's new connections to one function's instances.
#[derive(Clone, Debug, Default)]
pub struct ConnectCounters {
    pub unix: Counter,
    pub tcp: Counter,
}

impl FunctionMetrics {
    pub fn acquired(&self, kind: AcquireKind, took: std::time::Duration) {
        let (count, time) = &self.acquired[kind as usize];
        count.inc();
        time.observe(took.as_secs_f64());
    }

    pub fn answered(&self, status: u16, took: std::time::Duration) {
        self.latency.observe(took.as_secs_f64());
        if status == 200 {
            self.ok.inc();
            return;
        }
        let l = StatusLabels { project: self.labels.project.clone(), function: self.labels.function.clone(), status };
        if status == 429 || status == 503 {
            self.rejected.get_or_create(&l).inc();
        }
        self.invocations.get_or_create(&l).inc();
    }
}

impl Metrics {
    pub fn for_function(&self, project: &str, function: &str) -> FunctionMetrics {
        let labels = FnLabels { project: project.to_string(), function: function.to_string() };
        let kind = |k: AcquireKind| {
            let l = KindLabels { project: project.to_string(), function: function.to_string(), kind: k.as_str().into() };
            (self.acquisitions.get_or_create(&l).clone(), self.acquire_time.get_or_create(&l).clone())
        };
        let ok = StatusLabels { project: project.to_string(), function: function.to_string(), status: 200 };
        let transport = |t: &str| {
            let l = TransportLabels { project: project.to_string(), function: function.to_string(), transport: t.into() };
            self.upstream_connects.get_or_create(&l).clone()
        };
        FunctionMetrics {
            latency: self.latency.get_or_create(&labels).clone(),
            ok: self.invocations.get_or_create(&ok).clone(),
            acquired: [kind(AcquireKind::Warm), kind(AcquireKind::Resume), kind(AcquireKind::Cold)],
            invocations: self.invocations.clone(),
            rejected: self.rejected.clone(),
            connects: ConnectCounters { unix: transport("unix"), tcp: transport("tcp") },
            labels,
        }
    }

    /// The text exposition, with pool gauges read now.
    pub fn render(&self, pools: &PoolManager) -> String {
        self.instances.clear();
        self.queue_depth.clear();
        for (rev, c) in pools.counts() {
            let fl = FnLabels { project: rev.project.clone(), function: rev.function.clone() };
            for (state, n) in [("starting", c.starting), ("ready", c.ready), ("paused", c.paused), ("draining", c.draining)] {
                let l = StateLabels { project: rev.project.clone(), function: rev.function.clone(), state: state.into() };
                self.instances.get_or_create(&l).inc_by(i64::from(n));
            }
            self.queue_depth.get_or_create(&fl).inc_by(i64::from(c.waiting));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
