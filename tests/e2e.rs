//! End-to-end tests: the real `eserveless` binary against the real Docker engine.
//!
//! Each scenario starts its own server (own data directory, own port) and uses unique
//! project names. Scenarios run one at a time: a starting server reconciles every managed
//! container on the engine, and the machine is small.
//!
//! Without a reachable Docker engine the tests print "skipping: ..." and pass, except when
//! `CI=true`, where they fail.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bollard::query_parameters::{ListContainersOptionsBuilder, ListImagesOptionsBuilder, RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder};
use bollard::Docker;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Docker availability

async fn docker_available() -> Result<(), String> {
    let docker = Docker::connect_with_defaults().map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(10), docker.ping()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("ping timed out after 10s".into()),
    }
}

/// Returns from the test when no Docker engine is reachable; fails instead under `CI=true`.
macro_rules! require_docker {
    () => {
        if let Err(why) = docker_available().await {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("no Docker engine reachable ({why}); CI=true requires Docker for the end-to-end tests");
            }
            eprintln!("skipping: no Docker engine reachable ({why})");
            return;
        }
    };
}

fn docker() -> Docker {
    Docker::connect_with_defaults().expect("docker client")
}

/// Scenarios run one at a time (see the module comment). An async mutex: each test has its
/// own runtime, and a failed test must not poison the others.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------
// Base images

/// `(variable, value)` for the three base images: from the environment (scripts/test exports
/// them), else the offline images when they exist, else the server's defaults.
async fn image_env() -> Vec<(&'static str, String)> {
    let d = docker();
    let mut out = Vec::new();
    for (var, fallback) in [
        ("ESERVELESS_NODE_IMAGE", "eserveless/node:bookworm"),
        ("ESERVELESS_GO_IMAGE", "eserveless/go:bookworm"),
        ("ESERVELESS_RUN_IMAGE", "eserveless/run:bookworm"),
    ] {
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => out.push((var, v)),
            _ => {
                if d.inspect_image(fallback).await.is_ok() {
                    out.push((var, fallback.to_string()));
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The server process

struct Server {
    child: Option<std::process::Child>,
    url: String,
    log: PathBuf,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("addr").port()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Server {
    /// Starts `eserveless serve` on a free port with `data_dir`, and waits for /healthz.
    async fn start(data_dir: &Path, images: &[(&'static str, String)]) -> Server {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let log = data_dir.with_extension(format!("server-{port}.log"));
        let file = std::fs::File::create(&log).expect("server log file");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_eserveless"));
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(data_dir)
            .arg("--allow-local-repos")
            .env_remove("ESERVELESS_IDLE_TIMEOUT")
            .env_remove("ESERVELESS_PAUSE_AFTER")
            .env_remove("ESERVELESS_CONFIG")
            .env_remove("ESERVELESS_TEMPLATES")
            .env("ESERVELESS_LOG", "info,eserveless=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().expect("dup log")))
            .stderr(Stdio::from(file));
        for (k, v) in images {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start eserveless serve");
        let mut server = Server { child: Some(child), url, log };
        let http = client();
        let began = Instant::now();
        loop {
            if let Some(status) = server.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("the server exited with {status} before it was healthy; its log:\n{}", tail(&server.log, 60));
            }
            if let Ok(r) = http.get(format!("{}/healthz", server.url)).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            assert!(
                began.elapsed() < Duration::from_secs(30),
                "the server did not answer /healthz with 200 within 30s; its log:\n{}",
                tail(&server.log, 60)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server
    }

    /// Kills the process (SIGKILL: a crash, nothing is cleaned up on the way out).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- server log ({}) ----\n{}\n---- end of server log ----", self.log.display(), tail(&self.log, 150));
        }
    }
}

/// Removes whatever a test's projects left on the engine, even when the test failed.
struct Cleanup {
    projects: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let projects = self.projects.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Runtime::new() else { return };
            rt.block_on(async {
                let d = docker();
                for p in &projects {
                    for id in containers_of(&d, p).await.into_iter().map(|(id, _)| id) {
                        let opts = RemoveContainerOptionsBuilder::default().force(true).build();
                        let _ = d.remove_container(&id, Some(opts)).await;
                    }
                    for (id, _) in images_of(&d, p).await {
                        let opts = RemoveImageOptionsBuilder::default().force(true).build();
                        let _ = d.remove_image(&id, Some(opts), None).await;
                    }
                }
            })
        })
        .join();
    }
}

/// Containers (any state) labelled with the project: `(id, state)`.
async fn containers_of(d: &Docker, project: &str) -> Vec<(String, String)> {
    let filters = HashMap::from([("label".to_string(), vec![format!("eserveless.project={project}")])]);
    let opts = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
    d.list_containers(Some(opts))
        .await
        .expect("list containers")
        .into_iter()
        .map(|c| (c.id.unwrap_or_default(), c.state.map(|s| s.to_string()).unwrap_or_default()))
        .collect()
}

/// Containers of one function of the project: `(id, state)`.
async fn function_containers(d: &Docker, project: &str, function: &str) -> Vec<(String, String)> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("eserveless.project={project}"), format!("eserveless.function={function}")],
    )]);
    let opts = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
    d.list_containers(Some(opts))
        .await
        .expect("list containers")
        .into_iter()
        .map(|c| (c.id.unwrap_or_default(), c.state.map(|s| s.to_string()).unwrap_or_default()))
        .collect()
}

/// Images of the project: labelled with it, or tagged `eserveless/<project>-*`. `(id, tags)`.
async fn images_of(d: &Docker, project: &str) -> Vec<(String, Vec<String>)> {
    let all = d.list_images(Some(ListImagesOptionsBuilder::default().build())).await.expect("list images");
    let prefix = format!("eserveless/{project}-");
    all.into_iter()
        .filter(|i| {
            i.labels.get("eserveless.project").map(String::as_str) == Some(project)
                || i.repo_tags.iter().any(|t| t.starts_with(&prefix))
        })
        .map(|i| (i.id, i.repo_tags))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Clients

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("http client")
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
    raw: String,
}

async fn answer(r: reqwest::Response) -> Answer {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let raw = r.text().await.expect("response body");
    let body = serde_json::from_str(&raw).unwrap_or(Value::Null);
    Answer { status, headers, body, raw }
}

async fn api_get(http: &reqwest::Client, url: &str) -> Answer {
    answer(http.get(url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"))).await
}

async fn deploy(http: &reqwest::Client, base: &str, repo: &Path, project: &str) -> Answer {
    let body = json!({"repository": repo.to_str().expect("utf8 path"), "name": project});
    answer(http.post(format!("{base}/api/projects")).json(&body).send().await.expect("POST /api/projects")).await
}

/// Asserts the JSON error shape and code; returns the message.
fn assert_error(a: &Answer, status: u16, code: &str) -> String {
    assert_eq!(a.status, status, "status of {}", a.raw);
    let top = a.body.as_object().unwrap_or_else(|| panic!("error body is not a JSON object: {}", a.raw));
    assert_eq!(top.len(), 1, "{}", a.raw);
    let e = top.get("error").and_then(Value::as_object).unwrap_or_else(|| panic!("no error object: {}", a.raw));
    assert_eq!(e.len(), 2, "{}", a.raw);
    assert_eq!(e.get("code").and_then(Value::as_str), Some(code), "code of {}", a.raw);
    e.get("message").and_then(Value::as_str).unwrap_or_else(|| panic!("message: {}", a.raw)).to_string()
}

/// Polls a deployment until it is ready or failed (at most 10 minutes).
async fn wait_deployment(http: &reqwest::Client, base: &str, project: &str, id: i64) -> Value {
    let url = format!("{base}/api/projects/{project}/deployments/{id}");
    let began = Instant::now();
    let mut last = String::new();
    loop {
        let a = api_get(http, &url).await;
        assert_eq!(a.status, 200, "{}", a.raw);
        let status = a.body["status"].as_str().unwrap_or_default().to_string();
        if status != last {
            eprintln!("[{:>5.1}s] {project} deployment {id}: {status}", began.elapsed().as_secs_f64());
            last = status.clone();
        }
        if status == "ready" || status == "failed" {
            return a.body;
        }
        assert!(began.elapsed() < Duration::from_secs(600), "deployment {id} still `{status}` after 10 minutes: {:#}", a.body);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Deploys over the API, expects 202, and waits for the outcome.
async fn deploy_and_wait(http: &reqwest::Client, base: &str, repo: &Path, project: &str) -> Value {
    let a = deploy(http, base, repo, project).await;
    assert_eq!(a.status, 202, "{}", a.raw);
    assert_eq!(a.body["status"], "queued", "{}", a.raw);
    let id = a.body["deployment"].as_i64().unwrap_or_else(|| panic!("deployment id in {}", a.raw));
    wait_deployment(http, base, project, id).await
}

/// Polls a function's cron runs until one with an id above `after` satisfies `ok` (at most `within`).
async fn wait_run(
    http: &reqwest::Client,
    base: &str,
    project: &str,
    function: &str,
    after: i64,
    within: Duration,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let url = format!("{base}/api/projects/{project}/functions/{function}/runs?limit=100");
    let began = Instant::now();
    loop {
        let a = api_get(http, &url).await;
        assert_eq!(a.status, 200, "{}", a.raw);
        let runs = a.body["runs"].as_array().cloned().unwrap_or_default();
        if let Some(r) = runs.iter().find(|r| r["id"].as_i64().unwrap_or(0) > after && ok(r)) {
            return r.clone();
        }
        assert!(
            began.elapsed() < within,
            "no matching run of {project}/{function} after id {after} within {within:?}; runs: {:#}",
            Value::Array(runs.into_iter().take(10).collect())
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn last_run_id(http: &reqwest::Client, base: &str, project: &str, function: &str) -> i64 {
    let a = api_get(http, &format!("{base}/api/projects/{project}/functions/{function}/runs?limit=500")).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    a.body["runs"].as_array().into_iter().flatten().filter_map(|r| r["id"].as_i64()).max().unwrap_or(0)
}

/// Runs the CLI; returns (exit code, stdout, stderr).
async fn cli(args: &[&str]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_eserveless"));
    cmd.args(args).env_remove("ESERVELESS_URL").stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(600), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("`eserveless {}` took longer than 10 minutes", args.join(" ")))
        .expect("run the CLI");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("$ eserveless {}\n{stdout}{stderr}", args.join(" "));
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

// ---------------------------------------------------------------------------------------------
// Repositories

fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(["-c", "user.email=e2e@example.com", "-c", "user.name=e2e", "-c", "commit.gpgsign=false"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A git repository with `files`, committed on `main`.
fn repo_with(files: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("repo dir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write file");
    }
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-qm", "initial"]);
    dir
}

/// A git repository holding a copy of `tests/fixtures/<name>`.
fn fixture_repo(name: &str) -> tempfile::TempDir {
    let mut files = Vec::new();
    for e in std::fs::read_dir(fixture(name)).expect("fixture dir") {
        let e = e.expect("entry");
        if e.file_type().expect("type").is_file() {
            let text = std::fs::read_to_string(e.path()).expect("read fixture");
            files.push((e.file_name().to_string_lossy().into_owned(), text));
        }
    }
    let files: Vec<(&str, String)> = files.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    repo_with(&files)
}

fn commit_all(dir: &Path, message: &str) -> String {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-qm", message]);
    git(dir, &["rev-parse", "HEAD"])
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}-{:x}{:x}", std::process::id() % 0xfff, nanos % 0xffff)
}

fn header<'a>(a: &'a Answer, name: &str) -> &'a str {
    a.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// After a project is removed: no container or image of it is left (a cron run that was
/// already going may take a moment to finish and remove its own container).
async fn assert_project_gone(project: &str) {
    let d = docker();
    let began = Instant::now();
    loop {
        let left = containers_of(&d, project).await;
        if left.is_empty() {
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(30), "containers of {project} left after removal: {left:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let images = images_of(&d, project).await;
    assert!(images.is_empty(), "images of {project} left after removal: {images:?}");
    // Nothing comes back: no schedule fires for a removed project.
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(6) {
        let left = containers_of(&d, project).await;
        assert!(left.is_empty(), "a container of removed project {project} appeared: {left:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_project_end_to_end() {
    require_docker!();
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let images = image_env().await;
    let data_root = tempfile::tempdir().expect("data");
    let data = data_root.path().join("data");
    let project = unique("e2e-node");
    let _cleanup = Cleanup { projects: vec![project.clone()] };
    let mut server = Server::start(&data, &images).await;
    let http = client();
    let repo = fixture_repo("node-app");
    let repo_path = repo.path().to_str().expect("utf8").to_string();

    // --- deploy with the CLI
    let (code, out, err) = cli(&["deploy", &repo_path, "--name", &project, "--server", &server.url]).await;
    assert_eq!(code, 0, "deploy failed:\n{out}\n{err}");
    assert!(out.contains("is live"), "{out}");
    assert!(out.contains("warning: no `runtime` key; detected `node`"), "{out}");
    assert!(out.contains(&format!("{}/invoke/{project}/API", server.url)), "{out}");
    assert!(out.contains("cron */2 * * * * *"), "{out}");
    let p = api_get(&http, &format!("{}/api/projects/{project}", server.url)).await;
    assert_eq!(p.status, 200, "{}", p.raw);
    let v1_commit = git(repo.path(), &["rev-parse", "HEAD"]);
    assert_eq!(p.body["live"]["commit"], v1_commit.as_str());
    assert_eq!(p.body["live"]["runtime"], "node");
    let warnings = p.body["live"]["warnings"].to_string();
    assert!(warnings.contains("detected `node`"), "{warnings}");
    assert_eq!(p.body["functions"].as_array().map(Vec::len), Some(4), "{:#}", p.body);
    eprintln!("[{:>5.1}s] node-app v1 live", t0.elapsed().as_secs_f64());

    // --- the echo function, cold then warm
    let invoke_api = |path: &str| format!("{}/invoke/{project}/API{path}", server.url);
    let a = answer(
        http.post(invoke_api("/a/b?x=1&y=2")).header("X-Test", "yes").body("hello").send().await.expect("invoke API"),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.raw);
    let b = &a.body;
    assert_eq!(b["runtime"], "node", "{b:#}");
    assert_eq!(b["method"], "POST");
    assert_eq!(b["path"], "/a/b");
    assert_eq!(b["query"], "x=1&y=2");
    assert_eq!(b["body"], "hello");
    assert_eq!(b["version"], "v1");
    assert_eq!(b["isNumber"], true);
    assert_eq!(b["headers"]["x-test"], "yes");
    assert_eq!(b["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(b["headers"]["x-forwarded-proto"], "http");
    assert_eq!(b["headers"]["x-forwarded-host"], server.url.trim_start_matches("http://"));
    assert_eq!(b["headers"]["x-forwarded-prefix"], format!("/invoke/{project}/API"));
    assert_eq!(b["env"]["ESERVELESS_GREETING"], "hello");
    assert_eq!(b["env"]["ESERVELESS_SOME_KEY"], "x");
    assert_eq!(header(&a, "x-function"), "API");
    assert!(header(&a, "server-timing").starts_with("cold"), "server-timing: {}", header(&a, "server-timing"));
    let a = answer(http.get(invoke_api("")).send().await.expect("invoke API")).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert_eq!(a.body["method"], "GET");
    assert_eq!(a.body["path"], "/");
    assert!(header(&a, "server-timing").starts_with("warm"), "server-timing: {}", header(&a, "server-timing"));

    // --- invoke with the CLI
    let target = format!("{project}/API");
    let (code, out, err) =
        cli(&["invoke", &target, "/cli/path", "-X", "PUT", "-d", "from-cli", "-H", "X-Cli: 1", "--server", &server.url]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("CLI output is not JSON ({e}): {out}"));
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["path"], "/cli/path");
    assert_eq!(v["body"], "from-cli");
    assert_eq!(v["headers"]["x-cli"], "1");

    // --- the cron function fires
    let run = wait_run(&http, &server.url, &project, "Ticker", 0, Duration::from_secs(60), |r| r["status"] == "succeeded").await;
    let output = run["output"].as_str().unwrap_or_default();
    assert!(output.contains("TICK"), "{run:#}");
    assert!(output.contains(r#""ESERVELESS_TARGET":"world""#), "{run:#}");
    assert_eq!(run["exit_code"], 0, "{run:#}");
    eprintln!("[{:>5.1}s] Ticker ran", t0.elapsed().as_secs_f64());

    // --- a function that never answers: 504 after its 2s timeout
    let began = Instant::now();
    let a = answer(http.get(format!("{}/invoke/{project}/Hang", server.url)).send().await.expect("invoke Hang")).await;
    let took = began.elapsed();
    let m = assert_error(&a, 504, "function_timeout");
    assert!(m.contains("Hang") && m.contains("2s"), "{m}");
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(5), "Hang answered after {took:?}");

    // --- a function that crashes mid-request: 502, and the next request gets a fresh instance
    let a = answer(http.post(format!("{}/invoke/{project}/Crash", server.url)).body("boom").send().await.expect("invoke Crash")).await;
    let m = assert_error(&a, 502, "function_failed");
    assert!(m.contains("Crash"), "{m}");
    let a = answer(http.get(invoke_api("/after-crash")).send().await.expect("invoke API")).await;
    assert_eq!(a.status, 200, "API after a crash: {}", a.raw);
    // The dead instance is removed, not left behind.
    let d = docker();
    let began = Instant::now();
    loop {
        let crash = function_containers(&d, &project, "Crash").await;
        if crash.is_empty() {
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(20), "the crashed instance was not removed: {crash:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let began = Instant::now();
    let a = answer(http.post(format!("{}/invoke/{project}/Crash", server.url)).body("boom").send().await.expect("invoke Crash")).await;
    assert_error(&a, 502, "function_failed");
    assert!(began.elapsed() < Duration::from_secs(20), "second Crash took {:?}", began.elapsed());
    let a = answer(http.get(invoke_api("/after-second-crash")).send().await.expect("invoke API")).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert_eq!(a.body["path"], "/after-second-crash");

    // --- the same commit again: nothing to do
    let a = deploy(&http, &server.url, repo.path(), &project).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert_eq!(a.body["status"], "unchanged");
    assert_eq!(a.body["commit"], v1_commit.as_str());

    // --- a new commit goes live
    let js = repo.path().join("functions.js");
    let text = std::fs::read_to_string(&js).expect("read functions.js");
    assert!(text.contains(r#"const VERSION = "v1";"#), "the fixture changed: {text}");
    std::fs::write(&js, text.replace(r#"const VERSION = "v1";"#, r#"const VERSION = "v2";"#)).expect("write");
    let v2_commit = commit_all(repo.path(), "v2");
    let d2 = deploy_and_wait(&http, &server.url, repo.path(), &project).await;
    assert_eq!(d2["status"], "ready", "{d2:#}");
    assert_eq!(d2["commit"], v2_commit.as_str());
    assert_eq!(d2["live"], true);
    let a = answer(http.get(invoke_api("/v")).send().await.expect("invoke API")).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert_eq!(a.body["version"], "v2", "{}", a.raw);
    eprintln!("[{:>5.1}s] node-app v2 live", t0.elapsed().as_secs_f64());

    // --- a commit that does not build: the deployment fails, v2 keeps serving
    std::fs::copy(fixture("broken-node").join("functions.js"), &js).expect("copy the broken functions.js");
    let broken_commit = commit_all(repo.path(), "broken");
    let d3 = deploy_and_wait(&http, &server.url, repo.path(), &project).await;
    assert_eq!(d3["status"], "failed", "{d3:#}");
    assert_eq!(d3["commit"], broken_commit.as_str());
    assert_eq!(d3["live"], false);
    let error = d3["error"].as_str().unwrap_or_default();
    assert!(error.contains("function `API` failed to build"), "error: {error}");
    // The user-facing line of the build log ("eserveless: functions.js failed to load: ...") is
    // part of the error. Checked at the end, so that the rest of the scenario still runs.
    let mut deferred = Vec::new();
    if !error.contains("functions.js failed to load") {
        deferred.push(format!("the failed deployment's error does not carry the build's `eserveless:` line: {error}"));
    }
    let failed: Vec<&Value> = d3["functions"].as_array().into_iter().flatten().filter(|f| f["build_state"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{d3:#}");
    assert_eq!(failed[0]["name"], "API");
    let a = answer(http.get(invoke_api("/still")).send().await.expect("invoke API")).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert_eq!(a.body["version"], "v2", "{}", a.raw);
    let p = api_get(&http, &format!("{}/api/projects/{project}", server.url)).await;
    assert_eq!(p.body["live"]["commit"], v2_commit.as_str());
    assert_eq!(p.body["latest_deployment"]["status"], "failed");

    // --- the server crashes and comes back on the same data directory
    let before_restart = last_run_id(&http, &server.url, &project, "Ticker").await;
    server.kill();
    let server = Server::start(&data, &images).await;
    let invoke_api = |path: &str| format!("{}/invoke/{project}/API{path}", server.url);
    let a = answer(http.get(invoke_api("/after-restart")).send().await.expect("invoke API")).await;
    assert_eq!(a.status, 200, "API after a restart: {}", a.raw);
    assert_eq!(a.body["version"], "v2", "{}", a.raw);
    assert_eq!(a.body["path"], "/after-restart");
    let run = wait_run(&http, &server.url, &project, "Ticker", before_restart, Duration::from_secs(60), |r| {
        r["status"] == "succeeded"
    })
    .await;
    assert!(run["output"].as_str().unwrap_or_default().contains("TICK"), "{run:#}");
    eprintln!("[{:>5.1}s] restarted; v2 serving, Ticker firing", t0.elapsed().as_secs_f64());

    // --- remove with the CLI
    let (code, out, err) = cli(&["rm", &project, "--server", &server.url]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains(&format!("removed {project} (")), "{out}");
    let a = api_get(&http, &format!("{}/api/projects/{project}", server.url)).await;
    assert_error(&a, 404, "project_not_found");
    let a = api_get(&http, &format!("{}/api/projects/{project}/functions/Ticker/runs", server.url)).await;
    assert_error(&a, 404, "project_not_found");
    let a = answer(http.get(invoke_api("")).send().await.expect("invoke API")).await;
    assert_error(&a, 404, "function_not_found");
    assert_project_gone(&project).await;
    eprintln!("[{:>5.1}s] node_project_end_to_end done", t0.elapsed().as_secs_f64());
    assert!(deferred.is_empty(), "{}", deferred.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_project_end_to_end() {
    require_docker!();
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let images = image_env().await;
    let data_root = tempfile::tempdir().expect("data");
    let data = data_root.path().join("data");
    let project = unique("e2e-go");
    let _cleanup = Cleanup { projects: vec![project.clone()] };
    let server = Server::start(&data, &images).await;
    let http = client();
    let repo = fixture_repo("go-app");

    let d = deploy_and_wait(&http, &server.url, repo.path(), &project).await;
    assert_eq!(d["status"], "ready", "{d:#}");
    assert_eq!(d["runtime"], "golang");
    assert_eq!(d["warnings"], json!([]), "{d:#}");
    let fns = d["functions"].as_array().expect("functions");
    assert_eq!(fns.len(), 3, "{d:#}");
    for f in fns {
        assert_eq!(f["build_state"], "built", "{f:#}");
    }
    let tock = fns.iter().find(|f| f["name"] == "Tock").expect("Tock in the deployment");
    assert_eq!(tock["type"], "cron");
    eprintln!("[{:>5.1}s] go-app live", t0.elapsed().as_secs_f64());

    let a = answer(
        http.post(format!("{}/invoke/{project}/API/x/y?q=1", server.url))
            .header("X-Test", "go")
            .body("go-body")
            .send()
            .await
            .expect("invoke API"),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.raw);
    let b = &a.body;
    assert_eq!(b["runtime"], "go", "{b:#}");
    assert_eq!(b["version"], "v1");
    assert_eq!(b["method"], "POST");
    assert_eq!(b["path"], "/x/y");
    assert_eq!(b["query"], "q=1");
    assert_eq!(b["body"], "go-body");
    assert_eq!(b["headers"]["x-test"], "go");
    assert_eq!(b["headers"]["x-forwarded-prefix"], format!("/invoke/{project}/API"));
    assert_eq!(b["env"]["ESERVELESS_GREETING"], "hello");
    assert_eq!(header(&a, "x-function"), "API");
    assert!(header(&a, "server-timing").starts_with("cold"), "{:?}", a.headers);

    // Ticker takes map[string]string.
    let run = wait_run(&http, &server.url, &project, "Ticker", 0, Duration::from_secs(60), |r| r["status"] == "succeeded").await;
    let output = run["output"].as_str().unwrap_or_default();
    assert!(output.contains("TICK"), "{run:#}");
    assert!(output.contains("world"), "{run:#}");
    assert!(output.contains("ESERVELESS_TARGET"), "{run:#}");

    // Tock (interface{} signature, yearly): listed as cron; never reachable over HTTP.
    let (code, out, err) = cli(&["show", &project, "--server", &server.url]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let tock_line = out.lines().find(|l| l.starts_with("Tock ")).unwrap_or_else(|| panic!("no Tock line in:\n{out}"));
    assert!(tock_line.contains("cron") && tock_line.contains("0 0 1 1 *"), "{tock_line}");
    let p = api_get(&http, &format!("{}/api/projects/{project}", server.url)).await;
    let tock = p.body["functions"].as_array().into_iter().flatten().find(|f| f["name"] == "Tock").cloned().expect("Tock");
    assert_eq!(tock["type"], "cron");
    assert_eq!(tock["schedule"], "0 0 1 1 *");
    assert!(tock["invoke_path"].is_null());
    let a = answer(http.get(format!("{}/invoke/{project}/Tock", server.url)).send().await.expect("invoke Tock")).await;
    assert_error(&a, 404, "not_http");

    let a = answer(http.delete(format!("{}/api/projects/{project}", server.url)).send().await.expect("DELETE")).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert_eq!(a.body["deleted"], project.as_str());
    assert_eq!(a.body["images_removed"], 3, "{}", a.raw);
    assert_project_gone(&project).await;
    eprintln!("[{:>5.1}s] go_project_end_to_end done", t0.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_end_to_end() {
    require_docker!();
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let images = image_env().await;
    let data_root = tempfile::tempdir().expect("data");
    let data = data_root.path().join("data");
    let no_manifest = unique("e2e-nomanifest");
    let not_exported = unique("e2e-notexported");
    let bad_yaml = unique("e2e-badyaml");
    let _cleanup = Cleanup { projects: vec![no_manifest.clone(), not_exported.clone(), bad_yaml.clone()] };
    let server = Server::start(&data, &images).await;
    let http = client();
    let functions_js = "'use strict';\nmodule.exports = { API: (req, res) => res.end('ok') };\n".to_string();

    // A repository that does not exist: refused at once.
    let began = Instant::now();
    let missing = data_root.path().join("no-such-repo");
    let a = deploy(&http, &server.url, &missing, "e2e-missing").await;
    let m = assert_error(&a, 422, "repository_unreachable");
    assert!(m.contains("no-such-repo"), "{m}");
    assert!(began.elapsed() < Duration::from_secs(10), "took {:?}", began.elapsed());
    let a = api_get(&http, &format!("{}/api/projects/e2e-missing", server.url)).await;
    assert_error(&a, 404, "project_not_found");

    // No manifest: the CLI reports the failure and exits 1.
    let repo = repo_with(&[("functions.js", functions_js.clone())]);
    let (code, out, err) =
        cli(&["deploy", repo.path().to_str().expect("utf8"), "--name", &no_manifest, "--server", &server.url]).await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("failed") && err.contains(".eserveless.yaml"), "{err}");
    let p = api_get(&http, &format!("{}/api/projects/{no_manifest}", server.url)).await;
    assert_eq!(p.status, 200, "{}", p.raw);
    assert_eq!(p.body["latest_deployment"]["status"], "failed");
    assert!(p.body["latest_deployment"]["error"].as_str().unwrap_or_default().contains(".eserveless.yaml"), "{:#}", p.body);
    assert!(p.body["live"].is_null());
    assert_eq!(p.body["functions"], json!([]));
    let a = answer(http.get(format!("{}/invoke/{no_manifest}/API", server.url)).send().await.expect("invoke")).await;
    assert_error(&a, 404, "function_not_found");

    // Malformed YAML: the error says where.
    let repo = repo_with(&[
        ("functions.js", functions_js.clone()),
        (".eserveless.yaml", "runtime: node\nfunctions:\n  - name: API\n    type: [http\n".to_string()),
    ]);
    let d = deploy_and_wait(&http, &server.url, repo.path(), &bad_yaml).await;
    assert_eq!(d["status"], "failed", "{d:#}");
    let error = d["error"].as_str().unwrap_or_default();
    assert!(error.contains(".eserveless.yaml") && error.contains("line"), "{error}");

    // A function the code does not export: the build says so, by name.
    let repo = repo_with(&[
        ("functions.js", functions_js.clone()),
        (
            ".eserveless.yaml",
            "runtime: node\nfunctions:\n  - name: API\n    type: http\n  - name: Missing\n    type: http\n".to_string(),
        ),
    ]);
    let d = deploy_and_wait(&http, &server.url, repo.path(), &not_exported).await;
    assert_eq!(d["status"], "failed", "{d:#}");
    let states: HashMap<String, String> = d["functions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| (f["name"].as_str().unwrap_or("").to_string(), f["build_state"].as_str().unwrap_or("").to_string()))
        .collect();
    assert_eq!(states.get("API").map(String::as_str), Some("built"), "{states:?}");
    assert_eq!(states.get("Missing").map(String::as_str), Some("failed"), "{states:?}");
    // The image that did build belongs to a failed deployment: it is removed.
    let left = images_of(&docker(), &not_exported).await;
    assert!(left.is_empty(), "images of a failed deployment left behind: {left:?}");
    // Checked at the end, so that the rest of the scenario still runs.
    let not_exported_error = d["error"].as_str().unwrap_or_default().to_string();

    for p in [&no_manifest, &bad_yaml, &not_exported] {
        let a = answer(http.delete(format!("{}/api/projects/{p}", server.url)).send().await.expect("DELETE")).await;
        assert_eq!(a.status, 200, "{}", a.raw);
    }
    let a = api_get(&http, &format!("{}/api/projects", server.url)).await;
    assert_eq!(a.body, json!({"projects": []}));
    eprintln!("[{:>5.1}s] bad_inputs_end_to_end done", t0.elapsed().as_secs_f64());
    assert!(
        not_exported_error.contains("Missing") && not_exported_error.contains("not exported"),
        "the error of a deployment whose manifest names an unexported function should say so: {not_exported_error}"
    );
}
