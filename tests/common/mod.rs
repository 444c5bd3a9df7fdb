//! The harness shared by the end-to-end test binaries (`tests/e2e.rs`, `tests/lifecycle.rs`):
//! the real `eserveless` binary against the real Docker engine.
//!
//! Use it with `#[macro_use] mod common;` and `use common::*;`. Every test file is its own
//! binary, so `SERIAL` serialises the scenarios of one file; cargo runs the binaries one
//! after the other.
//!
//! Without a reachable Docker engine the tests print "skipping: ..." and pass, except when
//! `CI=true`, where they fail.

#![allow(dead_code)]

/// Returns from the test when no Docker engine is reachable; fails instead under `CI=true`.
/// Defined first so that every test file sees it through `#[macro_use] mod common;`.
macro_rules! require_docker {
    () => {
        if let Err(why) = $crate::common::docker_available().await {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("no Docker engine reachable ({why}); CI=true requires Docker for the end-to-end tests");
            }
            eprintln!("skipping: no Docker engine reachable ({why})");
            return;
        }
    };
}

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bollard::query_parameters::{ListContainersOptionsBuilder, ListImagesOptionsBuilder, RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder};
use bollard::Docker;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Docker availability

pub async fn docker_available() -> Result<(), String> {
    let docker = Docker::connect_with_defaults().map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(10), docker.ping()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("ping timed out after 10s".into()),
    }
}

pub fn docker() -> Docker {
    Docker::connect_with_defaults().expect("docker client")
}

/// Scenarios run one at a time (see the module comment). An async mutex: each test has its
/// own runtime, and a failed test must not poison the others.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------
// Base images

/// `(variable, value)` for the three base images: from the environment (scripts/test exports
/// them), else the offline images when they exist, else the server's defaults.
pub async fn image_env() -> Vec<(&'static str, String)> {
    let d = docker();
    let mut out = Vec::new();
    for (var, fallback) in [
        ("ESERVELESS_NODE_IMAGE", "eserveless/node:bookworm"),
        ("ESERVELESS_GO_IMAGE", "eserveless/go:bookworm"),
        ("ESERVELESS_RUN_IMAGE", "eserveless/run:bookworm"),
        ("ESERVELESS_PYTHON_IMAGE", "eserveless/python:bookworm"),
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

pub struct Server {
    child: Option<std::process::Child>,
    pub url: String,
    pub log: PathBuf,
    /// The admin token the server wrote to `<data_dir>/admin-token` on its first start.
    pub token: String,
    /// The port it listens on.
    pub port: u16,
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("addr").port()
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Server {
    /// Starts `eserveless serve` on a free port with `data_dir`, and waits for /healthz.
    pub async fn start(data_dir: &Path, images: &[(&'static str, String)]) -> Server {
        Server::start_with_args(data_dir, images, &[]).await
    }

    /// Like [`Server::start`], with extra `serve` arguments, e.g.
    /// `&["--queue-depth", "2", "--queue-timeout", "1500ms"]`.
    pub async fn start_with_args(data_dir: &Path, images: &[(&'static str, String)], extra: &[&str]) -> Server {
        Server::start_on("127.0.0.1", data_dir, images, extra).await
    }

    /// Like [`Server::start_with_args`], listening on `host` (e.g. `0.0.0.0` to show that
    /// functions still cannot reach the API on the host's other addresses).
    pub async fn start_on(host: &str, data_dir: &Path, images: &[(&'static str, String)], extra: &[&str]) -> Server {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let log = data_dir.with_extension(format!("server-{port}.log"));
        let file = std::fs::File::create(&log).expect("server log file");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_eserveless"));
        cmd.args(["serve", "--listen", &format!("{host}:{port}"), "--data-dir"])
            .arg(data_dir)
            .arg("--allow-local-repos")
            .args(extra)
            .env_remove("ESERVELESS_IDLE_TIMEOUT")
            .env_remove("ESERVELESS_PAUSE_AFTER")
            .env_remove("ESERVELESS_QUEUE_DEPTH")
            .env_remove("ESERVELESS_QUEUE_TIMEOUT")
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
        let mut server = Server { child: Some(child), url, log, token: String::new(), port };
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
        let token_file = data_dir.join("admin-token");
        server.token = std::fs::read_to_string(&token_file)
            .unwrap_or_else(|e| panic!("the server wrote no {}: {e}", token_file.display()))
            .trim()
            .to_string();
        server
    }

    /// A client that sends the admin token on every request.
    pub fn http(&self) -> reqwest::Client {
        client_with_token(&self.token)
    }

    /// Kills the process (SIGKILL: a crash, nothing is cleaned up on the way out).
    pub fn kill(&mut self) {
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

/// What a scenario starts from: the base images, a fresh data directory, and the cleanup of
/// its projects. Declare it before the server, so the server is dropped (killed) first.
pub struct Scene {
    pub images: Vec<(&'static str, String)>,
    /// `<temp dir>/data`, not created: the server makes it.
    pub data: PathBuf,
    /// Another path in the same temp dir, for whatever else the test needs on disk.
    pub scratch: PathBuf,
    pub cleanup: Cleanup,
    _root: tempfile::TempDir,
}

impl Scene {
    pub async fn new(projects: &[&str]) -> Scene {
        let root = tempfile::tempdir().expect("data");
        Scene {
            images: image_env().await,
            data: root.path().join("data"),
            scratch: root.path().join("scratch"),
            cleanup: Cleanup { projects: projects.iter().map(|p| p.to_string()).collect() },
            _root: root,
        }
    }
}

/// Removes whatever a test's projects left on the engine, even when the test failed.
pub struct Cleanup {
    pub projects: Vec<String>,
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

/// Containers (any state) carrying every one of `labels` (`key=value`): `(id, state)`.
pub async fn containers_with(d: &Docker, labels: &[String]) -> Vec<(String, String)> {
    let filters = HashMap::from([("label".to_string(), labels.to_vec())]);
    let opts = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
    d.list_containers(Some(opts))
        .await
        .expect("list containers")
        .into_iter()
        .map(|c| (c.id.unwrap_or_default(), c.state.map(|s| s.to_string()).unwrap_or_default()))
        .collect()
}

/// Containers (any state) labelled with the project: `(id, state)`.
pub async fn containers_of(d: &Docker, project: &str) -> Vec<(String, String)> {
    containers_with(d, &[format!("eserveless.project={project}")]).await
}

/// Containers of one function of the project: `(id, state)`.
pub async fn function_containers(d: &Docker, project: &str, function: &str) -> Vec<(String, String)> {
    containers_with(d, &[format!("eserveless.project={project}"), format!("eserveless.function={function}")]).await
}

/// Images of the project: labelled with it, or tagged `eserveless/<project>-*`. `(id, tags)`.
pub async fn images_of(d: &Docker, project: &str) -> Vec<(String, Vec<String>)> {
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

/// A client without credentials (enough for /healthz, /metrics and public functions).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("http client")
}

/// A client that sends `Authorization: Bearer <token>` on every request.
pub fn client_with_token(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).expect("token header");
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder().timeout(Duration::from_secs(60)).default_headers(headers).build().expect("http client")
}

pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub raw: String,
}

pub async fn answer(r: reqwest::Response) -> Answer {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let raw = r.text().await.expect("response body");
    let body = serde_json::from_str(&raw).unwrap_or(Value::Null);
    Answer { status, headers, body, raw }
}

pub async fn api_get(http: &reqwest::Client, url: &str) -> Answer {
    answer(http.get(url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"))).await
}

pub async fn deploy(http: &reqwest::Client, base: &str, repo: &Path, project: &str) -> Answer {
    let body = json!({"repository": repo.to_str().expect("utf8 path"), "name": project});
    answer(http.post(format!("{base}/api/projects")).json(&body).send().await.expect("POST /api/projects")).await
}

/// Asserts the JSON error shape and code; returns the message.
pub fn assert_error(a: &Answer, status: u16, code: &str) -> String {
    assert_eq!(a.status, status, "status of {}", a.raw);
    let top = a.body.as_object().unwrap_or_else(|| panic!("error body is not a JSON object: {}", a.raw));
    assert_eq!(top.len(), 1, "{}", a.raw);
    let e = top.get("error").and_then(Value::as_object).unwrap_or_else(|| panic!("no error object: {}", a.raw));
    assert_eq!(e.len(), 2, "{}", a.raw);
    assert_eq!(e.get("code").and_then(Value::as_str), Some(code), "code of {}", a.raw);
    e.get("message").and_then(Value::as_str).unwrap_or_else(|| panic!("message: {}", a.raw)).to_string()
}

/// Polls a deployment until it is ready or failed (at most 10 minutes).
pub async fn wait_deployment(http: &reqwest::Client, base: &str, project: &str, id: i64) -> Value {
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
pub async fn deploy_and_wait(http: &reqwest::Client, base: &str, repo: &Path, project: &str) -> Value {
    let a = deploy(http, base, repo, project).await;
    assert_eq!(a.status, 202, "{}", a.raw);
    assert_eq!(a.body["status"], "queued", "{}", a.raw);
    let id = a.body["deployment"].as_i64().unwrap_or_else(|| panic!("deployment id in {}", a.raw));
    wait_deployment(http, base, project, id).await
}

/// Polls a function's cron runs until one with an id above `after` satisfies `ok` (at most `within`).
pub async fn wait_run(
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

pub async fn last_run_id(http: &reqwest::Client, base: &str, project: &str, function: &str) -> i64 {
    let a = api_get(http, &format!("{base}/api/projects/{project}/functions/{function}/runs?limit=500")).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    a.body["runs"].as_array().into_iter().flatten().filter_map(|r| r["id"].as_i64()).max().unwrap_or(0)
}

/// Runs the CLI with no server or token in its environment; returns (exit code, stdout, stderr).
pub async fn cli(args: &[&str]) -> (i32, String, String) {
    cli_env(args, &[]).await
}

impl Server {
    /// Runs the CLI against this server, with the admin token in `ESERVELESS_TOKEN`.
    pub async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        cli_env(args, &[("ESERVELESS_URL", &self.url), ("ESERVELESS_TOKEN", &self.token)]).await
    }
}

/// Runs the CLI with `env` set (and `HOME` in a fresh directory, so no saved login applies).
pub async fn cli_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let home = tempfile::tempdir().expect("home dir");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_eserveless"));
    cmd.args(args)
        .env_remove("ESERVELESS_URL")
        .env_remove("ESERVELESS_TOKEN")
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", home.path())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
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
// Steady load

/// One request of a [`RequestLoop`]: when it was sent, how long it took, and the JSON body of
/// a 200 (or what went wrong).
pub struct Sample {
    pub sent: Instant,
    pub took: Duration,
    pub result: Result<Value, String>,
}

impl Sample {
    /// A string field of the answer's body, if it was answered.
    pub fn field(&self, k: &str) -> Option<String> {
        self.result.as_ref().ok().map(|v| v[k].as_str().unwrap_or("").to_string())
    }
}

/// Clients that each request one URL in a loop (pausing `pause` between requests) until
/// [`RequestLoop::finish`]; every failure is also printed as it happens.
pub struct RequestLoop {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<Vec<Sample>>>,
}

impl RequestLoop {
    pub fn start(urls: Vec<String>, pause: Duration) -> RequestLoop {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let workers = urls
            .into_iter()
            .map(|url| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let http = client();
                    let mut samples = Vec::new();
                    while !stop.load(Ordering::Acquire) {
                        let sent = Instant::now();
                        let result = match http.get(&url).send().await {
                            Ok(r) => {
                                let a = answer(r).await;
                                if a.status == 200 {
                                    Ok(a.body)
                                } else {
                                    Err(format!("{} {}", a.status, a.raw))
                                }
                            }
                            Err(e) => Err(format!("transport error: {e}")),
                        };
                        if let Err(e) = &result {
                            eprintln!("request to {url} failed: {e}");
                        }
                        samples.push(Sample { sent, took: sent.elapsed(), result });
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                    samples
                })
            })
            .collect();
        RequestLoop { stop, workers }
    }

    /// Stops the clients and returns every sample.
    pub async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        let mut samples = Vec::new();
        for w in self.workers {
            samples.extend(w.await.expect("a load worker"));
        }
        samples
    }
}

// ---------------------------------------------------------------------------------------------
// Repositories

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(["-c", "user.email=e2e@example.com", "-c", "user.name=e2e", "-c", "commit.gpgsign=false"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A git repository with `files`, committed on `main`.
pub fn repo_with(files: &[(&str, String)]) -> tempfile::TempDir {
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
pub fn fixture_repo(name: &str) -> tempfile::TempDir {
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

pub fn commit_all(dir: &Path, message: &str) -> String {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-qm", message]);
    git(dir, &["rev-parse", "HEAD"])
}

pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}-{:x}{:x}", std::process::id() % 0xfff, nanos % 0xffff)
}

pub fn header<'a>(a: &'a Answer, name: &str) -> &'a str {
    a.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Waits (at most 30 s) until the engine holds no container of `project`; `context` is added
/// to the failure message.
pub async fn wait_containers_gone(d: &Docker, project: &str, context: &str) {
    let began = Instant::now();
    loop {
        let left = containers_of(d, project).await;
        if left.is_empty() {
            return;
        }
        assert!(began.elapsed() < Duration::from_secs(30), "containers of {project} left after removal: {left:?}\n{context}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// After a project is removed: no container or image of it is left (a cron run that was
/// already going may take a moment to finish and remove its own container).
pub async fn assert_project_gone(project: &str) {
    let d = docker();
    wait_containers_gone(&d, project, "").await;
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
// Process control and the server's containers (fault tests)

impl Server {
    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(std::process::Child::id).expect("the server process is gone")
    }

    /// Sends `signal` (a kill(1) name: "TERM", "KILL", ...) to the server process; does not wait.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid();
        let status = std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// Waits at most `within` for the process to end: its exit status, or `None` if it still runs.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let began = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Some(status);
            }
            if began.elapsed() >= within {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The identity on the engine of the server of data directory `data` (`<data>/server-id`):
/// the `eserveless.owner` label of its containers.
pub fn server_id(data: &Path) -> String {
    let path = data.join("server-id");
    let id = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())).trim().to_string();
    assert!(!id.is_empty(), "{} is empty", path.display());
    id
}

/// Every container (any state) of the server of data directory `data`, by its owner label:
/// `(id, state)`, sorted.
pub async fn server_containers(d: &Docker, data: &Path) -> Vec<(String, String)> {
    let mut all = containers_with(d, &[format!("eserveless.owner={}", server_id(data))]).await;
    all.sort();
    all
}

impl Server {
    /// The gateway URL of `project`'s `function`, with `query` (a path and/or `?...`) appended.
    pub fn invoke_url(&self, project: &str, function: &str, query: &str) -> String {
        format!("{}/invoke/{project}/{function}{query}", self.url)
    }
}

/// A server with one project deployed and live: what the scenario contexts of `lifecycle` and
/// `faults_server` build on (they add their own fields and reach these through `Deref`).
pub struct Deployed {
    // Dropped first among the context's fields: the server dies before cleanups run.
    pub server: Server,
    pub t0: Instant,
    pub http: reqwest::Client,
    pub docker: Docker,
    pub project: String,
    pub repo: tempfile::TempDir,
    pub args: Vec<String>,
    /// The live deployment's id.
    pub deployment: i64,
}

impl Deployed {
    /// Deploys `repo` as `project` on `server` (started with `args`) and waits until it is live;
    /// `what` names the fixture in the failure message.
    pub async fn deploy(server: Server, args: &[&str], repo: tempfile::TempDir, project: String, what: &str, t0: Instant) -> Deployed {
        let http = server.http();
        let d = deploy_and_wait(&http, &server.url, repo.path(), &project).await;
        assert_eq!(d["status"], "ready", "{what} did not deploy: {d:#}");
        let deployment = d["id"].as_i64().unwrap_or_else(|| panic!("deployment id in {d:#}"));
        Deployed { server, t0, http, docker: docker(), project, repo, args: args.iter().map(|s| s.to_string()).collect(), deployment }
    }

    pub fn log(&self, msg: &str) {
        eprintln!("[{:>5.1}s] {msg}", self.t0.elapsed().as_secs_f64());
    }

    pub fn url(&self, function: &str, query: &str) -> String {
        self.server.invoke_url(&self.project, function, query)
    }

    pub async fn invoke(&self, function: &str, query: &str) -> Answer {
        api_get(&self.http, &self.url(function, query)).await
    }

    /// Kills the server (SIGKILL) and starts a new one with the same arguments on `data_dir`.
    pub async fn restart(&mut self, data_dir: &Path, images: &[(&'static str, String)]) {
        self.server.kill();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.server = Server::start_with_args(data_dir, images, &args).await;
        self.http = self.server.http();
        self.log("a new server runs on the same data directory");
    }

    /// Removes the project through the API and waits until none of its containers is left.
    pub async fn remove(&self) {
        let url = format!("{}/api/projects/{}", self.server.url, self.project);
        let a = answer(self.http.delete(&url).send().await.expect("DELETE the project")).await;
        assert_eq!(a.status, 200, "removing {}: {}", self.project, a.raw);
        wait_containers_gone(&self.docker, &self.project, "").await;
        self.log(&format!("{} removed", self.project));
    }
}

/// `impl Deref<Target = Deployed>` (and `DerefMut`) for a scenario context holding its
/// [`Deployed`] in the field `$field`.
#[allow(unused_macros)]
macro_rules! deref_to_deployed {
    ($ctx:ty, $field:ident) => {
        impl std::ops::Deref for $ctx {
            type Target = Deployed;
            fn deref(&self) -> &Deployed {
                &self.$field
            }
        }
        impl std::ops::DerefMut for $ctx {
            fn deref_mut(&mut self) -> &mut Deployed {
                &mut self.$field
            }
        }
    };
}

/// Runs one scenario of a test binary under [`SERIAL`], framed by its name and duration.
pub async fn run_serial<F: std::future::Future<Output = ()>>(name: &str, test: F) {
    let _serial = SERIAL.lock().await;
    let began = Instant::now();
    eprintln!("==== {name}");
    test.await;
    eprintln!("==== {name} passed in {:.1}s", began.elapsed().as_secs_f64());
}

/// The start of most scenarios: this file's serial lock, a clock, a fresh project name in a
/// new [`Scene`], and a server on it. Bind it with `let Stage { _serial, t0, project, scene,
/// server, http } = stage("prefix").await;`: bindings drop in reverse order, so the server
/// dies before the scene cleans up and the lock is released last.
pub struct Stage {
    pub _serial: tokio::sync::MutexGuard<'static, ()>,
    pub t0: Instant,
    pub project: String,
    pub scene: Scene,
    pub server: Server,
    pub http: reqwest::Client,
}

pub async fn stage(prefix: &str) -> Stage {
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let project = unique(prefix);
    let scene = Scene::new(&[&project]).await;
    let server = Server::start(&scene.data, &scene.images).await;
    let http = server.http();
    Stage { _serial, t0, project, scene, server, http }
}
