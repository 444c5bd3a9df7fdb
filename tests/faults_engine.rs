//! Fault test of the engine restarting under the server (issue 10): dockerd is stopped and
//! started again while the server runs with live instances. Its own test binary, because it
//! disturbs everything else on the engine (cargo runs test binaries one after the other).
//!
//! Without a reachable Docker engine the test prints "skipping: ..." and passes, except when
//! `CI=true`, where it fails. The harness lives in `tests/common/mod.rs`.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::*;

/// True when process `pid` exists and is not a zombie (an exited process its parent has not
/// reaped yet: dockerd started by a shell that then exec'd another program stays one).
fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // `pid (comm) state ...`
    let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next().unwrap_or('X')).unwrap_or('X');
    !matches!(state, 'Z' | 'X')
}

/// The pid of the running dockerd: `/var/run/docker.pid`, else `pidof dockerd`.
fn dockerd_pid() -> Option<u32> {
    let from_file = std::fs::read_to_string("/var/run/docker.pid").ok().and_then(|t| t.trim().parse::<u32>().ok());
    from_file.filter(|&pid| alive(pid)).or_else(|| {
        let out = std::process::Command::new("pidof").arg("dockerd").output().ok()?;
        String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).find(|&pid| alive(pid))
    })
}

/// Stops dockerd (SIGTERM) and waits until its process is gone (at most 90 s: it stops the
/// containers first, waiting up to 10 s for each that ignores SIGTERM).
fn stop_dockerd(pid: u32) {
    let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("run kill");
    assert!(status.success(), "kill -TERM {pid} (dockerd) failed");
    let began = Instant::now();
    while alive(pid) {
        assert!(began.elapsed() < Duration::from_secs(90), "dockerd (pid {pid}) still runs 90 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts dockerd exactly the way the scripts do (`ensure_docker` of scripts/lib/common.sh),
/// which returns once the engine answers.
fn start_dockerd() {
    let status = std::process::Command::new("bash")
        .args(["-c", "source scripts/lib/common.sh && ensure_docker"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run ensure_docker");
    assert!(status.success(), "ensure_docker could not start dockerd again: {status}");
}

/// Fault: dockerd stopped (SIGTERM, which stops every container) and started again under a
/// running server that has three live instances or more (Echo, and Wide's from three
/// simultaneous requests).
/// Proves: within 20 s of the engine answering again, no container of this server (owner
/// label) is left that is not running, and the functions serve again (new instances).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_restart_leaves_no_dead_containers_and_functions_serve_again() {
    require_docker!();
    let Some(pid) = dockerd_pid() else {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI=true: no dockerd process found to restart");
        eprintln!("skipping: the engine answers, but no dockerd process of this machine was found to restart");
        return;
    };
    let t0 = Instant::now();
    let log = |msg: &str| eprintln!("[{:>5.1}s] {msg}", t0.elapsed().as_secs_f64());
    let project = unique("fe-engine");
    let scene = Scene::new(&[&project]).await;
    let server = Server::start(&scene.data, &scene.images).await;
    let http = server.http();
    let repo = fixture_repo("faults-app");
    let d = deploy_and_wait(&http, &server.url, repo.path(), &project).await;
    assert_eq!(d["status"], "ready", "faults-app did not deploy: {d:#}");
    let url = |function: &str, query: &str| format!("{}/invoke/{project}/{function}{query}", server.url);

    // Instances: Echo's, and Wide's (concurrency 1) from three simultaneous requests.
    let a = answer(http.get(url("Echo", "")).send().await.expect("GET Echo")).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    let echo_host = a.body["host"].as_str().unwrap_or("").to_string();
    let wide: Vec<_> = (0..3)
        .map(|_| {
            let (http, u) = (http.clone(), url("Wide", "?sleep=1500"));
            tokio::spawn(async move { answer(http.get(&u).send().await.expect("GET Wide")).await })
        })
        .collect();
    let mut hosts = std::collections::BTreeSet::new();
    for w in wide {
        let a = w.await.expect("a Wide request");
        assert_eq!(a.status, 200, "{}", a.raw);
        hosts.insert(a.body["host"].as_str().unwrap_or("").to_string());
    }
    let before = server_containers(&docker(), &scene.data).await;
    log(&format!("instances: Echo {echo_host}, Wide {hosts:?}; containers of this server {before:?}"));
    assert!(hosts.len() >= 2, "three simultaneous requests to Wide (concurrency 1) were served by one instance: {hosts:?}");
    assert!(before.len() >= 3 && before.iter().all(|(_, s)| s == "running"), "three running instances or more expected: {before:?}");

    log(&format!("stopping dockerd (pid {pid})"));
    tokio::task::spawn_blocking(move || stop_dockerd(pid)).await.expect("stop dockerd");
    log("dockerd stopped; starting it again with ensure_docker");
    tokio::task::spawn_blocking(start_dockerd).await.expect("start dockerd");
    let back = Instant::now();
    log("the engine answers again");

    let d = docker();
    loop {
        let all = server_containers(&d, &scene.data).await;
        let dead: Vec<_> = all.iter().filter(|(_, s)| s != "running").collect();
        if dead.is_empty() {
            log(&format!("{:.1}s after the engine came back, every container of this server is running: {all:?}", back.elapsed().as_secs_f64()));
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(20), "20 s after the engine came back, containers of this server that do not run are left: {dead:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for function in ["Echo", "Wide"] {
        let a = loop {
            let a = answer(http.get(url(function, "")).send().await.expect("invoke after the engine restart")).await;
            if a.status == 200 || back.elapsed() > Duration::from_secs(40) {
                break a;
            }
            log(&format!("{function} after the engine restart: {} {}", a.status, a.raw));
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert_eq!(a.status, 200, "{function} does not serve again after the engine restart: {}", a.raw);
        log(&format!("{function} serves again, from {} ({})", a.body["host"], header(&a, "server-timing")));
    }
    let h = api_get(&client(), &format!("{}/healthz", server.url)).await;
    assert_eq!(h.status, 200, "/healthz after the engine restart: {}", h.raw);

    let a = answer(http.delete(format!("{}/api/projects/{project}", server.url)).send().await.expect("DELETE the project")).await;
    assert_eq!(a.status, 200, "removing {project}: {}", a.raw);
    wait_containers_gone(&d, &project, "").await;
    drop(server);
}
