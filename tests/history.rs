//! End-to-end: deployment history, rollback and cron runs by hand, with the real `eserveless`
//! binary (server and CLI) against the real Docker engine. See `tests/common/mod.rs`.

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const MANIFEST: &str = "runtime: node
functions:
  - name: API
    type: http
    pause_after: 10m
  - name: Nightly
    type: cron
    schedule: \"0 3 * * *\"
  - name: Broken
    type: cron
    schedule: \"0 3 * * *\"
";

/// The code of `version`: API answers `{"version": ...}`; Nightly prints a line naming it.
fn code(version: &str) -> String {
    format!(
        "exports.API = (req, res) => {{ req.resume(); res.setHeader('Content-Type', 'application/json'); res.end(JSON.stringify({{version: '{version}'}})); }};\n\
         exports.Nightly = () => {{ console.log('nightly {version} ran'); }};\n\
         exports.Broken = () => {{ console.log('broken {version} starts'); process.exit(3); }};\n"
    )
}

async fn image_ids(project: &str) -> BTreeSet<String> {
    images_of(&docker(), project).await.into_iter().map(|(id, _)| id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_serves_v1_again_with_no_build_and_no_failed_request_and_cron_runs_by_hand() {
    require_docker!();
    let Stage { _serial, t0, project, scene, mut server, http } = stage("hist").await;
    let log = |m: &str| eprintln!("[{:>5.1}s] {m}", t0.elapsed().as_secs_f64());
    let repo = repo_with(&[(".eserveless.yaml", MANIFEST.to_string()), ("functions.js", code("v1"))]);
    let d1 = deploy_and_wait(&http, &server.url, repo.path(), &project).await;
    assert_eq!(d1["status"], "ready", "v1 did not deploy: {d1:#}");
    let (d1, c1) = (d1["id"].as_i64().expect("id"), d1["commit"].as_str().expect("commit").to_string());
    std::fs::write(repo.path().join("functions.js"), code("v2")).expect("write v2");
    let c2 = commit_all(repo.path(), "v2");
    let d2 = deploy_and_wait(&http, &server.url, repo.path(), &project).await;
    assert_eq!(d2["status"], "ready", "v2 did not deploy: {d2:#}");
    let d2 = d2["id"].as_i64().expect("id");
    let url = server.invoke_url(&project, "API", "");
    let a = api_get(&http, &url).await;
    assert_eq!((a.status, &a.body["version"]), (200, &Value::from("v2")), "{}", a.raw);
    log("v1 and v2 deployed; v2 serves");

    // --- `deployments`: both, v2 live, both can be rolled back to.
    let (code_, out, err) = server.cli(&["deployments", &project, "-o", "json"]).await;
    assert_eq!(code_, 0, "{out}{err}");
    let list: Value = serde_json::from_str(&out).expect("`deployments -o json` prints JSON");
    let ids: Vec<i64> = list["deployments"].as_array().expect("list").iter().filter_map(|d| d["id"].as_i64()).collect();
    assert_eq!(ids, [d2, d1]);
    assert_eq!((&list["deployments"][0]["live"], &list["deployments"][1]["images_present"]), (&Value::from(true), &Value::from(true)), "{out}");
    assert_eq!(list["deployments"][1]["submitted_by"], "admin", "{out}");

    // --- `rollback` under load: v1 again, from its images, not one request failed.
    let images_before = image_ids(&project).await;
    let load = RequestLoop::start(vec![url.clone(), url.clone(), format!("{url}?x=1")], Duration::from_millis(5));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let began = Instant::now();
    let (code_, out, err) = server.cli(&["rollback", &project]).await;
    let took = began.elapsed();
    let live_at = Instant::now();
    assert_eq!(code_, 0, "rollback failed:\n{out}\n{err}");
    assert!(out.contains(&format!("deployment {d1} (commit {})", &c1[..12])) && out.contains("nothing was built"), "{out}");
    assert!(out.contains(&format!("was: deployment {d2}")), "{out}");
    assert!(out.contains(&url), "prints the invoke URLs: {out}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let samples = load.finish().await;
    let failures: Vec<&String> = samples.iter().filter_map(|s| s.result.as_ref().err()).collect();
    log(&format!("rollback took {took:?}; {} requests under load, {} failed", samples.len(), failures.len()));
    assert!(failures.is_empty(), "{} of {} requests failed during the rollback: {:#?}", failures.len(), samples.len(), &failures[..failures.len().min(10)]);
    assert!(samples.len() > 30, "only {} requests were made under load", samples.len());
    let stale: Vec<String> = samples.iter().filter(|s| s.sent >= live_at).filter_map(|s| s.field("version")).filter(|v| v != "v1").collect();
    assert!(stale.is_empty(), "{} requests sent after the rollback answered another version: {:?}", stale.len(), &stale[..stale.len().min(5)]);
    assert!(samples.iter().filter(|s| s.sent >= live_at).count() > 5, "too few requests after the switch");
    assert_eq!(image_ids(&project).await, images_before, "the rollback built no image");
    assert!(took < Duration::from_secs(30), "a rollback with no build took {took:?}");

    // --- the history says what happened.
    let (code_, out, err) = server.cli(&["deployments", &project]).await;
    assert_eq!(code_, 0, "{out}{err}");
    let first = out.lines().nth(1).unwrap_or_default();
    assert!(first.contains('*') && first.contains(&format!("rollback to {d1}")) && first.contains(&c1[..12]), "{out}");
    let (_, out, _) = server.cli(&["deployments", &project, "-o", "json"]).await;
    let list: Value = serde_json::from_str(&out).expect("json");
    let top = &list["deployments"][0];
    assert_eq!((&top["rollback_of"], &top["live"], &top["commit"]), (&Value::from(d1), &Value::from(true), &Value::from(c1.clone())), "{top:#}");
    let d3 = top["id"].as_i64().expect("id");
    let shown = api_get(&http, &format!("{}/api/projects/{project}/deployments/{d3}", server.url)).await;
    assert!(shown.body["log"].as_str().unwrap_or("").contains("nothing is built"), "{}", shown.raw);
    assert!(!shown.body["log"].as_str().unwrap_or("").contains("building"), "{}", shown.raw);
    assert_ne!(c1, c2);

    // --- `cron run --wait`: the live (v1) code runs now, recorded with its output.
    let (code_, out, err) = server.cli(&["cron", "run", &format!("{project}/Nightly"), "--wait"]).await;
    assert_eq!(code_, 0, "{out}{err}");
    assert!(out.contains("succeeded, exit code 0") && out.contains("nightly v1 ran"), "{out}");
    let runs = api_get(&http, &format!("{}/api/projects/{project}/functions/Nightly/runs", server.url)).await;
    let run = &runs.body["runs"][0];
    assert_eq!((&run["trigger"], &run["status"]), (&Value::from("manual"), &Value::from("succeeded")), "{}", runs.raw);
    assert!(run["output"].as_str().unwrap_or("").contains("nightly v1 ran"), "{}", runs.raw);
    let (code_, out, err) = server.cli(&["runs", &format!("{project}/Nightly")]).await;
    assert_eq!(code_, 0, "{out}{err}");
    assert!(out.contains("manual") && out.contains("succeeded"), "{out}");
    // A run that fails: `--wait` says so and exits 1.
    let (code_, out, err) = server.cli(&["cron", "run", &format!("{project}/Broken"), "--wait"]).await;
    assert_eq!(code_, 1, "{out}{err}");
    assert!(out.contains("failed, exit code 3") && out.contains("broken v1 starts"), "{out}");
    // An http function has no runs to start or list: errors that say where its output is.
    let (code_, out, err) = server.cli(&["cron", "run", &format!("{project}/API")]).await;
    assert_eq!(code_, 1, "{out}{err}");
    assert!(err.contains("`API`") && err.contains("http function") && err.contains("(HTTP 422)"), "{err}");
    let (code_, out, err) = server.cli(&["runs", &format!("{project}/API")]).await;
    assert_eq!(code_, 1, "{out}{err}");
    assert!(err.contains("http function") && err.contains(&format!("eserveless logs {project}/API")), "{err}");
    log("history, rollback and cron run checked");

    // A restart brings the rollback back as what is live.
    server.kill();
    let server = Server::start(&scene.data, &scene.images).await;
    let a = api_get(&http, &server.invoke_url(&project, "API", "")).await;
    assert_eq!((a.status, &a.body["version"]), (200, &Value::from("v1")), "after a restart: {}", a.raw);
    let p = api_get(&http, &format!("{}/api/projects/{project}", server.url)).await;
    assert_eq!(p.body["live"]["deployment"], d3, "{}", p.raw);

    let a = answer(http.delete(format!("{}/api/projects/{project}", server.url)).send().await.expect("DELETE")).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    wait_containers_gone(&docker(), &project, "").await;
}
