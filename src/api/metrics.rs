//! `GET /api/projects/{name}/functions/{function}/metrics`: a function's last hour as points
//! (requests per second, latency p50/p99, instances), for the console's charts.
//!
//! The history is kept in memory ([`MetricsHistory`]): every [`SAMPLE_EVERY`] a task reads
//! the server's own metrics (the same text `/metrics` serves: the gateway's invocation
//! counters and latency histogram, the pool's instance gauges). A point is the difference of
//! two consecutive cumulative snapshots: the rate of the counter, the quantiles of the
//! histogram's bucket deltas, the instances at its end. Per function the ring keeps the last
//! [`POINTS`] points and the last snapshot. The answer ends with a point up to now (from a
//! snapshot read for the request and not kept), so a chart moves before the next sample. In
//! memory: bounded (360 points of 6 numbers per function, about 25 KB), no write load on
//! SQLite every 10 s, and an hour of charts is not worth keeping across a restart (the
//! history starts again empty).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::extract::State;
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::api::error::ApiError;
use crate::api::openapi::{ErrorBody, TokenOrServer};
use crate::api::{ApiPath, AppState};
use crate::engine::{Platform, Principal};

/// How often the history takes a sample.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Points kept per function: one hour of intervals at [`SAMPLE_EVERY`].
pub const POINTS: usize = 360;

/// The quantiles answered.
const P50: f64 = 0.5;
const P99: f64 = 0.99;

/// The metric series read (names as `/metrics` shows them).
const REQUESTS: &str = "eserveless_invocations_total";
const LATENCY_BUCKET: &str = "eserveless_invocation_duration_seconds_bucket";
const INSTANCES: &str = "eserveless_instances";

/// One function's cumulative series at one moment.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    pub at: DateTime<Utc>,
    /// Invocations answered so far, every status.
    pub requests: f64,
    /// The latency histogram's cumulative buckets: (upper bound in seconds, count), ascending,
    /// the last one `+Inf`.
    pub buckets: Vec<(f64, f64)>,
    /// Instances now, every state (starting, ready, paused, draining).
    pub instances: f64,
}

impl Snapshot {
    fn zero(at: DateTime<Utc>) -> Snapshot {
        Snapshot { at, ..Snapshot::default() }
    }
}

/// Reads every function's [`Snapshot`] out of the metrics text (`at` is set by the caller).
pub fn parse_snapshots(text: &str, at: DateTime<Utc>) -> HashMap<(String, String), Snapshot> {
    let mut out: HashMap<(String, String), Snapshot> = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((name, labels, value)) = parse_line(line) else { continue };
        if name != REQUESTS && name != LATENCY_BUCKET && name != INSTANCES {
            continue;
        }
        let label = |k: &str| labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let (Some(project), Some(function)) = (label("project"), label("function")) else { continue };
        let snap = out.entry((project, function)).or_insert_with(|| Snapshot::zero(at));
        match name {
            REQUESTS => snap.requests += value,
            INSTANCES => snap.instances += value,
            _ => {
                let le = match label("le").as_deref() {
                    Some("+Inf") => f64::INFINITY,
                    Some(v) => match v.parse::<f64>() {
                        Ok(le) => le,
                        Err(_) => continue,
                    },
                    None => continue,
                };
                snap.buckets.push((le, value));
            }
        }
    }
    for snap in out.values_mut() {
        snap.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// One sample line: the series' name, its labels, its value.
type Sample<'a> = (&'a str, Vec<(String, String)>, f64);

/// `name{k="v",...} value` → its parts; `None` for what is not a sample line.
fn parse_line(line: &str) -> Option<Sample<'_>> {
    let (name, rest) = match line.find('{') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => {
            let mut parts = line.split_whitespace();
            let name = parts.next()?;
            let value = parts.next()?.parse().ok()?;
            return Some((name, Vec::new(), value));
        }
    };
    let mut labels = Vec::new();
    let mut chars = rest.char_indices().peekable();
    let end = loop {
        // key
        let mut key = String::new();
        loop {
            let (i, c) = chars.next()?;
            match c {
                '=' => break,
                '}' if key.is_empty() => return finish(name, labels, &rest[i + 1..]),
                ',' | ' ' => {}
                c => key.push(c),
            }
        }
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            let (_, c) = chars.next()?;
            match c {
                '\\' => {
                    let (_, e) = chars.next()?;
                    value.push(if e == 'n' { '\n' } else { e });
                }
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((key, value));
        match chars.peek() {
            Some(&(i, '}')) => break i,
            Some(_) => {}
            None => return None,
        }
    };
    finish(name, labels, &rest[end + 1..])
}

fn finish<'a>(name: &'a str, labels: Vec<(String, String)>, rest: &str) -> Option<Sample<'a>> {
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

/// The `q` quantile (0..1) of the observations counted in `delta` (cumulative buckets of one
/// interval, ascending, the last `+Inf`), interpolated linearly inside its bucket as
/// Prometheus' `histogram_quantile` does; an answer in the `+Inf` bucket is the largest finite
/// bound. `None` when the interval has no observations.
pub fn quantile(q: f64, delta: &[(f64, f64)]) -> Option<f64> {
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in delta {
        if count >= rank && count > lower.1 {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let (lo_bound, lo_count) = lower;
            return Some(lo_bound + (le - lo_bound) * (rank - lo_count) / (count - lo_count));
        }
        lower = (le, count);
    }
    Some(lower.0)
}

/// One interval of a function's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MetricsPoint {
    /// The end of the interval.
    pub at: DateTime<Utc>,
    /// Its length.
    pub seconds: f64,
    pub requests_per_second: f64,
    /// Latency to the response head, in milliseconds; `null` without requests in the interval.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Instances at its end, every state.
    pub instances: f64,
}

/// `GET /api/projects/{name}/functions/{function}/metrics`: oldest first; the last point ends now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MetricsAnswer {
    pub project: String,
    pub function: String,
    pub interval_seconds: u64,
    pub points: Vec<MetricsPoint>,
}

/// The point between two snapshots (a counter that went down started again from 0).
pub fn point(from: &Snapshot, to: &Snapshot) -> MetricsPoint {
    let seconds = (to.at - from.at).num_milliseconds() as f64 / 1000.0;
    let reset = to.requests < from.requests;
    let requests = if reset { to.requests } else { to.requests - from.requests };
    let delta: Vec<(f64, f64)> = to
        .buckets
        .iter()
        .map(|&(le, count)| {
            let before = if reset { 0.0 } else { from.buckets.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1) };
            (le, (count - before).max(0.0))
        })
        .collect();
    let ms = |q| quantile(q, &delta).map(|s| s * 1000.0);
    MetricsPoint {
        at: to.at,
        seconds,
        requests_per_second: if seconds > 0.0 { requests / seconds } else { 0.0 },
        p50_ms: ms(P50),
        p99_ms: ms(P99),
        instances: to.instances,
    }
}

/// Per function, the last [`POINTS`] points and the snapshot the next one starts from.
pub struct MetricsHistory {
    inner: Mutex<Rings>,
}

struct Ring {
    last: Snapshot,
    points: VecDeque<MetricsPoint>,
}

struct Rings {
    /// When the last sample was taken (at first: when the history began). A function first
    /// seen in a sample had no series at the previous one: its first point starts from zeros then.
    last: DateTime<Utc>,
    rings: HashMap<(String, String), Ring>,
    capacity: usize,
}

impl MetricsHistory {
    /// Keeps at most `capacity` points per function.
    pub fn new(capacity: usize, now: DateTime<Utc>) -> MetricsHistory {
        MetricsHistory { inner: Mutex::new(Rings { last: now, rings: HashMap::new(), capacity: capacity.max(1) }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rings> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds one point to every function in `snapshots` (all taken at `at`); functions whose
    /// series are gone from the metrics are forgotten.
    pub fn record(&self, at: DateTime<Utc>, snapshots: HashMap<(String, String), Snapshot>) {
        let mut r = self.lock();
        let (last, capacity) = (r.last, r.capacity);
        r.rings.retain(|k, _| snapshots.contains_key(k));
        for (key, mut snap) in snapshots {
            snap.at = at;
            let ring = r.rings.entry(key).or_insert_with(|| Ring { last: Snapshot::zero(last), points: VecDeque::new() });
            ring.points.push_back(point(&ring.last, &snap));
            while ring.points.len() > capacity {
                ring.points.pop_front();
            }
            ring.last = snap;
        }
        r.last = at;
    }

    /// The function's points, oldest first, then the point from the last sample to `now`
    /// (not kept; left out when the last sample is less than a second old).
    pub fn points(&self, project: &str, function: &str, now: Option<Snapshot>) -> Vec<MetricsPoint> {
        let r = self.lock();
        let key = (project.to_string(), function.to_string());
        let (mut out, last) = match r.rings.get(&key) {
            Some(ring) => (ring.points.iter().cloned().collect::<Vec<_>>(), ring.last.clone()),
            None => (Vec::new(), Snapshot::zero(r.last)),
        };
        drop(r);
        if let Some(now) = now {
            if (now.at - last.at).num_milliseconds() >= 1000 {
                out.push(point(&last, &now));
            }
        }
        out
    }

    /// Samples `platform`'s metrics every [`SAMPLE_EVERY`] until either is dropped.
    pub fn spawn_sampler(history: &Arc<MetricsHistory>, platform: &Arc<Platform>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let (history, platform): (Weak<MetricsHistory>, Weak<Platform>) = (Arc::downgrade(history), Arc::downgrade(platform));
        rt.spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let (Some(history), Some(platform)) = (history.upgrade(), platform.upgrade()) else { return };
                let now = Utc::now();
                history.record(now, parse_snapshots(&platform.metrics_text(), now));
            }
        });
    }
}

#[utoipa::path(
    get,
    path = "/api/projects/{name}/functions/{function}/metrics",
    tag = "functions",
    security(("bearer" = [])),
    extensions(("x-eserveless-access" = json!("owner"))),
    params(("name" = String, Path, description = "The project"), ("function" = String, Path, description = "The function")),
    responses(
        (status = 200, description = "The function's last hour, one point per 10 s interval, oldest first; the last point ends now (kept in memory: empty again after a restart)", body = MetricsAnswer),
        (status = 400, description = "The path does not match (`invalid_path`)", body = ErrorBody),
        (status = 404, description = "No such project or function (`project_not_found`, `function_not_found`)", body = ErrorBody),
        TokenOrServer,
    ),
)]
pub(super) async fn function_metrics(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    ApiPath((name, function)): ApiPath<(String, String)>,
) -> Result<Json<MetricsAnswer>, ApiError> {
    s.platform.live_function(&who, &name, &function)?;
    let now = Utc::now();
    let key = (name.clone(), function.clone());
    let current = parse_snapshots(&s.platform.metrics_text(), now).remove(&key).unwrap_or_else(|| Snapshot::zero(now));
    let points = s.history.points(&name, &function, Some(current));
    Ok(Json(MetricsAnswer { project: name, function, interval_seconds: SAMPLE_EVERY.as_secs(), points }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).expect("time")
    }

    const TEXT: &str = r#"# HELP eserveless_invocations Invocations through the gateway, by answer status.
# TYPE eserveless_invocations counter
eserveless_invocations_total{project="p",function="f",status="200"} 8
eserveless_invocations_total{project="p",function="f",status="502"} 2
eserveless_invocations_total{project="q",function="g",status="200"} 1
# TYPE eserveless_invocation_duration_seconds histogram
eserveless_invocation_duration_seconds_sum{project="p",function="f"} 0.05
eserveless_invocation_duration_seconds_count{project="p",function="f"} 10
eserveless_invocation_duration_seconds_bucket{le="0.001",project="p",function="f"} 0
eserveless_invocation_duration_seconds_bucket{le="+Inf",project="p",function="f"} 10
eserveless_invocation_duration_seconds_bucket{le="0.01",project="p",function="f"} 10
eserveless_instances{project="p",function="f",state="ready"} 2
eserveless_instances{project="p",function="f",state="paused"} 1
eserveless_instance_acquisitions_total{project="p",function="f",kind="warm"} 9
eserveless_other{project="p\"x",function="f"} 1
# EOF
"#;

    #[test]
    fn the_metrics_text_becomes_one_snapshot_per_function() {
        let s = parse_snapshots(TEXT, t(0));
        let f = &s[&("p".to_string(), "f".to_string())];
        assert_eq!(f.requests, 10.0, "every status counts");
        assert_eq!(f.instances, 3.0, "every state counts");
        assert_eq!(f.buckets, vec![(0.001, 0.0), (0.01, 10.0), (f64::INFINITY, 10.0)], "sorted by bound");
        let g = &s[&("q".to_string(), "g".to_string())];
        assert_eq!((g.requests, g.instances, g.buckets.len()), (1.0, 0.0, 0));
        assert_eq!(s.len(), 2, "other series and escaped labels make no function: {s:?}");
        assert_eq!(parse_line(r#"a{x="1\"2",y="b"} 3.5"#), Some(("a", vec![("x".into(), "1\"2".into()), ("y".into(), "b".into())], 3.5)));
        assert_eq!(parse_line("b 4"), Some(("b", vec![], 4.0)));
        assert_eq!(parse_line(r#"c{x="1"} nope"#), None);
        assert_eq!(parse_line(r#"c{x="1"#), None);
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let d = [(0.001, 0.0), (0.01, 10.0), (0.1, 10.0), (f64::INFINITY, 10.0)];
        let close = |a: Option<f64>, b: f64| assert!((a.expect("a value") - b).abs() < 1e-12, "{a:?} != {b}");
        close(quantile(0.5, &d), 0.0055);
        close(quantile(0.99, &d), 0.001 + 0.009 * 0.99);
        // 90 fast, 10 slow: p50 in the first bucket, p99 in the slow one.
        let d = [(0.01, 90.0), (1.0, 100.0), (f64::INFINITY, 100.0)];
        close(quantile(0.5, &d), 0.01 * 50.0 / 90.0);
        close(quantile(0.99, &d), 0.01 + 0.99 * 9.0 / 10.0);
        // Beyond the last finite bound: that bound.
        let d = [(0.01, 0.0), (30.0, 0.0), (f64::INFINITY, 4.0)];
        close(quantile(0.5, &d), 30.0);
        assert_eq!(quantile(0.5, &[(0.01, 0.0), (f64::INFINITY, 0.0)]), None, "no requests, no latency");
        assert_eq!(quantile(0.5, &[]), None);
    }

    fn snap(at: i64, requests: f64, buckets: &[(f64, f64)], instances: f64) -> Snapshot {
        Snapshot { at: t(at), requests, buckets: buckets.to_vec(), instances }
    }

    #[test]
    fn points_are_rates_and_quantiles_of_the_deltas() {
        let a = snap(0, 100.0, &[(0.01, 100.0), (1.0, 100.0), (f64::INFINITY, 100.0)], 1.0);
        // 20 more requests in 10 s, all slow: the interval's p50 is slow although most ever were fast.
        let b = snap(10, 120.0, &[(0.01, 100.0), (1.0, 120.0), (f64::INFINITY, 120.0)], 2.0);
        let p = point(&a, &b);
        assert_eq!((p.at, p.seconds, p.requests_per_second, p.instances), (t(10), 10.0, 2.0, 2.0));
        let p50 = p.p50_ms.expect("p50");
        assert!((p50 - (10.0 + 990.0 * 0.5)).abs() < 1e-9, "{p50}");
        // Nothing in the next: a rate of 0 and no latency.
        let c = snap(20, 120.0, &b.buckets, 0.0);
        let p = point(&b, &c);
        assert_eq!((p.requests_per_second, p.p50_ms, p.p99_ms, p.instances), (0.0, None, None, 0.0));
        // A counter that went back: counted from 0.
        let d = snap(30, 5.0, &[(0.01, 5.0), (1.0, 5.0), (f64::INFINITY, 5.0)], 1.0);
        let p = point(&c, &d);
        assert_eq!(p.requests_per_second, 0.5);
        assert!(p.p50_ms.expect("p50") <= 10.0);
    }

    #[test]
    fn the_ring_keeps_the_last_points_and_starts_new_functions_at_zero() {
        let h = MetricsHistory::new(2, t(0));
        let key = ("p".to_string(), "f".to_string());
        let one = |s: Snapshot| HashMap::from([(key.clone(), s)]);
        // First seen at 10 s: it had no series at 0 s.
        h.record(t(10), one(snap(0, 50.0, &[(f64::INFINITY, 50.0)], 1.0)));
        let p = h.points("p", "f", None);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].at, p[0].requests_per_second), (t(10), 5.0));
        for i in 2..=6 {
            h.record(t(10 * i), one(snap(0, 50.0 + 10.0 * i as f64, &[(f64::INFINITY, 50.0 + 10.0 * i as f64)], 1.0)));
        }
        let p = h.points("p", "f", None);
        assert_eq!(p.iter().map(|p| p.at).collect::<Vec<_>>(), vec![t(50), t(60)], "2 points kept");
        assert!(p.iter().all(|p| p.requests_per_second == 1.0), "{p:?}");
        // The point up to now ends the answer, and is not kept.
        let now = snap(65, 115.0, &[(f64::INFINITY, 115.0)], 1.0);
        let p = h.points("p", "f", Some(now.clone()));
        assert_eq!((p.len(), p[2].at, p[2].requests_per_second), (3, t(65), 1.0));
        assert_eq!(h.points("p", "f", None).len(), 2);
        // A now too close to the last sample adds nothing.
        let p = h.points("p", "f", Some(Snapshot { at: t(60) + chrono::Duration::milliseconds(300), ..now }));
        assert_eq!(p.len(), 2);
        // Unknown function: zeros since the last sample; a function gone from the metrics is forgotten.
        let p = h.points("p", "other", Some(snap(65, 3.0, &[(f64::INFINITY, 3.0)], 0.0)));
        assert_eq!((p.len(), p[0].requests_per_second), (1, 0.6));
        h.record(t(70), HashMap::new());
        assert_eq!(h.points("p", "f", None).len(), 0);
    }
}
