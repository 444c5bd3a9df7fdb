//! The Prometheus registry and the `/metrics` text: it imports nothing of the crate. Each
//! component registers its own series into it when it is built, and may ask to refresh
//! gauges just before each scrape.

use std::sync::Mutex;

use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

/// Run before each scrape, to set gauges read from live state.
type Refresh = Box<dyn Fn() + Send + Sync>;

/// The process's metrics registry. Registration and scrapes lock it; the request path never
/// does (components keep handles to their own series).
pub struct Metrics {
    registry: Mutex<Registry>,
    refresh: Mutex<Vec<Refresh>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics { registry: Mutex::new(Registry::with_prefix("eserveless")), refresh: Mutex::new(Vec::new()) }
    }
}

impl Metrics {
    /// Adds one metric family, exposed as `eserveless_<name>`.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry.lock().unwrap_or_else(|p| p.into_inner()).register(name, help, metric);
    }

    /// `refresh` runs before each scrape (to read gauges from live state).
    pub fn on_scrape(&self, refresh: impl Fn() + Send + Sync + 'static) {
        self.refresh.lock().unwrap_or_else(|p| p.into_inner()).push(Box::new(refresh));
    }

    /// The text exposition, with scrape-time gauges read now.
    pub fn render(&self) -> String {
        // Held until the text is made: another render (a scrape, the console's history) must
        // not clear and refill the gauges while this one encodes them.
        let refresh = self.refresh.lock().unwrap_or_else(|p| p.into_inner());
        for r in refresh.iter() {
            r();
        }
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String cannot fail");
        out
    }
}

/// A histogram with the buckets every latency series shares: 0.5 ms to 30 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::gauge::Gauge;

    #[test]
    fn refreshes_run_before_the_text_is_made() {
        let m = Metrics::default();
        let g = Gauge::<i64>::default();
        m.register("things", "Things", g.clone());
        let g2 = g.clone();
        m.on_scrape(move || {
            g2.set(7);
        });
        let text = m.render();
        assert!(text.contains("# HELP eserveless_things Things."), "{text}");
        assert!(text.contains("eserveless_things 7"), "{text}");
    }
}
