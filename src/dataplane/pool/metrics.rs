//! The pool's series (how instances were obtained and how long it took; instances by state
//! and queue depth, read at scrape time), and the per-function bundle of handles a pool
//! carries so the request path neither hashes label sets nor allocates.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use super::{AcquireKind, PoolCounts};
use crate::dataplane::gateway_metrics::{AnswerMetrics, GatewayMetrics};
use crate::dataplane::upstream::{ConnectCounters, UpstreamMetrics};
use crate::infra::metrics::{latency_histogram, Metrics};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    project: String,
    function: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    project: String,
    function: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FnLabels {
    project: String,
    function: String,
}

/// The families of every series a pool resolves per function: its own, the gateway's
/// answers and the upstream connections (whose handles it carries for them).
pub(super) struct PoolMetrics {
    acquisitions: Family<KindLabels, Counter>,
    acquire_time: Family<KindLabels, Histogram, fn() -> Histogram>,
    instances: Family<StateLabels, Gauge>,
    queue_depth: Family<FnLabels, Gauge>,
    answers: GatewayMetrics,
    connects: UpstreamMetrics,
}

impl PoolMetrics {
    pub(super) fn register(metrics: &Metrics) -> Self {
        let answers = GatewayMetrics::register(metrics);
        let acquisitions = Family::<KindLabels, Counter>::default();
        let acquire_time = Family::<KindLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        metrics.register("instance_acquisitions", "How each request's instance was obtained: warm, resume or cold", acquisitions.clone());
        metrics.register("instance_acquire_seconds", "Time to obtain an instance", acquire_time.clone());
        let connects = UpstreamMetrics::register(metrics);
        let instances = Family::<StateLabels, Gauge>::default();
        let queue_depth = Family::<FnLabels, Gauge>::default();
        metrics.register("instances", "Instances by state", instances.clone());
        metrics.register("queue_depth", "Requests waiting for an instance", queue_depth.clone());
        PoolMetrics { acquisitions, acquire_time, instances, queue_depth, answers, connects }
    }

    /// One function's handles, looked up once when its pool is made.
    pub(super) fn for_function(&self, project: &str, function: &str) -> FunctionMetrics {
        let kind = |k: AcquireKind| {
            let l = KindLabels { project: project.to_string(), function: function.to_string(), kind: k.as_str().into() };
            (self.acquisitions.get_or_create(&l).clone(), self.acquire_time.get_or_create(&l).clone())
        };
        FunctionMetrics {
            answers: self.answers.for_function(project, function),
            warm: kind(AcquireKind::Warm),
            resume: kind(AcquireKind::Resume),
            cold: kind(AcquireKind::Cold),
            connects: self.connects.for_function(project, function),
        }
    }

    /// Sets the instance and queue gauges from `counts` (at scrape time).
    pub(super) fn set_counts<'a>(&self, counts: impl Iterator<Item = (&'a str, &'a str, PoolCounts)>) {
        self.instances.clear();
        self.queue_depth.clear();
        for (project, function, c) in counts {
            for (state, n) in [("starting", c.starting), ("ready", c.ready), ("paused", c.paused), ("draining", c.draining)] {
                let l = StateLabels { project: project.to_string(), function: function.to_string(), state: state.into() };
                self.instances.get_or_create(&l).inc_by(i64::from(n));
            }
            let fl = FnLabels { project: project.to_string(), function: function.to_string() };
            self.queue_depth.get_or_create(&fl).inc_by(i64::from(c.waiting));
        }
    }
}

/// One function's metric handles.
#[derive(Clone)]
pub struct FunctionMetrics {
    answers: AnswerMetrics,
    warm: (Counter, Histogram),
    resume: (Counter, Histogram),
    cold: (Counter, Histogram),
    /// Connections opened to this function's instances: over the unix socket, over tcp.
    pub connects: ConnectCounters,
}

impl FunctionMetrics {
    pub fn acquired(&self, kind: AcquireKind, took: std::time::Duration) {
        let (count, time) = match kind {
            AcquireKind::Warm => &self.warm,
            AcquireKind::Resume => &self.resume,
            AcquireKind::Cold => &self.cold,
        };
        count.inc();
        time.observe(took.as_secs_f64());
    }

    pub fn answered(&self, status: u16, took: std::time::Duration) {
        self.answers.answered(status, took);
    }
}
