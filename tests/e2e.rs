//! End-to-end tests: the real `eserveless` binary against the real Docker engine.
//!
//! Each scenario starts its own server (own data directory, own port) and uses unique
//! project names. Scenarios run one at a time: a starting server reconciles every managed
//! container on the engine, and the machine is small.
//!
//! Without a reachable Docker engine the tests print "skipping: ..." and pass, except when
//! `CI=true`, where they fail. The harness lives in `tests/common/mod.rs`.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Scenarios

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_project_end_to_end() {
    require_docker!();
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let project = unique("e2e-node");
    let scene = Scene::new(&[&project]).await;
    let (data, images) = (&scene.data, &scene.images);
    let mut server = Server::start(data, images).await;
    let http = server.http();
    let repo = fixture_repo("node-app");
    let repo_path = repo.path().to_str().expect("utf8").to_string();

    // --- deploy with the CLI
    // A `file://` URL: the repository, fetched by the server (a path would be uploaded).
    let (code, out, err) = server.cli(&["deploy", &format!("file://{repo_path}"), "--name", &project]).await;
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
    assert_eq!(b["transport"], "unix", "the gateway reaches instances over their Unix socket: {b:#}");
    assert_eq!(b["headers"]["x-test"], "yes");
    assert_eq!(b["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(b["remoteAddress"], "127.0.0.1", "Node handlers see the client's address in req.socket.remoteAddress: {b:#}");
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
        server.cli(&["invoke", &target, "/cli/path", "-X", "PUT", "-d", "from-cli", "-H", "X-Cli: 1"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("CLI output is not JSON ({e}): {out}"));
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["path"], "/cli/path");
    assert_eq!(v["body"], "from-cli");
    assert_eq!(v["headers"]["x-cli"], "1");

    // --- every request so far to API rode one kept-alive connection, over the instance's socket
    let metrics = http.get(format!("{}/metrics", server.url)).send().await.expect("metrics").text().await.expect("metrics text");
    let connects = |transport: &str| {
        let series = format!(r#"eserveless_upstream_connections_total{{project="{project}",function="API",transport="{transport}"}} "#);
        metrics.lines().find_map(|l| l.strip_prefix(series.as_str())).map(|v| v.trim().to_string()).unwrap_or_else(|| "absent".into())
    };
    assert_eq!(
        (connects("unix").as_str(), connects("tcp").as_str()),
        ("1", "0"),
        "three sequential requests to API should reuse one connection over the socket:\n{metrics}"
    );

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
    assert!(error.contains("the build failed"), "error: {error}");
    // The user-facing line of the build log ("eserveless: functions.js failed to load: ...") is
    // part of the error. Checked at the end, so that the rest of the scenario still runs.
    let mut deferred = Vec::new();
    if !error.contains("functions.js failed to load") {
        deferred.push(format!("the failed deployment's error does not carry the build's `eserveless:` line: {error}"));
    }
    // functions.js does not load: every function of the shared image failed with it.
    let fns = d3["functions"].as_array().cloned().unwrap_or_default();
    assert!(!fns.is_empty() && fns.iter().all(|f| f["build_state"] == "failed"), "{d3:#}");
    let a = answer(http.get(invoke_api("/still")).send().await.expect("invoke API")).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert_eq!(a.body["version"], "v2", "{}", a.raw);
    let p = api_get(&http, &format!("{}/api/projects/{project}", server.url)).await;
    assert_eq!(p.body["live"]["commit"], v2_commit.as_str());
    assert_eq!(p.body["latest_deployment"]["status"], "failed");

    // --- the server crashes and comes back on the same data directory
    let before_restart = last_run_id(&http, &server.url, &project, "Ticker").await;
    server.kill();
    let server = Server::start(data, images).await;
    let invoke_api = |path: &str| format!("{}/invoke/{project}/API{path}", server.url);
    let a = answer(http.get(invoke_api("/after-restart")).send().await.expect("invoke API")).await;
    assert_eq!(a.status, 200, "API after a restart: {}", a.raw);
    assert_eq!(a.body["version"], "v2", "{}", a.raw);
    assert_eq!(a.body["path"], "/after-restart");
    assert_eq!(a.body["transport"], "unix", "an adopted instance is reached over its socket too: {}", a.raw);
    let run = wait_run(&http, &server.url, &project, "Ticker", before_restart, Duration::from_secs(60), |r| {
        r["status"] == "succeeded"
    })
    .await;
    assert!(run["output"].as_str().unwrap_or_default().contains("TICK"), "{run:#}");
    eprintln!("[{:>5.1}s] restarted; v2 serving, Ticker firing", t0.elapsed().as_secs_f64());

    // --- remove with the CLI
    let (code, out, err) = server.cli(&["rm", &project]).await;
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
    let Stage { _serial, t0, project, scene: _scene, server, http } = stage("e2e-go").await;
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
    assert_eq!(b["transport"], "unix", "the gateway reaches instances over their Unix socket: {b:#}");
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
    let (code, out, err) = server.cli(&["show", &project]).await;
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
    let no_manifest = unique("e2e-nomanifest");
    let not_exported = unique("e2e-notexported");
    let bad_yaml = unique("e2e-badyaml");
    let scene = Scene::new(&[&no_manifest, &not_exported, &bad_yaml]).await;
    let server = Server::start(&scene.data, &scene.images).await;
    let http = server.http();
    let functions_js = "'use strict';\nmodule.exports = { API: (req, res) => res.end('ok') };\n".to_string();

    // A repository that does not exist: refused at once.
    let began = Instant::now();
    let missing = scene.scratch.join("no-such-repo");
    let a = deploy(&http, &server.url, &missing, "e2e-missing").await;
    let m = assert_error(&a, 422, "repository_unreachable");
    assert!(m.contains("no-such-repo"), "{m}");
    assert!(began.elapsed() < Duration::from_secs(10), "took {:?}", began.elapsed());
    let a = api_get(&http, &format!("{}/api/projects/e2e-missing", server.url)).await;
    assert_error(&a, 404, "project_not_found");

    // No manifest: refused before anything is created; the CLI says why and exits 1.
    let repo = repo_with(&[("functions.js", functions_js.clone())]);
    let (code, out, err) =
        server.cli(&["deploy", repo.path().to_str().expect("utf8"), "--name", &no_manifest]).await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("no .eserveless.yaml") && err.contains("HTTP 422"), "{err}");
    assert!(!out.contains("invoke key") && !err.contains("invoke key"), "no key for a project that was not created: {out}{err}");
    let p = api_get(&http, &format!("{}/api/projects/{no_manifest}", server.url)).await;
    assert_error(&p, 404, "project_not_found");
    let a = answer(http.get(format!("{}/invoke/{no_manifest}/API", server.url)).send().await.expect("invoke")).await;
    assert_error(&a, 404, "function_not_found");

    // Malformed YAML: refused at once, the error says where; no project.
    let repo = repo_with(&[
        ("functions.js", functions_js.clone()),
        (".eserveless.yaml", "runtime: node\nfunctions:\n  - name: API\n    type: [http\n".to_string()),
    ]);
    let a = deploy(&http, &server.url, repo.path(), &bad_yaml).await;
    let error = assert_error(&a, 422, "invalid_manifest");
    assert!(error.contains(".eserveless.yaml") && error.contains("line"), "{error}");
    assert_error(&api_get(&http, &format!("{}/api/projects/{bad_yaml}", server.url)).await, 404, "project_not_found");

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
    // One shared image holds every function: the check names the one that failed, and
    // stops the others with it.
    assert_eq!(states.get("API").map(String::as_str), Some("cancelled"), "{states:?}");
    assert_eq!(states.get("Missing").map(String::as_str), Some("failed"), "{states:?}");
    // Nothing of a failed deployment is left behind.
    let left = images_of(&docker(), &not_exported).await;
    assert!(left.is_empty(), "images of a failed deployment left behind: {left:?}");
    // Checked at the end, so that the rest of the scenario still runs.
    let not_exported_error = d["error"].as_str().unwrap_or_default().to_string();

    for p in [&not_exported] {
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

/// The CLI as a user drives it: `login` saves the URL and token (0600) and every later command
/// sends it; users and tokens are managed from the CLI; a revoked token stops at once; without
/// a token the CLI says how to log in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_login_users_and_tokens() {
    require_docker!();
    let _serial = SERIAL.lock().await;
    let project = unique("e2e-cli");
    let scene = Scene::new(&[&project]).await;
    let server = Server::start(&scene.data, &scene.images).await;
    let config = tempfile::tempdir().expect("config home");
    let xdg = config.path().to_str().expect("utf8");
    let saved = |extra: &[&'static str]| -> Vec<(&'static str, String)> {
        let mut v = vec![("XDG_CONFIG_HOME", xdg.to_string())];
        v.extend(extra.iter().map(|k| (*k, server.url.clone())));
        v
    };
    let run = |args: Vec<String>, env: Vec<(&'static str, String)>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        cli_env(&args, &env).await
    };
    let s = |a: &[&str]| a.iter().map(|x| x.to_string()).collect::<Vec<_>>();

    // Without any token: a clear hint.
    let (code, _, err) = run(s(&["ls", "--server", &server.url]), vec![]).await;
    assert_ne!(code, 0);
    assert!(err.contains("eserveless login") && err.contains("401"), "{err}");

    let (code, out, err) = run(s(&["login", "--with-token", &server.token]), saved(&["ESERVELESS_URL"])).await;
    assert_eq!(code, 0, "{out}{err}");
    let file = config.path().join("eserveless/login.toml");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).expect("saved login").permissions().mode() & 0o777, 0o600);
    // From now on, no URL and no token in the environment: the saved login is used.
    let (code, out, err) = run(s(&["whoami"]), saved(&[])).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("admin at ") && out.contains("(admin)"), "{out}");

    let (code, out, err) = run(s(&["users", "create", "carol"]), saved(&[])).await;
    assert_eq!(code, 0, "{out}{err}");
    let carol = out.lines().last().expect("token line").trim().to_string();
    assert!(carol.starts_with("esl_"), "{out}");
    let as_carol = |args: &[&str]| {
        let mut a = s(args);
        a.extend(["--server".to_string(), server.url.clone(), "--token".to_string(), carol.clone()]);
        a
    };
    let (code, _, err) = run(as_carol(&["users", "ls"]), vec![]).await;
    assert_ne!(code, 0);
    assert!(err.contains("not an admin") && err.contains("403"), "{err}");
    let (code, out, err) = run(as_carol(&["tokens", "create", "ci"]), vec![]).await;
    assert_eq!(code, 0, "{out}{err}");
    let ci = out.lines().last().expect("token line").trim().to_string();
    let id = out.split_whitespace().nth(1).expect("token id").to_string();
    let (code, out, _) = run(as_carol(&["tokens", "ls"]), vec![]).await;
    assert_eq!(code, 0);
    assert!(out.contains("initial") && out.contains("ci") && !out.contains(&ci), "{out}");
    let (code, out, err) = run(as_carol(&["tokens", "revoke", &id]), vec![]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = run(s(&["whoami", "--server", &server.url, "--token", &ci]), vec![]).await;
    assert_ne!(code, 0);
    assert!(err.contains("unknown or revoked") && err.contains("401"), "{err}");
    let (code, out, _) = run(s(&["users", "ls"]), saved(&[])).await;
    assert_eq!(code, 0);
    assert!(out.contains("carol") && out.contains("admin"), "{out}");
    let (code, out, err) = run(s(&["users", "rm", "carol"]), saved(&[])).await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, _) = run(as_carol(&["whoami"]), vec![]).await;
    assert_ne!(code, 0, "a removed user's token no longer works");

    // Secrets and invoke keys from the CLI, on a project with a private function.
    let repo = repo_with(&[
        (".eserveless.yaml", "runtime: node\nfunctions:\n  - {name: Who, type: http, auth: private}\n".to_string()),
        ("functions.js", "exports.Who = (q, s) => s.end(process.env.GREETING || 'none');\n".to_string()),
    ]);
    let path = repo.path().to_str().expect("utf8");
    let (code, out, err) = run(s(&["deploy", path, "--name", &project]), saved(&[])).await;
    assert_eq!(code, 0, "{out}{err}");
    let key = out.lines().skip_while(|l| !l.contains("invoke key")).nth(1).expect("the key's line").trim().to_string();
    assert!(key.starts_with("eik_"), "{out}");
    let (code, out, err) = run(s(&["secrets", "set", &project, "GREETING=hello-from-secret"]), saved(&[])).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("hello-from-secret"), "{out}");
    let (code, out, _) = run(s(&["secrets", "ls", &project]), saved(&[])).await;
    assert!(code == 0 && out.contains("GREETING") && !out.contains("hello-from-secret"), "{out}");
    let target = format!("{project}/Who");
    let (code, _, err) = run(s(&["invoke", &target]), saved(&[])).await;
    assert_ne!(code, 0);
    assert!(err.contains("401"), "a private function without the key: {err}");
    let (code, out, err) = run(s(&["invoke", &target, "--key", &key]), saved(&[])).await;
    assert_eq!((code, out.trim()), (0, "hello-from-secret"), "{err}");
    let (code, out, _) = run(s(&["keys", "rotate", &project]), saved(&[])).await;
    assert_eq!(code, 0, "{out}");
    let new_key = out.lines().nth(1).expect("the new key").trim().to_string();
    let (code, _, err) = run(s(&["invoke", &target, "--key", &key]), saved(&[])).await;
    assert_ne!(code, 0, "the rotated-out key still works: {err}");
    let (code, out, err) = run(s(&["secrets", "rm", &project, "GREETING"]), saved(&[])).await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(s(&["invoke", &target, "--key", &new_key]), saved(&[])).await;
    assert_eq!((code, out.trim()), (0, "none"), "after `secrets rm` the new instance has no GREETING: {err}");
    let (code, out, err) = run(s(&["rm", &project]), saved(&[])).await;
    assert_eq!(code, 0, "{out}{err}");
}

/// An OCI runtime the engine does not know stops the server at start, with a clear error;
/// a known one (`runc` is always registered) is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_oci_runtime_is_refused_at_start() {
    require_docker!();
    let _serial = SERIAL.lock().await;
    let data = tempfile::tempdir().expect("data");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_eserveless"))
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port()), "--oci-runtime", "no-such-runtime", "--data-dir"])
        .arg(data.path())
        .env_remove("ESERVELESS_CONFIG")
        .output()
        .await
        .expect("run serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the server started with an unknown runtime");
    assert!(err.contains("`no-such-runtime` is not registered with Docker") && err.contains("runc"), "{err}");
    let images = image_env().await;
    let server = Server::start_with_args(&data.path().join("ok"), &images, &["--oci-runtime", "runc"]).await;
    assert!(tail(&server.log, 50).contains("function containers use this OCI runtime"), "{}", tail(&server.log, 50));
}

/// `iptables -S <chain>` as lines (the rules the server installed on the host).
fn iptables_rules(chain: &str) -> Vec<String> {
    let out = std::process::Command::new("iptables").args(["-w", "-S", chain]).output().expect("run iptables");
    assert!(out.status.success(), "iptables -S {chain}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("-A ")).map(str::to_string).collect()
}

/// The host firewall for the functions network: each start installs the jumps exactly once,
/// first in INPUT and DOCKER-USER, and refills the chains from the current settings
/// (`--egress=false` adds the final drop; the next start without it takes it away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firewall_rules_are_installed_once_and_follow_the_settings() {
    require_docker!();
    let _serial = SERIAL.lock().await;
    let scene = Scene::new(&[]).await;
    let check = |egress: bool| {
        for (parent, chain) in [("INPUT", "ESERVELESS-INPUT"), ("DOCKER-USER", "ESERVELESS-FWD")] {
            let rules = iptables_rules(parent);
            let jumps: Vec<&String> = rules.iter().filter(|r| r.ends_with(&format!("-j {chain}"))).collect();
            assert_eq!(jumps.len(), 1, "{parent} must jump to {chain} exactly once: {rules:#?}");
            assert_eq!(rules.first(), Some(jumps[0]), "the jump must come first in {parent}: {rules:#?}");
        }
        let input = iptables_rules("ESERVELESS-INPUT");
        assert!(input.len() == 2 && input[0].contains("ESTABLISHED") && input[1].ends_with("-j DROP"), "{input:#?}");
        let fwd = iptables_rules("ESERVELESS-FWD");
        assert!(fwd.iter().any(|r| r.contains("-d 169.254.0.0/16") && r.ends_with("-j DROP")), "{fwd:#?}");
        let last = fwd.last().expect("forward rules");
        assert_eq!(last.contains("! -o") && last.ends_with("-j DROP"), !egress, "egress {egress}: {fwd:#?}");
    };
    let mut server = Server::start_with_args(&scene.data, &scene.images, &["--egress=false"]).await;
    check(false);
    server.kill();
    let _server = Server::start(&scene.data, &scene.images).await;
    check(true);
}

/// The Python runtime through the platform: a plain-function project (with a dependency from
/// requirements.txt) and an unchanged Flask app, with the same round trip, meta, secrets,
/// streaming, timeout, crash, cron, bad build and redeploy as the other runtimes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_project_end_to_end() {
    require_docker!();
    let Stage { _serial, t0, project, scene: _scene, server, http } = stage("e2e-py").await;
    let manifest = std::fs::read_to_string(fixture("python-app").join(".eserveless.yaml")).expect("manifest");
    let code = std::fs::read_to_string(fixture("python-app").join("functions.py")).expect("functions.py");
    let extra = "\n\ndef Hang(request):\n    time.sleep(60)\n\n\ndef Crash(request):\n    os._exit(3)\n\n\ndef Secret(request):\n    return {\"greeting\": os.environ.get(\"GREETING\")}\n";
    let repo = repo_with(&[
        (".eserveless.yaml", format!("{manifest}  - name: Hang\n    type: http\n    timeout: 2s\n  - name: Crash\n    type: http\n  - name: Secret\n    type: http\n")),
        ("functions.py", format!("{code}{extra}")),
        ("requirements.txt", std::fs::read_to_string(fixture("python-app").join("requirements.txt")).expect("requirements")),
    ]);
    let a = answer(
        http.post(format!("{}/api/projects/{project}/secrets", server.url)).json(&json!({"set": {"GREETING": "from-a-secret"}})).send().await.expect("secrets"),
    )
    .await;
    assert!(a.status == 200 || a.status == 404, "{}", a.raw);
    let d = deploy_and_wait(&http, &server.url, repo.path(), &project).await;
    assert_eq!(d["status"], "ready", "{d:#}");
    assert_eq!(d["runtime"], "python");
    eprintln!("[{:>5.1}s] python-app live", t0.elapsed().as_secs_f64());
    if a.status == 404 {
        let a = answer(
            http.post(format!("{}/api/projects/{project}/secrets", server.url)).json(&json!({"set": {"GREETING": "from-a-secret"}})).send().await.expect("secrets"),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.raw);
    }

    let a = answer(
        http.post(format!("{}/invoke/{project}/API/x/y?q=1&r=2", server.url)).header("X-Test", "py").body("py-body").send().await.expect("invoke"),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.raw);
    let b = &a.body;
    assert_eq!(b["runtime"], "python", "{b:#}");
    assert_eq!(b["transport"], "unix", "the gateway reaches Python instances over their Unix socket: {b:#}");
    assert_eq!((b["method"].as_str(), b["path"].as_str(), b["query"].as_str()), (Some("POST"), Some("/x/y"), Some("q=1&r=2")), "{b:#}");
    assert_eq!(b["body"], "py-body");
    let h = |k: &str| b["headers"].as_object().and_then(|m| m.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| v.clone()));
    assert_eq!(h("x-test"), Some(json!("py")), "{b:#}");
    assert_eq!(h("x-forwarded-prefix"), Some(json!(format!("/invoke/{project}/API"))), "{b:#}");
    assert!(h("x-forwarded-for").is_some() && h("x-forwarded-proto").is_some(), "{b:#}");
    assert_eq!(b["env"]["ESERVELESS_GREETING"], "hello", "meta reaches the function: {b:#}");
    assert_eq!(b["six"], true, "the requirements.txt dependency is installed: {b:#}");
    assert_eq!(header(&a, "x-function"), "API");
    assert!(header(&a, "server-timing").starts_with("cold"), "{:?}", a.headers);

    // Streaming: the first chunk arrives long before the last.
    let began = Instant::now();
    let mut r = http.get(format!("{}/invoke/{project}/Stream?chunks=3&every=700", server.url)).send().await.expect("stream");
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.expect("chunk").expect("a first chunk");
    let first_at = began.elapsed();
    let mut all = first.to_vec();
    while let Some(c) = r.chunk().await.expect("chunk") {
        all.extend_from_slice(&c);
    }
    assert_eq!(String::from_utf8_lossy(&all), "chunk 0\nchunk 1\nchunk 2\n");
    assert!(began.elapsed() - first_at >= Duration::from_millis(1200), "not streamed: first chunk at {first_at:?}, all at {:?}", began.elapsed());

    let a = answer(http.get(format!("{}/invoke/{project}/Secret", server.url)).send().await.expect("invoke Secret")).await;
    assert_eq!(a.body["greeting"], "from-a-secret", "{}", a.raw);
    let a = answer(http.get(format!("{}/invoke/{project}/Hang", server.url)).send().await.expect("invoke Hang")).await;
    let m = assert_error(&a, 504, "function_timeout");
    assert!(m.contains("Hang"), "{m}");
    let a = answer(http.get(format!("{}/invoke/{project}/Crash", server.url)).send().await.expect("invoke Crash")).await;
    assert!(a.status == 502 || a.status == 503, "{}", a.raw);

    let run = wait_run(&http, &server.url, &project, "Ticker", 0, Duration::from_secs(60), |r| r["status"] == "succeeded").await;
    let output = run["output"].as_str().unwrap_or_default();
    assert!(output.contains("TICK") && output.contains("\"ESERVELESS_TARGET\":\"world\""), "{run:#}");

    // A syntax error: the deployment fails naming the file and line; v1 serves on.
    std::fs::write(repo.path().join("functions.py"), format!("{code}{extra}\ndef Broken(:\n    pass\n")).expect("write");
    commit_all(repo.path(), "broken");
    let bad = deploy_and_wait(&http, &server.url, repo.path(), &project).await;
    assert_eq!(bad["status"], "failed", "{bad:#}");
    let error = bad["error"].as_str().unwrap_or_default();
    assert!(error.contains("eserveless:") && error.contains("functions.py") && error.contains("SyntaxError"), "{error}");
    let a = answer(http.get(format!("{}/invoke/{project}/API", server.url)).send().await.expect("invoke")).await;
    assert_eq!(a.body["version"], "v1", "{}", a.raw);

    // A redeploy.
    std::fs::write(repo.path().join("functions.py"), format!("{code}{extra}").replace("VERSION = \"v1\"", "VERSION = \"v2\"")).expect("write");
    commit_all(repo.path(), "v2");
    let d = deploy_and_wait(&http, &server.url, repo.path(), &project).await;
    assert_eq!(d["status"], "ready", "{d:#}");
    let a = answer(http.get(format!("{}/invoke/{project}/API", server.url)).send().await.expect("invoke")).await;
    assert_eq!(a.body["version"], "v2", "{}", a.raw);
    eprintln!("[{:>5.1}s] python-app v2 live", t0.elapsed().as_secs_f64());

    // An unchanged Flask app (WSGI), from PyPI.
    let flask = unique("e2e-flask");
    let repo = fixture_repo("python-flask");
    let d = deploy_and_wait(&http, &server.url, repo.path(), &flask).await;
    assert_eq!(d["status"], "ready", "{d:#}");
    let a = answer(http.put(format!("{}/invoke/{flask}/API/items/7?x=1", server.url)).body("flask-body").send().await.expect("invoke")).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert_eq!(a.body["runtime"], "python-flask", "{}", a.raw);
    assert_eq!((a.body["method"].as_str(), a.body["path"].as_str(), a.body["body"].as_str()), (Some("PUT"), Some("/items/7"), Some("flask-body")), "{}", a.raw);
    let a = answer(http.get(format!("{}/invoke/{flask}/API/stream?chunks=4", server.url)).send().await.expect("invoke")).await;
    assert_eq!(a.raw, "chunk 0\nchunk 1\nchunk 2\nchunk 3\n");
    eprintln!("[{:>5.1}s] flask live", t0.elapsed().as_secs_f64());

    for p in [&project, &flask] {
        let a = answer(http.delete(format!("{}/api/projects/{p}", server.url)).send().await.expect("DELETE")).await;
        assert_eq!(a.status, 200, "{}", a.raw);
        assert_project_gone(p).await;
    }
}

/// `deploy DIR` with the real CLI: a git checkout is packed and uploaded (no commit needed),
/// an edit saved but not committed is what the next `deploy` (of `.`) serves, the deployment
/// says it is a dirty upload of the checkout's HEAD, and the same files again are unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_a_directory_serves_uncommitted_edits() {
    require_docker!();
    let Stage { _serial, t0, project, scene: _scene, server, http } = stage("e2e-upload").await;
    let repo = fixture_repo("node-app");
    std::fs::write(repo.path().join(".gitignore"), "local-notes.txt\n").expect("write");
    std::fs::write(repo.path().join("local-notes.txt"), "not for the server").expect("write");
    let head = commit_all(repo.path(), "ignore notes");
    let dir = repo.path().to_str().expect("utf8").to_string();

    let (code, out, err) = server.cli(&["deploy", &dir, "--name", &project]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("upload of {}", &head[..12])) && !out.contains("(dirty)"), "{out}");
    assert!(out.contains("is live"), "{out}");
    assert!(!out.contains("invoke key"), "no private function, no key: {out}");
    let invoke = || async {
        answer(http.get(format!("{}/invoke/{project}/API", server.url)).send().await.expect("invoke")).await
    };
    let a = invoke().await;
    assert_eq!((a.status, &a.body["version"]), (200, &json!("v1")), "{}", a.raw);
    eprintln!("[{:>5.1}s] upload v1 live", t0.elapsed().as_secs_f64());

    // An edit, saved and not committed; deployed from inside the directory with `deploy`.
    let code_path = repo.path().join("functions.js");
    let code_text = std::fs::read_to_string(&code_path).expect("read");
    std::fs::write(&code_path, code_text.replace("const VERSION = \"v1\";", "const VERSION = \"v2\";")).expect("edit");
    let (code, out, err) = cli_in(repo.path(), &["deploy", "--name", &project], &server).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("upload of {} (dirty)", &head[..12])), "{out}");
    let a = invoke().await;
    assert_eq!((a.status, &a.body["version"]), (200, &json!("v2")), "the uncommitted edit is served: {}", a.raw);
    let p = api_get(&http, &format!("{}/api/projects/{project}", server.url)).await;
    let live = &p.body["live"];
    assert_eq!((&live["source"], &live["commit"], &live["dirty"]), (&json!("upload"), &json!(head), &json!(true)), "{:#}", p.body);
    assert!(live["digest"].as_str().is_some_and(|d| d.starts_with("sha256:")), "{:#}", p.body);
    eprintln!("[{:>5.1}s] uncommitted edit live", t0.elapsed().as_secs_f64());

    // The same files again: nothing to build.
    let (code, out, err) = cli_in(repo.path(), &["deploy", "--name", &project], &server).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("is already live"), "{out}");
    // A path that is not there is named, never taken for a GitHub repository.
    let (code, _, err) = cli_in(repo.path(), &["deploy", "./no-such-dir"], &server).await;
    assert_ne!(code, 0);
    assert!(err.contains("no directory `./no-such-dir`"), "{err}");
}

/// Runs the CLI in `dir` against `server` (admin token), with no saved login.
async fn cli_in(dir: &std::path::Path, args: &[&str], server: &Server) -> (i32, String, String) {
    let home = tempfile::tempdir().expect("home dir");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_eserveless"))
        .args(args)
        .current_dir(dir)
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", home.path())
        .env("ESERVELESS_URL", &server.url)
        .env("ESERVELESS_TOKEN", &server.token)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run the CLI");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    eprintln!("$ (in {}) eserveless {}\n{stdout}{stderr}", dir.display(), args.join(" "));
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// `eserveless logs` against the real engine: `-f` (the real CLI) prints a line a function
/// writes during a request within 2 s, with its time, instance and revision, although the
/// instance started after the follower did; a cron run's lines arrive as `run N`; `--tail 1`
/// gives one line; `--since` in the future gives none; `-o json` is the API's line type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_new_instances_and_runs() {
    require_docker!();
    let Stage { _serial, t0, project, scene: _scene, server, http } = stage("e2e-logs").await;
    let repo = repo_with(&[
        (
            ".eserveless.yaml",
            "runtime: node\nfunctions:\n  - {name: Say, type: http}\n  - {name: Tick, type: cron, schedule: \"*/2 * * * * *\"}\n"
                .to_string(),
        ),
        (
            "functions.js",
            "exports.Say = (req, res) => { console.log('said ' + req.url); console.error('to stderr'); res.end('ok'); };\n\
             exports.Tick = () => { console.log('tick'); };\n"
                .to_string(),
        ),
    ]);
    let d = deploy_and_wait(&http, &server.url, repo.path(), &project).await;
    assert_eq!(d["status"], "ready", "{d:#}");
    let revision = d["id"].as_i64().expect("deployment id");
    let log = |m: &str| eprintln!("[{:>5.1}s] {m}", t0.elapsed().as_secs_f64());
    log("deployed");

    // The follower starts before any instance exists.
    let target = format!("{project}/Say");
    let (mut follower, mut lines) = follow(&server, &[&target, "-f"]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let id = unique("line");
    let a = answer(http.get(server.invoke_url(&project, "Say", &format!("?id={id}"))).send().await.expect("invoke")).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    let invoked = Instant::now();
    // `said <path>?id=<id>`: the path as the wrapper hands it to the handler.
    let want = format!("?id={id}");
    let mut earlier = Vec::new();
    let line = loop {
        let left = Duration::from_secs(2).saturating_sub(invoked.elapsed());
        match tokio::time::timeout(left, lines.recv()).await {
            Ok(Some(l)) if l.ends_with(&want) && l.contains("  said ") => break l,
            Ok(Some(l)) => earlier.push(l),
            _ => panic!("`logs -f` did not print `{want}` within 2 s of the answer"),
        }
    };
    log(&format!("followed in {:?}: {line}", invoked.elapsed()));
    let instance = function_containers(&docker(), &project, "Say").await.first().expect("Say's instance").0.clone();
    let parts: Vec<&str> = line.splitn(4, ' ').collect();
    let time = chrono::DateTime::parse_from_rfc3339(parts[0]).unwrap_or_else(|e| panic!("time `{}`: {e}", parts[0]));
    assert_eq!(parts[0].len(), "2026-12-01T21:40:15.123Z".len(), "milliseconds, UTC: {line}");
    assert!((chrono::Utc::now() - time.with_timezone(&chrono::Utc)).num_seconds().abs() < 10, "{line}");
    assert_eq!(parts[1], format!("r{revision}"), "{line}");
    assert_eq!(parts[2], &instance[..12], "the instance's short id: {line}");
    // The engine times stdout and stderr apart: the stderr line may come first.
    let err = tokio::time::timeout(Duration::from_secs(2), async {
        if let Some(l) = earlier.iter().find(|l| l.ends_with("  [stderr] to stderr")) {
            return l.clone();
        }
        while let Some(l) = lines.recv().await {
            if l.ends_with("  [stderr] to stderr") {
                return l;
            }
        }
        panic!("the follower ended");
    });
    err.await.expect("the stderr line of the same request within 2 s");
    follower.start_kill().expect("stop the follower");

    // The history: the last line only; nothing since a future time; JSON lines.
    // The instance's start line and the request's two lines can share a millisecond, and the
    // engine times stdout and stderr apart: which is last is the engine's to say.
    let (code, last3, err) = server.cli(&["logs", &target, "--tail", "3"]).await;
    assert_eq!((code, last3.lines().count()), (0, 3), "{last3}{err}");
    assert!(last3.contains(&want) && last3.contains("[stderr] to stderr"), "{last3}");
    let (code, out, err) = server.cli(&["logs", &target, "--tail", "1"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), last3.lines().skip(2).collect::<Vec<_>>(), "the last of the stream");
    let (code, out, err) = server.cli(&["logs", &target, "--since", "2099-01-01T00:00:00Z"]).await;
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    let (code, out, err) = server.cli(&["logs", &target, "--since", "10m", "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let json: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("`{l}`: {e}"))).collect();
    let said = json.iter().find(|l| l["line"].as_str().is_some_and(|t| t.starts_with("said ") && t.ends_with(&want))).unwrap_or_else(|| panic!("{out}"));
    assert_eq!((said["source"].as_str(), said["instance"].as_str(), said["revision"].as_i64()), (Some("instance"), Some(instance.as_str()), Some(revision)));
    assert_eq!(said["stream"], "stdout");
    let (code, _, err) = server.cli(&["logs", &target, "--since", "yesterday"]).await;
    assert!(code != 0 && err.contains("`yesterday`") && err.contains("RFC 3339"), "{err}");

    // A cron function's runs, started after the follower: `run N` lines.
    let (mut follower, mut lines) = follow(&server, &[&format!("{project}/Tick"), "-f", "--tail", "0"]);
    let line = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(l) = lines.recv().await {
            if l.ends_with(" tick") {
                return l;
            }
        }
        panic!("the follower ended");
    })
    .await
    .expect("a cron run's line within 10 s");
    let parts: Vec<&str> = line.splitn(5, ' ').collect();
    assert_eq!((parts[1], parts[2]), (format!("r{revision}").as_str(), "run"), "{line}");
    assert!(parts[3].parse::<i64>().is_ok(), "{line}");
    log(&format!("cron run followed: {line}"));
    follower.start_kill().expect("stop the follower");

    let a = answer(http.delete(format!("{}/api/projects/{project}", server.url)).send().await.expect("rm")).await;
    assert_eq!(a.status, 200, "{}", a.raw);
}

/// Starts `eserveless logs ARGS` against `server`; its stdout lines arrive on the receiver.
fn follow(server: &Server, args: &[&str]) -> (tokio::process::Child, tokio::sync::mpsc::Receiver<String>) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_eserveless"))
        .arg("logs")
        .args(args)
        .env("ESERVELESS_URL", &server.url)
        .env("ESERVELESS_TOKEN", &server.token)
        .env_remove("ESERVELESS_OUTPUT")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start `eserveless logs -f`");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = tokio::sync::mpsc::channel(1000);
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if tx.send(l).await.is_err() {
                return;
            }
        }
    });
    (child, rx)
}
