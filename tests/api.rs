//! API tests through the axum router, with an in-memory fake container driver: no Docker.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tower::ServiceExt;

#[allow(unused_macros)]
mod common;
use common::git;

use eserveless::config::{ServeArgs, ServerConfig};
use eserveless::infra::driver::fake::FakeDriver;
use eserveless::engine::Platform;
use eserveless::engine::runtime::Templates;
use eserveless::infra::store::Store;

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
    harness_with(allow_local, |_| {}, FakeDriver::reachable_at("127.0.0.1"))
}

/// A harness whose server settings `tune` adjusts, on `fake`.
fn harness_with(allow_local: bool, tune: impl FnOnce(&mut ServeArgs), fake: FakeDriver) -> Harness {
    let data = tempfile::tempdir().expect("data dir");
    let mut args = ServeArgs::default();
    args.source.allow_local_repos = allow_local;
    args.listener.data_dir = data.path().to_path_buf();
    tune(&mut args);
    let config = ServerConfig::resolve(&args).expect("config");
    let fake = Arc::new(fake);
    let store = Arc::new(Store::in_memory().expect("store"));
    let admin_token = eserveless::engine::auth::bootstrap_admin(&store, data.path()).expect("bootstrap").expect("first start");
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
        assert!(m.contains("no project `nope` is live") && m.contains("eserveless ls"), "{m}");
    }
    let a = invoke(&h.app, "GET", "/invoke/nope/API/deeper/path?x=1").await;
    assert_error(&a, StatusCode::NOT_FOUND, "function_not_found");
    // A trailing slash (an empty rest, `eserveless invoke P/F /`) reaches the gateway too.
    let a = invoke(&h.app, "GET", "/invoke/nope/API/?x=1").await;
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

    // One image per function, tagged by project, function and commit, on the deployment's
    // shared image (and its dependency install), all labelled as managed and the project's.
    let short = &head[..12];
    let builds = h.fake.builds();
    let mut functions: Vec<String> = builds.iter().filter(|t| t.starts_with("eserveless/demo-")).cloned().collect();
    functions.sort();
    let mut want: Vec<String> =
        ["api", "crash", "hang", "ticker"].iter().map(|f| format!("eserveless/demo-{f}:{short}")).collect();
    want.sort();
    assert_eq!(functions, want);
    assert!(builds.contains(&format!("eserveless/demo.base:{short}")), "{builds:?}");
    assert!(builds.iter().all(|t| t.starts_with("eserveless/demo-") || t.starts_with("eserveless/demo.")), "{builds:?}");
    let (recorded_builds, recorded_contexts) = {
        let rec = h.fake.recorded();
        (rec.builds.clone(), rec.contexts.clone())
    };
    for ((tag, labels), context) in recorded_builds.iter().zip(&recorded_contexts) {
        // Given to the engine, or written into the Dockerfile's one LABEL line.
        let dockerfile = context
            .iter()
            .find(|(p, _, _)| p == ".eserveless-build/Dockerfile")
            .map(|(_, _, b)| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        let has = |k: &str, v: &str| labels.get(k).map(String::as_str) == Some(v) || dockerfile.contains(&format!("\"{k}\"=\"{v}\""));
        assert!(has("eserveless.managed", "true") && has("eserveless.project", "demo"), "{tag}: {labels:?}\n{dockerfile}");
        if !tag.contains(".deps:") {
            assert!(has("eserveless.commit", &head), "{tag}: {labels:?}\n{dockerfile}");
        }
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
    let m = assert_error(&a, StatusCode::NOT_FOUND, "function_not_found");
    assert!(m.contains("no live function `Nope`") && m.contains("its functions: API"), "{m}");
    // The wrong case of a live name, and a near miss of a project's: the name they meant.
    let a = invoke(&h.app, "GET", "/invoke/demo/api").await;
    let m = assert_error(&a, StatusCode::NOT_FOUND, "function_not_found");
    assert!(m.contains("did you mean `API`?"), "{m}");
    let a = invoke(&h.app, "GET", "/invoke/dem0/API").await;
    let m = assert_error(&a, StatusCode::NOT_FOUND, "function_not_found");
    assert!(m.contains("did you mean `demo`?"), "{m}");
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

// ---------------------------------------------------------------------------------------------
// Users, tokens, ownership, secrets and invoke keys

async fn send_as(app: &Router, token: &str, method: &str, path: &str, body: Option<&Value>) -> Answer {
    let mut b = Request::builder().method(method).uri(path).header("authorization", format!("Bearer {token}"));
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    let body = body.map(|v| Body::from(v.to_string())).unwrap_or_else(Body::empty);
    send(app, b.body(body).expect("request")).await
}

/// A repository with one public and one private http function and a cron function.
fn access_repo() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("repo dir");
    std::fs::write(
        dir.path().join(".eserveless.yaml"),
        "runtime: node\nfunctions:\n  - {name: Open, type: http, memory: 128Mi, cpu: 0.5, timeout: 1s}\n  - {name: Closed, type: http, auth: private, timeout: 1s}\n  - {name: Tick, type: cron, schedule: \"0 0 * * *\"}\n",
    )
    .expect("manifest");
    std::fs::write(
        dir.path().join("functions.js"),
        "exports.Open = (q, s) => s.end('o');\nexports.Closed = (q, s) => s.end('c');\nexports.Tick = () => {};\n",
    )
    .expect("code");
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-qm", "access"]);
    let path = dir.path().to_str().expect("utf8").to_string();
    (dir, path)
}

#[tokio::test]
async fn every_api_route_needs_a_valid_token() {
    let h = harness(true);
    for (method, path) in [
        ("GET", "/api/projects"),
        ("POST", "/api/projects"),
        ("GET", "/api/projects/demo"),
        ("DELETE", "/api/projects/demo"),
        ("GET", "/api/whoami"),
        ("GET", "/api/users"),
        ("POST", "/api/tokens"),
        ("DELETE", "/api/tokens/1"),
        ("GET", "/api/projects/demo/secrets"),
        ("POST", "/api/projects/demo/invoke-key"),
    ] {
        let a = send(&h.raw, Request::builder().method(method).uri(path).body(Body::empty()).expect("req")).await;
        assert_error(&a, StatusCode::UNAUTHORIZED, "token_required");
        assert_eq!(a.headers.get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"), "{method} {path}");
        for bad in ["nonsense", "esl_1_wrong", "esl_999_AAAA"] {
            let a = send_as(&h.raw, bad, method, path, None).await;
            assert_error(&a, StatusCode::UNAUTHORIZED, "token_invalid");
        }
    }
    // A Basic header is not a bearer token.
    let a = send(&h.raw, Request::get("/api/projects").header("authorization", "Basic YTpi").body(Body::empty()).expect("req")).await;
    assert_error(&a, StatusCode::UNAUTHORIZED, "token_invalid");
    // Public endpoints stay public; unknown /api paths are still 404.
    assert_eq!(get(&h.raw, "/healthz").await.status, StatusCode::OK);
    assert_eq!(get(&h.raw, "/metrics").await.status, StatusCode::OK);
    assert_eq!(get(&h.raw, "/api/nothing-here").await.status, StatusCode::NOT_FOUND);
    let a = send_as(&h.raw, &h.admin_token, "GET", "/api/whoami", None).await;
    assert_eq!(a.body, json!({"user": "admin", "admin": true}), "{}", a.raw);
    // Only a hash of the admin token is stored.
    let stored = h.store.tokens(None).expect("tokens");
    assert_eq!(stored.len(), 1);
    let secret = h.admin_token.splitn(3, '_').nth(2).expect("secret part");
    assert_ne!(stored[0].hash, secret.as_bytes());
    assert_eq!(stored[0].hash.len(), 32);
}

#[tokio::test]
async fn users_see_only_their_projects_and_revoked_tokens_stop_at_once() {
    let h = harness(true);
    let admin = h.admin_token.clone();
    // Users: admin only, validated names.
    let a = send_as(&h.raw, &admin, "POST", "/api/users", Some(&json!({"name": "bob"}))).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.raw);
    let bob = a.body["token"]["token"].as_str().expect("bob's token").to_string();
    for bad in ["../x", "-bob", "Bob", ""] {
        let a = send_as(&h.raw, &admin, "POST", "/api/users", Some(&json!({"name": bad}))).await;
        assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_name");
    }
    let a = send_as(&h.raw, &admin, "POST", "/api/users", Some(&json!({"name": "bob"}))).await;
    assert_error(&a, StatusCode::CONFLICT, "user_exists");
    let a = send_as(&h.raw, &bob, "GET", "/api/users", None).await;
    assert_error(&a, StatusCode::FORBIDDEN, "admin_only");
    let a = send_as(&h.raw, &bob, "POST", "/api/users", Some(&json!({"name": "eve", "admin": true}))).await;
    assert_error(&a, StatusCode::FORBIDDEN, "admin_only");

    // Admin deploys `demo`; bob cannot see, change or take it.
    let (_repo, path) = access_repo();
    let a = send_as(&h.raw, &admin, "POST", "/api/projects", Some(&json!({"repository": path, "name": "demo"}))).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.raw);
    let key = a.body["invoke_key"].as_str().expect("a new project's invoke key").to_string();
    let d = wait_deployment(&h.app, "demo", a.body["deployment"].as_i64().expect("id")).await;
    assert_eq!(d["status"], "ready", "{d:#}");
    for (method, p) in [
        ("GET", "/api/projects/demo"),
        ("DELETE", "/api/projects/demo"),
        ("GET", "/api/projects/demo/deployments/1"),
        ("GET", "/api/projects/demo/functions/Open/logs"),
        ("GET", "/api/projects/demo/functions/Tick/runs"),
        ("GET", "/api/projects/demo/secrets"),
        ("POST", "/api/projects/demo/invoke-key"),
        ("DELETE", "/api/projects/demo/secrets/X"),
    ] {
        let a = send_as(&h.raw, &bob, method, p, None).await;
        assert_error(&a, StatusCode::NOT_FOUND, "project_not_found");
    }
    let a = send_as(&h.raw, &bob, "POST", "/api/projects/demo/secrets", Some(&json!({"set": {"A": "b"}}))).await;
    assert_error(&a, StatusCode::NOT_FOUND, "project_not_found");
    let a = send_as(&h.raw, &bob, "GET", "/api/projects", None).await;
    assert_eq!(a.body["projects"], json!([]), "{}", a.raw);
    let a = send_as(&h.raw, &bob, "POST", "/api/projects", Some(&json!({"repository": path, "name": "demo"}))).await;
    assert_error(&a, StatusCode::CONFLICT, "name_taken");
    // Bob's own project is his; the admin sees both.
    let a = send_as(&h.raw, &bob, "POST", "/api/projects", Some(&json!({"repository": path, "name": "bobs"}))).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.raw);
    wait_deployment(&h.app, "bobs", a.body["deployment"].as_i64().expect("id")).await;
    let a = send_as(&h.raw, &bob, "GET", "/api/projects", None).await;
    let names: Vec<&str> = a.body["projects"].as_array().expect("list").iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["bobs"]);
    let a = send_as(&h.raw, &admin, "GET", "/api/projects", None).await;
    let names: Vec<&str> = a.body["projects"].as_array().expect("list").iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["bobs", "demo"]);
    assert_eq!(send_as(&h.raw, &admin, "GET", "/api/projects/bobs", None).await.body["owner"], "bob");
    let a = send_as(&h.raw, &admin, "DELETE", "/api/users/bob", None).await;
    assert_error(&a, StatusCode::CONFLICT, "user_has_projects");

    // Tokens: bob makes a second one, revokes it, and it stops working on the next request.
    let a = send_as(&h.raw, &bob, "POST", "/api/tokens", Some(&json!({"name": "ci"}))).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.raw);
    let (ci_id, ci) = (a.body["id"].as_i64().expect("id"), a.body["token"].as_str().expect("token").to_string());
    assert_eq!(send_as(&h.raw, &ci, "GET", "/api/whoami", None).await.body["user"], "bob");
    let a = send_as(&h.raw, &bob, "GET", "/api/tokens", None).await;
    let listed = a.body["tokens"].as_array().expect("tokens");
    assert_eq!(listed.len(), 2, "{}", a.raw);
    assert!(!a.raw.contains(&ci[8..]), "token lists never show a token");
    let a = send_as(&h.raw, &bob, "DELETE", "/api/tokens/1", None).await;
    assert_error(&a, StatusCode::NOT_FOUND, "token_not_found");
    let a = send_as(&h.raw, &bob, "DELETE", &format!("/api/tokens/{ci_id}"), None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
    let a = send_as(&h.raw, &ci, "GET", "/api/whoami", None).await;
    assert_error(&a, StatusCode::UNAUTHORIZED, "token_invalid");
    assert_eq!(send_as(&h.raw, &bob, "GET", "/api/whoami", None).await.status, StatusCode::OK, "other tokens still work");

    // Removing a user removes its tokens.
    let a = send_as(&h.raw, &admin, "DELETE", "/api/projects/bobs", None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
    let a = send_as(&h.raw, &admin, "DELETE", "/api/users/bob", None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
    assert_error(&send_as(&h.raw, &bob, "GET", "/api/whoami", None).await, StatusCode::UNAUTHORIZED, "token_invalid");
    let a = send_as(&h.raw, &admin, "DELETE", "/api/users/admin", None).await;
    assert_error(&a, StatusCode::CONFLICT, "user_has_projects");

    // Private functions need the invoke key; rotation replaces it at once. Cron is never HTTP.
    let a = invoke(&h.raw, "GET", "/invoke/demo/Closed").await;
    assert_error(&a, StatusCode::UNAUTHORIZED, "invoke_key_required");
    let a = send(
        &h.raw,
        invoke_req("/invoke/demo/Closed", Some("eik_wrong")),
    )
    .await;
    assert_error(&a, StatusCode::UNAUTHORIZED, "invoke_key_invalid");
    let with_key = send(&h.raw, invoke_req("/invoke/demo/Closed", Some(&key))).await;
    assert!(
        with_key.status != StatusCode::UNAUTHORIZED,
        "the right key passes the gate (the fake engine cannot serve it): {}",
        with_key.raw
    );
    let a = invoke(&h.raw, "GET", "/invoke/demo/Open").await;
    assert!(a.status != StatusCode::UNAUTHORIZED, "public functions need no key: {}", a.raw);
    let a = invoke(&h.raw, "GET", "/invoke/demo/Tick").await;
    assert_error(&a, StatusCode::NOT_FOUND, "not_http");
    let a = send_as(&h.raw, &admin, "POST", "/api/projects/demo/invoke-key", None).await;
    let new_key = a.body["invoke_key"].as_str().expect("rotated key").to_string();
    assert_ne!(new_key, key);
    let a = send(&h.raw, invoke_req("/invoke/demo/Closed", Some(&key))).await;
    assert_error(&a, StatusCode::UNAUTHORIZED, "invoke_key_invalid");
    let a = send(&h.raw, invoke_req("/invoke/demo/Closed", Some(&new_key))).await;
    assert!(a.status != StatusCode::UNAUTHORIZED, "{}", a.raw);
    // The key is not forwarded to the function.
    let runs = h.fake.recorded().runs.clone();
    assert!(!runs.is_empty(), "the keyed requests started instances");

    // Memory and CPU from the manifest reach the container; the rest get the defaults.
    let open = runs.iter().find(|r| r.labels.get("eserveless.function").map(String::as_str) == Some("Open")).expect("Open ran");
    assert_eq!((open.limits.memory_bytes, open.limits.nano_cpus), (128 << 20, 500_000_000));
    let closed = runs.iter().find(|r| r.labels.get("eserveless.function").map(String::as_str) == Some("Closed")).expect("Closed ran");
    assert_eq!((closed.limits.memory_bytes, closed.limits.nano_cpus), (256 << 20, 1_000_000_000));
}

fn invoke_req(path: &str, key: Option<&str>) -> Request<Body> {
    let mut b = Request::get(path);
    if let Some(k) = key {
        b = b.header("x-eserveless-key", k);
    }
    let mut req = b.body(Body::empty()).expect("request");
    req.extensions_mut().insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    req
}

#[tokio::test]
async fn secrets_are_sealed_listed_by_name_and_reach_new_instances() {
    let h = harness(true);
    let (_repo, path) = access_repo();
    let a = post_json(&h.app, "/api/projects", &json!({"repository": path, "name": "sec"})).await;
    wait_deployment(&h.app, "sec", a.body["deployment"].as_i64().expect("id")).await;

    let a = post_json(&h.app, "/api/projects/sec/secrets", &json!({"set": {"DB_PASSWORD": "hunter2-very-secret", "TOKEN": "t0k"}})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
    assert!(!a.raw.contains("hunter2"), "answers never carry values: {}", a.raw);
    let a = get(&h.app, "/api/projects/sec/secrets").await;
    let names: Vec<&str> = a.body["secrets"].as_array().expect("list").iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["DB_PASSWORD", "TOKEN"]);
    assert!(!a.raw.contains("hunter2"), "{}", a.raw);
    // At rest: sealed, not the value.
    let rows = h.store.secrets("sec").expect("rows");
    assert!(rows.iter().all(|r| !r.sealed.windows(7).any(|w| w == b"hunter2")), "sealed at rest");
    for (body, code) in [
        (json!({"set": {"PORT": "1"}}), "invalid_secret"),
        (json!({"set": {"1BAD": "x"}}), "invalid_secret"),
        (json!({"set": {"A;B": "x"}}), "invalid_secret"),
        (json!({"set": {"NUL": "a\u{0}b"}}), "invalid_secret"),
        (json!({"set": {}}), "invalid_body"),
    ] {
        let a = post_json(&h.app, "/api/projects/sec/secrets", &body).await;
        assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, code);
    }
    let a = delete(&h.app, "/api/projects/sec/secrets/NOPE").await;
    assert_error(&a, StatusCode::NOT_FOUND, "secret_not_found");

    // A new instance gets them as environment variables; the Debug form shows names only.
    invoke(&h.app, "GET", "/invoke/sec/Open").await;
    let runs = h.fake.recorded().runs.clone();
    let spec = runs.last().expect("a run");
    assert_eq!(spec.env.get("DB_PASSWORD"), Some("hunter2-very-secret"));
    assert_eq!(spec.env.get("TOKEN"), Some("t0k"));
    let shown = format!("{spec:?}");
    assert!(shown.contains("DB_PASSWORD") && !shown.contains("hunter2"), "{shown}");

    // Removing one: the next instance no longer has it.
    let a = delete(&h.app, "/api/projects/sec/secrets/TOKEN").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
    invoke(&h.app, "GET", "/invoke/sec/Open").await;
    let runs = h.fake.recorded().runs.clone();
    let spec = runs.last().expect("a run");
    assert_eq!(spec.env.get("TOKEN"), None);
    assert_eq!(spec.env.get("DB_PASSWORD"), Some("hunter2-very-secret"));
}

/// A repository that tries to leak host files and run code at checkout: an escaping symlink,
/// a `file://` submodule and a checkout hook. It deploys, and none of it reaches the build.
#[tokio::test]
async fn hostile_repository_leaks_nothing_and_runs_nothing() {
    let h = harness(true);
    let secret_dir = tempfile::tempdir().expect("secret");
    std::fs::write(secret_dir.path().join("host-secret.txt"), "HOST-SECRET-CONTENT").expect("w");
    git(secret_dir.path(), &["init", "-q", "-b", "main"]);
    git(secret_dir.path(), &["add", "-A"]);
    git(secret_dir.path(), &["commit", "-qm", "secret"]);
    let marker = secret_dir.path().join("hook-ran");

    let dir = tempfile::tempdir().expect("repo");
    let root = dir.path();
    std::fs::write(root.join(".eserveless.yaml"), "runtime: node\nfunctions:\n  - {name: API, type: http}\n").expect("w");
    std::fs::write(root.join("functions.js"), "exports.API = (q, s) => s.end('ok');\n").expect("w");
    std::os::unix::fs::symlink(secret_dir.path().join("host-secret.txt"), root.join("leak.txt")).expect("ln");
    std::os::unix::fs::symlink("/etc/shadow", root.join("shadow")).expect("ln");
    git(root, &["init", "-q", "-b", "main"]);
    let sub_url = format!("file://{}", secret_dir.path().display());
    git(root, &["-c", "protocol.file.allow=always", "submodule", "add", "-q", &sub_url, "vendor/secret"]);
    std::fs::write(root.join(".git/hooks/post-checkout"), format!("#!/bin/sh\ntouch {}\n", marker.display())).expect("hook");
    std::fs::write(root.join(".git/hooks/post-merge"), format!("#!/bin/sh\ntouch {}\n", marker.display())).expect("hook");
    for hook in ["post-checkout", "post-merge"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join(".git/hooks").join(hook), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    git(root, &["add", "-A"]);
    git(root, &["commit", "-qm", "hostile"]);
    let _ = std::fs::remove_file(&marker);

    let path = root.to_str().expect("utf8");
    let a = post_json(&h.app, "/api/projects", &json!({"repository": path, "name": "hostile"})).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.raw);
    let d = wait_deployment(&h.app, "hostile", a.body["deployment"].as_i64().expect("id")).await;
    assert_eq!(d["status"], "ready", "{d:#}");
    let warnings = d["warnings"].to_string();
    assert!(warnings.contains("skipped symlink `leak.txt`"), "the escaping symlink is reported: {warnings}");
    assert!(warnings.contains("skipped symlink `shadow`"), "{warnings}");
    assert!(!warnings.contains("HOST-SECRET"), "{warnings}");
    assert!(!marker.exists(), "a hook ran during the checkout");

    // The shared image's context holds the checkout; the function's thin one, its Dockerfile.
    let contexts = h.fake.recorded().contexts.clone();
    assert_eq!(contexts.len(), 2);
    let entries = contexts.iter().find(|c| c.iter().any(|(p, _, _)| p == "functions.js")).expect("a context with the checkout");
    let names: Vec<&str> = entries.iter().map(|(p, _, _)| p.as_str()).collect();
    for (p, link, bytes) in contexts.iter().flatten() {
        assert!(!p.starts_with(".git/") && p != ".git", "git metadata in the context: {p}");
        assert!(!p.starts_with("vendor/secret/"), "the submodule was fetched: {p}");
        assert!(link.as_deref().map_or(true, |l| !l.starts_with('/') && !l.contains("..")), "escaping link {p} -> {link:?}");
        assert!(!String::from_utf8_lossy(bytes).contains("HOST-SECRET-CONTENT"), "host file content in {p}");
    }
    assert!(!names.contains(&"leak.txt") && !names.contains(&"shadow"), "{names:?}");
}

// ---------------------------------------------------------------------------------------------
// History, rollback and cron runs by hand

/// The manifest of `history_repo` at `version`: an http function whose memory changes with the
/// version (so a rollback's settings can be told apart) and a cron function that never fires
/// during a test.
fn history_files(dir: &Path, version: u32) {
    std::fs::write(
        dir.join(".eserveless.yaml"),
        format!(
            "runtime: node\nfunctions:\n  - {{name: API, type: http, memory: {}Mi, timeout: 1s}}\n  - {{name: Nightly, type: cron, schedule: \"0 3 * * *\"}}\n",
            64 * version
        ),
    )
    .expect("manifest");
    std::fs::write(dir.join("functions.js"), format!("exports.API = (q, s) => s.end('v{version}');\nexports.Nightly = () => console.log('nightly');\n"))
        .expect("code");
}

/// A repository at version 1; returns it, its path and its commit.
fn history_repo() -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().expect("repo dir");
    history_files(dir.path(), 1);
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-qm", "v1"]);
    let path = dir.path().to_str().expect("utf8").to_string();
    let head = git(dir.path(), &["rev-parse", "HEAD"]);
    (dir, path, head)
}

/// Commits `version` of the history repository; returns the commit.
fn history_commit(dir: &Path, version: u32) -> String {
    history_files(dir, version);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-qm", &format!("v{version}")]);
    git(dir, &["rev-parse", "HEAD"])
}

/// Deploys `path` as `project` and waits for the outcome; returns the deployment.
async fn deploy_wait(app: &Router, path: &str, project: &str) -> Value {
    let a = post_json(app, "/api/projects", &json!({"repository": path, "name": project})).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.raw);
    wait_deployment(app, project, a.body["deployment"].as_i64().expect("deployment id")).await
}

fn ids(list: &Value) -> Vec<i64> {
    list["deployments"].as_array().expect("deployments").iter().filter_map(|d| d["id"].as_i64()).collect()
}

/// Sends a request to `project`'s `function` until the fake engine has been asked to start a
/// container of it for deployment `revision` (the fake's instances never answer: the request
/// itself is not waited for); returns that container's spec.
async fn start_instance(h: &Harness, project: &str, function: &str, revision: i64) -> eserveless::infra::driver::ContainerSpec {
    let began = Instant::now();
    loop {
        let _ = tokio::time::timeout(Duration::from_millis(300), invoke(&h.app, "GET", &format!("/invoke/{project}/{function}"))).await;
        let runs = h.fake.recorded().runs.clone();
        let found = runs.into_iter().rev().find(|r| {
            r.labels.get("eserveless.function").map(String::as_str) == Some(function)
                && r.labels.get("eserveless.revision").map(String::as_str) == Some(revision.to_string().as_str())
        });
        if let Some(spec) = found {
            return spec;
        }
        assert!(began.elapsed() < Duration::from_secs(10), "no container of {project}/{function} for deployment {revision}");
    }
}

#[tokio::test]
async fn deployments_are_listed_and_rollback_switches_without_a_build() {
    let h = harness(true);
    let (repo, path, c1) = history_repo();
    let d1 = deploy_wait(&h.app, &path, "hist").await;
    assert_eq!(d1["status"], "ready", "{d1:#}");
    let d1 = d1["id"].as_i64().expect("id");
    let c2 = history_commit(repo.path(), 2);
    let d2 = deploy_wait(&h.app, &path, "hist").await;
    assert_eq!(d2["status"], "ready", "{d2:#}");
    let d2 = d2["id"].as_i64().expect("id");

    // The history: newest first, who, which is live, and that both can be rolled back to.
    let a = get(&h.app, "/api/projects/hist/deployments").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
    assert_eq!(a.body["project"], "hist");
    assert_eq!(ids(&a.body), [d2, d1]);
    let list = a.body["deployments"].as_array().expect("list");
    assert_eq!((&list[0]["live"], &list[1]["live"]), (&json!(true), &json!(false)), "{}", a.raw);
    assert_eq!((&list[0]["commit"], &list[1]["commit"]), (&json!(c2), &json!(c1)));
    for d in list {
        assert_eq!(d["submitted_by"], "admin", "{d}");
        assert_eq!(d["status"], "ready", "{d}");
        assert_eq!(d["images_present"], true, "{d}");
        assert!(d["rollback_of"].is_null(), "{d}");
        assert!(d.get("log").is_none(), "no build logs in the listing: {d}");
    }
    assert_eq!(ids(&get(&h.app, "/api/projects/hist/deployments?limit=1").await.body), [d2]);

    // Rollback with no body: the deployment before the live one, from its images.
    let builds = h.fake.builds().len();
    let a = post_raw(&h.app, "/api/projects/hist/rollback", "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
    assert_eq!((&a.body["rollback_of"], &a.body["previous"], &a.body["commit"]), (&json!(d1), &json!(d2), &json!(c1)), "{}", a.raw);
    assert_eq!(a.body["rebuilt"], false);
    let d3 = a.body["deployment"].as_i64().expect("the rollback's deployment");
    assert!(d3 > d2, "{}", a.raw);
    assert_eq!(h.fake.builds().len(), builds, "a rollback builds nothing");
    let p = get(&h.app, "/api/projects/hist").await;
    assert_eq!((&p.body["live"]["deployment"], &p.body["live"]["commit"]), (&json!(d3), &json!(c1)), "{}", p.raw);

    // The history says what happened.
    let a = get(&h.app, "/api/projects/hist/deployments").await;
    assert_eq!(ids(&a.body), [d3, d2, d1]);
    let top = &a.body["deployments"][0];
    assert_eq!((&top["rollback_of"], &top["live"], &top["status"], &top["commit"]), (&json!(d1), &json!(true), &json!("ready"), &json!(c1)), "{top}");
    assert_eq!(a.body["deployments"][1]["live"], false);
    let shown = get(&h.app, &format!("/api/projects/hist/deployments/{d3}")).await;
    assert_eq!((&shown.body["rollback_of"], &shown.body["live"]), (&json!(d1), &json!(true)), "{}", shown.raw);
    assert!(shown.body["log"].as_str().unwrap_or("").contains("nothing is built"), "{}", shown.raw);

    // Nothing older than v1: the default has nowhere to go.
    let a = post_raw(&h.app, "/api/projects/hist/rollback", "{}").await;
    let m = assert_error(&a, StatusCode::CONFLICT, "no_earlier_deployment");
    assert!(m.contains(&format!("deployment {d1}")) && m.contains("eserveless deployments hist"), "{m}");
    // Explicitly forward to v2; v2 again is live already; the rollback's id stands for v1.
    let a = post_json(&h.app, "/api/projects/hist/rollback", &json!({"deployment": d2})).await;
    assert_eq!((a.status, &a.body["rollback_of"], &a.body["previous"]), (StatusCode::OK, &json!(d2), &json!(d3)), "{}", a.raw);
    let a = post_json(&h.app, "/api/projects/hist/rollback", &json!({"deployment": d2})).await;
    let m = assert_error(&a, StatusCode::CONFLICT, "already_live");
    assert!(m.contains(&format!("deployment {d2}")), "{m}");
    let a = post_json(&h.app, "/api/projects/hist/rollback", &json!({"deployment": d3})).await;
    assert_eq!((a.status, &a.body["rollback_of"]), (StatusCode::OK, &json!(d1)), "{}", a.raw);
    let d5 = a.body["deployment"].as_i64().expect("id");
    assert_eq!(h.fake.builds().len(), builds, "no rollback built anything");
    // New instances are v1's: its image and its settings (v2 asked for 128Mi), under the rollback's revision.
    let spec = start_instance(&h, "hist", "API", d5).await;
    assert_eq!(spec.limits.memory_bytes, 64 << 20, "v1's settings");
    let v1_image = h.store.functions(d1).expect("fns").into_iter().find(|f| f.name == "API").and_then(|f| f.image);
    assert_eq!(Some(spec.image), v1_image, "the rollback runs v1's image");

    // Deployments that cannot be made live: unknown, another project's, failed.
    let a = post_json(&h.app, "/api/projects/hist/rollback", &json!({"deployment": 9999})).await;
    let m = assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "deployment_not_found");
    assert!(m.contains("9999") && m.contains("hist"), "{m}");
    let other = deploy_wait(&h.app, &path, "other").await["id"].as_i64().expect("id");
    let a = post_json(&h.app, "/api/projects/hist/rollback", &json!({"deployment": other})).await;
    let m = assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "deployment_not_found");
    assert!(m.contains(&other.to_string()), "{m}");
    // A deployment that fails after it was accepted (its build breaks).
    std::fs::write(repo.path().join("functions.js"), "exports.API = (q, s) => s.end('broken');\n").expect("change");
    git(repo.path(), &["commit", "-qam", "broken"]);
    h.fake.recorded().fail_builds = true;
    let failed = deploy_wait(&h.app, &path, "hist").await;
    h.fake.recorded().fail_builds = false;
    assert_eq!(failed["status"], "failed", "{failed:#}");
    let failed = failed["id"].as_i64().expect("id");
    let a = post_json(&h.app, "/api/projects/hist/rollback", &json!({"deployment": failed})).await;
    let m = assert_error(&a, StatusCode::CONFLICT, "deployment_not_ready");
    assert!(m.contains(&format!("deployment {failed}")) && m.contains("failed"), "{m}");
    for bad in [json!({"deployment": "one"}), json!({"deploy": 1}), json!([1])] {
        let a = post_json(&h.app, "/api/projects/hist/rollback", &bad).await;
        assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    }
    let a = post_raw(&h.app, "/api/projects/nope/rollback", "").await;
    assert_error(&a, StatusCode::NOT_FOUND, "project_not_found");
    let a = get(&h.app, "/api/projects/nope/deployments").await;
    assert_error(&a, StatusCode::NOT_FOUND, "project_not_found");

    // Another user can neither see the history nor roll back, nor start a run.
    let a = send_as(&h.raw, &h.admin_token, "POST", "/api/users", Some(&json!({"name": "bob"}))).await;
    let bob = a.body["token"]["token"].as_str().expect("bob's token").to_string();
    let live_before = get(&h.app, "/api/projects/hist").await.body["live"]["deployment"].clone();
    for (method, p, body) in [
        ("GET", "/api/projects/hist/deployments", None),
        ("POST", "/api/projects/hist/rollback", None),
        ("POST", "/api/projects/hist/rollback", Some(json!({"deployment": d2}))),
        ("POST", "/api/projects/hist/functions/Nightly/runs", None),
        ("GET", "/api/projects/hist/functions/Nightly/runs/1", None),
    ] {
        let a = send_as(&h.raw, &bob, method, p, body.as_ref()).await;
        assert_error(&a, StatusCode::NOT_FOUND, "project_not_found");
    }
    assert_eq!(get(&h.app, "/api/projects/hist").await.body["live"]["deployment"], live_before, "bob changed nothing");

    // While a deployment is on its way, a rollback would be overtaken by it: refused.
    let queued = h.store.create_deployment("hist", &format!("file://{path}"), None, &c2).expect("a queued deployment");
    let a = post_raw(&h.app, "/api/projects/hist/rollback", "").await;
    let m = assert_error(&a, StatusCode::CONFLICT, "deployment_in_progress");
    assert!(m.contains(&format!("deployment {queued}")) && m.contains("queued"), "{m}");
    assert_eq!(get(&h.app, "/api/projects/hist").await.body["live"]["deployment"], live_before);
}

#[tokio::test]
async fn rollback_to_a_deployment_whose_images_were_pruned_is_refused() {
    let h = harness_with(true, |a| a.build.keep_deployments = 1, FakeDriver::reachable_at("127.0.0.1"));
    let (repo, path, c1) = history_repo();
    let d1 = deploy_wait(&h.app, &path, "pruned").await["id"].as_i64().expect("id");
    history_commit(repo.path(), 2);
    let d2 = deploy_wait(&h.app, &path, "pruned").await;
    assert_eq!(d2["status"], "ready", "{d2:#}");
    let d2 = d2["id"].as_i64().expect("id");

    let a = get(&h.app, "/api/projects/pruned/deployments").await;
    assert_eq!(ids(&a.body), [d2, d1]);
    assert_eq!(a.body["deployments"][0]["images_present"], true, "{}", a.raw);
    assert_eq!(a.body["deployments"][1]["images_present"], false, "v1's images were pruned: {}", a.raw);

    let builds = h.fake.builds().len();
    for body in ["", &json!({"deployment": d1}).to_string()] {
        let a = post_raw(&h.app, "/api/projects/pruned/rollback", body.to_string()).await;
        let m = assert_error(&a, StatusCode::CONFLICT, "images_removed");
        assert!(m.contains(&format!("deployment {d1}")) && m.contains("--keep-deployments"), "{m}");
        assert!(m.contains(&format!("--ref {c1}")) && m.contains("--name pruned"), "says how to rebuild it: {m}");
    }
    assert_eq!(h.fake.builds().len(), builds, "nothing was built");
    assert_eq!(ids(&get(&h.app, "/api/projects/pruned/deployments").await.body), [d2, d1], "nothing was recorded");
    assert_eq!(get(&h.app, "/api/projects/pruned").await.body["live"]["deployment"], d2, "v2 stays live");
}

async fn wait_run_done(app: &Router, project: &str, function: &str, run: i64) -> Value {
    let began = Instant::now();
    loop {
        let a = get(app, &format!("/api/projects/{project}/functions/{function}/runs/{run}")).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
        if a.body["status"] != "running" {
            return a.body;
        }
        assert!(began.elapsed() < Duration::from_secs(10), "run {run} still running: {}", a.raw);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_cron_run_starts_by_hand_never_overlaps_and_http_functions_have_none() {
    // Runs "take" 800 ms.
    let fake = FakeDriver { run_for: Duration::from_millis(800), ..FakeDriver::reachable_at("127.0.0.1") };
    let h = harness_with(true, |_| {}, fake);
    let (_repo, path, _) = history_repo();
    deploy_wait(&h.app, &path, "crons").await;

    let a = post_raw(&h.app, "/api/projects/crons/functions/Nightly/runs", "").await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.raw);
    let run = a.body["run"].as_i64().expect("run id");
    assert_eq!((&a.body["trigger"], &a.body["function"]), (&json!("manual"), &json!("Nightly")), "{}", a.raw);
    let link = format!("/api/projects/crons/functions/Nightly/runs/{run}");
    assert_eq!(a.body["link"], link.as_str());
    assert_eq!(a.headers.get("location").and_then(|v| v.to_str().ok()), Some(link.as_str()));
    // While it runs, another is refused, naming the run going.
    let a = post_raw(&h.app, "/api/projects/crons/functions/Nightly/runs", "").await;
    let m = assert_error(&a, StatusCode::CONFLICT, "run_in_progress");
    assert!(m.contains(&format!("run {run}")) && m.contains("crons/Nightly"), "{m}");
    let r = get(&h.app, &link).await;
    assert_eq!((&r.body["status"], &r.body["trigger"]), (&json!("running"), &json!("manual")), "{}", r.raw);

    // Recorded like a scheduled run: status, exit code, output, in the runs list.
    let done = wait_run_done(&h.app, "crons", "Nightly", run).await;
    assert_eq!((&done["status"], &done["exit_code"]), (&json!("succeeded"), &json!(0)), "{done}");
    assert!(done["output"].as_str().unwrap_or("").starts_with(&format!("ran esl-crons-nightly-run{run}")), "{done}");
    let list = get(&h.app, "/api/projects/crons/functions/Nightly/runs").await;
    assert_eq!(list.body["runs"][0]["id"], run, "{}", list.raw);
    assert_eq!(list.body["runs"][0]["trigger"], "manual", "{}", list.raw);
    // Once it ended, the next one starts.
    let a = post_raw(&h.app, "/api/projects/crons/functions/Nightly/runs", "").await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.raw);
    assert!(a.body["run"].as_i64().expect("run") > run);

    // An http function has no runs: said with its type and where its output is.
    for method in ["POST", "GET"] {
        let a = send(&h.app, Request::builder().method(method).uri("/api/projects/crons/functions/API/runs").body(Body::empty()).expect("req")).await;
        let m = assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "not_cron");
        assert!(m.contains("`API`") && m.contains("http function") && m.contains("eserveless logs crons/API"), "{m}");
    }
    let a = post_raw(&h.app, "/api/projects/crons/functions/Nope/runs", "").await;
    let m = assert_error(&a, StatusCode::NOT_FOUND, "function_not_found");
    assert!(m.contains("Nope"), "{m}");
    let a = get(&h.app, "/api/projects/crons/functions/Nightly/runs/999999").await;
    let m = assert_error(&a, StatusCode::NOT_FOUND, "run_not_found");
    assert!(m.contains("999999"), "{m}");
    let a = get(&h.app, "/api/projects/crons/functions/Nightly/runs/x").await;
    assert_error(&a, StatusCode::NOT_FOUND, "run_not_found");
}

// ---------------------------------------------------------------------------------------------
// Uploads (`eserveless deploy DIR`)

/// `dir` as the CLI sends it: a gzip-compressed tar of its files.
fn tar_gz(dir: &Path) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).expect("tar");
    b.into_inner().expect("tar").finish().expect("gz")
}

/// A tar.gz of `(path, content)` files written with raw headers (paths the builder refuses).
fn raw_tar_gz(files: &[(&str, &str)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    for (path, text) in files {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_size(text.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, text.as_bytes()).expect("append");
    }
    b.into_inner().expect("tar").finish().expect("gz")
}

async fn upload(app: &Router, project: &str, query: &str, body: Vec<u8>) -> Answer {
    let req = Request::post(format!("/api/projects/{project}/uploads{query}"))
        .header("content-type", "application/gzip")
        .body(Body::from(body))
        .expect("request");
    send(app, req).await
}

/// An upload deploys with no `--allow-local-repos`, is recorded as an upload with its commit,
/// dirty flag and digest; the same content again is unchanged, other content a new deployment.
#[tokio::test]
async fn an_upload_deploys_without_local_repositories_allowed() {
    let h = harness(false);
    let dir = tempfile::tempdir().expect("dir");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/node-app"), dir.path());
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let a = upload(&h.app, "up", &format!("?commit={commit}&dirty=true"), tar_gz(dir.path())).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.raw);
    assert_eq!((&a.body["source"], &a.body["commit"], &a.body["dirty"]), (&json!("upload"), &json!(commit), &json!(true)), "{}", a.raw);
    let digest = a.body["digest"].as_str().expect("digest").to_string();
    assert!(digest.starts_with("sha256:") && digest.len() == 71, "{digest}");
    assert!(a.body["invoke_key"].is_null(), "no private function, no key: {}", a.raw);
    let id = a.body["deployment"].as_i64().expect("id");
    let d = wait_deployment(&h.app, "up", id).await;
    assert_eq!(d["status"], "ready", "{d:#}");
    assert_eq!((&d["source"], &d["dirty"], &d["digest"]), (&json!("upload"), &json!(true), &json!(digest)), "{d:#}");
    assert!(d["log"].as_str().unwrap_or_default().contains("upload of 0123456789ab (dirty)"), "{d:#}");
    let short = &digest["sha256:".len()..][..12];
    assert!(h.fake.builds().contains(&format!("eserveless/up-api:{short}")), "images are tagged by content: {:?}", h.fake.builds());
    let p = get(&h.app, "/api/projects/up").await;
    assert_eq!((&p.body["live"]["source"], &p.body["live"]["digest"]), (&json!("upload"), &json!(digest)), "{}", p.raw);
    assert_eq!(p.body["latest_deployment"]["source"], "upload", "{}", p.raw);

    // The same content: unchanged, nothing built.
    let builds = h.fake.builds().len();
    let a = upload(&h.app, "up", &format!("?commit={commit}&dirty=true"), tar_gz(dir.path())).await;
    assert_eq!((a.status, &a.body["status"], &a.body["deployment"]), (StatusCode::OK, &json!("unchanged"), &json!(id)), "{}", a.raw);
    assert_eq!(h.fake.builds().len(), builds);
    // An edit (same commit, still dirty): a new deployment. A plain directory has no commit.
    std::fs::write(dir.path().join("functions.js"), "exports.API = (q, s) => s.end('v2');\nexports.Ticker = () => {};\nexports.Hang = () => {};\nexports.Crash = () => {};\n").expect("edit");
    let a = upload(&h.app, "up", "", tar_gz(dir.path())).await;
    assert_eq!((a.status, &a.body["commit"], &a.body["dirty"]), (StatusCode::ACCEPTED, &json!(""), &json!(null)), "{}", a.raw);
    assert_ne!(a.body["digest"], json!(digest));
    let d = wait_deployment(&h.app, "up", a.body["deployment"].as_i64().expect("id")).await;
    assert_eq!(d["status"], "ready", "{d:#}");
}

/// Over the server's cap: 413 naming the cap and the setting; nothing is recorded.
#[tokio::test]
async fn an_upload_over_the_cap_is_413() {
    let h = harness_with(false, |a| a.source.max_upload = 64 * 1024, FakeDriver::reachable_at("127.0.0.1"));
    let dir = tempfile::tempdir().expect("dir");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/node-app"), dir.path());
    // Random bytes do not compress: the body itself is over the cap.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..200_000)
        .map(|_| {
            // xorshift64: noise gzip cannot shrink.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect();
    std::fs::write(dir.path().join("noise.bin"), noise).expect("write");
    let body = tar_gz(dir.path());
    assert!(body.len() > 100_000, "the body itself is over the cap: {}", body.len());
    let a = upload(&h.app, "big", "", body).await;
    let m = assert_error(&a, StatusCode::PAYLOAD_TOO_LARGE, "upload_too_large");
    assert!(m.contains("is larger than 64 KiB") && m.contains("--max-upload"), "{m}");
    // Zeros compress to little: the unpacked size is capped too (a gzip bomb stops there).
    std::fs::write(dir.path().join("noise.bin"), vec![0u8; 4 << 20]).expect("write");
    let body = tar_gz(dir.path());
    assert!(body.len() < 64 * 1024, "{}", body.len());
    let a = upload(&h.app, "big", "", body).await;
    let m = assert_error(&a, StatusCode::PAYLOAD_TOO_LARGE, "upload_too_large");
    assert!(m.contains("unpacks to more than 64 KiB"), "{m}");
    assert_error(&get(&h.app, "/api/projects/big").await, StatusCode::NOT_FOUND, "project_not_found");
    assert!(h.fake.builds().is_empty());
}

/// A source whose manifest is missing or broken is refused with the manifest's message,
/// before anything is created: for uploads and for repositories alike.
#[tokio::test]
async fn a_missing_manifest_creates_no_project() {
    let h = harness(true);
    let a = upload(&h.app, "nomanifest", "", raw_tar_gz(&[("functions.js", "exports.API = () => {};\n")])).await;
    let m = assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_manifest");
    assert!(m.contains("no .eserveless.yaml at the root"), "{m}");
    let a = upload(&h.app, "badyaml", "", raw_tar_gz(&[(".eserveless.yaml", "functions:\n  - name: API\n    type: [http\n")])).await;
    let m = assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_manifest");
    assert!(m.contains("line"), "{m}");

    let repo = tempfile::tempdir().expect("repo");
    std::fs::write(repo.path().join("functions.js"), "exports.API = () => {};\n").expect("w");
    git(repo.path(), &["init", "-q", "-b", "main"]);
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-qm", "no manifest"]);
    let a = post_json(&h.app, "/api/projects", &json!({"repository": repo.path().to_str().expect("utf8"), "name": "gitnomanifest"})).await;
    let m = assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_manifest");
    assert!(m.contains(".eserveless.yaml"), "{m}");

    assert_eq!(get(&h.app, "/api/projects").await.body, json!({"projects": []}), "nothing was created");
    assert!(h.fake.builds().is_empty());
}

/// Uploads need a token like every API route, and hostile archives are refused by entry.
#[tokio::test]
async fn uploads_need_a_token_and_refuse_hostile_archives() {
    let h = harness(false);
    let body = raw_tar_gz(&[(".eserveless.yaml", "functions: []\n")]);
    let a = upload(&h.raw, "anon", "", body.clone()).await;
    assert_error(&a, StatusCode::UNAUTHORIZED, "token_required");
    let a = send_as(&h.raw, "esl_999_AAAA", "GET", "/api/whoami", None).await;
    assert_error(&a, StatusCode::UNAUTHORIZED, "token_invalid");
    for (path, why) in [("../escape.txt", "`..`"), ("/etc/cron.d/x", "absolute")] {
        let a = upload(&h.app, "hostile", "", raw_tar_gz(&[(".eserveless.yaml", "functions: []\n"), (path, "x")])).await;
        let m = assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_upload");
        assert!(m.contains(&format!("`{path}`")) && m.contains(why), "{m}");
    }
    let a = upload(&h.app, "hostile", "", b"not a tarball".to_vec()).await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_upload");
    let a = upload(&h.app, "hostile", "?commit=not-hex", body.clone()).await;
    let m = assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_commit");
    assert!(m.contains("not-hex"), "{m}");
    let a = upload(&h.app, "hostile", "?color=red", body.clone()).await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_query");
    let a = upload(&h.app, "Bad_Name", "", body).await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_name");
    assert_error(&get(&h.app, "/api/projects/hostile").await, StatusCode::NOT_FOUND, "project_not_found");
}

/// The invoke key is shown only for a project with private functions: issued by the first
/// deployment that has one, once.
#[tokio::test]
async fn the_invoke_key_comes_with_the_first_private_function() {
    let h = harness(false);
    let public = raw_tar_gz(&[
        (".eserveless.yaml", "runtime: node\nfunctions:\n  - {name: Open, type: http}\n"),
        ("functions.js", "exports.Open = (q, s) => s.end('o');\n"),
    ]);
    let a = upload(&h.app, "keys", "", public).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.raw);
    assert!(a.body["invoke_key"].is_null(), "{}", a.raw);
    wait_deployment(&h.app, "keys", a.body["deployment"].as_i64().expect("id")).await;
    let private = |v: &str| {
        let code = format!("exports.Open = (q, s) => s.end('{v}');\nexports.Closed = (q, s) => s.end('c');\n");
        raw_tar_gz(&[
            (".eserveless.yaml", "runtime: node\nfunctions:\n  - {name: Open, type: http}\n  - {name: Closed, type: http, auth: private}\n"),
            ("functions.js", &code),
        ])
    };
    let a = upload(&h.app, "keys", "", private("o2")).await;
    let key = a.body["invoke_key"].as_str().unwrap_or_else(|| panic!("the first private function brings the key: {}", a.raw)).to_string();
    wait_deployment(&h.app, "keys", a.body["deployment"].as_i64().expect("id")).await;
    let with_key = send(&h.raw, invoke_req("/invoke/keys/Closed", Some(&key))).await;
    assert!(with_key.status != StatusCode::UNAUTHORIZED, "the issued key opens the private function: {}", with_key.raw);
    let a = upload(&h.app, "keys", "", private("o3")).await;
    assert!(a.body["invoke_key"].is_null(), "a key is shown once: {}", a.raw);
}

// ---------------------------------------------------------------------------------------------
// Logs: one NDJSON stream of timed lines, from saved output and running containers

use eserveless::infra::driver::ManagedContainer;
use eserveless::infra::logs::{LineSource, LogStream, RawLine};
use eserveless::infra::store::LogSource;

fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&chrono::Utc)
}

fn raw(time: &str, stream: LogStream, text: &str) -> RawLine {
    RawLine { time: at(time), stream, text: text.to_string() }
}

/// A running container of `demo/Open` as the engine lists it.
fn running_container(id: &str, revision: i64, role: &str, run: Option<i64>) -> ManagedContainer {
    let mut labels = eserveless::infra::driver::labels::for_container("demo", "Open", revision, role);
    if let Some(r) = run {
        labels.insert(eserveless::infra::driver::labels::RUN.to_string(), r.to_string());
    }
    ManagedContainer { id: id.to_string(), labels, running: true, paused: false, stopped: false, ip: None, node: None }
}

/// `demo` deployed (revision `rev`), with: a running instance `c-live` (lines at :01 and
/// :03), a removed instance's saved line (:02, stderr), a finished cron run's saved line (:04)
/// and a saved line of another revision (:05).
async fn logs_harness() -> (Harness, i64) {
    let h = harness(true);
    let (_repo, path) = access_repo();
    let a = post_json(&h.app, "/api/projects", &json!({"repository": path, "name": "demo"})).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.raw);
    let rev = a.body["deployment"].as_i64().expect("id");
    assert_eq!(wait_deployment(&h.app, "demo", rev).await["status"], "ready");
    h.fake.managed.lock().expect("fake").push(running_container("c-live", rev, "http", None));
    h.fake.lines.lock().expect("fake").insert(
        "c-live".into(),
        vec![raw("2026-12-01T10:00:01Z", LogStream::Stdout, "one"), raw("2026-12-01T10:00:03Z", LogStream::Stdout, "three")],
    );
    let src = |container: &str, kind, run, revision| LogSource {
        project: "demo".into(),
        function: "Open".into(),
        revision,
        kind,
        container: container.into(),
        run,
    };
    h.store.save_log_lines(&src("c-gone", LineSource::Instance, None, rev), &[raw("2026-12-01T10:00:02Z", LogStream::Stderr, "two")]).expect("save");
    h.store.save_log_lines(&src("c-run", LineSource::Run, Some(5), rev), &[raw("2026-12-01T10:00:04Z", LogStream::Stdout, "four")]).expect("save");
    h.store.save_log_lines(&src("c-old", LineSource::Instance, None, rev + 100), &[raw("2026-12-01T10:00:05Z", LogStream::Stdout, "other revision")]).expect("save");
    (h, rev)
}

/// A GET whose answer must end within 10 s: a log that is not followed ends.
async fn get_soon(app: &Router, path: &str) -> Answer {
    tokio::time::timeout(Duration::from_secs(10), get(app, path)).await.unwrap_or_else(|_| panic!("GET {path} did not end within 10 s"))
}

/// The lines of an NDJSON answer.
fn ndjson(a: &Answer) -> Vec<Value> {
    assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
    assert_eq!(header_of(a, "content-type"), "application/x-ndjson");
    a.raw.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line `{l}`: {e}"))).collect()
}

fn header_of<'a>(a: &'a Answer, name: &str) -> &'a str {
    a.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn texts(lines: &[Value]) -> Vec<&str> {
    lines.iter().map(|l| l["line"].as_str().expect("line")).collect()
}

#[tokio::test]
async fn logs_are_one_stream_in_time_order_with_source_and_revision() {
    let (h, rev) = logs_harness().await;
    let lines = ndjson(&get_soon(&h.app, "/api/projects/demo/functions/Open/logs").await);
    assert_eq!(texts(&lines), ["one", "two", "three", "four", "other revision"]);
    assert_eq!(
        lines[0],
        json!({"time": "2026-12-01T10:00:01Z", "source": "instance", "instance": "c-live", "revision": rev, "stream": "stdout", "line": "one"})
    );
    assert_eq!((lines[1]["instance"].as_str(), lines[1]["stream"].as_str()), (Some("c-gone"), Some("stderr")));
    assert_eq!((lines[3]["source"].as_str(), lines[3]["run"].as_i64()), (Some("run"), Some(5)));

    // Filters: the last N of the whole stream, since a time, one revision; none in the future.
    let tail = ndjson(&get_soon(&h.app, "/api/projects/demo/functions/Open/logs?tail=2").await);
    assert_eq!(texts(&tail), ["four", "other revision"]);
    let since = ndjson(&get_soon(&h.app, "/api/projects/demo/functions/Open/logs?since=2026-12-01T10:00:02Z").await);
    assert_eq!(texts(&since), ["two", "three", "four", "other revision"]);
    let one = ndjson(&get_soon(&h.app, &format!("/api/projects/demo/functions/Open/logs?revision={rev}&tail=3")).await);
    assert_eq!(texts(&one), ["two", "three", "four"]);
    let future = get_soon(&h.app, "/api/projects/demo/functions/Open/logs?since=2099-01-01T00:00:00Z").await;
    assert!(ndjson(&future).is_empty(), "{}", future.raw);
    let none = get_soon(&h.app, "/api/projects/demo/functions/Open/logs?tail=0").await;
    assert!(ndjson(&none).is_empty(), "{}", none.raw);
}

#[tokio::test]
async fn bad_log_filters_are_named_with_the_accepted_forms() {
    let (h, rev) = logs_harness().await;
    for (query, value, hint) in [
        ("since=yesterday", "`yesterday`", "10m"),
        ("since=10", "`10`", "RFC 3339"),
        ("tail=-1", "`-1`", "whole number"),
        ("tail=999999", "`999999`", "10000"),
        ("follow=maybe", "`maybe`", "follow=true"),
        ("revision=abc", "`abc`", "deployment id"),
    ] {
        let a = get_soon(&h.app, &format!("/api/projects/demo/functions/Open/logs?{query}")).await;
        let m = assert_error(&a, StatusCode::BAD_REQUEST, "invalid_log_filter");
        assert!(m.contains(value) && m.contains(hint), "{query}: {m}");
    }
    let a = get_soon(&h.app, &format!("/api/projects/demo/functions/Open/logs?revision={}", rev + 100)).await;
    let m = assert_error(&a, StatusCode::NOT_FOUND, "deployment_not_found");
    assert!(m.contains(&(rev + 100).to_string()), "{m}");
    let a = get_soon(&h.app, "/api/projects/demo/functions/Nope/logs").await;
    assert_error(&a, StatusCode::NOT_FOUND, "function_not_found");
    // The same access rules as every project route: a token, and only the owner's projects.
    let a = get_soon(&h.raw, "/api/projects/demo/functions/Open/logs").await;
    assert_error(&a, StatusCode::UNAUTHORIZED, "token_required");
}

/// Reads NDJSON lines from a streamed answer until `want` has arrived or `within` passes.
async fn read_until(body: &mut (impl futures_util::Stream<Item = Result<bytes::Bytes, axum::Error>> + Unpin), want: &str, within: Duration) -> Vec<Value> {
    use futures_util::StreamExt;
    let deadline = Instant::now() + within;
    let (mut buf, mut out) = (Vec::new(), Vec::new());
    while Instant::now() < deadline {
        let Ok(Some(chunk)) = tokio::time::timeout_at(deadline.into(), body.next()).await else { break };
        buf.extend_from_slice(&chunk.expect("chunk"));
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            out.push(serde_json::from_slice::<Value>(&line).expect("an NDJSON line"));
        }
        if out.iter().any(|l| l["line"] == want) {
            break;
        }
    }
    out
}

#[tokio::test]
async fn following_sends_new_lines_of_new_instances_and_of_saved_runs() {
    let (h, rev) = logs_harness().await;
    let req = Request::get("/api/projects/demo/functions/Open/logs?follow=true&tail=1").body(Body::empty()).expect("request");
    let resp = h.app.clone().oneshot(req).await.expect("the router answers");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body().into_data_stream();
    let first = read_until(&mut body, "other revision", Duration::from_secs(3)).await;
    assert_eq!(texts(&first), ["other revision"], "the tail before following");

    // An instance that starts after the follower began, and a cron run that ran and was saved
    // between two looks: both reach the follower, each line once.
    let now = chrono::Utc::now();
    h.fake.managed.lock().expect("fake").push(running_container("c-new", rev, "http", None));
    h.fake.lines.lock().expect("fake").insert("c-new".into(), vec![RawLine { time: now, stream: LogStream::Stdout, text: "new instance".into() }]);
    let got = read_until(&mut body, "new instance", Duration::from_secs(3)).await;
    assert_eq!(texts(&got), ["new instance"]);
    assert_eq!(got[0]["instance"], "c-new");
    let src = LogSource { project: "demo".into(), function: "Open".into(), revision: rev, kind: LineSource::Run, container: "c-run2".into(), run: Some(6) };
    h.store.save_log_lines(&src, &[RawLine { time: now, stream: LogStream::Stdout, text: "quick run".into() }]).expect("save");
    let got = read_until(&mut body, "quick run", Duration::from_secs(3)).await;
    assert_eq!(texts(&got), ["quick run"], "no line twice (c-live and c-new are followed too)");
    assert_eq!(got[0]["run"], 6);
}

// ---------------------------------------------------------------------------------------------
// The console's metrics history and its static files

#[tokio::test]
async fn function_metrics_answer_the_last_hour_to_the_owner_only() {
    let h = harness(true);
    let admin = h.admin_token.clone();
    let (_repo, path) = access_repo();
    let a = post_json(&h.app, "/api/projects", &json!({"repository": path, "name": "charts"})).await;
    wait_deployment(&h.app, "charts", a.body["deployment"].as_i64().expect("id")).await;
    let url = "/api/projects/charts/functions/Open/metrics";

    // Before any request: a point of zeros up to now, no latency.
    let a = get(&h.app, url).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
    assert_eq!((a.body["project"].as_str(), a.body["function"].as_str(), a.body["interval_seconds"].as_u64()), (Some("charts"), Some("Open"), Some(10)));
    let points = a.body["points"].as_array().expect("points");
    assert!(points.iter().all(|p| p["requests_per_second"] == 0.0 && p["p50_ms"].is_null()), "{}", a.raw);

    // Requests through the gateway (whatever they answer) make the last point's rate and latency.
    for _ in 0..5 {
        invoke(&h.app, "GET", "/invoke/charts/Open").await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a = get(&h.app, url).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
    let last = a.body["points"].as_array().and_then(|p| p.last().cloned()).unwrap_or_else(|| panic!("no point: {}", a.raw));
    let rate = last["requests_per_second"].as_f64().expect("rate");
    let seconds = last["seconds"].as_f64().expect("seconds");
    assert!(seconds > 1.0 && (rate * seconds - 5.0).abs() < 1e-6, "5 requests in the last point: {last}");
    let (p50, p99) = (last["p50_ms"].as_f64().expect("p50"), last["p99_ms"].as_f64().expect("p99"));
    assert!(p50 > 0.0 && p99 >= p50, "{last}");
    assert!(last["at"].as_str().is_some_and(|t| t.ends_with('Z')), "{last}");

    // The project's rules: a plain user sees nothing of it; unknown functions and no token.
    let a = send_as(&h.raw, &admin, "POST", "/api/users", Some(&json!({"name": "carol"}))).await;
    let carol = a.body["token"]["token"].as_str().expect("carol's token").to_string();
    assert_error(&send_as(&h.raw, &carol, "GET", url, None).await, StatusCode::NOT_FOUND, "project_not_found");
    assert_error(&get(&h.app, "/api/projects/charts/functions/Nope/metrics").await, StatusCode::NOT_FOUND, "function_not_found");
    assert_error(&get(&h.raw, url).await, StatusCode::UNAUTHORIZED, "token_required");
}

#[tokio::test]
async fn the_console_is_served_with_strict_headers() {
    let h = harness(false);
    let a = get(&h.raw, "/ui").await;
    assert_eq!(a.status, StatusCode::PERMANENT_REDIRECT, "{}", a.raw);
    assert_eq!(a.headers.get("location").and_then(|v| v.to_str().ok()), Some("/ui/"));
    for (path, ct) in [("/ui/", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/chart.js", "text/javascript"), ("/ui/style.css", "text/css")] {
        let a = get(&h.raw, path).await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.raw);
        let hv = |n: &str| a.headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        assert!(hv("content-type").starts_with(ct), "{path}: {}", hv("content-type"));
        let csp = hv("content-security-policy");
        assert!(csp.starts_with("default-src 'self'") && csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!((hv("x-frame-options"), hv("referrer-policy"), hv("x-content-type-options")), ("DENY".into(), "no-referrer".into(), "nosniff".into()));
        let etag = hv("etag");
        assert!(etag.starts_with('"') && etag.len() > 10, "{path}: etag {etag}");
        // The same file again: 304 without a body.
        let again = send(&h.raw, Request::get(path).header("if-none-match", &etag).body(Body::empty()).expect("req")).await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED, "{path}");
        assert!(again.raw.is_empty());
    }
    let a = get(&h.raw, "/ui/nope.js").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.headers.contains_key("content-security-policy"));
    let a = get(&h.raw, "/ui/../Cargo.toml").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.raw);
}

// The OpenAPI document

/// `(method, path template)` of every operation in the document.
fn documented_operations(doc: &Value) -> Vec<(String, String)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if ["get", "put", "post", "delete", "patch", "head", "options", "trace"].contains(&method.as_str()) {
                ops.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

/// A template with every `{param}` filled, e.g. `/api/projects/{name}` → `/api/projects/p1`.
fn fill(template: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let j = rest[i..].find('}').expect("closing brace") + i;
        out.push_str(if &rest[i + 1..j] == "function" { "F1" } else { "p1" });
        rest = &rest[j + 1..];
    }
    out.push_str(rest);
    out
}

/// The document is served without a token, parses, is OpenAPI 3.1, and every operation says
/// who may call it (security and `x-eserveless-access`) and what its errors look like.
#[tokio::test]
async fn openapi_document_describes_every_operation() {
    let h = harness(true);
    let a = get(&h.raw, "/api/openapi.json").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
    assert_eq!(a.headers.get("content-type").and_then(|v| v.to_str().ok()), Some("application/json"));
    let doc = a.body.clone();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1.")), "OpenAPI 3.1: {}", doc["openapi"]);
    assert_eq!(doc, serde_json::to_value(eserveless::api::openapi()).expect("json"), "the served document is the generated one");
    assert_eq!(doc["components"]["securitySchemes"]["bearer"], json!({"type": "http", "scheme": "bearer", "description": doc["components"]["securitySchemes"]["bearer"]["description"]}));
    let error_schema = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(error_schema["required"], json!(["error"]), "{error_schema}");
    let ops = documented_operations(&doc);
    assert!(ops.len() >= 23, "{ops:?}");
    for (method, path) in &ops {
        assert!(path.starts_with("/api/"), "{path}");
        let op = &doc["paths"][path][method.to_lowercase()];
        let what = format!("{method} {path}");
        let access = op["x-eserveless-access"].as_str().unwrap_or_else(|| panic!("{what}: no x-eserveless-access"));
        let responses = op["responses"].as_object().unwrap_or_else(|| panic!("{what}: no responses"));
        assert!(responses.keys().any(|s| s.starts_with('2')), "{what}: no success answer");
        if path == "/api/openapi.json" {
            assert_eq!((access, &op["security"]), ("public", &json!([{}])), "{what}: public");
            continue;
        }
        assert!(["user", "owner", "admin"].contains(&access), "{what}: access {access}");
        assert_eq!(op["security"], json!([{"bearer": []}]), "{what}: the bearer token");
        for status in ["401", "500"] {
            assert!(responses.contains_key(status), "{what}: no {status} answer");
        }
        if access == "admin" {
            assert!(responses.contains_key("403"), "{what}: admin only, but no 403");
        }
        if access == "owner" {
            assert!(responses.contains_key("404"), "{what}: a project's, but no 404");
        }
        for (status, r) in responses {
            let content = r["content"].as_object().unwrap_or_else(|| panic!("{what} {status}: no content"));
            if !status.starts_with('2') {
                assert_eq!(content.keys().collect::<Vec<_>>(), ["application/json"], "{what} {status}");
                assert_eq!(content["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorBody", "{what} {status}");
            }
        }
    }
    // Whose routes are whose, as the engine decides it.
    let access = |m: &str, p: &str| doc["paths"][p][m]["x-eserveless-access"].as_str().unwrap_or("").to_string();
    assert_eq!(access("get", "/api/users"), "admin");
    assert_eq!(access("post", "/api/users"), "admin");
    assert_eq!(access("delete", "/api/users/{name}"), "admin");
    assert_eq!(access("get", "/api/projects/{name}"), "owner");
    // The honest content types: a gzip body in, NDJSON out.
    let upload = &doc["paths"]["/api/projects/{name}/uploads"]["post"]["requestBody"]["content"];
    assert!(upload.get("application/gzip").is_some(), "{upload}");
    let logs = &doc["paths"]["/api/projects/{name}/functions/{function}/logs"]["get"]["responses"]["200"]["content"];
    assert!(logs.get("application/x-ndjson").is_some(), "{logs}");
    let params: Vec<&str> = doc["paths"]["/api/projects/{name}/functions/{function}/logs"]["get"]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(params, ["name", "function", "follow", "since", "tail", "revision"]);
}

/// The document and the router agree: on every documented path, each method the document
/// lists is served (it needs the token: 401 without it) and every other method is a 405; and
/// no `/api` route is added outside the `routes!()` list the document is made from.
#[tokio::test]
async fn openapi_document_lists_exactly_what_the_router_serves() {
    let h = harness(true);
    let doc = serde_json::to_value(eserveless::api::openapi()).expect("json");
    let ops = documented_operations(&doc);
    let mut paths: Vec<&String> = ops.iter().map(|(_, p)| p).collect();
    paths.dedup();
    for path in paths {
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let documented = ops.iter().any(|(m, p)| m == method && p == path);
            let uri = fill(path);
            let req = Request::builder().method(method).uri(&uri).body(Body::empty()).expect("request");
            let a = send(&h.raw, req).await;
            let what = format!("{method} {uri} (documented: {documented})");
            match (documented, path.as_str()) {
                (true, "/api/openapi.json") => assert_eq!(a.status, StatusCode::OK, "{what}"),
                (true, _) => {
                    assert_error(&a, StatusCode::UNAUTHORIZED, "token_required");
                }
                (false, _) => assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{what}: served but not documented: {}", a.raw),
            };
        }
    }
    // Every /api route goes through `routes!()`: a `.route("/api…")` beside it would be served
    // without being documented.
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api")).expect("src/api") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        for needle in [".route(\"/api", ".nest(\"/api", ".route_service(\"/api", ".nest_service(\"/api"] {
            assert!(!text.contains(needle), "{}: an /api route outside routes!() is not in the OpenAPI document", path.display());
        }
    }
}

/// What the fuzzer found in the answers, fixed: a query that does not parse is the API's JSON
/// 400 (axum's own rejection was plain text, not in the document), and a rollback body of
/// `null` is no body.
#[tokio::test]
async fn fuzzer_findings_stay_fixed() {
    let h = harness(true);
    for q in ["limit=abc", "limit=-1", "limit=99999999999"] {
        let a = get(&h.app, &format!("/api/projects/nope/deployments?{q}")).await;
        let m = assert_error(&a, StatusCode::BAD_REQUEST, "invalid_query");
        assert!(m.contains("limit"), "{q}: {m}");
    }
    let a = get(&h.app, "/api/tokens?all=maybe").await;
    assert_error(&a, StatusCode::BAD_REQUEST, "invalid_query");
    let a = get(&h.app, "/api/projects/nope/functions/F/runs?limit=x").await;
    assert_error(&a, StatusCode::BAD_REQUEST, "invalid_query");
    // `null` reads as no body: the project is what is missing, not a JSON object.
    let a = post_raw(&h.app, "/api/projects/nope/rollback", "null").await;
    assert_error(&a, StatusCode::NOT_FOUND, "project_not_found");
    let a = post_raw(&h.app, "/api/projects/nope/rollback", "[]").await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
}
