//! The API fuzzed against its own OpenAPI document: schemathesis (PyPI) against a live server
//! on the real Docker engine, with every check (no 5xx on any input; every answer's status,
//! content type, headers and body as documented; schema-valid input accepted and invalid
//! input refused; auth respected: `ignored_auth` sends each operation without a token and
//! with a wrong one).
//!
//! schemathesis is found at `$ESERVELESS_SCHEMATHESIS`, else `/opt/eserveless-venv/bin/st`
//! (where `.ci/run` installs it), else `st` on the PATH. Without it the test skips with a
//! message, except under `CI=true`, where it fails.
//!
//! What the fuzzer meets: a project deployed first (an http and a cron function, a line
//! logged, a secret), whose names it draws half of the time for the project, function and
//! secret path parameters (`tests/fuzzer/schemathesis.toml`); a DELETE of that project is
//! pointed elsewhere by a hook, so the whole run has it (removal is fuzzed on the projects the
//! stateful phase deploys itself from the repository it reads in `GET /api/projects`). It fuzzes as a second admin,
//! `fz-<random>`, so the first admin's token and user may be revoked or removed like any
//! other. Its own credentials survive by design: 300 tokens are issued before its own, so
//! its token id is not one a generator guesses, its user name is random, and a hook
//! (`tests/fuzzer/hooks.py`) points a DELETE that would still hit them elsewhere (a link
//! from `GET /api/tokens` can hand over the real id). The test checks the token still works
//! at the end.

#[macro_use]
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Examples per operation and phase: with 23 operations this keeps the run under 5 minutes
/// on 2 shared cores (measured: see the README).
const MAX_EXAMPLES: &str = "15";
/// The whole run's budget; schemathesis stops by itself at this, and the test kills it 30 s
/// later.
const MAX_SECONDS: u64 = 240;

fn schemathesis() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("ESERVELESS_SCHEMATHESIS") {
        if !p.is_empty() {
            return Some(PathBuf::from(p));
        }
    }
    let venv = PathBuf::from("/opt/eserveless-venv/bin/st");
    if venv.exists() {
        return Some(venv);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("st")).find(|p| p.exists())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing() {
    let Some(st) = schemathesis() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("schemathesis is not installed (no $ESERVELESS_SCHEMATHESIS, /opt/eserveless-venv/bin/st or `st` on PATH); CI=true requires the fuzzer: .ci/run installs it");
        }
        eprintln!("skipping: schemathesis is not installed; python3 -m venv /opt/eserveless-venv && /opt/eserveless-venv/bin/pip install 'schemathesis==4.*'");
        return;
    };
    require_docker!();
    let _serial = SERIAL.lock().await;
    let project = unique("fz");
    let scene = Scene::new(&[&project]).await;
    let server = Server::start(&scene.data, &scene.images).await;
    let boot = server.http();
    let base = server.url.clone();

    // The fuzzer's credentials: a second admin whose token id is far from the small numbers.
    let mut pads = Vec::new();
    for i in 0..300 {
        pads.push(boot.post(format!("{base}/api/tokens")).json(&json!({"name": format!("pad-{i}")})).send());
        if pads.len() == 20 {
            for r in futures_util::future::join_all(pads.drain(..)).await {
                assert_eq!(r.expect("POST /api/tokens").status(), 201);
            }
        }
    }
    let user = unique("fz-admin");
    let a = answer(boot.post(format!("{base}/api/users")).json(&json!({"name": user, "admin": true})).send().await.expect("user")).await;
    assert_eq!(a.status, 201, "{}", a.raw);
    let token = a.body["token"]["token"].as_str().expect("token").to_string();
    let token_id = a.body["token"]["id"].as_i64().expect("token id");
    assert!(token_id > 300, "{}", a.raw);
    let fuzzer = client_with_token(&token);

    // Something to find: a live project with an http and a cron function, a line in its log
    // and a secret.
    let repo = repo_with(&[
        (
            ".eserveless.yaml",
            "runtime: node\nfunctions:\n  - {name: Hello, type: http}\n  - {name: Tick, type: cron, schedule: \"0 0 1 1 *\"}\n".to_string(),
        ),
        ("functions.js", "exports.Hello = (q, s) => { console.log('hello from the fuzz fixture'); s.end('hi'); };\nexports.Tick = () => console.log('tick');\n".to_string()),
    ]);
    let d = deploy_and_wait(&fuzzer, &base, repo.path(), &project).await;
    assert_eq!(d["status"], "ready", "{d:#}");
    let hi = answer(reqwest::get(format!("{base}/invoke/{project}/Hello")).await.expect("invoke")).await;
    assert_eq!(hi.status, 200, "{}", hi.raw);
    let s = answer(fuzzer.post(format!("{base}/api/projects/{project}/secrets")).json(&json!({"set": {"GREETING": "x"}})).send().await.expect("secret")).await;
    assert_eq!(s.status, 200, "{}", s.raw);

    // The repository's settings plus what this run drew: the names the fuzzer may use.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzzer");
    let mut config = std::fs::read_to_string(dir.join("schemathesis.toml")).expect("tests/fuzzer/schemathesis.toml");
    config.push_str(&format!(
        r#"
[dictionaries.project]
values = ["{project}"]
[dictionaries.function]
values = ["Hello", "Tick"]
[dictionaries.secret]
values = ["GREETING"]

[[operations]]
include-path-regex = "^/api/projects/\\{{name\\}}/(deployments|uploads|rollback|secrets$|invoke-key)"
parameters = {{ "path.name" = {{ dictionary = "project", probability = 0.5 }} }}
[[operations]]
include-operation-id = "show_project"
parameters = {{ "path.name" = {{ dictionary = "project", probability = 0.5 }} }}
[[operations]]
include-path-regex = "^/api/projects/\\{{name\\}}/functions/"
parameters = {{ "path.name" = {{ dictionary = "project", probability = 0.5 }}, "path.function" = {{ dictionary = "function", probability = 0.5 }} }}
[[operations]]
include-path = "/api/projects/{{name}}/secrets/{{secret}}"
parameters = {{ "path.name" = {{ dictionary = "project", probability = 0.5 }}, "path.secret" = {{ dictionary = "secret", probability = 0.5 }} }}
"#
    ));
    let config_path = scene.scratch.with_extension("schemathesis.toml");
    std::fs::write(&config_path, config).expect("write the config");

    let began = Instant::now();
    let mut cmd = tokio::process::Command::new(&st);
    cmd.arg("--config-file")
        .arg(&config_path)
        .args(["run", &format!("{base}/api/openapi.json"), "--checks", "all", "--max-examples", MAX_EXAMPLES])
        .args(["--max-time", &MAX_SECONDS.to_string(), "--workers", "2", "--request-timeout", "30"])
        .args(["--no-color", "--generation-database", "none", "--suppress-health-check", "all"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        // Its caches (.hypothesis, .schemathesis) go to the scene's temp dir, not the tree.
        .current_dir(scene.data.parent().expect("the scene's temp dir"))
        .env("PYTHONPATH", &dir)
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("FUZZ_TOKEN_ID", token_id.to_string())
        .env("FUZZ_USER", &user)
        .env("FUZZ_PROJECT", &project)
        .kill_on_drop(true);
    // Its output to a file, so that a run cut short still shows what it did.
    let out_path = scene.scratch.with_extension("schemathesis.out");
    let file = std::fs::File::create(&out_path).expect("output file");
    cmd.stdout(std::process::Stdio::from(file.try_clone().expect("dup"))).stderr(std::process::Stdio::from(file));
    let mut child = cmd.spawn().expect("run schemathesis");
    let status = tokio::time::timeout(Duration::from_secs(MAX_SECONDS + 30), child.wait()).await;
    if status.is_err() {
        let _ = child.kill().await;
    }
    // The projects the fuzzer deployed itself (its stateful phase reuses the repository it
    // read in `GET /api/projects`), removed with their containers and images, also when the
    // run went wrong.
    let list = answer(fuzzer.get(format!("{base}/api/projects")).send().await.expect("projects")).await;
    for p in list.body["projects"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().expect("name");
        eprintln!("removing project {name}");
        // Best effort here: the verdict below is schemathesis's.
        let gone = answer(fuzzer.delete(format!("{base}/api/projects/{name}")).send().await.expect("delete")).await;
        if gone.status != 200 {
            eprintln!("project {name} not removed: {}", gone.raw);
        }
    }
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    eprintln!("{text}");
    eprintln!("schemathesis took {:.0} s", began.elapsed().as_secs_f64());
    // The server's errors, for a 5xx the fuzzer found (the log's tail shows only the end).
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    for line in log.lines().filter(|l| l.contains("ERROR") || (l.contains("project deleted") && l.contains(&project))) {
        eprintln!("server: {line}");
    }

    let status = status.unwrap_or_else(|_| panic!("schemathesis ran over {} s (its output above)", MAX_SECONDS + 30)).expect("schemathesis");
    assert!(status.success(), "schemathesis found problems (above); exit {:?}", status.code());
    // Every documented operation was selected and tested (`Selected: N/N`, `Tested: N`).
    let count = |label: &str| text.lines().find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_string()));
    let selected = count("Selected:").unwrap_or_else(|| panic!("no `Selected:` line:\n{text}"));
    let tested = count("Tested:").unwrap_or_else(|| panic!("no `Tested:` line:\n{text}"));
    let (chosen, total) = selected.split_once('/').unwrap_or_else(|| panic!("`Selected: {selected}`"));
    assert!(chosen == total && tested == total, "every operation tested: selected {selected}, tested {tested}");

    // The fuzzer's own token survived the run: the results above were all made with it.
    let w = answer(fuzzer.get(format!("{base}/api/whoami")).send().await.expect("whoami")).await;
    assert_eq!((w.status, w.body["user"].as_str()), (200, Some(user.as_str())), "{}", w.raw);
    assert!(server.log.exists());
}
