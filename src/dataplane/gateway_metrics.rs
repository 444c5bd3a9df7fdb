//! The gateway's series: invocations by answer status, time to the response head, and
//! requests refused for capacity. Apart from `gateway.rs` because their per-function handles
//! are resolved once when a pool is made and carried by the pool (which the gateway imports).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use crate::infra::metrics::{latency_histogram, Metrics};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FnLabels {
    project: String,
    function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    project: String,
    function: String,
    status: u16,
}

/// The gateway's metric families, registered once.
#[derive(Clone)]
pub struct GatewayMetrics {
    invocations: Family<StatusLabels, Counter>,
    latency: Family<FnLabels, Histogram, fn() -> Histogram>,
    rejected: Family<StatusLabels, Counter>,
}

impl GatewayMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let invocations = Family::<StatusLabels, Counter>::default();
        let latency = Family::<FnLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let rejected = Family::<StatusLabels, Counter>::default();
        metrics.register("invocations", "Invocations through the gateway, by answer status", invocations.clone());
        metrics.register("invocation_duration_seconds", "Time to the response head through the gateway", latency.clone());
        metrics.register("rejected_requests", "Requests refused for capacity (429 queue full, 503 deadline)", rejected.clone());
        GatewayMetrics { invocations, latency, rejected }
    }

    /// One function's handles: the common answer (200) and the latency are looked up now.
    pub fn for_function(&self, project: &str, function: &str) -> AnswerMetrics {
        let labels = FnLabels { project: project.to_string(), function: function.to_string() };
        let ok = StatusLabels { project: project.to_string(), function: function.to_string(), status: 200 };
        AnswerMetrics {
            latency: self.latency.get_or_create(&labels).clone(),
            ok: self.invocations.get_or_create(&ok).clone(),
            invocations: self.invocations.clone(),
            rejected: self.rejected.clone(),
            labels,
        }
    }
}

/// One function's answer series.
#[derive(Clone)]
pub struct AnswerMetrics {
    labels: FnLabels,
    latency: Histogram,
    ok: Counter,
    invocations: Family<StatusLabels, Counter>,
    rejected: Family<StatusLabels, Counter>,
}

impl AnswerMetrics {
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
