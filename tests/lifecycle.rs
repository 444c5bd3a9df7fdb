//! Instance lifecycle tests ("Instances that scale"): the real `eserveless` binary against the
//! real Docker engine, with `tests/fixtures/lifecycle-app` (one node handler answering
//! `{"version", "host", "pid"}` after `?sleep=<ms>`; `host` is the serving container's id
//! prefix; and `Stream`, for request and answer bodies through the gateway).
//!
//! One test per behaviour; each starts its own server (own data directory, port and server
//! args) and makes one deployment (two for the redeploy test), and removes its project at the
//! end. Assertions are on real values: container ids, Docker state, `Server-Timing` kinds,
//! status codes and error codes. Timings are only ever bounded generously: the machine is small
//! and shared.
//!
//! Without a reachable Docker engine the tests print "skipping: ..." and pass, except when
//! `CI=true`, where they fail. The harness lives in `tests/common/mod.rs`.

#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bollard::query_parameters::KillContainerOptions;
use bollard::Docker;
use common::*;

// ---------------------------------------------------------------------------------------------
// Test context: one server, one deployment of lifecycle-app

struct Ctx {
    // Dropped in this order: the server is killed before the cleanup removes what is left.
    live: Deployed,
    _cleanup: Cleanup,
    data: PathBuf,
    images: Vec<(&'static str, String)>,
    _data_root: tempfile::TempDir,
}

deref_to_deployed!(Ctx, live);

impl Ctx {
    /// Starts a server with `args` and deploys lifecycle-app as a fresh project; waits until live.
    async fn deploy(prefix: &str, args: &[&str]) -> Ctx {
        let t0 = Instant::now();
        let images = image_env().await;
        let data_root = tempfile::tempdir().expect("data");
        let data = data_root.path().join("data");
        let project = unique(prefix);
        let cleanup = Cleanup { projects: vec![project.clone()] };
        let server = Server::start_with_args(&data, &images, args).await;
        let live = Deployed::deploy(server, args, fixture_repo("lifecycle-app"), project, "lifecycle-app", t0).await;
        let ctx = Ctx { live, _cleanup: cleanup, data, images, _data_root: data_root };
        ctx.log(&format!("{} live (deployment {})", ctx.project, ctx.deployment));
        ctx
    }

    /// Invokes and expects 200 with the fixture's JSON; returns the answer.
    async fn invoke_ok(&self, function: &str, query: &str) -> Answer {
        let a = self.invoke(function, query).await;
        assert_eq!(a.status, 200, "{function}{query}: {}", a.raw);
        assert!(!host(&a).is_empty(), "{function}{query}: no `host` in {}", a.raw);
        a
    }

    /// Kills the server (SIGKILL) and starts a new one on the same data directory.
    async fn restart(&mut self) {
        self.live.restart(&self.data, &self.images).await;
    }
}

/// The kind in `Server-Timing: <kind>;dur=N` (`cold`, `resume` or `warm`).
fn kind(a: &Answer) -> String {
    header(a, "server-timing").split(';').next().unwrap_or("").trim().to_string()
}

/// The container that served the request (its 12-character id prefix).
fn host(a: &Answer) -> String {
    a.body["host"].as_str().unwrap_or("").to_string()
}

/// `(running, paused)` from `docker inspect`, or `None` when the container does not exist.
async fn docker_state(d: &Docker, id: &str) -> Option<(bool, bool)> {
    match d.inspect_container(id, None).await {
        Ok(c) => {
            let s = c.state.unwrap_or_default();
            Some((s.running.unwrap_or(false), s.paused.unwrap_or(false)))
        }
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => None,
        Err(e) => panic!("inspect container {id}: {e}"),
    }
}

/// The full id of the function's container whose id starts with `host`.
async fn container_of_host(d: &Docker, project: &str, function: &str, host: &str) -> String {
    let all = function_containers(d, project, function).await;
    all.iter()
        .find(|(id, _)| !host.is_empty() && id.starts_with(host))
        .map(|(id, _)| id.clone())
        .unwrap_or_else(|| panic!("no container of {project}/{function} has an id starting with `{host}`; containers: {all:?}"))
}

/// Containers (any state) of one revision of a function: `(id, state)`.
async fn revision_containers(d: &Docker, project: &str, function: &str, revision: i64) -> Vec<(String, String)> {
    containers_with(
        d,
        &[
            format!("eserveless.project={project}"),
            format!("eserveless.function={function}"),
            format!("eserveless.revision={revision}"),
        ],
    )
    .await
}

/// Polls the container until `docker inspect` says `want` (`(running, paused)`); at most `within`.
async fn wait_docker_state(d: &Docker, id: &str, want: (bool, bool), within: Duration, what: &str) {
    let began = Instant::now();
    loop {
        let state = docker_state(d, id).await;
        if state == Some(want) {
            return;
        }
        assert!(began.elapsed() < within, "{what}: container {id} is {state:?} (running, paused) after {within:?}, expected {want:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The checks (each one behaviour)

/// Two sequential requests: the second reuses the first one's instance.
async fn check_instances_are_reused(ctx: &Ctx) {
    let a = ctx.invoke_ok("Reuse", "").await;
    assert_eq!(kind(&a), "cold", "first request to Reuse: Server-Timing {:?}", header(&a, "server-timing"));
    assert_eq!(a.body["version"], "v1", "{}", a.raw);
    let first = host(&a);
    let b = ctx.invoke_ok("Reuse", "").await;
    assert_eq!(kind(&b), "warm", "second request to Reuse: Server-Timing {:?}", header(&b, "server-timing"));
    assert_eq!(host(&b), first, "the second request was served by another instance: {} then {}", a.raw, b.raw);
    let running: Vec<_> = function_containers(&ctx.docker, &ctx.project, "Reuse")
        .await
        .into_iter()
        .filter(|(_, state)| state == "running")
        .collect();
    assert_eq!(running.len(), 1, "exactly one running container of Reuse expected: {running:?}");
    assert!(running[0].0.starts_with(&first), "the running container {running:?} is not the one that answered ({first})");
}

/// An idle instance is paused (cgroup freezer); the next request resumes it.
async fn check_pause_then_resume(ctx: &Ctx) {
    let a = ctx.invoke_ok("Pauser", "").await;
    assert_eq!(kind(&a), "cold", "first request to Pauser: {:?}", header(&a, "server-timing"));
    let h = host(&a);
    let id = container_of_host(&ctx.docker, &ctx.project, "Pauser", &h).await;
    wait_docker_state(&ctx.docker, &id, (true, true), Duration::from_secs(30), "Pauser (pause_after 1s) idle").await;
    ctx.log("Pauser's instance is paused");

    // The resuming request sleeps in the function, so the instance is busy (and cannot be
    // paused again) while Docker's view of it is checked.
    let url = ctx.url("Pauser", "?sleep=3000");
    let http = ctx.http.clone();
    let request = tokio::spawn(async move { answer(http.get(&url).send().await.expect("GET Pauser")).await });
    let began = Instant::now();
    let mut seen = None;
    while !request.is_finished() && began.elapsed() < Duration::from_secs(30) {
        seen = docker_state(&ctx.docker, &id).await;
        if seen == Some((true, false)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, Some((true, false)), "while the resuming request ran, container {id} was not running-and-unpaused (running, paused)");
    let b = request.await.expect("the resuming request");
    assert_eq!(b.status, 200, "request to a paused Pauser: {}", b.raw);
    assert_eq!(host(&b), h, "the paused instance was replaced instead of resumed: {}", b.raw);
    assert_eq!(kind(&b), "resume", "request to a paused Pauser: Server-Timing {:?}", header(&b, "server-timing"));
    // Idle again: paused again.
    wait_docker_state(&ctx.docker, &id, (true, true), Duration::from_secs(30), "Pauser idle after the resume").await;
}

/// An instance idle longer than `idle_timeout` is removed; the next request starts a new one.
async fn check_removed_after_idle_timeout(ctx: &Ctx) {
    let a = ctx.invoke_ok("Idler", "").await;
    assert_eq!(kind(&a), "cold", "first request to Idler: {:?}", header(&a, "server-timing"));
    let h = host(&a);
    let began = Instant::now();
    loop {
        let left = function_containers(&ctx.docker, &ctx.project, "Idler").await;
        if left.is_empty() {
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(30), "Idler (idle_timeout 3s) still has containers after 30s: {left:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ctx.log(&format!("Idler's instance removed after {:.1}s idle", began.elapsed().as_secs_f64()));
    let b = ctx.invoke_ok("Idler", "").await;
    assert_eq!(kind(&b), "cold", "request after the idle removal: {:?}", header(&b, "server-timing"));
    assert_ne!(host(&b), h, "the removed instance answered again: {}", b.raw);
}

/// `min_instances: 1` starts an instance without traffic and keeps it warm past `idle_timeout`.
async fn check_min_instances_kept_warm(ctx: &Ctx) {
    let began = Instant::now();
    let id = loop {
        let running: Vec<_> =
            function_containers(&ctx.docker, &ctx.project, "Warm").await.into_iter().filter(|(_, s)| s == "running").collect();
        if let Some((id, _)) = running.first() {
            break id.clone();
        }
        assert!(began.elapsed() < Duration::from_secs(30), "no running container of Warm (min_instances 1) within 30s of the deployment");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    ctx.log("Warm has an instance without any request");
    // Past pause_after (1s) and idle_timeout (2s): still the same container, running, not paused.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(6) {
        let all = function_containers(&ctx.docker, &ctx.project, "Warm").await;
        assert!(
            all.iter().any(|(c, s)| c == &id && s == "running"),
            "Warm's kept instance {id} is no longer running after {:.1}s: {all:?}",
            watch.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(docker_state(&ctx.docker, &id).await, Some((true, false)), "Warm's kept instance {id} (running, paused)");
    let a = ctx.invoke_ok("Warm", "").await;
    assert_eq!(kind(&a), "warm", "request to Warm: Server-Timing {:?}", header(&a, "server-timing"));
    assert!(id.starts_with(&host(&a)), "Warm was served by {} instead of the kept instance {id}", host(&a));
}

/// Simultaneous requests scale out to `max_instances` (3) and no further.
async fn check_burst_scales_to_max_and_no_further(ctx: &Ctx) {
    let mut requests = Vec::new();
    for _ in 0..7 {
        let url = ctx.url("Burst", "?sleep=1500");
        let http = ctx.http.clone();
        requests.push(tokio::spawn(async move { answer(http.get(&url).send().await.expect("GET Burst")).await }));
    }
    let mut most = 0;
    let mut seen = BTreeSet::new();
    while requests.iter().any(|r| !r.is_finished()) {
        let all = function_containers(&ctx.docker, &ctx.project, "Burst").await;
        most = most.max(all.len());
        seen.extend(all.iter().map(|(id, _)| id.clone()));
        assert!(all.len() <= 3, "Burst (max_instances 3) has {} containers during the burst: {all:?}", all.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut hosts = BTreeMap::new();
    for r in requests {
        let a = r.await.expect("a burst request");
        assert_eq!(a.status, 200, "a burst request: {}", a.raw);
        *hosts.entry(host(&a)).or_insert(0) += 1;
    }
    ctx.log(&format!("burst served by {hosts:?}; at most {most} containers at once, {} seen", seen.len()));
    assert!(hosts.len() <= 3, "7 requests served by more than max_instances (3) instances: {hosts:?}");
    assert!(hosts.len() >= 2, "7 simultaneous requests with concurrency 1 did not scale out: {hosts:?}");
    let all = function_containers(&ctx.docker, &ctx.project, "Burst").await;
    assert!(all.len() <= 3, "Burst has {} containers after the burst: {all:?}", all.len());
}

/// With every instance busy: one request waits (503 `no_capacity` at the queue timeout), the
/// next one finds the queue full (429 `queue_full`, with Retry-After).
async fn check_queue_full_gets_429_and_deadline_gets_503(ctx: &Ctx) {
    let a = ctx.invoke_ok("Queue", "").await;
    ctx.log(&format!("Queue warmed ({})", kind(&a)));
    let mut requests = Vec::new();
    for n in 0..3 {
        if n > 0 {
            // Staggered, so the expected order is: runs, waits in the queue (503), refused (429).
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let url = ctx.url("Queue", "?sleep=3000");
        let http = ctx.http.clone();
        requests.push(tokio::spawn(async move {
            let began = Instant::now();
            let a = answer(http.get(&url).send().await.expect("GET Queue")).await;
            (a, began.elapsed())
        }));
    }
    let mut answers = Vec::new();
    for r in requests {
        answers.push(r.await.expect("a Queue request"));
    }
    let summary: Vec<String> =
        answers.iter().map(|(a, took)| format!("{} after {:.2}s: {}", a.status, took.as_secs_f64(), a.raw)).collect();
    ctx.log(&format!("Queue answers, in sending order:\n  {}", summary.join("\n  ")));
    let ok: Vec<_> = answers.iter().filter(|(a, _)| a.status == 200).collect();
    assert_eq!(ok.len(), 1, "exactly one request should be served (concurrency 1, max_instances 1): {summary:#?}");
    let full: Vec<_> = answers.iter().filter(|(a, _)| a.status == 429).collect();
    let deadline: Vec<_> = answers.iter().filter(|(a, _)| a.status == 503).collect();
    assert_eq!(ok.len() + full.len() + deadline.len(), 3, "only 200, 429 and 503 are expected: {summary:#?}");
    assert!(!full.is_empty(), "no request got 429 with queue depth 1: {summary:#?}");
    assert!(!deadline.is_empty(), "no request got 503 after the 1s queue timeout: {summary:#?}");
    for (a, _) in &full {
        assert_error(a, 429, "queue_full");
        assert!(!header(a, "retry-after").is_empty(), "429 without Retry-After: {:?}", a.headers);
    }
    for (a, took) in &deadline {
        assert_error(a, 503, "no_capacity");
        assert!(*took >= Duration::from_millis(900), "503 after {took:?}: before the 1s queue timeout");
        assert!(*took < Duration::from_secs(15), "503 after {took:?}: far past the 1s queue timeout");
    }
}

/// A container killed behind the platform's back is evicted and replaced.
async fn check_killed_container_is_replaced(ctx: &Ctx) {
    // Round 1: kill, then request at once. The request may race the engine's `die` event and
    // reach the dead container: one 502 is allowed, the retry must be served by a new instance.
    let a = ctx.invoke_ok("Reuse", "").await;
    let h1 = host(&a);
    let id1 = container_of_host(&ctx.docker, &ctx.project, "Reuse", &h1).await;
    ctx.docker.kill_container(&id1, None::<KillContainerOptions>).await.unwrap_or_else(|e| panic!("kill {id1}: {e}"));
    ctx.log(&format!("killed Reuse's container {h1}; requesting at once"));
    let mut answers = Vec::new();
    let b = loop {
        let b = ctx.invoke("Reuse", "").await;
        answers.push(format!("{} {} ({})", b.status, b.raw, header(&b, "server-timing")));
        if b.status == 502 && answers.len() < 2 {
            continue;
        }
        break b;
    };
    ctx.log(&format!("answers after the kill: {answers:?}"));
    assert_eq!(b.status, 200, "requests right after the kill (at most one 502 allowed): {answers:#?}");
    assert_ne!(host(&b), h1, "the killed container answered: {answers:#?}");
    wait_gone(&ctx.docker, &id1, "the killed container").await;

    // Round 2: kill, and no request until the engine no longer has the container: only the
    // Docker event stream can have evicted it. Then the first request is served, by a new instance.
    let h2 = host(&b);
    let id2 = container_of_host(&ctx.docker, &ctx.project, "Reuse", &h2).await;
    ctx.docker.kill_container(&id2, None::<KillContainerOptions>).await.unwrap_or_else(|e| panic!("kill {id2}: {e}"));
    ctx.log(&format!("killed Reuse's container {h2}; waiting for the platform to remove it, without requests"));
    wait_gone(&ctx.docker, &id2, "a killed idle container (evicted through the Docker event stream)").await;
    let c = ctx.invoke("Reuse", "").await;
    assert_eq!(c.status, 200, "the first request after the platform removed the killed container: {}", c.raw);
    assert_ne!(host(&c), h2, "the killed container answered: {}", c.raw);
    assert_eq!(kind(&c), "cold", "the replacement of a killed instance: Server-Timing {:?}", header(&c, "server-timing"));
}

/// Polls until the container no longer exists on the engine (at most 30 s).
async fn wait_gone(d: &Docker, id: &str, what: &str) {
    let began = Instant::now();
    while let Some(state) = docker_state(d, id).await {
        assert!(began.elapsed() < Duration::from_secs(30), "{what} {id} is still on the engine after 30s: {state:?} (running, paused)");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// After a server crash, the next server adopts the running instance instead of replacing it.
async fn check_instances_adopted_after_restart(ctx: &mut Ctx) {
    let a = ctx.invoke_ok("Reuse", "").await;
    assert_eq!(kind(&a), "cold", "first request to Reuse: {:?}", header(&a, "server-timing"));
    let h = host(&a);
    ctx.restart().await;
    let b = ctx.invoke_ok("Reuse", "").await;
    assert_eq!(kind(&b), "warm", "first request after the restart: Server-Timing {:?}", header(&b, "server-timing"));
    assert_eq!(host(&b), h, "the instance was replaced, not adopted: {} before, {} after", a.raw, b.raw);
    let all = function_containers(&ctx.docker, &ctx.project, "Reuse").await;
    assert_eq!(all.len(), 1, "one container of Reuse expected after the restart: {all:?}");
}

/// An instance started under another configuration (here: the operator lowered the default
/// memory while the server was down; a secret changed meanwhile is the same case) is not
/// adopted by the next server: it is replaced, and the new one runs with the new limits.
async fn check_changed_config_is_replaced_not_adopted(ctx: &mut Ctx) {
    let a = ctx.invoke_ok("Reuse", "").await;
    let old = container_of_host(&ctx.docker, &ctx.project, "Reuse", &host(&a)).await;
    ctx.args.extend(["--default-memory".to_string(), "128Mi".to_string()]);
    ctx.restart().await;
    let b = ctx.invoke_ok("Reuse", "").await;
    assert_eq!(kind(&b), "cold", "the first request after the restart should start a new instance: {}", b.raw);
    assert_ne!(host(&b), host(&a), "the instance started with 256Mi was adopted although the limit is now 128Mi");
    wait_gone(&ctx.docker, &old, "the instance with the old configuration").await;
    let new = container_of_host(&ctx.docker, &ctx.project, "Reuse", &host(&b)).await;
    let memory = ctx.docker.inspect_container(&new, None).await.expect("inspect").host_config.and_then(|h| h.memory);
    assert_eq!(memory, Some(128 << 20), "the replacement runs with the new default memory");
    ctx.log(&format!("restart with --default-memory 128Mi: {} replaced by {}", &old[..12], host(&b)));
}

/// Steady load on Reuse: two workers send quick requests (volume) and two send requests that
/// take 300 ms in the function, so requests are in flight on the old instance when the route
/// switches (it must drain, not be removed under them).
struct Load(RequestLoop);

impl Load {
    fn start(ctx: &Ctx) -> Load {
        let urls = (0..4).map(|n| ctx.url("Reuse", if n < 2 { "" } else { "?sleep=300" })).collect();
        Load(RequestLoop::start(urls, Duration::ZERO))
    }

    /// Stops the load; asserts that not one request failed and enough were made.
    async fn finish(self, ctx: &Ctx, what: &str) -> Vec<Sample> {
        let samples = self.0.finish().await;
        let failures: Vec<&String> = samples.iter().filter_map(|s| s.result.as_ref().err()).collect();
        ctx.log(&format!("{} requests under load during {what}; {} failed", samples.len(), failures.len()));
        assert!(
            failures.is_empty(),
            "{} of {} requests failed during {what}: {:#?}",
            failures.len(),
            samples.len(),
            &failures[..failures.len().min(10)]
        );
        assert!(samples.len() > 50, "only {} requests were made under load", samples.len());
        samples
    }
}

/// A new commit goes live while requests keep flowing: none of them fails.
async fn check_redeploy_under_load_has_zero_failures(ctx: &Ctx) {
    let a = ctx.invoke_ok("Reuse", "").await;
    assert_eq!(a.body["version"], "v1", "{}", a.raw);
    let v1 = ctx.deployment;
    let load = Load::start(ctx);

    let js = ctx.repo.path().join("functions.js");
    let text = std::fs::read_to_string(&js).expect("read functions.js");
    assert!(text.contains("const VERSION = \"v1\";"), "the fixture changed: {text}");
    std::fs::write(&js, text.replace("const VERSION = \"v1\";", "const VERSION = \"v2\";")).expect("write functions.js");
    let v2_commit = commit_all(ctx.repo.path(), "v2");
    let d = deploy_and_wait(&ctx.http, &ctx.server.url, ctx.repo.path(), &ctx.project).await;
    let live_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let samples = load.finish(ctx, "the redeploy").await;
    assert_eq!(d["status"], "ready", "v2 did not deploy: {d:#}");
    assert_eq!(d["commit"], v2_commit.as_str());
    let v2 = d["id"].as_i64().expect("v2 deployment id");

    let mut by_version: BTreeMap<String, usize> = BTreeMap::new();
    for v in samples.iter().filter_map(|s| s.field("version")) {
        *by_version.entry(v).or_default() += 1;
    }
    ctx.log(&format!("by version {by_version:?}"));
    let after: Vec<&Sample> = samples.iter().filter(|s| s.sent >= live_at).collect();
    assert!(!after.is_empty(), "no request was sent after v2 went live");
    let stale: Vec<String> = after
        .iter()
        .filter(|s| s.field("version").as_deref() != Some("v2"))
        .map(|s| format!("{:?} from {:?}", s.field("version"), s.field("host")))
        .collect();
    assert!(stale.is_empty(), "requests sent after v2 was live got: {stale:?}");

    let began = Instant::now();
    loop {
        let left = revision_containers(&ctx.docker, &ctx.project, "Reuse", v1).await;
        if left.is_empty() {
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(30), "v1's containers of Reuse are still there 30s after the switch: {left:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let v2_running = revision_containers(&ctx.docker, &ctx.project, "Reuse", v2).await;
    assert!(!v2_running.is_empty(), "no container of v2's Reuse after the switch");
}

/// A changed secret reaches the function within seconds, under load, with no failed request;
/// the old instances drain and go. The value never shows in the API or the server log.
async fn check_secret_change_recycles_instances(ctx: &Ctx) {
    let a = ctx.invoke_ok("Reuse", "").await;
    assert!(a.body["secret"].is_null(), "no secret yet: {}", a.raw);
    let old_host = host(&a);
    let load = Load::start(ctx);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let value = format!("s3cr3t-{}", unique("v"));
    let url = format!("{}/api/projects/{}/secrets", ctx.server.url, ctx.project);
    let set_at = Instant::now();
    let r = answer(ctx.http.post(&url).json(&serde_json::json!({"set": {"FIXTURE_SECRET": value}})).send().await.expect("POST secrets")).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let took = set_at.elapsed();
    let done_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let samples = load.finish(ctx, "the secret change").await;
    ctx.log(&format!("secret set and instances recycled in {} ms", took.as_millis()));
    assert!(took < Duration::from_secs(15), "recycling took {took:?}");
    let after: Vec<&Sample> = samples.iter().filter(|s| s.sent >= done_at).collect();
    assert!(!after.is_empty(), "no request after the change");
    let stale: Vec<Option<String>> = after.iter().map(|s| s.field("secret")).filter(|v| v.as_deref() != Some(value.as_str())).collect();
    assert!(stale.is_empty(), "requests after the change did not see the new secret: {:?}", &stale[..stale.len().min(5)]);
    let began = Instant::now();
    while function_containers(&ctx.docker, &ctx.project, "Reuse").await.iter().any(|(id, _)| id.starts_with(&old_host)) {
        assert!(began.elapsed() < Duration::from_secs(30), "the old instance {old_host} is still there 30s after the change");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let listed = api_get(&ctx.http, &url).await;
    assert_eq!(listed.body["secrets"][0]["name"], "FIXTURE_SECRET", "{}", listed.raw);
    assert!(!listed.raw.contains(&value), "the API never returns a value: {}", listed.raw);
    let log = std::fs::read_to_string(&ctx.server.log).expect("server log");
    assert!(!log.contains(&value), "the secret's value is in the server log");
}

/// `/metrics` exposes invocations, acquisitions by kind, acquisition time, instances by state,
/// queue depth and latency.
async fn check_metrics_exposed(ctx: &Ctx) {
    // Queue is untouched by the other checks of its test: cold, then warm.
    let a = ctx.invoke_ok("Queue", "").await;
    let b = ctx.invoke_ok("Queue", "").await;
    assert_eq!((kind(&a).as_str(), kind(&b).as_str()), ("cold", "warm"), "Server-Timing kinds of two requests to Queue");
    let m = api_get(&ctx.http, &format!("{}/metrics", ctx.server.url)).await;
    assert_eq!(m.status, 200, "{}", m.raw);
    let text = &m.raw;
    let p = format!("project=\"{}\"", ctx.project);
    let f = "function=\"Queue\"";
    let line = |name: &str, needles: &[&str]| -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains(&p) && needles.iter().all(|n| l.contains(n)))
            .map(str::to_string)
    };
    let value = |l: &str| -> f64 { l.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN) };
    let mut missing = Vec::new();
    let mut check = |what: &str, name: &str, needles: &[&str], min: f64| match line(name, needles) {
        Some(l) if value(&l) >= min => {}
        Some(l) => missing.push(format!("{what}: `{l}` is below {min}")),
        None => missing.push(format!("{what}: no `{name}` line with {p} and {needles:?}")),
    };
    check("invocations", "eserveless_invocations_total{", &[f, "status=\"200\""], 2.0);
    check("cold acquisitions", "eserveless_instance_acquisitions_total{", &[f, "kind=\"cold\""], 1.0);
    check("warm acquisitions", "eserveless_instance_acquisitions_total{", &[f, "kind=\"warm\""], 1.0);
    check("cold acquire time histogram", "eserveless_instance_acquire_seconds_bucket{", &[f, "kind=\"cold\"", "le=\"+Inf\""], 1.0);
    check("warm acquire time histogram", "eserveless_instance_acquire_seconds_bucket{", &[f, "kind=\"warm\"", "le=\"+Inf\""], 1.0);
    check("ready instances", "eserveless_instances{", &[f, "state=\"ready\""], 1.0);
    check("queue depth", "eserveless_queue_depth{", &[f], 0.0);
    check("latency histogram", "eserveless_invocation_duration_seconds_bucket{", &[f, "le=\"+Inf\""], 2.0);
    assert!(missing.is_empty(), "/metrics lacks:\n  {}\n---- /metrics ----\n{text}", missing.join("\n  "));
}

/// `len` deterministic pseudo-random bytes (xorshift64*), so a test never sends a pattern that
/// a misplaced or repeated piece would still match.
fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// Where two byte strings first differ (`None` when equal), for failure messages that do not
/// print megabytes.
fn first_difference(got: &[u8], want: &[u8]) -> Option<usize> {
    got.iter().zip(want).position(|(a, b)| a != b).or((got.len() != want.len()).then(|| got.len().min(want.len())))
}

/// Asserts Stream's `{"length", "sha256"}` answer for a body of `sent`.
#[track_caller]
fn assert_hashed(a: &Answer, sent: &[u8], what: &str) {
    assert_eq!(a.status, 200, "{what}: {}", a.raw);
    assert_eq!(a.body["length"].as_u64(), Some(sent.len() as u64), "{what}: the function received another length: {}", a.raw);
    assert_eq!(a.body["sha256"].as_str(), Some(sha256_hex(sent).as_str()), "{what}: the function received other bytes: {}", a.raw);
}

/// `?size=N` through the gateway: exactly N bytes, byte i being `i % 251`, with Content-Length N.
async fn assert_sized_answer(ctx: &Ctx, size: usize) {
    let url = ctx.url("Stream", &format!("?size={size}"));
    let began = Instant::now();
    let r = ctx.http.get(&url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(r.status(), 200, "GET {url}");
    let length = r.headers().get(reqwest::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).map(str::to_string);
    assert_eq!(length.as_deref(), Some(size.to_string().as_str()), "Content-Length of ?size={size}");
    let body = r.bytes().await.unwrap_or_else(|e| panic!("the body of ?size={size}: {e}"));
    let want: Vec<u8> = (0..size).map(|i| u8::try_from(i % 251).expect("below 251")).collect();
    if let Some(i) = first_difference(&body, &want) {
        panic!("?size={size}: {} bytes arrived, and they differ from the expected ones at byte {i}", body.len());
    }
    ctx.log(&format!("?size={size}: {size} exact bytes in {} ms", began.elapsed().as_millis()));
}

/// Bodies through the gateway, both ways: a 16 MiB upload arrives whole; a large answer (over the
/// 64 KiB the gateway reads whole before forwarding, so streamed) and a small one arrive exact; a
/// slow chunked answer is streamed, not buffered; an echo streams its answer while the request
/// is still being uploaded (half of it is held back until echoed bytes came back, so a gateway
/// that reads the answer only after the whole request deadlocks); and a client that goes away
/// mid-stream leaves the function serving.
async fn check_streams_and_large_bodies(ctx: &mut Ctx) {
    // 1. A 16 MiB upload, hashed by the function. Also the cold start: the timed requests below
    // find a warm instance.
    let upload = pseudo_random_bytes(16 << 20, 0x5eed_0001);
    let url = ctx.url("Stream", "");
    let began = Instant::now();
    let r = ctx.http.post(&url).body(upload.clone()).send().await.unwrap_or_else(|e| panic!("POST 16 MiB to {url}: {e}"));
    let a = answer(r).await;
    assert_hashed(&a, &upload, "a 16 MiB upload");
    let first_host = a.body["host"].as_str().unwrap_or("").to_string();
    ctx.log(&format!("16 MiB uploaded and hashed by {first_host} in {} ms ({})", began.elapsed().as_millis(), kind(&a)));

    // 2. A streamed answer (5,000,000 bytes) and a buffered one (1000 bytes, under 64 KiB).
    assert_sized_answer(ctx, 5_000_000).await;
    assert_sized_answer(ctx, 1000).await;

    // 3. A slow chunked answer: `chunk 0` at once, then one line every 300 ms (the last at
    // 1.2 s). Streamed, the first line is here long before the last one is written; buffered,
    // nothing would come before ~1.2 s.
    let url = ctx.url("Stream", "?chunks=5&every=300");
    let sent = Instant::now();
    let mut r = ctx.http.get(&url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let head = sent.elapsed();
    assert_eq!(r.status(), 200, "GET {url}");
    assert!(r.headers().get(reqwest::header::CONTENT_LENGTH).is_none(), "a chunked answer got a Content-Length: {:?}", r.headers());
    let mut text = Vec::new();
    let mut first = None;
    let mut arrivals = Vec::new();
    while let Some(c) = r.chunk().await.unwrap_or_else(|e| panic!("reading {url}: {e}")) {
        first.get_or_insert(sent.elapsed());
        arrivals.push(format!("{} ms: {:?}", sent.elapsed().as_millis(), String::from_utf8_lossy(&c)));
        text.extend_from_slice(&c);
    }
    let total = sent.elapsed();
    ctx.log(&format!("?chunks=5&every=300: head after {} ms, chunks at {arrivals:?}, end after {} ms", head.as_millis(), total.as_millis()));
    assert_eq!(String::from_utf8_lossy(&text), "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n", "the chunked answer");
    let first = first.expect("a first chunk");
    assert!(
        first < Duration::from_millis(700),
        "the first chunk came {first:?} after the request: the answer was buffered, not streamed: {arrivals:?}"
    );
    assert!(total >= Duration::from_millis(1100), "the whole answer took only {total:?}; the function writes for 1.2 s: {arrivals:?}");

    // 4. An 8 MiB echo, uploaded as a stream: the first 4 MiB, then nothing more until echoed
    // bytes are back, then the rest.
    let echo = pseudo_random_bytes(8 << 20, 0xec40_0002);
    let half = echo.len() / 2;
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
    let (echoed_tx, echoed_rx) = tokio::sync::oneshot::channel::<()>();
    // Bytes handed to the upload so far.
    let handed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let producer = {
        let echo = echo.clone();
        let handed = handed.clone();
        tokio::spawn(async move {
            for piece in echo[..half].chunks(64 * 1024) {
                if tx.send(bytes::Bytes::copy_from_slice(piece)).await.is_err() {
                    return "the upload stopped during the first half";
                }
                handed.fetch_add(piece.len(), std::sync::atomic::Ordering::Relaxed);
            }
            // Held back until the client saw echoed bytes: a gateway that needs the whole
            // request before it forwards the answer never gets there.
            let held = match tokio::time::timeout(Duration::from_secs(20), echoed_rx).await {
                Ok(_) => "the second half followed the first echoed bytes",
                Err(_) => "NO echoed byte came back within 20 s of the first 4 MiB; the second half was sent anyway",
            };
            for piece in echo[half..].chunks(64 * 1024) {
                if tx.send(bytes::Bytes::copy_from_slice(piece)).await.is_err() {
                    return "the upload stopped during the second half";
                }
            }
            held
        })
    };
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx)) });
    let url = ctx.url("Stream", "?echo=1");
    let began = Instant::now();
    let exchange = async {
        let mut r = ctx
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        assert_eq!(r.status(), 200, "POST {url}");
        let head = began.elapsed();
        let mut got = Vec::with_capacity(echo.len());
        let mut echoed_tx = Some(echoed_tx);
        let mut uploaded_at_first_echo = 0;
        while let Some(c) = r.chunk().await.unwrap_or_else(|e| panic!("reading the echo after {} bytes: {e}", got.len())) {
            got.extend_from_slice(&c);
            if let Some(t) = echoed_tx.take() {
                uploaded_at_first_echo = handed.load(std::sync::atomic::Ordering::Relaxed);
                let _ = t.send(());
            }
        }
        (head, got, uploaded_at_first_echo)
    };
    let (head, got, uploaded_at_first_echo) = tokio::time::timeout(Duration::from_secs(45), exchange)
        .await
        .unwrap_or_else(|_| panic!("the 8 MiB echo hung for 45 s (a deadlock between upload and answer?)"));
    let held = producer.await.expect("the upload producer");
    ctx.log(&format!(
        "8 MiB echoed in {} ms (head after {} ms; the first echoed bytes came when {uploaded_at_first_echo} bytes were handed to the upload; {held})",
        began.elapsed().as_millis(),
        head.as_millis()
    ));
    assert_eq!(held, "the second half followed the first echoed bytes", "the echo's upload");
    if let Some(i) = first_difference(&got, &echo) {
        panic!("the echo: {} of {} bytes came back, differing from what was sent at byte {i}", got.len(), echo.len());
    }

    // 5. A client that goes away after the first chunk of a 2 s answer. Stream has
    // `concurrency: 1` and `max_instances: 1`, and the server a 5 s queue timeout: the request
    // right after is served only if the dropped answer gave its instance back (or the instance
    // was replaced); a lease kept by the abandoned answer makes it a 503 after 5 s.
    let url = ctx.url("Stream", "?chunks=20&every=100");
    let mut r = ctx.http.get(&url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(r.status(), 200, "GET {url}");
    let c = r.chunk().await.unwrap_or_else(|e| panic!("reading {url}: {e}")).expect("a first chunk");
    assert!(c.starts_with(b"chunk 0\n"), "the first chunk: {:?}", String::from_utf8_lossy(&c));
    drop(r);
    ctx.log("dropped ?chunks=20&every=100 after its first chunk");
    let mut hosts = Vec::new();
    for n in 0..3 {
        let body = format!("request {n} after a client went away").into_bytes();
        let began = Instant::now();
        let r = ctx.http.post(ctx.url("Stream", "")).body(body.clone()).send().await.unwrap_or_else(|e| panic!("POST after the drop: {e}"));
        let a = answer(r).await;
        assert_hashed(&a, &body, &format!("request {n} after a client went away mid-stream"));
        hosts.push(format!("{} in {} ms ({})", a.body["host"].as_str().unwrap_or(""), began.elapsed().as_millis(), kind(&a)));
    }
    assert_sized_answer(ctx, 200_000).await;
    let r = ctx.http.get(ctx.url("Stream", "?chunks=3&every=20")).send().await.expect("GET ?chunks=3 after the drop");
    assert_eq!(r.status(), 200, "?chunks=3 after the drop");
    assert_eq!(r.text().await.expect("?chunks=3 body"), "chunk 0\nchunk 1\nchunk 2\n", "?chunks=3 after the drop");
    let running: Vec<_> =
        function_containers(&ctx.docker, &ctx.project, "Stream").await.into_iter().filter(|(_, s)| s == "running").collect();
    ctx.log(&format!("after the drop: served by {hosts:?} (first request by {first_host}); running instances {running:?}"));
    assert!(!running.is_empty(), "no running instance of Stream after the drop");
    // Either outcome is allowed; the log says which one it was.
    let log = std::fs::read_to_string(&ctx.server.log).expect("server log");
    let noted: Vec<&str> =
        log.lines().filter(|l| l.contains("Stream") && (l.contains("WARN") || l.contains("taken out of the pool"))).collect();
    ctx.log(&format!("server log lines on Stream at warn level or evicting: {noted:#?}"));

    // 6. A client whose upload breaks off after 1 MiB: its fault, not the instance's. The
    // instance stays in the pool and serves the next request warm.
    let before = answer(ctx.http.post(ctx.url("Stream", "")).body("before the abort").send().await.expect("POST before the abort")).await;
    assert_hashed(&before, b"before the abort", "the request before the abort");
    let host = before.body["host"].as_str().unwrap_or("").to_string();
    let evicted_before = std::fs::read_to_string(&ctx.server.log).expect("server log").matches("taken out of the pool").count();
    let broken = futures_util::stream::iter(vec![
        Ok::<_, std::io::Error>(bytes::Bytes::from(vec![7u8; 1 << 20])),
        Err(std::io::Error::other("the client gives up")),
    ]);
    let aborted = ctx.http.post(ctx.url("Stream", "")).body(reqwest::Body::wrap_stream(broken)).send().await;
    assert!(aborted.as_ref().map_or(true, |r| r.status() != 200), "an upload that broke off was answered 200");
    let after = answer(ctx.http.post(ctx.url("Stream", "")).body("after the abort").send().await.expect("POST after the abort")).await;
    assert_hashed(&after, b"after the abort", "the request after an aborted upload");
    let evicted_after = std::fs::read_to_string(&ctx.server.log).expect("server log").matches("taken out of the pool").count();
    assert_eq!(
        (after.body["host"].as_str().unwrap_or(""), kind(&after), evicted_after),
        (host.as_str(), "warm".to_string(), evicted_before),
        "a client's broken-off upload took its (healthy) instance out of the pool: {}",
        after.raw
    );
    ctx.log(&format!("aborted upload ({}); the next request served warm by {host}", aborted.map(|r| r.status().to_string()).unwrap_or_else(|e| e.to_string())));
}

// ---------------------------------------------------------------------------------------------
// Tests

/// One test: its own server (with `args`), one deployment of lifecycle-app, one check, removal.
macro_rules! lifecycle_test {
    ($name:ident, $prefix:literal, [$($arg:literal),*], $check:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            require_docker!();
            run_serial(stringify!($name), async {
                let mut ctx = Ctx::deploy($prefix, &[$($arg),*]).await;
                $check(&mut ctx).await;
                ctx.remove().await;
            })
            .await;
        }
    };
}

lifecycle_test!(instances_are_reused, "lc-reuse", [], check_instances_are_reused);
lifecycle_test!(pause_then_resume, "lc-pause", [], check_pause_then_resume);
lifecycle_test!(removed_after_idle_timeout, "lc-idle", [], check_removed_after_idle_timeout);
lifecycle_test!(min_instances_kept_warm, "lc-warm", [], check_min_instances_kept_warm);
lifecycle_test!(burst_scales_to_max_and_no_further, "lc-burst", ["--queue-depth", "10"], check_burst_scales_to_max_and_no_further);
lifecycle_test!(queue_full_gets_429_and_deadline_gets_503, "lc-queue", ["--queue-depth", "1", "--queue-timeout", "1s"], check_queue_full_gets_429_and_deadline_gets_503);
lifecycle_test!(killed_container_is_replaced, "lc-kill", [], check_killed_container_is_replaced);
lifecycle_test!(instances_adopted_after_restart, "lc-adopt", [], check_instances_adopted_after_restart);
lifecycle_test!(changed_config_is_replaced_not_adopted, "lc-config", [], check_changed_config_is_replaced_not_adopted);
lifecycle_test!(redeploy_under_load_has_zero_failures, "lc-redeploy", [], check_redeploy_under_load_has_zero_failures);
lifecycle_test!(secret_change_recycles_instances, "lc-secret", [], check_secret_change_recycles_instances);
lifecycle_test!(metrics_exposed, "lc-metrics", [], check_metrics_exposed);
lifecycle_test!(streams_and_large_bodies, "lc-stream", ["--queue-timeout", "5s"], check_streams_and_large_bodies);
