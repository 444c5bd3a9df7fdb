//! API tests through the axum router, with an in-memory fake container driver: no Docker.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::Router;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tower::ServiceExt;

#[allow(unused_macros)]
mod common;
use common::git;

use eserveless::config::{ServeArgs, ServerConfig};
use eserveless::driver::{self, BuildRequest, ContainerEvent, ContainerSpec, Driver, ManagedContainer, Started};
use eserveless::platform::Platform;
use eserveless::runtime::Templates;
use eserveless::store::Store;

// ---------------------------------------------------------------------------------------------
// The fake driver

#[derive(Default)]
struct Recorded {
    builds: Vec<(String, std::collections::HashMap<String, String>)>,
    runs: Vec<ContainerSpec>,
    removed_images: Vec<String>,
}

#[derive(Default)]
struct FakeDriver {
    rec: Mutex<Recorded>,
}

impl FakeDriver {
    fn builds(&self) -> Vec<String> {
        self.rec.lock().expect("lock").builds.iter().map(|(t, _)| t.clone()).collect()
    }
}

#[async_trait]
impl Driver for FakeDriver {
    async fn ping(&self) -> driver::Result<()> {
        Ok(())
    }
    async fn image_exists(&self, _image: &str) -> driver::Result<bool> {
        Ok(true)
    }
    async fn build_image(&self, req: BuildRequest) -> driver::Result<String> {
        assert!(!req.context_tar.is_empty(), "a build context is sent");
        self.rec.lock().expect("lock").builds.push((req.tag.clone(), req.labels.clone()));
        Ok("log".to_string())
    }
    async fn remove_image(&self, image: &str) -> driver::Result<bool> {
        self.rec.lock().expect("lock").removed_images.push(image.to_string());
        Ok(true)
    }
    async fn run(&self, spec: ContainerSpec) -> driver::Result<Started> {
        let mut rec = self.rec.lock().expect("lock");
        let id = format!("fake-{}", rec.runs.len());
        rec.runs.push(spec);
        Ok(Started { id, ip: "127.0.0.1".to_string() })
    }
    async fn pause(&self, _id: &str) -> driver::Result<()> {
        Ok(())
    }
    async fn unpause(&self, _id: &str) -> driver::Result<()> {
        Ok(())
    }
    async fn remove(&self, _id: &str) -> driver::Result<()> {
        Ok(())
    }
    async fn wait(&self, _id: &str) -> driver::Result<i64> {
        Ok(0)
    }
    async fn logs(&self, _id: &str, _max_bytes: usize) -> driver::Result<String> {
        Ok(String::new())
    }
    async fn list_managed(&self) -> driver::Result<Vec<ManagedContainer>> {
        Ok(Vec::new())
    }
    fn events(&self) -> BoxStream<'static, driver::Result<ContainerEvent>> {
        futures_util::stream::pending().boxed()
    }
}

// ---------------------------------------------------------------------------------------------
// Harness

struct Harness {
    /// The router as an admin sees it: requests without `Authorization` get the admin token.
    app: Router,
    /// The router as it is: no credentials added.
    raw: Router,
    admin_token: String,
    store: Arc<Store>,
    fake: Arc<FakeDriver>,
    _data: tempfile::TempDir,
}

/// Adds `Authorization: Bearer <token>` to requests that carry none.
fn with_token(app: Router, token: &str) -> Router {
    let value = axum::http::HeaderValue::from_str(&format!("Bearer {token}")).expect("header");
    app.layer(axum::middleware::map_request(move |mut req: Request<Body>| {
        let value = value.clone();
        async move {
            req.headers_mut().entry(axum::http::header::AUTHORIZATION).or_insert(value);
            req
        }
    }))
}

fn harness(allow_local: bool) -> Harness {
    let data = tempfile::tempdir().expect("data dir");
    let config = ServerConfig::resolve(&ServeArgs {
        allow_local_repos: Some(allow_local),
        data_dir: Some(data.path().to_path_buf()),
        ..Default::default()
    })
    .expect("config");
    let fake = Arc::new(FakeDriver::default());
    let store = Arc::new(Store::in_memory().expect("store"));
    let admin_token = eserveless::auth::bootstrap_admin(&store, data.path()).expect("bootstrap").expect("first start");
    let platform = Platform::new(store.clone(), fake.clone(), Templates::embedded(), config).expect("platform");
    let raw = eserveless::api::app(platform);
    Harness { app: with_token(raw.clone(), &admin_token), raw, admin_token, store, fake, _data: data }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
    raw: String,
}

async fn send(app: &Router, req: Request<Body>) -> Answer {
    let resp = app.clone().oneshot(req).await.expect("the router answers");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 16 * 1024 * 1024).await.expect("body");
    let raw = String::from_utf8_lossy(&bytes).into_owned();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer { status, headers, body, raw }
}

async fn get(app: &Router, path: &str) -> Answer {
    send(app, Request::get(path).body(Body::empty()).expect("request")).await
}

async fn delete(app: &Router, path: &str) -> Answer {
    send(app, Request::delete(path).body(Body::empty()).expect("request")).await
}

async fn post_raw(app: &Router, path: &str, body: impl Into<Body>) -> Answer {
    send(
        app,
        Request::post(path).header("content-type", "application/json").body(body.into()).expect("request"),
    )
    .await
}

async fn post_json(app: &Router, path: &str, body: &Value) -> Answer {
    post_raw(app, path, body.to_string()).await
}

async fn invoke(app: &Router, method: &str, path: &str) -> Answer {
    let mut req = Request::builder().method(method).uri(path).body(Body::empty()).expect("request");
    req.extensions_mut().insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    send(app, req).await
}

/// Asserts the one error shape, `{"error":{"code":string,"message":string}}` and nothing else;
/// returns the message.
fn assert_error(a: &Answer, status: StatusCode, code: &str) -> String {
    assert_eq!(a.status, status, "status of {}", a.raw);
    let ct = a.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(ct.starts_with("application/json"), "content-type `{ct}` of {}", a.raw);
    let top = a.body.as_object().unwrap_or_else(|| panic!("error body is not a JSON object: {}", a.raw));
    assert_eq!(top.len(), 1, "only `error` at the top level: {}", a.raw);
    let err = top.get("error").and_then(Value::as_object).unwrap_or_else(|| panic!("no `error` object: {}", a.raw));
    assert_eq!(err.len(), 2, "error has exactly code and message: {}", a.raw);
    assert_eq!(err.get("code").and_then(Value::as_str), Some(code), "code of {}", a.raw);
    let message = err.get("message").and_then(Value::as_str).unwrap_or_else(|| panic!("message is not a string: {}", a.raw));
    assert!(!message.is_empty(), "empty message: {}", a.raw);
    message.to_string()
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).expect("read fixture") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

/// A git repository holding a copy of `tests/fixtures/<fixture>`, one commit on `main`.
fn fixture_repo(fixture: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("repo dir");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(fixture), dir.path());
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-qm", "fixture"]);
    let head = git(dir.path(), &["rev-parse", "HEAD"]);
    (dir, head)
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn root_and_health() {
    let h = harness(true);
    let a = get(&h.app, "/").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, json!({"name": "eserveless", "version": env!("CARGO_PKG_VERSION")}));

    let a = get(&h.app, "/healthz").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
    assert_eq!(a.body["status"], "ok");

    let a = get(&h.app, "/api/projects").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, json!({"projects": []}));
}

#[tokio::test]
async fn malformed_and_oversized_bodies() {
    let h = harness(true);
    let a = post_raw(&h.app, "/api/projects", "this is not json").await;
    let m = assert_error(&a, StatusCode::BAD_REQUEST, "malformed_json");
    assert!(m.contains("JSON"), "{m}");

    let a = post_raw(&h.app, "/api/projects", "").await;
    assert_error(&a, StatusCode::BAD_REQUEST, "malformed_json");

    // Valid JSON of the wrong shape.
    let a = post_json(&h.app, "/api/projects", &json!({"repo": "x"})).await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    let a = post_json(&h.app, "/api/projects", &json!({"repository": 5})).await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    let a = post_json(&h.app, "/api/projects", &json!({"repository": "owner/repo", "extra": true})).await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");

    // Larger than 64 KiB, even though it is valid JSON.
    let big = json!({"repository": "a".repeat(70 * 1024)}).to_string();
    assert!(big.len() > eserveless::api::MAX_API_BODY);
    let a = post_raw(&h.app, "/api/projects", big).await;
    assert_error(&a, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");

    // Nothing was recorded by any of these.
    let a = get(&h.app, "/api/projects").await;
    assert_eq!(a.body, json!({"projects": []}));
}

/// A JSON array is not a deployment request, even when its items would fill the fields in order.
#[tokio::test]
async fn array_body_is_not_a_deploy_request() {
    let h = harness(true);
    for body in [json!(["owner/repo"]), json!([]), json!("owner/repo"), json!(null)] {
        let a = post_json(&h.app, "/api/projects", &body).await;
        assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    }
}

#[tokio::test]
async fn dangerous_repositories_refs_and_names_are_refused() {
    let h = harness(true);
    let cases = [
        "-uhttps://example.com/x/y",
        "--upload-pack=touch /tmp/x",
        "https://example.com/x/y;id",
        "https://example.com/$(id)/y",
        "https://example.com/x\ny",
        "https://example.com/`id`/y",
        "ext::sh -c id",
        "ftp://example.com/x/y",
        "",
    ];
    for repo in cases {
        let a = post_json(&h.app, "/api/projects", &json!({"repository": repo})).await;
        let m = assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_repository");
        // The message names the value (escaped, so that a newline shows as `\n`).
        let shown = repo.escape_debug().to_string();
        assert!(m.contains(&shown), "message `{m}` should name `{shown}`");
    }

    // A ref that would be an option to git.
    let a = post_json(&h.app, "/api/projects", &json!({"repository": "owner/repo", "ref": "--upload-pack=evil"})).await;
    let m = assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_ref");
    assert!(m.contains("--upload-pack=evil"), "{m}");
    let a = post_json(&h.app, "/api/projects", &json!({"repository": "owner/repo", "ref": "-x"})).await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_ref");
    let a = post_json(&h.app, "/api/projects", &json!({"repository": "owner/repo", "ref": "a;b"})).await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_ref");

    // Names that would escape a directory or be invalid Docker names.
    for name in ["../x", "UPPER", "a_b", "-x", "x/y", ""] {
        let a = post_json(&h.app, "/api/projects", &json!({"repository": "owner/repo", "name": name})).await;
        let m = assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_name");
        assert!(m.contains(&format!("`{name}`")), "message `{m}` should name `{name}`");
    }

    let a = get(&h.app, "/api/projects").await;
    assert_eq!(a.body, json!({"projects": []}), "nothing was recorded");
    assert!(h.fake.builds().is_empty());
}

#[tokio::test]
async fn local_repositories_need_the_flag() {
    let strict = harness(false);
    let (repo, _) = fixture_repo("node-app");
    let path = repo.path().to_str().expect("utf8 path").to_string();
    for r in [format!("file://{path}"), path.clone()] {
        let a = post_json(&strict.app, "/api/projects", &json!({"repository": r, "name": "local"})).await;
        let m = assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_repository");
        assert!(m.contains("--allow-local-repos"), "{m}");
    }

    // With the flag, a directory that is not a repository is refused before anything is queued.
    let local = harness(true);
    let empty = tempfile::tempdir().expect("dir");
    let not_repo = empty.path().to_str().expect("utf8").to_string();
    let a = post_json(&local.app, "/api/projects", &json!({"repository": not_repo, "name": "not-a-repo"})).await;
    let m = assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "repository_unreachable");
    assert!(m.contains(&not_repo), "{m}");
    let a = post_json(&local.app, "/api/projects", &json!({"repository": "/nonexistent/eserveless/repo", "name": "gone"})).await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "repository_unreachable");
    // A ref the repository does not have.
    let a = post_json(&local.app, "/api/projects", &json!({"repository": path, "ref": "no-such-branch", "name": "noref"})).await;
    let m = assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "ref_not_found");
    assert!(m.contains("no-such-branch"), "{m}");

    let a = get(&local.app, "/api/projects/not-a-repo").await;
    assert_error(&a, StatusCode::NOT_FOUND, "project_not_found");
}

#[tokio::test]
async fn unknown_things_are_json_404s() {
    let h = harness(true);
    let a = get(&h.app, "/api/projects/nope").await;
    let m = assert_error(&a, StatusCode::NOT_FOUND, "project_not_found");
    assert!(m.contains("nope"), "{m}");
    let a = delete(&h.app, "/api/projects/nope").await;
    assert_error(&a, StatusCode::NOT_FOUND, "project_not_found");
    let a = get(&h.app, "/api/projects/nope/deployments/1").await;
    assert_error(&a, StatusCode::NOT_FOUND, "project_not_found");
    let a = get(&h.app, "/api/projects/nope/deployments/not-a-number").await;
    assert_error(&a, StatusCode::NOT_FOUND, "project_not_found");
    let a = get(&h.app, "/api/projects/nope/functions/API/runs").await;
    assert_error(&a, StatusCode::NOT_FOUND, "project_not_found");
    let a = get(&h.app, "/api/projects/nope/functions/API/logs").await;
    assert_error(&a, StatusCode::NOT_FOUND, "project_not_found");

    for method in ["GET", "POST", "DELETE"] {
        let a = invoke(&h.app, method, "/invoke/nope/API").await;
        let m = assert_error(&a, StatusCode::NOT_FOUND, "function_not_found");
        assert!(m.contains("nope") && m.contains("API"), "{m}");
    }
    let a = invoke(&h.app, "GET", "/invoke/nope/API/deeper/path?x=1").await;
    assert_error(&a, StatusCode::NOT_FOUND, "function_not_found");

    for path in ["/nope", "/api", "/api/projects/a/b/c/d/e", "/invoke", "/invoke/onlyproject"] {
        let a = get(&h.app, path).await;
        assert_error(&a, StatusCode::NOT_FOUND, "not_found");
    }
    let a = send(&h.app, Request::put("/api/projects").body(Body::empty()).expect("request")).await;
    assert_error(&a, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

async fn wait_deployment(app: &Router, project: &str, id: i64) -> Value {
    let began = Instant::now();
    loop {
        let a = get(app, &format!("/api/projects/{project}/deployments/{id}")).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
        let status = a.body["status"].as_str().unwrap_or_default().to_string();
        if status == "ready" || status == "failed" {
            return a.body;
        }
        assert!(began.elapsed() < Duration::from_secs(30), "deployment still `{status}`: {}", a.raw);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn deploy_with_a_fake_engine() {
    let h = harness(true);
    let (repo, head) = fixture_repo("node-app");
    let path = repo.path().to_str().expect("utf8").to_string();
    let a = post_json(&h.app, "/api/projects", &json!({"repository": path, "name": "demo"})).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.raw);
    assert_eq!(a.body["project"], "demo");
    assert_eq!(a.body["status"], "queued");
    assert_eq!(a.body["commit"], head.as_str());
    let id = a.body["deployment"].as_i64().unwrap_or_else(|| panic!("deployment id: {}", a.raw));
    let location = format!("/api/projects/demo/deployments/{id}");
    assert_eq!(a.headers.get("location").and_then(|v| v.to_str().ok()), Some(location.as_str()));
    assert_eq!(a.body["links"]["deployment"], location.as_str());

    let d = wait_deployment(&h.app, "demo", id).await;
    assert_eq!(d["status"], "ready", "{d:#}");
    assert_eq!(d["live"], true);
    assert_eq!(d["commit"], head.as_str());
    assert_eq!(d["runtime"], "node");
    assert_eq!(d["repository"], format!("file://{path}"));
    assert!(d["error"].is_null(), "{d:#}");
    let warnings = d["warnings"].as_array().expect("warnings").iter().filter_map(Value::as_str).collect::<Vec<_>>();
    assert!(
        warnings.iter().any(|w| w.contains("no `runtime` key") && w.contains("detected `node`")),
        "warnings: {warnings:?}"
    );
    let fns = d["functions"].as_array().expect("functions");
    assert_eq!(fns.len(), 4, "{d:#}");
    for f in fns {
        assert_eq!(f["build_state"], "built", "{f}");
        assert_eq!(f["build_log"], "log", "{f}");
    }

    // One image per function, tagged by project, function and commit, labelled as managed.
    let mut builds = h.fake.builds();
    builds.sort();
    let short = &head[..12];
    let mut want: Vec<String> =
        ["api", "crash", "hang", "ticker"].iter().map(|f| format!("eserveless/demo-{f}:{short}")).collect();
    want.sort();
    assert_eq!(builds, want);
    for (_, labels) in h.fake.rec.lock().expect("lock").builds.iter() {
        assert_eq!(labels.get("eserveless.managed").map(String::as_str), Some("true"));
        assert_eq!(labels.get("eserveless.project").map(String::as_str), Some("demo"));
        assert_eq!(labels.get("eserveless.commit").map(String::as_str), Some(head.as_str()));
    }

    let p = get(&h.app, "/api/projects/demo").await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.raw);
    assert_eq!(p.body["name"], "demo");
    assert_eq!(p.body["live"]["commit"], head.as_str());
    assert_eq!(p.body["live"]["deployment"], id);
    let fns = p.body["functions"].as_array().expect("functions");
    assert_eq!(fns.len(), 4, "{:#}", p.body);
    let by_name = |n: &str| fns.iter().find(|f| f["name"] == n).unwrap_or_else(|| panic!("no {n} in {:#}", p.body));
    for http in ["API", "Hang", "Crash"] {
        let f = by_name(http);
        assert_eq!(f["type"], "http", "{f}");
        assert_eq!(f["invoke_path"], format!("/invoke/demo/{http}"), "{f}");
        assert!(f["schedule"].is_null(), "{f}");
    }
    assert_eq!(by_name("Hang")["timeout_ms"], 2000);
    let ticker = by_name("Ticker");
    assert_eq!(ticker["type"], "cron");
    assert_eq!(ticker["schedule"], "*/2 * * * * *");
    assert!(ticker["invoke_path"].is_null(), "{ticker}");

    let list = get(&h.app, "/api/projects").await;
    let projects = list.body["projects"].as_array().expect("projects");
    assert_eq!(projects.len(), 1);
    assert_eq!(projects[0]["name"], "demo");
    assert_eq!(projects[0]["live_commit"], head.as_str());

    // Same commit again: nothing to build.
    let before = h.fake.builds().len();
    let a = post_json(&h.app, "/api/projects", &json!({"repository": path, "name": "demo"})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
    assert_eq!(a.body["status"], "unchanged");
    assert_eq!(a.body["deployment"], id);
    assert_eq!(h.fake.builds().len(), before, "an unchanged deploy builds nothing");

    // A cron function is not reachable over HTTP; an unknown function of a known project is 404.
    let a = invoke(&h.app, "POST", "/invoke/demo/Ticker").await;
    let m = assert_error(&a, StatusCode::NOT_FOUND, "not_http");
    assert!(m.contains("Ticker"), "{m}");
    let a = invoke(&h.app, "GET", "/invoke/demo/Nope").await;
    assert_error(&a, StatusCode::NOT_FOUND, "function_not_found");
    let a = get(&h.app, "/api/projects/demo/functions/Nope/runs").await;
    assert_error(&a, StatusCode::NOT_FOUND, "function_not_found");
    let a = get(&h.app, "/api/projects/demo/functions/Ticker/runs").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
    assert!(a.body["runs"].is_array(), "{}", a.raw);
    // An unknown project, and an unknown deployment of a known project.
    let a = get(&h.app, &format!("/api/projects/other/deployments/{id}")).await;
    assert_error(&a, StatusCode::NOT_FOUND, "project_not_found");
    let a = get(&h.app, &format!("/api/projects/demo/deployments/{}", id + 1000)).await;
    assert_error(&a, StatusCode::NOT_FOUND, "deployment_not_found");

    // Delete: the project, its routes and its images go.
    let a = delete(&h.app, "/api/projects/demo").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
    assert_eq!(a.body["deleted"], "demo");
    assert_eq!(a.body["images_removed"], 4, "{}", a.raw);
    let a = get(&h.app, "/api/projects/demo").await;
    assert_error(&a, StatusCode::NOT_FOUND, "project_not_found");
    let a = invoke(&h.app, "GET", "/invoke/demo/API").await;
    assert_error(&a, StatusCode::NOT_FOUND, "function_not_found");
    let a = invoke(&h.app, "GET", "/invoke/demo/Ticker").await;
    assert_error(&a, StatusCode::NOT_FOUND, "function_not_found");
}
