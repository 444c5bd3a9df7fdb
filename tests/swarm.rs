//! The swarm engine against the 3-node lab of `scripts/swarm-lab up` (issue 12): spread over
//! nodes, a node killed under load, a redeploy under load, a cron run on a remote node, a cold
//! start on a remote node, a server killed and restarted, `rm` leaving nothing on any node, and
//! bad input.
//!
//! The tests run their own servers (this build, copied into the manager `esl-lab-1`, see
//! `tests/common/lab.rs`), reached from the host at `http://172.30.77.11:PORT`; one server is
//! shared by the tests that do not need their own. Each test deploys and removes its own
//! project. Without the lab the tests print "skipping" and pass, except under `CI=true`, where
//! they fail and say to run `scripts/swarm-lab up`.
//!
//! `ESERVELESS_SWARM_TEST_ARGS` replaces the shared server's engine arguments (default
//! `--engine swarm --max-memory 256Gi`), e.g. to try the harness on the single-host engine.
//! `ESERVELESS_LAB_PREFIX` and `ESERVELESS_LAB_SUBNET` pick a second lab, as for
//! `scripts/swarm-lab` (nodes `PREFIX-1..3`, the manager at `.11` of the subnet).

// `require_docker!` is not used here: the lab's checks stand for it.
#[allow(unused_macros)]
#[macro_use]
mod common;
#[macro_use]
#[path = "common/lab.rs"]
mod lab;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use lab::*;
use serde_json::Value;

/// The shared server: started by the first test that needs it, killed when this binary ends.
static SHARED: tokio::sync::OnceCell<LabServer> = tokio::sync::OnceCell::const_new();

fn engine_args() -> Vec<String> {
    let args = std::env::var("ESERVELESS_SWARM_TEST_ARGS").unwrap_or_else(|_| "--engine swarm --max-memory 256Gi".to_string());
    args.split_whitespace().map(str::to_string).collect()
}

/// Nodes a spread deployment must cover: 2 with the swarm engine; 1 when the arguments pick the
/// single-host engine (only to try the harness itself).
fn spread() -> usize {
    if engine_args().iter().any(|a| a == "swarm") {
        2
    } else {
        1
    }
}

async fn shared() -> LabServer {
    SHARED
        .get_or_init(|| async {
            let mut args = engine_args();
            if spread() > 1 {
                // Its own registry on a port of its own: another server (the lab's) may hold 5000.
                args.extend(["--registry-port".to_string(), free_lab_port().to_string()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            LabServer::start(&args).await
        })
        .await
        .clone()
}

fn log(t0: Instant, msg: &str) {
    eprintln!("[{:>6.1}s] {msg}", t0.elapsed().as_secs_f64());
}

/// A git repository with `tests/fixtures/swarm-app` and `manifest` as its `.eserveless.yaml`.
fn swarm_app(manifest: &str) -> tempfile::TempDir {
    let read = |f: &str| std::fs::read_to_string(fixture("swarm-app").join(f)).expect("read the swarm-app fixture");
    repo_with(&[("functions.js", read("functions.js")), ("package.json", read("package.json")), (".eserveless.yaml", manifest.to_string())])
}

/// `Where` with `concurrency: 1` and `min_instances` warm instances: enough to spread.
fn where_manifest(min: u32, max: u32) -> String {
    format!("runtime: node\nfunctions:\n  - name: Where\n    type: http\n    concurrency: 1\n    min_instances: {min}\n    max_instances: {max}\n    timeout: 30s\n")
}

/// Waits (at most `within`) until `project` runs at least `count` containers over at least
/// `nodes` nodes; returns the containers per node.
async fn wait_spread(project: &str, count: usize, nodes: usize, within: Duration) -> BTreeMap<String, usize> {
    let began = Instant::now();
    loop {
        let per: BTreeMap<String, usize> = running_per_node(project).into_iter().collect();
        if per.values().sum::<usize>() >= count && per.len() >= nodes {
            return per;
        }
        assert!(
            began.elapsed() < within,
            "{project} does not run {count} containers on {nodes} nodes after {within:?}: {per:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The nodes the API gives the instances of `function` (searching the function's JSON for
/// objects with a `node`), checked to be lab nodes; empty when the API gives none.
async fn api_nodes(server: &LabServer, project: &str, function: &str) -> BTreeSet<String> {
    fn collect(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(n) = m.get("node").and_then(Value::as_str) {
                    out.push(n.to_string());
                }
                m.values().for_each(|c| collect(c, out));
            }
            Value::Array(a) => a.iter().for_each(|c| collect(c, out)),
            _ => {}
        }
    }
    let p = server.project(project).await;
    let f = p["functions"].as_array().into_iter().flatten().find(|f| f["name"] == function).cloned().unwrap_or(Value::Null);
    let mut named = Vec::new();
    collect(&f, &mut named);
    for n in &named {
        assert!(nodes().contains(&n.as_str()), "the API names node `{n}` for an instance of {project}/{function}, not a lab node: {f:#}");
    }
    named.into_iter().collect()
}

/// Hosts (container ids) that answered, in order of first answer.
fn hosts(samples: &[Sample]) -> BTreeSet<String> {
    samples.iter().filter_map(|s| s.field("host")).collect()
}

/// Requests `url` from `clients` parallel clients for `secs` seconds; returns the samples.
async fn burst(url: &str, clients: usize, secs: u64) -> Vec<Sample> {
    let load = RequestLoop::start(vec![url.to_string(); clients], Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    load.finish().await
}

// ---------------------------------------------------------------------------------------------
// a. node and Go fixtures, answered from instances on at least 2 nodes

/// node-app with a `Where` function added (the fixture's own functions do not say which
/// instance answered).
fn node_app_with_where() -> tempfile::TempDir {
    let mut js = std::fs::read_to_string(fixture("node-app").join("functions.js")).expect("node-app");
    js.push_str(
        "\n// Added by tests/swarm.rs: which container answered, after ?sleep=<ms>.\n\
         module.exports.Where = (req, res) => {\n  req.resume();\n  const ms = Math.min(parseInt(new URLSearchParams(req.url.split('?')[1] || '').get('sleep') || '0', 10) || 0, 60000);\n  setTimeout(() => { res.setHeader('Content-Type', 'application/json'); res.end(JSON.stringify({ runtime: 'node', host: require('os').hostname() })); }, ms);\n};\n",
    );
    let pkg = std::fs::read_to_string(fixture("node-app").join("package.json")).expect("node-app");
    let manifest = "functions:\n  - name: API\n    type: http\n  - name: Where\n    type: http\n    concurrency: 1\n    min_instances: 3\n    max_instances: 3\n    timeout: 30s\n";
    repo_with(&[("functions.js", js), ("package.json", pkg), (".eserveless.yaml", manifest.to_string())])
}

/// go-app with a `Where` function added, in its own file of the same package.
fn go_app_with_where() -> tempfile::TempDir {
    let read = |f: &str| std::fs::read_to_string(fixture("go-app").join(f)).expect("go-app");
    let where_go = r#"package functions

// Added by tests/swarm.rs: which container answered, after ?sleep=<ms>.

import (
	"encoding/json"
	"net/http"
	"os"
	"strconv"
	"time"
)

func Where(w http.ResponseWriter, r *http.Request) {
	ms, _ := strconv.Atoi(r.URL.Query().Get("sleep"))
	if ms > 60000 {
		ms = 60000
	}
	time.Sleep(time.Duration(ms) * time.Millisecond)
	host, _ := os.Hostname()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]string{"runtime": "go", "host": host})
}
"#;
    let manifest = "runtime: golang\nfunctions:\n  - name: API\n    type: http\n  - name: Where\n    type: http\n    concurrency: 1\n    min_instances: 3\n    max_instances: 3\n    timeout: 30s\n";
    repo_with(&[
        ("functions.go", read("functions.go")),
        ("go.mod", read("go.mod")),
        ("where.go", where_go.to_string()),
        (".eserveless.yaml", manifest.to_string()),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_and_go_fixtures_answer_from_instances_on_several_nodes() {
    require_lab!();
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let server = shared().await;
    let (node_p, go_p) = (unique("sw-node"), unique("sw-go"));
    let _c1 = LabCleanup { server: server.clone(), project: node_p.clone() };
    let _c2 = LabCleanup { server: server.clone(), project: go_p.clone() };
    let (node_repo, go_repo) = (node_app_with_where(), go_app_with_where());
    let (node_path, go_path) = (copy_repo(node_repo.path(), &node_p), copy_repo(go_repo.path(), &go_p));
    let (wn, wg) = (Placements::watch(&node_p), Placements::watch(&go_p));
    // Both at once: the builds overlap.
    let (dn, dg) = tokio::join!(server.deploy(&node_path, &node_p), server.deploy(&go_path, &go_p));
    assert_eq!(dn["status"], "ready", "node-app: {dn:#}\n{}", server.tail(80));
    assert_eq!(dg["status"], "ready", "go-app: {dg:#}\n{}", server.tail(80));
    log(t0, "node-app and go-app deployed");

    for (project, runtime, watch) in [(&node_p, "node", &wn), (&go_p, "go", &wg)] {
        let api = api_get(&server.http(), &server.invoke_url(project, "API", "?x=1")).await;
        assert_eq!(api.status, 200, "{project} API: {}", api.raw);
        assert_eq!(api.body["runtime"], runtime, "{}", api.raw);
        let per = wait_spread(project, 3, 1, Duration::from_secs(90)).await;
        log(t0, &format!("{project}: warm instances per node {per:?}"));
        let samples = burst(&server.invoke_url(project, "Where", "?sleep=150"), 6, 4).await;
        let failed = failures(&samples);
        assert!(failed.is_empty(), "{project}: {} of {} requests failed: {:?}", failed.len(), samples.len(), &failed[..failed.len().min(5)]);
        let hs = hosts(&samples);
        let nodes = watch.nodes_of(&hs).await;
        let api = api_nodes(&server, project, "Where").await;
        log(t0, &format!("{project} ({runtime}): {} requests answered by {} instances on nodes {nodes:?}; the API's instance nodes: {api:?}", samples.len(), hs.len()));
        assert!(nodes.len() >= spread(), "{project}: every answer came from one node: {nodes:?} (hosts {hs:?})");
        assert!(spread() < 2 || !api.is_empty(), "the API lists no instance of {project}/Where with its `node`: {:#}", server.project(project).await);
    }
    server.remove(&node_p).await;
    server.remove(&go_p).await;
}

// ---------------------------------------------------------------------------------------------
// b. a worker killed under load

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_a_node_killed_under_load_fails_no_request_and_rejoins() {
    require_lab!();
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let server = shared().await;
    let project = unique("sw-kill");
    let _cleanup = LabCleanup { server: server.clone(), project: project.clone() };
    let repo = swarm_app(&where_manifest(3, 6));
    let path = copy_repo(repo.path(), &project);
    let watch = Placements::watch(&project);
    server.deploy_ready(&path, &project).await;
    let per = wait_spread(&project, 3, spread(), Duration::from_secs(90)).await;
    log(t0, &format!("deployed; containers per node {per:?}"));
    let victim = per
        .iter()
        .filter(|(n, _)| n.as_str() != manager())
        .max_by_key(|(_, c)| **c)
        .map(|(n, _)| n.clone())
        .unwrap_or_else(|| panic!("no worker holds an instance: {per:?}"));

    // About 20 requests/s: 6 clients, each pausing 250 ms between requests, for 40 s.
    let url = server.invoke_url(&project, "Where", "");
    let load = RequestLoop::start(vec![url; 6], Duration::from_millis(250));
    let _revive = Revive(victim.clone());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let kill_at = Instant::now();
    let (ok, _, err) = docker_cli(&["kill", &victim]);
    assert!(ok, "docker kill {victim}: {err}");
    log(t0, &format!("killed {victim} (it held {} instances)", per[&victim]));
    // The manager marks it down (~14 s in the lab); meanwhile the load goes on.
    let mut down_after = None;
    while kill_at.elapsed() < Duration::from_secs(35) {
        if down_after.is_none() && swarm_nodes().get(&victim).map(String::as_str) == Some("Down") {
            down_after = Some(kill_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let samples = load.finish().await;
    let failed = failures(&samples);
    #[allow(clippy::cast_precision_loss)] // a count of requests
    let rate = samples.len() as f64 / 40.0;
    // Served again: the end of the last request after the kill that failed or took over 1 s
    // (strict), and the same for the kill's own trouble only (`served_again`: a cold start of
    // a scale-up 30 s later is no outage).
    let trouble: Vec<(Duration, Duration)> = samples
        .iter()
        .filter(|s| s.sent + s.took > kill_at && (s.result.is_err() || s.took > Duration::from_secs(1)))
        .map(|s| (s.sent.saturating_duration_since(kill_at), (s.sent + s.took).duration_since(kill_at)))
        .collect();
    let strict = trouble.iter().map(|t| t.1).max().unwrap_or(Duration::ZERO);
    let recovered = served_again(&trouble);
    let max_took = samples.iter().map(|s| s.took).max().unwrap_or_default();
    // When the slow ones were sent (seconds from the kill, negative before) and how long they took.
    let mut slow: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.took > Duration::from_secs(1))
        .map(|s| {
            let at = if s.sent >= kill_at { s.sent.duration_since(kill_at).as_secs_f64() } else { -kill_at.duration_since(s.sent).as_secs_f64() };
            ((at * 10.0).round() / 10.0, (s.took.as_secs_f64() * 100.0).round() / 100.0)
        })
        .collect();
    slow.sort_by(|a, b| a.0.total_cmp(&b.0));
    log(t0, &format!("requests over 1 s (sent at s from the kill, took s): {slow:?}"));
    let late: Vec<&Sample> = samples.iter().filter(|s| s.sent > kill_at + Duration::from_secs(20)).collect();
    let late_hosts: BTreeSet<String> = late.iter().filter_map(|s| s.field("host")).collect();
    let late_nodes = watch.nodes_of(&late_hosts).await;
    let survivors = wait_spread(&project, 3, 1, Duration::from_secs(30)).await;
    log(
        t0,
        &format!(
            "{} requests ({rate:.1}/s), {} failed; all served again {:.1}s after the kill ({:.1}s by the strict rule; \
             slowest request {:.2}s); {victim} marked down after {down_after:?}; answers from 20 s after the kill came \
             from {late_nodes:?}; running containers per node now {survivors:?}",
            samples.len(),
            failed.len(),
            recovered.as_secs_f64(),
            strict.as_secs_f64(),
            max_took.as_secs_f64()
        ),
    );
    // The node comes back before any verdict: the next tests need all three.
    let (ok, _, err) = docker_cli(&["start", &victim]);
    assert!(ok, "docker start {victim}: {err}");
    let rejoined = wait_ready(&victim, Duration::from_secs(120)).await;
    log(t0, &format!("{victim} Ready again {:.1}s after docker start", rejoined.as_secs_f64()));
    assert!(failed.is_empty(), "{} of {} requests failed after killing {victim}: {:?}\n{}", failed.len(), samples.len(), &failed[..failed.len().min(10)], server.tail(80));
    assert!(!late_nodes.contains(&victim), "answers long after the kill still came from {victim}: {late_nodes:?}");
    assert!(!survivors.contains_key(&victim));
    // Issue 12's goal: every request served again within 15 s of the kill.
    assert!(
        recovered <= Duration::from_secs(15),
        "requests were served again only {:.1}s after killing {victim} (goal 15 s); over 1 s (sent at s, took s): {slow:?}\n{}",
        recovered.as_secs_f64(),
        server.tail(80)
    );
    server.remove(&project).await;
}

/// How long after a node kill every request was served again, from the failed or slow
/// requests ending after the kill (sent and ended, both from the kill): the end of the last
/// one of the trouble that began with the kill. Trouble that comes after [`QUIET`] without
/// any (a scale-up's cold start half a minute later) is not the kill's.
fn served_again(trouble: &[(Duration, Duration)]) -> Duration {
    const QUIET: Duration = Duration::from_secs(5);
    let mut sorted = trouble.to_vec();
    sorted.sort();
    let mut end = Duration::ZERO;
    for (sent, ended) in sorted {
        if sent > end + QUIET {
            break;
        }
        end = end.max(ended);
    }
    end
}

#[test]
fn served_again_ends_with_the_kills_trouble_not_a_later_cold_start() {
    let s = Duration::from_secs_f64;
    assert_eq!(served_again(&[]), Duration::ZERO);
    // This lab's run: two requests stalled by the kill, a scale-up's cold start at +32 s.
    assert_eq!(served_again(&[(s(0.3), s(1.9)), (s(0.3), s(1.86)), (s(32.0), s(33.2))]), s(1.9));
    // Trouble that goes on (a request every few seconds) is the kill's until it stops.
    assert_eq!(served_again(&[(s(0.1), s(3.0)), (s(6.0), s(7.5)), (s(11.0), s(16.2))]), s(16.2));
    // A request in flight at the kill (sent before it) that waited long counts too.
    assert_eq!(served_again(&[(s(0.0), s(14.0)), (s(2.0), s(2.5))]), s(14.0));
}

// ---------------------------------------------------------------------------------------------
// c. a redeploy under load across nodes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_a_redeploy_under_load_across_nodes_fails_no_request() {
    require_lab!();
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let server = shared().await;
    let project = unique("sw-redeploy");
    let _cleanup = LabCleanup { server: server.clone(), project: project.clone() };
    let repo = swarm_app(&where_manifest(3, 6));
    let path = copy_repo(repo.path(), &project);
    let watch = Placements::watch(&project);
    server.deploy_ready(&path, &project).await;
    let per = wait_spread(&project, 3, spread(), Duration::from_secs(90)).await;
    log(t0, &format!("v1 deployed; containers per node {per:?}"));

    let url = server.invoke_url(&project, "Where", "");
    let load = RequestLoop::start(vec![url; 5], Duration::from_millis(200));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let js = repo.path().join("functions.js");
    let text = std::fs::read_to_string(&js).expect("functions.js");
    std::fs::write(&js, text.replace("const VERSION = \"v1\";", "const VERSION = \"v2\";")).expect("write functions.js");
    commit_all(repo.path(), "v2");
    copy_repo(repo.path(), &project);
    let d = server.deploy(&path, &project).await;
    assert_eq!(d["status"], "ready", "v2: {d:#}");
    let live_at = Instant::now();
    log(t0, "v2 live");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let samples = load.finish().await;
    let failed = failures(&samples);
    let v2: BTreeSet<String> = samples.iter().filter(|s| s.field("version").as_deref() == Some("v2")).filter_map(|s| s.field("host")).collect();
    let v1_late = samples.iter().filter(|s| s.sent > live_at + Duration::from_secs(1) && s.field("version").as_deref() == Some("v1")).count();
    let v2_nodes = watch.nodes_of(&v2).await;
    log(t0, &format!("{} requests, {} failed; v2 answered from {} instances on {v2_nodes:?}; v1 answers sent 1 s after v2 was live: {v1_late}", samples.len(), failed.len(), v2.len()));
    assert!(failed.is_empty(), "{} of {} requests failed during the redeploy: {:?}\n{}", failed.len(), samples.len(), &failed[..failed.len().min(10)], server.tail(80));
    assert!(!v2.is_empty(), "no answer from v2");
    assert_eq!(v1_late, 0, "v1 still answered after v2 was live");
    let v2_per = wait_spread(&project, 3, spread(), Duration::from_secs(30)).await;
    log(t0, &format!("v2 containers per node {v2_per:?}"));
    server.remove(&project).await;
}

// ---------------------------------------------------------------------------------------------
// d. a cron run on a node other than the manager

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_a_cron_run_on_a_remote_node_records_its_output() {
    require_lab!();
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let server = shared().await;
    let project = unique("sw-cron");
    let _cleanup = LabCleanup { server: server.clone(), project: project.clone() };
    let repo = swarm_app("runtime: node\nfunctions:\n  - name: Tick\n    type: cron\n    schedule: \"*/2 * * * * *\"\n    timeout: 30s\n");
    let path = copy_repo(repo.path(), &project);
    let watch = Placements::watch(&project);
    server.deploy_ready(&path, &project).await;
    log(t0, "deployed; waiting for a run on a worker");
    let http = server.http();
    let runs_url = format!("{}/api/projects/{project}/functions/Tick/runs?limit=100", server.url);
    let began = Instant::now();
    let mut seen: BTreeMap<i64, (String, String)> = BTreeMap::new();
    let remote = loop {
        let a = api_get(&http, &runs_url).await;
        assert_eq!(a.status, 200, "{}", a.raw);
        for r in a.body["runs"].as_array().into_iter().flatten() {
            let (Some(id), Some(out)) = (r["id"].as_i64(), r["output"].as_str()) else { continue };
            if r["status"] != "succeeded" || seen.contains_key(&id) {
                continue;
            }
            let Some(host) = out.lines().find_map(|l| l.strip_prefix("TICK v1 ")).map(|h| h.trim().to_string()) else { continue };
            let node = watch.wait_node_of(&host, Duration::from_secs(5)).await.unwrap_or_else(|| format!("unknown({host})"));
            log(t0, &format!("run {id}: succeeded on {node}, exit code {}, {} ms", r["exit_code"], r["duration_ms"]));
            seen.insert(id, (node, r.to_string()));
        }
        if let Some((id, (node, run))) = seen.iter().find(|(_, (n, _))| nodes()[1..].contains(&n.as_str())) {
            break (*id, node.clone(), run.clone());
        }
        assert!(
            began.elapsed() < Duration::from_secs(120),
            "no succeeded run of {project}/Tick on a worker within 120 s; runs seen (id: node): {:?}\n{}",
            seen.iter().map(|(i, (n, _))| (i, n)).collect::<Vec<_>>(),
            server.tail(60)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    log(t0, &format!("run {} on {} recorded its output: {}", remote.0, remote.1, remote.2));
    server.remove(&project).await;
}

// ---------------------------------------------------------------------------------------------
// e. scale to zero, then a cold start on a remote node

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_scaled_to_zero_a_cold_start_on_a_remote_node_answers() {
    require_lab!();
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let server = shared().await;
    let project = unique("sw-cold");
    let _cleanup = LabCleanup { server: server.clone(), project: project.clone() };
    let repo = swarm_app("runtime: node\nfunctions:\n  - name: Where\n    type: http\n    idle_timeout: 2s\n    pause_after: 1s\n    timeout: 30s\n");
    let path = copy_repo(repo.path(), &project);
    let watch = Placements::watch(&project);
    server.deploy_ready(&path, &project).await;
    let http = server.http();
    let url = server.invoke_url(&project, "Where", "");
    let mut cold: Vec<(String, f64)> = Vec::new();
    for attempt in 1..=6 {
        // Zero instances first: the idle timeout removes the last one.
        let began = Instant::now();
        while !running_per_node(&project).is_empty() {
            assert!(began.elapsed() < Duration::from_secs(60), "{project} did not scale to zero within 60 s: {:?}", running_per_node(&project));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if spread() > 1 && attempt > 1 {
            // The anchor keeps the project's overlay on every node at zero instances: the cold
            // start on a worker finds it there instead of setting it up first. (Not before the
            // first: the overlay and its anchor are made with the project's first instance.)
            let missing: Vec<&str> = nodes().iter().copied().filter(|n| networks_of(n, &project).is_empty()).collect();
            assert!(missing.is_empty(), "{project} has no instance and its overlay is gone from {missing:?}: a cold start there sets it up again");
        }
        let sent = Instant::now();
        let a = api_get(&http, &url).await;
        let took = sent.elapsed().as_secs_f64();
        assert_eq!(a.status, 200, "cold start {attempt}: {}\n{}", a.raw, server.tail(60));
        let host = a.body["host"].as_str().unwrap_or_default().to_string();
        let node = watch.wait_node_of(&host, Duration::from_secs(5)).await.unwrap_or_else(|| format!("unknown({host})"));
        log(t0, &format!("cold start {attempt}: answered by {node} after {took:.2}s (from zero)"));
        cold.push((node.clone(), took));
        if node != manager() && cold.iter().any(|(n, _)| n == manager()) {
            break;
        }
        if node != manager() && attempt >= 3 {
            break;
        }
    }
    assert!(cold.iter().any(|(n, _)| nodes()[1..].contains(&n.as_str())), "no cold start landed on a worker: {cold:?}");
    log(t0, &format!("cold starts (node, seconds to the answer): {cold:?}"));
    server.remove(&project).await;
}

// ---------------------------------------------------------------------------------------------
// f. the server SIGKILLed and restarted adopts its services

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_a_restarted_server_adopts_its_services_without_duplicates() {
    require_lab!();
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let mut server = shared().await;
    let project = unique("sw-adopt");
    let _cleanup = LabCleanup { server: server.clone(), project: project.clone() };
    let repo = swarm_app(&where_manifest(2, 4));
    let path = copy_repo(repo.path(), &project);
    server.deploy_ready(&path, &project).await;
    let a = api_get(&server.http(), &server.invoke_url(&project, "Where", "")).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    let per = wait_spread(&project, 2, 1, Duration::from_secs(90)).await;
    // Counted once the pool has settled (a request during the warm-up may start one more).
    let before = settled_services(&project).await;
    let containers_before: BTreeSet<String> = nodes().iter().flat_map(|n| function_containers_on(n, &project)).map(|c| c[..12].to_string()).collect();
    let anchors_before = if spread() > 1 { wait_anchored(&project, Duration::from_secs(60)).await } else { BTreeMap::new() };
    log(t0, &format!("deployed: {} services, containers per node {per:?}", before.len()));

    server.kill();
    log(t0, "server SIGKILLed");
    server.spawn().await;
    let answered: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            let a = api_get(&server.http(), &server.invoke_url(&project, "Where", "")).await;
            assert_eq!(a.status, 200, "after the restart: {}\n{}", a.raw, server.tail(60));
            v.push(a.body["host"].as_str().unwrap_or_default().to_string());
        }
        v
    };
    // Give adoption and the pool's min_instances a moment to misbehave, if they would.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = services_of(&project);
    let containers_after: BTreeSet<String> = nodes().iter().flat_map(|n| function_containers_on(n, &project)).map(|c| c[..12].to_string()).collect();
    log(t0, &format!("after the restart: {} services (before {}), answers from {answered:?}", after.len(), before.len()));
    assert_eq!(after, before, "services changed across the restart (duplicated or replaced)\n{}", server.tail(60));
    assert_eq!(containers_after, containers_before, "containers changed across the restart");
    if spread() > 1 {
        let anchors_after = wait_anchored(&project, Duration::from_secs(10)).await;
        assert_eq!(anchors_after, anchors_before, "the project's anchors changed across the restart (made again, not adopted)");
    }
    assert!(answered.iter().all(|h| containers_before.contains(h)), "answers after the restart came from new instances: {answered:?} vs {containers_before:?}");
    server.remove(&project).await;
}

/// The project's services once their number has not changed for 3 s (at most 30 s).
async fn settled_services(project: &str) -> Vec<String> {
    let began = Instant::now();
    let mut last = services_of(project);
    let mut since = Instant::now();
    while since.elapsed() < Duration::from_secs(3) && began.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = services_of(project);
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    last
}

// ---------------------------------------------------------------------------------------------
// g. rm leaves nothing on any node

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g_rm_leaves_no_service_network_image_or_registry_tag() {
    require_lab!();
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let server = shared().await;
    let project = unique("sw-rm");
    let _cleanup = LabCleanup { server: server.clone(), project: project.clone() };
    let repo = swarm_app(&(where_manifest(3, 3) + "  - name: Tick\n    type: cron\n    schedule: \"*/2 * * * * *\"\n"));
    let path = copy_repo(repo.path(), &project);
    server.deploy_ready(&path, &project).await;
    let per = wait_spread(&project, 3, spread(), Duration::from_secs(90)).await;
    let a = api_get(&server.http(), &server.invoke_url(&project, "Where", "")).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    let registry = own_registry(&server);
    assert!(registry.is_some() || spread() < 2, "the server runs no registry service of its own on the manager");
    let before: Vec<(String, Vec<String>, Vec<String>)> = nodes().iter().map(|n| (n.to_string(), networks_of(n, &project), images_on(n, &project))).collect();
    let tags = registry.as_deref().map(|r| registry_tags_of(r, &project)).unwrap_or_default();
    log(t0, &format!("deployed: per node {per:?}; services {}; networks and images {before:?}; registry service {registry:?}, tags {tags:?}", services_of(&project).len()));
    if spread() > 1 {
        // The checks below look where things are: before rm they find them.
        assert!(!tags.is_empty(), "no tag of {project} in the server's registry ({registry:?}) after its deployment");
        assert!(before.iter().filter(|(_, n, _)| !n.is_empty()).count() >= 2, "the project's network is on fewer than 2 nodes: {before:?}");
        let anchors = wait_anchored(&project, Duration::from_secs(60)).await;
        log(t0, &format!("one anchor per node: {anchors:?}"));
    }

    server.remove(&project).await;
    let began = Instant::now();
    let left = loop {
        let mut left = Vec::new();
        let s = services_of(&project);
        if !s.is_empty() {
            left.push(format!("services {s:?}"));
        }
        let anchors = anchor_services(&project);
        if !anchors.is_empty() {
            left.push(format!("anchor services {anchors:?}"));
        }
        for n in nodes() {
            let anchors = anchors_on(n, &project);
            if !anchors.is_empty() {
                left.push(format!("{n}: anchors {anchors:?}"));
            }
            let c = node_container_names(n, &project);
            let nets = networks_of(n, &project);
            let imgs = images_on(n, &project);
            for (what, v) in [("containers", c), ("networks", nets), ("images", imgs)] {
                if !v.is_empty() {
                    left.push(format!("{n}: {what} {v:?}"));
                }
            }
        }
        if let Some(r) = registry.as_deref() {
            let t = registry_tags_of(r, &project);
            if !t.is_empty() {
                left.push(format!("registry tags {t:?}"));
            }
        }
        if left.is_empty() || began.elapsed() > Duration::from_secs(45) {
            break left;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    log(t0, &format!("after rm ({:.1}s): {left:?}", began.elapsed().as_secs_f64()));
    assert!(left.is_empty(), "left after rm of {project}: {left:?}\n{}", server.tail(60));
}

// ---------------------------------------------------------------------------------------------
// h. bad input

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h_bad_input_is_refused_with_clear_messages() {
    require_lab!();
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();

    // 1. `--engine swarm` against an engine that is not a swarm manager: the host's own dockerd
    //    (not in a swarm) and a worker node.
    let dir = tempfile::tempdir().expect("dir");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_eserveless"))
            .args(["serve", "--engine", "swarm", "--listen", &format!("127.0.0.1:{}", free_port()), "--data-dir"])
            .arg(dir.path().join("data"))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("`serve --engine swarm` on the host's engine did not exit within 60 s")
    .expect("run eserveless");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    log(t0, &format!("host engine: exit {:?}: {}", out.status.code(), text.trim()));
    assert!(!out.status.success(), "the server started on an engine that is not a swarm manager:\n{text}");
    assert!(text.contains("docker swarm init"), "the refusal does not say `docker swarm init`:\n{text}");

    let worker = nodes()[1];
    let (ok, _, err) = docker_cli(&["cp", "-L", env!("CARGO_BIN_EXE_eserveless"), &format!("{worker}:/tmp/eserveless-swarm-test")]);
    assert!(ok, "docker cp into {worker}: {err}");
    let (ok, o, e) = in_node(worker, "timeout 60 /tmp/eserveless-swarm-test serve --engine swarm --listen 127.0.0.1:18999 --data-dir /tmp/esl-swarm-test-data; rc=$?; rm -rf /tmp/eserveless-swarm-test /tmp/esl-swarm-test-data; exit $rc");
    let text = format!("{o}{e}");
    log(t0, &format!("worker {worker}: {}", text.trim()));
    assert!(!ok, "the server started on a worker:\n{text}");
    assert!(text.contains("manager"), "the refusal on a worker does not say it needs a manager:\n{text}");

    // 2. An unreachable registry: a server that needs it at start (its node guard's image goes
    //    through it) refuses to start, naming it...
    let run = run_dir();
    let script = format!(
        "ESERVELESS_DATA_DIR={run}/data-noreg-start ESERVELESS_NODE_IMAGE=eserveless/node:bookworm ESERVELESS_GO_IMAGE=eserveless/go:bookworm \
         ESERVELESS_RUN_IMAGE=eserveless/run:bookworm timeout 300 {run}/eserveless serve --listen 127.0.0.1:{} --engine swarm --registry http://127.0.0.1:1",
        free_lab_port()
    );
    let (ok, o, e) = in_node(manager(), &script);
    let text = format!("{o}{e}");
    log(t0, &format!("--registry http://127.0.0.1:1 at start: {}", text.trim()));
    assert!(!ok, "the server started with an unreachable registry:\n{text}");
    assert!(text.contains("127.0.0.1:1"), "the refusal does not name the registry:\n{text}");
    //    ...and without the guard, the deployment fails, naming it.
    // `--firewall=false`: the node guard's image goes through the registry too, and this test
    // is about a function's deployment (the guard has its own test, tests/swarm_guard.rs).
    let args = [engine_args(), ["--registry", "http://127.0.0.1:1", "--firewall=false"].map(String::from).to_vec()].concat();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let bad = LabServer::start(&args).await;
    let project = unique("sw-noreg");
    let cleanup = LabCleanup { server: bad.clone(), project: project.clone() };
    let repo = swarm_app(&where_manifest(0, 1));
    let path = copy_repo(repo.path(), &project);
    let d = bad.deploy(&path, &project).await;
    log(t0, &format!("--registry http://127.0.0.1:1: deployment {} error {}", d["status"], d["error"]));
    assert_eq!(d["status"], "failed", "a deployment with an unreachable registry: {d:#}");
    assert!(d.to_string().contains("127.0.0.1:1"), "the failure does not name the registry: {d:#}");
    drop(cleanup);
    bad.kill();

    // 3. More memory than any node has: a clear error, at once.
    let server = shared().await;
    let project = unique("sw-huge");
    let _cleanup = LabCleanup { server: server.clone(), project: project.clone() };
    let repo = swarm_app("runtime: node\nfunctions:\n  - name: Where\n    type: http\n    memory: 200Gi\n    timeout: 30s\n");
    let path = copy_repo(repo.path(), &project);
    let d = server.deploy(&path, &project).await;
    if d["status"] == "failed" {
        log(t0, &format!("200Gi: deployment failed: {}", d["error"]));
        assert!(d.to_string().to_lowercase().contains("memory"), "the failure does not name memory: {d:#}");
    } else {
        let sent = Instant::now();
        let a = api_get(&server.http(), &server.invoke_url(&project, "Where", "")).await;
        log(t0, &format!("200Gi: invoke answered {} after {:.2}s: {}", a.status, sent.elapsed().as_secs_f64(), a.raw));
        assert_eq!(a.status, 503, "{}", a.raw);
        let code = a.body["error"]["code"].as_str().unwrap_or_default();
        assert!(code.contains("capacity"), "the 503's code does not say it is about capacity: {}", a.raw);
        let msg = a.body["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.to_lowercase().contains("memory"), "the 503 does not name memory: {msg}");
        assert!(sent.elapsed() < Duration::from_secs(10), "no_capacity took {:?}", sent.elapsed());
    }
    server.remove(&project).await;
}
