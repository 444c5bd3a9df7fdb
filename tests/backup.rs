//! End-to-end: `eserveless backup` of a running server that is being invoked and written to,
//! and `eserveless restore` into fresh data directories, one of which a second server serves
//! the same projects, tokens and secrets from. The real binary against the real Docker engine.

#[macro_use]
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// One http function that tells which container answered and the secret it was given.
fn echo_repo() -> tempfile::TempDir {
    repo_with(&[
        (".eserveless.yaml", "runtime: node\nfunctions:\n  - {name: Echo, type: http}\n".to_string()),
        (
            "functions.js",
            "exports.Echo = (q, s) => { s.setHeader('Content-Type', 'application/json'); \
             s.end(JSON.stringify({ host: require('os').hostname(), secret: process.env.BACKUP_SECRET || null })); };\n"
                .to_string(),
        ),
    ])
}

/// Polls `url` (at most 60 s) until it answers 200 with `secret`; returns the answer.
async fn wait_secret(url: &str, secret: &str) -> Answer {
    let began = Instant::now();
    loop {
        let a = api_get(&client(), url).await;
        if a.status == 200 && a.body["secret"].as_str() == Some(secret) {
            return a;
        }
        assert!(began.elapsed() < Duration::from_secs(60), "{url} did not answer with the secret within 60 s; last: {} {}", a.status, a.raw);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o777
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_serving_then_restore_and_serve_beside_the_original() {
    require_docker!();
    let Stage { _serial, t0, project, scene, server, http } = stage("bak").await;
    std::fs::create_dir_all(&scene.scratch).expect("scratch dir");

    let repo = echo_repo();
    let d = deploy_and_wait(&http, &server.url, repo.path(), &project).await;
    assert_eq!(d["status"], "ready", "{d:#}");
    let value = format!("s3cr3t-{}", unique("v"));
    let r = answer(
        http.post(format!("{}/api/projects/{project}/secrets", server.url))
            .json(&json!({"set": {"BACKUP_SECRET": value}}))
            .send()
            .await
            .expect("POST secrets"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let invoke = format!("{}/invoke/{project}/Echo", server.url);
    let first = wait_secret(&invoke, &value).await;
    let original_host = first.body["host"].as_str().expect("host").to_string();
    eprintln!("[{:>5.1}s] deployed, secret set, served by {original_host}", t0.elapsed().as_secs_f64());
    // The server holds the database open in WAL mode: recent writes may be in the WAL only,
    // which a plain copy of eserveless.db would miss.
    let wal = std::fs::metadata(scene.data.join("eserveless.db-wal")).map(|m| m.len()).unwrap_or(0);
    assert!(wal > 0, "the running server's database has no WAL");

    // Traffic and writes during the backup: invocations, and a token created every 50 ms.
    let load = RequestLoop::start(vec![invoke.clone(), invoke.clone()], Duration::from_millis(20));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, http, url) = (stop.clone(), http.clone(), server.url.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..600 {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                let a = answer(http.post(format!("{url}/api/tokens")).json(&json!({"name": format!("t{i}")})).send().await.expect("POST token")).await;
                assert_eq!(a.status, 201, "creating a token during the backup: {}", a.raw);
                ids.push((Instant::now(), a.body["id"].as_i64().expect("token id")));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ids
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let file = scene.scratch.join("eserveless.backup.tar");
    let file_s = file.to_str().expect("utf8");
    let data_s = scene.data.to_str().expect("utf8");
    let began = Instant::now();
    let (code, out, err) = cli(&["backup", file_s, "--data-dir", data_s]).await;
    assert_eq!(code, 0, "backup failed:\n{out}\n{err}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Release);
    let tokens = writer.await.expect("the token writer");
    let samples = load.finish().await;
    eprintln!("[{:>5.1}s] backup written under load ({} requests, {} tokens)", t0.elapsed().as_secs_f64(), samples.len(), tokens.len());
    let failed: Vec<&String> = samples.iter().filter_map(|s| s.result.as_ref().err()).collect();
    assert!(!samples.is_empty() && failed.is_empty(), "requests failed during the backup: {failed:?}");
    let before: Vec<i64> = tokens.iter().filter(|(at, _)| *at < began).map(|(_, id)| *id).collect();
    assert!(!before.is_empty() && before.len() < tokens.len(), "tokens were written before and during the backup");

    assert!(out.contains("wrote") && out.contains(file_s) && out.contains("1 projects") && out.contains("1 secrets"), "{out}");
    assert!(out.contains("integrity check ok") && !out.contains(&value), "{out}");
    assert!(err.contains("WARNING") && err.contains("secrets.key") && err.contains("every project secret"), "{err}");
    assert_eq!(mode(&file), 0o600, "the backup holds the key");
    let (code, _, err) = cli(&["backup", file_s, "--data-dir", data_s]).await;
    assert_ne!(code, 0, "an existing backup was overwritten without --force");
    assert!(err.contains("exists already") && err.contains("--force"), "{err}");

    // Never into a directory in use: the live server's own data directory is refused untouched.
    let key_before = std::fs::read(scene.data.join("secrets.key")).expect("key");
    let (code, _, err) = cli(&["restore", file_s, "--data-dir", data_s]).await;
    assert_ne!(code, 0, "restored over the live data directory");
    assert!(err.contains(data_s) && err.contains("not empty"), "{err}");
    assert_eq!(std::fs::read(scene.data.join("secrets.key")).expect("key"), key_before);

    // A plain restore keeps the identity, and says what that means.
    let original_id = read(&scene.data.join("server-id"));
    let same = scene.scratch.join("same-identity");
    let (code, out, err) = cli(&["restore", file_s, "--data-dir", same.to_str().expect("utf8")]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(read(&same.join("server-id")), original_id);
    assert!(out.contains(&format!("restored ({original_id})")) && out.contains("Do NOT run it beside the original"), "{out}");

    // A copy with a new identity, served by a second server beside the first.
    let clone = scene.scratch.join("clone");
    let (code, out, err) = cli(&["restore", file_s, "--data-dir", clone.to_str().expect("utf8"), "--new-identity"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let clone_id = read(&clone.join("server-id"));
    assert_ne!(clone_id, original_id);
    assert!(out.contains(&format!("server identity: new ({clone_id})")), "{out}");
    assert_eq!(mode(&clone), 0o700);
    for f in ["eserveless.db", "secrets.key", "server-id"] {
        assert_eq!(mode(&clone.join(f)), 0o600, "{f}");
    }
    assert!(!clone.join("admin-token").exists() && !clone.join("work").exists(), "only the backed-up files are restored");
    // Backups leave admin-token out; the original's token still works (the database holds its
    // hash), and the harness reads the token from this file.
    std::fs::write(clone.join("admin-token"), &server.token).expect("admin-token");
    let mut second = Server::start(&clone, &scene.images).await;
    eprintln!("[{:>5.1}s] second server up on the restored copy", t0.elapsed().as_secs_f64());

    let names = |a: &Answer| -> Vec<String> {
        a.body["projects"].as_array().expect("projects").iter().filter_map(|p| p["name"].as_str().map(str::to_string)).collect()
    };
    let listed1 = api_get(&http, &format!("{}/api/projects", server.url)).await;
    let listed2 = api_get(&second.http(), &format!("{}/api/projects", second.url)).await;
    assert_eq!(listed2.status, 200, "the original token works on the copy: {}", listed2.raw);
    assert_eq!(names(&listed2), names(&listed1));
    assert!(names(&listed2).contains(&project), "{}", listed2.raw);
    let t = api_get(&second.http(), &format!("{}/api/tokens?all=true", second.url)).await;
    let restored_tokens: Vec<i64> = t.body["tokens"].as_array().expect("tokens").iter().filter_map(|t| t["id"].as_i64()).collect();
    let lost: Vec<&i64> = before.iter().filter(|id| !restored_tokens.contains(id)).collect();
    assert!(lost.is_empty(), "tokens created before the backup began are missing from the copy: {lost:?}");

    let a = wait_secret(&format!("{}/invoke/{project}/Echo", second.url), &value).await;
    let clone_host = a.body["host"].as_str().expect("host").to_string();
    assert_ne!(clone_host, original_host, "the copy started its own instance");
    let d = docker();
    let owned = containers_with(&d, &[format!("eserveless.project={project}"), format!("eserveless.owner={clone_id}")]).await;
    assert!(owned.iter().any(|(id, _)| id.starts_with(&clone_host)), "the copy's instance carries its new id: {owned:?}");
    // The copy left the original's instance alone, and the original still serves from it.
    let a = wait_secret(&invoke, &value).await;
    assert_eq!(a.body["host"].as_str(), Some(original_host.as_str()), "the original's instance was disturbed: {}", a.raw);

    // Discard the copy as the README says: stop it and remove the containers carrying its id.
    // (`eserveless rm` on the copy would also remove the images the original still runs from.)
    second.kill();
    for (id, _) in containers_with(&d, &[format!("eserveless.owner={clone_id}")]).await {
        let opts = bollard::query_parameters::RemoveContainerOptionsBuilder::default().force(true).build();
        d.remove_container(&id, Some(opts)).await.expect("remove a container of the copy");
    }
    let a = wait_secret(&invoke, &value).await;
    assert_eq!(a.body["host"].as_str(), Some(original_host.as_str()), "discarding the copy disturbed the original: {}", a.raw);
    // Removing the project from the original leaves nothing of it on the engine.
    let r = answer(http.delete(format!("{}/api/projects/{project}", server.url)).send().await.expect("DELETE")).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_project_gone(&project).await;
    eprintln!("[{:>5.1}s] done", t0.elapsed().as_secs_f64());
}
