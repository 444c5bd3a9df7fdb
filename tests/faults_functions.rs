//! Function-level fault tests (issue 10): functions that fail to start, flood their output,
//! hang or exit at once on a schedule, and projects deployed, removed and raced in ways users
//! do not plan. The real `eserveless` binary against the real Docker engine, with
//! `tests/fixtures/faults-fn-app` (each test writes the manifest it needs: every listed function
//! is an image build) and, for Go cron, `tests/fixtures/go-app`.
//!
//! One test per fault; each starts its own server and uses its own project names, and its
//! `Scene` removes whatever a failed test leaves on the engine. Server-level faults (malformed
//! requests, slow clients, signals, full disk, engine restart) are in another file.
//!
//! Without a reachable Docker engine the tests print "skipping: ..." and pass, except when
//! `CI=true`, where they fail. The harness lives in `tests/common/mod.rs`.

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Helpers

/// A git repository with faults-fn-app's code and `manifest` as its `.eserveless.yaml`.
fn faults_repo(manifest: &str) -> tempfile::TempDir {
    let read = |name: &str| std::fs::read_to_string(fixture("faults-fn-app").join(name)).expect("read faults-fn-app");
    repo_with(&[
        ("functions.js", read("functions.js")),
        ("package.json", read("package.json")),
        (".eserveless.yaml", manifest.to_string()),
    ])
}

fn log(t0: Instant, msg: &str) {
    eprintln!("[{:>5.1}s] {msg}", t0.elapsed().as_secs_f64());
}

/// Deploys and expects the deployment to go live; returns it.
async fn deploy_live(server: &Server, repo: &Path, project: &str) -> Value {
    let d = deploy_and_wait(&server.http(), &server.url, repo, project).await;
    assert_eq!(d["status"], "ready", "{project} did not deploy: {d:#}");
    d
}

/// `POST /api/projects` with an optional ref.
async fn submit(server: &Server, repo: &Path, project: &str, git_ref: Option<&str>) -> Answer {
    let mut body = json!({"repository": repo.to_str().expect("utf8 path"), "name": project});
    if let Some(r) = git_ref {
        body["ref"] = json!(r);
    }
    let url = format!("{}/api/projects", server.url);
    answer(server.http().post(&url).json(&body).send().await.expect("POST /api/projects")).await
}

async fn remove_project(server: &Server, project: &str) -> Answer {
    let url = format!("{}/api/projects/{project}", server.url);
    answer(server.http().delete(&url).send().await.unwrap_or_else(|e| panic!("DELETE {url}: {e}"))).await
}

async fn invoke(server: &Server, project: &str, function: &str, query: &str) -> Answer {
    let url = format!("{}/invoke/{project}/{function}{query}", server.url);
    answer(client().get(&url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"))).await
}

/// The kind in `Server-Timing: <kind>;dur=N` (`cold`, `resume` or `warm`).
fn kind(a: &Answer) -> String {
    header(a, "server-timing").split(';').next().unwrap_or("").trim().to_string()
}

/// A 5xx whose body is exactly `{"error": {"code": "...", "message": "..."}}`.
fn assert_json_5xx(a: &Answer, what: &str) {
    assert!((500..600).contains(&a.status), "{what}: expected a 5xx, got {} {}", a.status, a.raw);
    let e = a.body.as_object().filter(|o| o.len() == 1).and_then(|o| o.get("error")).and_then(Value::as_object);
    let ok = e.is_some_and(|e| e.len() == 2 && e.get("code").is_some_and(Value::is_string) && e.get("message").is_some_and(Value::is_string));
    assert!(ok, "{what}: not a JSON error body: {}", a.raw);
}

/// The resident memory of a process, in bytes (`VmRSS` of `/proc/<pid>/status`).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
    kib * 1024
}

/// Waits (at most 30 s) until the engine has written out what the function's one container
/// printed: its log file (Docker's json-file driver, which may rotate it) has stopped growing
/// for half a second. Other log drivers are not waited for.
async fn wait_engine_logged(project: &str, function: &str) {
    let d = docker();
    let containers = function_containers(&d, project, function).await;
    assert_eq!(containers.len(), 1, "{containers:?}");
    let path = d.inspect_container(&containers[0].0, None).await.expect("inspect").log_path.unwrap_or_default();
    let began = Instant::now();
    let (mut last, mut same) = (0, 0);
    while !path.is_empty() && same < 5 {
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        same = if size == last && size > 0 { same + 1 } else { 0 };
        last = size;
        assert!(began.elapsed() < Duration::from_secs(30), "the engine's log of {function} still grew after 30s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every run of a cron function the server keeps (newest first).
async fn runs(server: &Server, project: &str, function: &str) -> Vec<Value> {
    let a = api_get(&server.http(), &format!("{}/api/projects/{project}/functions/{function}/runs?limit=500", server.url)).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    a.body["runs"].as_array().cloned().unwrap_or_default()
}

/// Polls until the function has at least `n` finished runs that were not skipped (at most
/// `within`); returns them oldest first, with every run seen (skipped ones too).
async fn wait_finished_runs(server: &Server, project: &str, function: &str, n: usize, within: Duration) -> (Vec<Value>, Vec<Value>) {
    let began = Instant::now();
    loop {
        let mut all = runs(server, project, function).await;
        all.reverse();
        let done: Vec<Value> = all.iter().filter(|r| r["status"] != "skipped" && !r["finished_at"].is_null()).cloned().collect();
        if done.len() >= n {
            return (done, all);
        }
        assert!(
            began.elapsed() < within,
            "{project}/{function}: {} finished runs after {within:?}, expected {n}: {:#}",
            done.len(),
            Value::Array(all)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn ts(v: &Value, field: &str) -> DateTime<Utc> {
    v[field].as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no timestamp `{field}` in {v:#}"))
}

/// Docker network names (to see that nothing is left behind).
async fn networks() -> BTreeSet<String> {
    let list = docker().list_networks(None::<bollard::query_parameters::ListNetworksOptions>).await.expect("list networks");
    list.into_iter().filter_map(|n| n.name).collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Functions that cannot start

/// Fault: an http function whose `functions.js` throws while loading (`Throws`), and one whose
/// runtime server never binds (`Deaf`: `listen` is a no-op, the process stays up); both pass the
/// build's load check and fail only in their instances. (A `functions.js` that fails the build
/// is `tests/e2e.rs`'s broken-node case.)
/// Proves: each request gets a JSON 5xx within the function's timeout plus a little, far below
/// timeout + start timeout (30 s); repeated requests leave at most one container, and none
/// after the project is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_that_cannot_start_fail_fast_and_pile_nothing_up() {
    require_docker!();
    let Stage { _serial, t0, project, scene: _scene, server, http: _ } = stage("ff-nostart").await;
    let repo = faults_repo(
        "runtime: node\nfunctions:\n  - name: Throws\n    type: http\n    timeout: 3s\n    meta: { fault: throw }\n  \
         - name: Deaf\n    type: http\n    timeout: 3s\n    meta: { fault: never-listen }\n",
    );
    deploy_live(&server, repo.path(), &project).await;
    log(t0, "live");

    for function in ["Throws", "Deaf"] {
        for i in 0..3 {
            let began = Instant::now();
            let a = invoke(&server, &project, function, "").await;
            let took = began.elapsed();
            log(t0, &format!("{function} #{i}: {} after {took:?}: {}", a.status, a.raw));
            assert_json_5xx(&a, function);
            assert!(took < Duration::from_secs(8), "{function} #{i} answered after {took:?} (timeout 3s)");
        }
    }
    let d = docker();
    let left = containers_of(&d, &project).await;
    assert!(left.len() <= 1, "containers piled up after 6 failed starts: {left:?}");

    let a = remove_project(&server, &project).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert_project_gone(&project).await;
}

// ---------------------------------------------------------------------------------------------
// 2. A function that floods its output

/// What one reader of a function's NDJSON log got.
#[derive(Debug, Default)]
struct LogRead {
    lines: u64,
    cut: u64,
    /// Faults seen in the lines (an unparsable line, a line over the cap).
    faults: Vec<String>,
}

/// Reads `url` (NDJSON log lines) until it ends or `stop` is set, checking every line.
async fn read_log(http: reqwest::Client, url: String, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> LogRead {
    use futures_util::StreamExt;
    const CAP: usize = 8 * 1024 + 64;
    let mut got = LogRead::default();
    let resp = http.get(&url).send().await.expect("GET logs");
    if resp.status() != 200 {
        got.faults.push(format!("logs answered {}: {:.300}", resp.status(), resp.text().await.unwrap_or_default()));
        return got;
    }
    let mut body = resp.bytes_stream();
    let mut buf = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        let Ok(next) = tokio::time::timeout(Duration::from_millis(200), body.next()).await else { continue };
        let Some(Ok(chunk)) = next else { break };
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let wire: Vec<u8> = buf.drain(..=nl).collect();
            if wire == b"\n" {
                continue; // a keep-alive
            }
            match serde_json::from_slice::<Value>(&wire) {
                Ok(v) => {
                    let text = v["line"].as_str().unwrap_or_default();
                    got.lines += 1;
                    got.cut += u64::from(text.ends_with("[eserveless: line cut]"));
                    if text.len() > CAP {
                        got.faults.push(format!("a line of {} bytes (over the 8 KiB cap)", text.len()));
                    }
                }
                Err(e) => got.faults.push(format!("a line that is not JSON ({e}): {:.100}", String::from_utf8_lossy(&wire))),
            }
        }
        if buf.len() > 1 << 20 {
            got.faults.push("over 1 MiB without a line end".into());
            break;
        }
    }
    got
}

/// Fault: one request makes a function write 50 MiB to stdout (lines of 64 KiB) while a
/// client follows the function's logs (`follow=true`) and another function is called in a
/// loop; then four clients read the whole log at once.
/// Proves: the other function keeps serving (no failed request); the follower gets lines as
/// they are written (at least what the engine keeps; how many of the 800 is logged), each cut
/// to 8 KiB and marked; each reader gets every line the engine
/// kept, cut and marked likewise; and the server's RSS (sampled every 20 ms) stays below its
/// baseline + 40 MB throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooded_output_is_cut_and_reading_it_keeps_memory_bounded() {
    require_docker!();
    let Stage { _serial, t0, project, scene: _scene, server, http: _ } = stage("ff-flood").await;
    let repo = faults_repo(
        "runtime: node\nfunctions:\n  - name: Loud\n    type: http\n    timeout: 2m\n    pause_after: 10m\n  \
         - name: Sleep\n    type: http\n    pause_after: 10m\n",
    );
    deploy_live(&server, repo.path(), &project).await;
    let sleep_url = format!("{}/invoke/{project}/Sleep", server.url);
    assert_eq!(invoke(&server, &project, "Sleep", "").await.status, 200);
    let load = RequestLoop::start(vec![sleep_url], Duration::from_millis(20));

    const LIMIT: u64 = 40 * 1000 * 1000;
    let pid = server.pid();
    let baseline = rss_bytes(pid);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                peak = peak.max(rss_bytes(pid));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        })
    };
    // Loud's instance runs before the follower starts: it follows from its first look.
    assert_eq!(invoke(&server, &project, "Loud", "?mb=1").await.status, 200);
    let logs_url = format!("{}/api/projects/{project}/functions/Loud/logs", server.url);
    let stop_follow = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let follower = tokio::spawn(read_log(server.http(), format!("{logs_url}?follow=true&tail=0"), stop_follow.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let a = invoke(&server, &project, "Loud", "?mb=50").await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert_eq!(a.body["written"], 50 * 1024 * 1024, "{}", a.raw);
    log(t0, "Loud wrote 50 MiB");
    wait_engine_logged(&project, "Loud").await;
    // The follower catches up with what the engine has, then stops.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_follow.store(true, std::sync::atomic::Ordering::Release);
    let followed = follower.await.expect("the follower");
    log(t0, &format!("the follower got {} lines, {} of them cut", followed.lines, followed.cut));

    let reading = Instant::now();
    let never = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4).map(|_| tokio::spawn(read_log(server.http(), logs_url.clone(), never.clone()))).collect();
    let mut answers = Vec::new();
    for r in readers {
        answers.push(r.await.expect("a logs reader"));
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    let peak = sampler.await.expect("the RSS sampler").max(rss_bytes(pid));
    log(t0, &format!("4 logs reads ({} lines each) in {:?}: RSS baseline {} MB, peak {} MB", answers[0].lines, reading.elapsed(), baseline / 1_000_000, peak / 1_000_000));
    let samples = load.finish().await;
    let failed: Vec<&String> = samples.iter().filter_map(|s| s.result.as_ref().err()).collect();

    // Every failure is reported at once: memory and lines are separate faults.
    let mut faults = Vec::new();
    if !failed.is_empty() {
        faults.push(format!("{} of {} requests to Sleep failed, e.g. {}", failed.len(), samples.len(), failed[0]));
    }
    if peak > baseline + LIMIT {
        faults.push(format!("server RSS rose from {baseline} to {peak} bytes while a follower and 4 readers read the logs (limit +{LIMIT})"));
    }
    // Docker keeps 2 files of 8 MB: about 190 of the 64 KiB lines (with its JSON framing). The
    // follower reads while they are written, but not always all 800: Docker rotates its files
    // away under a reader that is behind (docs/architecture.md, Logs; logged above).
    for (who, r, least) in std::iter::once(("the follower", &followed, 150)).chain(answers.iter().map(|r| ("a reader", r, 150))) {
        faults.extend(r.faults.iter().map(|f| format!("{who}: {f}")));
        // A follower attached late may see the instance's start line, which is short.
        let uncut_allowed = if who == "the follower" { 1 } else { 0 };
        if r.lines < least || r.cut + uncut_allowed < r.lines {
            faults.push(format!("{who} got {} lines, {} cut and marked (expected at least {least}, all cut)", r.lines, r.cut));
        }
    }
    faults.dedup();
    assert!(faults.is_empty(), "{}", faults.join("\n"));

    let a = remove_project(&server, &project).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert_project_gone(&project).await;
}

// ---------------------------------------------------------------------------------------------
// 3. A cron function that hangs

/// Fault: a cron function (every 2 s, `timeout: 2s`) that never finishes.
/// Proves: each run is killed and recorded `timed_out` (with the note in its output); runs
/// never overlap (their [started, finished] intervals are disjoint, and at most one run
/// container exists at any time); a firing during a run is recorded `skipped`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_cron_runs_are_killed_and_never_overlap() {
    require_docker!();
    let Stage { _serial, t0, project, scene: _scene, server, http: _ } = stage("ff-hang").await;
    let repo = faults_repo("runtime: node\nfunctions:\n  - name: Hang\n    type: cron\n    schedule: \"*/2 * * * * *\"\n    timeout: 2s\n");
    deploy_live(&server, repo.path(), &project).await;

    // Watch the engine while three runs go by.
    let d = docker();
    let began = Instant::now();
    let mut most = 0;
    let (done, all) = loop {
        most = most.max(function_containers(&d, &project, "Hang").await.len());
        let mut all = runs(&server, &project, "Hang").await;
        all.reverse();
        let done: Vec<Value> = all.iter().filter(|r| r["status"] != "skipped" && !r["finished_at"].is_null()).cloned().collect();
        if done.len() >= 3 {
            break (done, all);
        }
        assert!(began.elapsed() < Duration::from_secs(60), "3 runs of Hang did not finish within 60s: {:#}", Value::Array(all));
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    log(t0, &format!("{} runs recorded, at most {most} run container(s) at once", all.len()));
    assert!(most <= 1, "{most} run containers of Hang existed at once");
    for r in &done {
        assert_eq!(r["status"], "timed_out", "{r:#}");
        let out = r["output"].as_str().unwrap_or_default();
        assert!(out.contains("HANG started") && out.contains("killed after its timeout of 2s"), "{r:#}");
        let ms = r["duration_ms"].as_i64().unwrap_or(-1);
        assert!((2000..10_000).contains(&ms), "a run of a 2s timeout lasted {ms} ms: {r:#}");
    }
    let started: Vec<&Value> = all.iter().filter(|r| r["status"] != "skipped").collect();
    for pair in started.windows(2) {
        let finished = pair[0]["finished_at"].as_str().map(|_| ts(pair[0], "finished_at"));
        assert!(
            finished.is_some_and(|f| f <= ts(pair[1], "started_at")),
            "runs overlap: {:#} and {:#}",
            pair[0],
            pair[1]
        );
    }
    let skipped_inside_a_run = all.iter().filter(|r| r["status"] == "skipped").any(|s| {
        let at = ts(s, "scheduled_at");
        done.iter().any(|r| ts(r, "started_at") <= at && at <= ts(r, "finished_at"))
    });
    assert!(skipped_inside_a_run, "no firing during a run was recorded skipped: {:#}", Value::Array(all));

    let a = remove_project(&server, &project).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert_project_gone(&project).await;
}

// ---------------------------------------------------------------------------------------------
// 4. Cron functions that exit at once

/// Fault: cron functions that return at once (Go `func Ticker(envs map[string]string)` and a
/// node `Tick`, each printing one line), every 2 s, while an http function serves a loop.
/// A container that has exited before the server looks at it has no address any more.
/// Proves: the first 5 runs of each succeed with exit code 0 and their line in the output, and
/// the loop sees no failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_cron_runs_succeed_with_their_output() {
    require_docker!();
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let (go, node) = (unique("ff-tick-go"), unique("ff-tick-node"));
    let scene = Scene::new(&[&go, &node]).await;
    let server = Server::start(&scene.data, &scene.images).await;
    // go-app's code (its Ticker prints `TICK <envs>`), with only Ticker listed: one Go build.
    let go_repo = {
        let read = |name: &str| std::fs::read_to_string(fixture("go-app").join(name)).expect("read go-app");
        let manifest = "runtime: golang\nfunctions:\n  - name: Ticker\n    type: cron\n    schedule: \"*/2 * * * * *\"\n    meta: { target: world }\n";
        repo_with(&[("functions.go", read("functions.go")), ("go.mod", read("go.mod")), (".eserveless.yaml", manifest.into())])
    };
    let node_repo = faults_repo(
        "runtime: node\nfunctions:\n  - name: Tick\n    type: cron\n    schedule: \"*/2 * * * * *\"\n    meta: { target: world }\n  \
         - name: Sleep\n    type: http\n    pause_after: 10m\n",
    );
    // Both builds at once: the Go one takes minutes here.
    let (g, n) = tokio::join!(deploy_live(&server, go_repo.path(), &go), deploy_live(&server, node_repo.path(), &node));
    log(t0, &format!("live: {} and {}", g["id"], n["id"]));

    let load = RequestLoop::start(vec![format!("{}/invoke/{node}/Sleep", server.url)], Duration::from_millis(20));
    for (project, function) in [(&go, "Ticker"), (&node, "Tick")] {
        let (done, _) = wait_finished_runs(&server, project, function, 5, Duration::from_secs(60)).await;
        let checked = &done[..5];
        for r in checked {
            assert_eq!((&r["status"], &r["exit_code"]), (&json!("succeeded"), &json!(0)), "{project}/{function}: {r:#}");
            let out = r["output"].as_str().unwrap_or_default();
            assert!(out.contains("TICK") && out.contains(r#""ESERVELESS_TARGET":"world""#), "{project}/{function} output: {r:#}");
        }
        log(t0, &format!("{project}/{function}: {} runs succeeded", checked.len()));
    }
    let samples = load.finish().await;
    let failed: Vec<&String> = samples.iter().filter_map(|s| s.result.as_ref().err()).collect();
    assert!(failed.is_empty(), "{} of {} requests failed beside the cron runs: {failed:?}", failed.len(), samples.len());

    for p in [&go, &node] {
        let a = remove_project(&server, p).await;
        assert_eq!(a.status, 200, "{}", a.raw);
        assert_project_gone(p).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Racing deploys

/// Fault: two first deploys of one project at the same time; then two different commits
/// deployed at the same time while its function is called in a loop.
/// Proves: both first deploys are accepted and neither carries an invoke key (the project has
/// no private function; the store's test races the key's issue); the project ends with
/// one deployment live; in the second race the loop sees no failure, exactly one of the two
/// deployments is live, its commit serves, and after draining only containers of the live
/// revision (label `eserveless.revision`) remain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_deploys_leave_one_live_revision() {
    require_docker!();
    let Stage { _serial, t0, project, scene: _scene, server, http } = stage("ff-race").await;
    let repo = faults_repo("runtime: node\nfunctions:\n  - name: Sleep\n    type: http\n");

    // --- two first deploys
    let (a, b) = tokio::join!(submit(&server, repo.path(), &project, None), submit(&server, repo.path(), &project, None));
    for x in [&a, &b] {
        assert_eq!(x.status, 202, "{}", x.raw);
    }
    // No private function: no key (which of two racing requests issues it is a store test).
    let keys = [&a, &b].iter().filter(|x| x.body["invoke_key"].is_string()).count();
    assert_eq!(keys, 0, "an invoke key for a project without private functions:\n{}\n{}", a.raw, b.raw);
    for x in [&a, &b] {
        let id = x.body["deployment"].as_i64().expect("deployment id");
        let d = wait_deployment(&http, &server.url, &project, id).await;
        assert!(d["status"] == "ready" || d["status"] == "failed", "{d:#}");
    }
    let p = api_get(&http, &format!("{}/api/projects/{project}", server.url)).await;
    assert_eq!(p.body["live"]["commit"], git(repo.path(), &["rev-parse", "HEAD"]).as_str(), "{:#}", p.body);
    let v = invoke(&server, &project, "Sleep", "").await;
    assert_eq!((v.status, &v.body["version"]), (200, &json!("v1")), "{}", v.raw);
    log(t0, "first-deploy race settled: v1 live");

    // --- two new commits at once, under load
    let js = repo.path().join("functions.js");
    let v1_text = std::fs::read_to_string(&js).expect("read functions.js");
    let mut commits = Vec::new();
    for v in ["v2", "v3"] {
        git(repo.path(), &["checkout", "-q", "-b", v, "main"]);
        std::fs::write(&js, v1_text.replace(r#"const VERSION = "v1";"#, &format!(r#"const VERSION = "{v}";"#))).expect("write");
        commits.push(commit_all(repo.path(), v));
    }
    let load = RequestLoop::start(vec![format!("{}/invoke/{project}/Sleep", server.url); 2], Duration::from_millis(10));
    let (a, b) = tokio::join!(submit(&server, repo.path(), &project, Some("v2")), submit(&server, repo.path(), &project, Some("v3")));
    let mut ids = Vec::new();
    for x in [&a, &b] {
        assert_eq!(x.status, 202, "{}", x.raw);
        ids.push(x.body["deployment"].as_i64().expect("deployment id"));
    }
    for id in &ids {
        let d = wait_deployment(&http, &server.url, &project, *id).await;
        assert_eq!(d["status"], "ready", "{d:#}");
    }
    // Read again once both are final: the first to finish was live for a while.
    let mut live = Vec::new();
    for id in &ids {
        let d = api_get(&http, &format!("{}/api/projects/{project}/deployments/{id}", server.url)).await;
        if d.body["live"] == true {
            live.push((*id, d.body["commit"].as_str().unwrap_or_default().to_string()));
        }
    }
    assert_eq!(live.len(), 1, "deployments {ids:?}: live ones {live:?}");
    let (live_id, live_commit) = live.remove(0);
    let p = api_get(&http, &format!("{}/api/projects/{project}", server.url)).await;
    assert_eq!(p.body["live"]["commit"], live_commit.as_str(), "{:#}", p.body);
    let want = if live_commit == commits[0] { "v2" } else { "v3" };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let samples = load.finish().await;
    let failed: Vec<&String> = samples.iter().filter_map(|s| s.result.as_ref().err()).collect();
    assert!(failed.is_empty(), "{} of {} requests failed during the racing deploys: {failed:?}", failed.len(), samples.len());
    let last = samples.iter().max_by_key(|s| s.sent).and_then(|s| s.field("version"));
    assert_eq!(last.as_deref(), Some(want), "the last request was not served by the live commit");
    log(t0, &format!("second race: deployment {live_id} ({want}) live, {} requests, none failed", samples.len()));

    let d = docker();
    let began = Instant::now();
    loop {
        let all = function_containers(&d, &project, "Sleep").await;
        let live_ones = containers_with(&d, &[format!("eserveless.project={project}"), format!("eserveless.revision={live_id}")]).await;
        if all.len() == live_ones.len() {
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(30), "containers of other revisions than {live_id} remain: {all:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let a = remove_project(&server, &project).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert_project_gone(&project).await;
}

// ---------------------------------------------------------------------------------------------
// 6. Deploy, invoke, remove; again; and remove during a build

/// Fault: three deploy → invoke → rm cycles of one project name, the second one removed while
/// its deployment is `building` (the engine building its function's image).
/// Proves: after each rm no container, image or network of it is left (and none appears later,
/// from a build that was still going); the removed building deployment is gone (404) or
/// failed; the next deploy of the same name goes live and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_invoke_rm_cycles_leave_nothing() {
    require_docker!();
    let Stage { _serial, t0, project, scene: _scene, server, http } = stage("ff-cycle").await;
    let repo = faults_repo("runtime: node\nfunctions:\n  - name: Sleep\n    type: http\n");
    let nets = networks().await;

    for cycle in 0..3 {
        let a = submit(&server, repo.path(), &project, None).await;
        assert_eq!(a.status, 202, "cycle {cycle}: {}", a.raw);
        let id = a.body["deployment"].as_i64().expect("deployment id");
        let url = format!("{}/api/projects/{project}/deployments/{id}", server.url);
        if cycle == 1 {
            // Removed while the engine builds the function's image.
            let began = Instant::now();
            loop {
                let d = api_get(&http, &url).await.body;
                if d["status"] == "building" && d["functions"].as_array().into_iter().flatten().any(|f| f["build_state"] == "building") {
                    break;
                }
                assert!(began.elapsed() < Duration::from_secs(60), "deployment {id} never was building an image: {d:#}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let a = remove_project(&server, &project).await;
            assert_eq!(a.status, 200, "rm during the build: {}", a.raw);
            let d = api_get(&http, &url).await;
            assert!(d.status == 404 || d.body["status"] == "failed", "the removed building deployment: {}", d.raw);
        } else {
            deploy_live_id(&server, &project, id).await;
            let v = invoke(&server, &project, "Sleep", "").await;
            assert_eq!(v.status, 200, "cycle {cycle}: {}", v.raw);
            let a = remove_project(&server, &project).await;
            assert_eq!(a.status, 200, "{}", a.raw);
        }
        assert_project_gone(&project).await;
        let images = images_of(&docker(), &project).await;
        assert!(images.is_empty(), "cycle {cycle}: images of {project} appeared after its removal: {images:?}");
        assert_eq!(networks().await, nets, "cycle {cycle}: networks changed");
        log(t0, &format!("cycle {cycle}: nothing left"));
    }
}

async fn deploy_live_id(server: &Server, project: &str, id: i64) {
    let d = wait_deployment(&server.http(), &server.url, project, id).await;
    assert_eq!(d["status"], "ready", "{d:#}");
}

// ---------------------------------------------------------------------------------------------
// 7. Remove with a request in flight

/// Fault: the project is removed while a request (a 2 s sleep; timeout 30 s) is in flight.
/// Proves: that request ends promptly (any status; not at the timeout), the containers are
/// gone, and later invokes get 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_with_a_request_in_flight_ends_it() {
    require_docker!();
    let Stage { _serial, t0, project, scene: _scene, server, http: _ } = stage("ff-rmflight").await;
    let repo = faults_repo("runtime: node\nfunctions:\n  - name: Sleep\n    type: http\n    timeout: 30s\n");
    deploy_live(&server, repo.path(), &project).await;
    assert_eq!(invoke(&server, &project, "Sleep", "").await.status, 200, "warm-up");

    let url = format!("{}/invoke/{project}/Sleep?ms=2000", server.url);
    let began = Instant::now();
    let in_flight = tokio::spawn(async move { client().get(&url).send().await.map(|r| r.status().as_u16()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let a = remove_project(&server, &project).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    let ended = tokio::time::timeout(Duration::from_secs(10), in_flight).await;
    let took = began.elapsed();
    log(t0, &format!("in-flight request ended after {took:?}: {ended:?}"));
    assert!(ended.is_ok() && took < Duration::from_secs(6), "the in-flight request did not end promptly ({took:?})");
    wait_containers_gone(&docker(), &project, "after rm with a request in flight").await;
    let a = invoke(&server, &project, "Sleep", "").await;
    assert_error(&a, 404, "function_not_found");
    assert_project_gone(&project).await;
}

// ---------------------------------------------------------------------------------------------
// 8. A burst at a paused function

/// Fault: four simultaneous requests reach a function whose only instance is paused
/// (`concurrency: 16`, `pause_after: 1s`).
/// Proves: they are all served by that instance, resumed: exactly one container exists
/// afterwards, and no answer's `Server-Timing` says `cold` (at least one says `resume`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_at_a_paused_function_resumes_its_instance() {
    require_docker!();
    let Stage { _serial, t0, project, scene: _scene, server, http: _ } = stage("ff-burst").await;
    let repo = faults_repo("runtime: node\nfunctions:\n  - name: Sleep\n    type: http\n    concurrency: 16\n    pause_after: 1s\n    idle_timeout: 10m\n");
    deploy_live(&server, repo.path(), &project).await;
    let warm = invoke(&server, &project, "Sleep", "").await;
    assert_eq!(warm.status, 200, "{}", warm.raw);

    let began = Instant::now();
    loop {
        let p = api_get(&server.http(), &format!("{}/api/projects/{project}", server.url)).await;
        if p.body["functions"][0]["instances"]["paused"] == 1 {
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(20), "the instance was not paused: {:#}", p.body["functions"]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    log(t0, "instance paused");

    let burst: Vec<_> = (0..4).map(|_| invoke(&server, &project, "Sleep", "?ms=200")).collect();
    let answers = futures_util::future::join_all(burst).await;
    let kinds: Vec<String> = answers.iter().map(kind).collect();
    let hosts: BTreeSet<String> = answers.iter().map(|a| a.body["host"].as_str().unwrap_or("").to_string()).collect();
    log(t0, &format!("burst: {kinds:?} from {hosts:?}"));
    for a in &answers {
        assert_eq!(a.status, 200, "{}", a.raw);
    }
    let containers = function_containers(&docker(), &project, "Sleep").await;
    assert!(
        containers.len() == 1 && !kinds.iter().any(|k| k == "cold") && kinds.iter().any(|k| k == "resume"),
        "a burst at a paused instance: Server-Timing {kinds:?}, served by {hosts:?}, containers {containers:?}"
    );

    let a = remove_project(&server, &project).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert_project_gone(&project).await;
}
