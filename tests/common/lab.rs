//! The swarm lab's side of the harness (`tests/swarm.rs`): the 3-node docker-in-docker swarm of
//! `scripts/swarm-lab up`, servers from this build run inside its manager, fixture repositories
//! copied into it, and what each node's engine holds (containers, services, networks, images).
//!
//! Everything here goes through the host's `docker` CLI (`docker exec NODE ...`, `docker cp`):
//! the nodes' engines are not reachable from the host otherwise, and the CLI's text is enough.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::common::*;

/// The lab's node containers, manager first: `PREFIX-1..3` as `scripts/swarm-lab` names them
/// (`ESERVELESS_LAB_PREFIX`, default `esl-lab`), so a second lab beside the default one can run
/// the tier.
pub fn nodes() -> [&'static str; 3] {
    static NODES: std::sync::OnceLock<[&'static str; 3]> = std::sync::OnceLock::new();
    *NODES.get_or_init(|| {
        let prefix = std::env::var("ESERVELESS_LAB_PREFIX").unwrap_or_else(|_| "esl-lab".to_string());
        [1, 2, 3].map(|i| &*Box::leak(format!("{prefix}-{i}").into_boxed_str()))
    })
}

pub fn manager() -> &'static str {
    nodes()[0]
}

/// The manager's address on the lab's bridge (`.11` of `ESERVELESS_LAB_SUBNET`, default
/// 172.30.77.0/24): the host reaches servers in the manager there.
pub fn manager_ip() -> &'static str {
    static IP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    IP.get_or_init(|| {
        let subnet = std::env::var("ESERVELESS_LAB_SUBNET").unwrap_or_else(|_| "172.30.77.0/24".to_string());
        let net = subnet.split('/').next().unwrap_or_default();
        let head = net.rsplit_once('.').map_or(net, |(h, _)| h);
        format!("{head}.11")
    })
}
/// Where a test run keeps its binary, data directories and repositories inside the manager.
const RUN_ROOT: &str = "/var/tmp/esl-swarm-tests";

/// Runs the host's `docker` with `args`: (success, stdout, stderr).
pub fn docker_cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("docker").args(args).stdin(Stdio::null()).output().expect("run the docker CLI");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs `sh -c script` inside `node`: (success, stdout, stderr).
pub fn in_node(node: &str, script: &str) -> (bool, String, String) {
    docker_cli(&["exec", node, "sh", "-c", script])
}

/// Like [`in_node`], panicking with the output when the script fails; returns stdout.
pub fn in_node_ok(node: &str, script: &str) -> String {
    let (ok, out, err) = in_node(node, script);
    assert!(ok, "in {node}: `{script}` failed:\n{out}{err}");
    out
}

/// The async form of [`in_node`], for pollers that must not block the runtime.
pub async fn in_node_async(node: &str, script: &str) -> (bool, String) {
    let out = tokio::process::Command::new("docker")
        .args(["exec", node, "sh", "-c", script])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    match out {
        Ok(o) => (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned()),
        Err(e) => (false, e.to_string()),
    }
}

/// The node container's state on the host (`running`, `exited`, ...; empty when absent).
pub fn node_state(node: &str) -> String {
    let (_, out, _) = docker_cli(&["container", "inspect", "--format", "{{.State.Status}}", node]);
    out.trim().to_string()
}

/// `hostname -> status` of the swarm's nodes, as the manager sees them (`Ready`, `Down`, ...).
pub fn swarm_nodes() -> HashMap<String, String> {
    let (_, out, _) = in_node(manager(), "docker node ls --format '{{.Hostname}} {{.Status}}'");
    out.lines().filter_map(|l| l.split_once(' ')).map(|(h, s)| (h.to_string(), s.trim().to_string())).collect()
}

fn ready_nodes() -> usize {
    swarm_nodes().values().filter(|s| *s == "Ready").count()
}

/// Whether the lab is up: every node container runs and the manager sees 3 `Ready` nodes.
pub fn lab_check() -> Result<(), String> {
    let states: Vec<String> = nodes().iter().map(|n| format!("{n}: {}", node_state(n))).collect();
    if nodes().iter().any(|n| node_state(n) != "running") {
        return Err(format!("lab nodes not all running ({})", states.join(", ")));
    }
    let seen = swarm_nodes();
    if seen.values().filter(|s| *s == "Ready").count() < nodes().len() {
        return Err(format!("the manager does not see {} Ready nodes: {seen:?}", nodes().len()));
    }
    Ok(())
}

/// Makes sure the lab is up, once per test binary. A lab whose node containers exist but are
/// stopped (e.g. `tests/faults_engine.rs` restarted the host's dockerd) is brought back with
/// `scripts/swarm-lab up --no-server` (idempotent, seconds); a lab that was never brought up is
/// an error: the caller skips or fails with it.
pub fn ensure_lab() -> Result<(), String> {
    static STATE: Mutex<Option<Result<(), String>>> = Mutex::new(None);
    let mut state = STATE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(s) = state.as_ref() {
        return s.clone();
    }
    let result = bring_up();
    *state = Some(result.clone());
    result
}

fn bring_up() -> Result<(), String> {
    let hint = "run `scripts/swarm-lab up` first (the swarm tests need the 3-node lab)";
    if !docker_cli(&["version"]).0 {
        return Err(format!("no Docker engine reachable; {hint}"));
    }
    if nodes().iter().all(|n| node_state(n).is_empty()) {
        return Err(format!("the swarm lab is not up (no {} container); {hint}", nodes()[0]));
    }
    if lab_check().is_ok() {
        return Ok(());
    }
    // Nodes present but stopped or not ready yet: `up --no-server` starts what is stopped and
    // waits for the swarm, without touching any server.
    let began = Instant::now();
    eprintln!("the lab is not fully up ({}); running scripts/swarm-lab up --no-server", lab_check().err().unwrap_or_default());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/swarm-lab");
    let out = Command::new(script).args(["up", "--no-server"]).stdin(Stdio::null()).output().map_err(|e| format!("scripts/swarm-lab: {e}"))?;
    if !out.status.success() {
        return Err(format!("scripts/swarm-lab up --no-server failed:\n{}", String::from_utf8_lossy(&out.stderr)));
    }
    eprintln!("lab back up in {:.1}s", began.elapsed().as_secs_f64());
    lab_check()
}

/// Returns from the test when the lab is not up (printing why); fails instead under `CI=true`.
macro_rules! require_lab {
    () => {
        if let Err(why) = $crate::lab::ensure_lab() {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{why}; CI=true requires the swarm lab for tests/swarm.rs");
            }
            eprintln!("skipping: {why}");
            return;
        }
    };
}

// ---------------------------------------------------------------------------------------------
// This run's directory in the manager, and the binary copied there

/// Removes what finished runs left in the manager: a server of the swarm engine keeps its own
/// registry (a service and a volume named `esl-registry-<owner>`) after it stops, by design, so
/// the next run removes those of every earlier run whose servers are all gone (no live pid),
/// then the run's directory. A run still going (another test process) is left alone.
const JANITOR: &str = r#"for run in /var/tmp/esl-swarm-tests/run-*; do
  [ -d "$run" ] || continue
  live=0
  for p in "$run"/data-*.pid; do [ -f "$p" ] && kill -0 "$(cat "$p")" 2>/dev/null && live=1; done
  [ $live -eq 0 ] || continue
  for f in "$run"/data-*/server-id; do
    [ -f "$f" ] || continue
    owner=$(cat "$f")
    docker service ls -q --filter "label=eserveless.owner=$owner" | xargs -r docker service rm >/dev/null 2>&1
    vol="esl-registry-$(printf %.8s "$owner")"
    for i in $(seq 40); do docker volume rm "$vol" >/dev/null 2>&1 && break; docker volume inspect "$vol" >/dev/null 2>&1 || break; sleep 0.5; done
  done
  rm -rf "$run"
done"#;

/// This test process's directory inside the manager, with this build's binary copied in (once).
/// What earlier runs left is removed first ([`JANITOR`]).
pub fn run_dir() -> String {
    static DIR: Mutex<Option<String>> = Mutex::new(None);
    let mut dir = DIR.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(d) = dir.as_ref() {
        return d.clone();
    }
    let d = format!("{RUN_ROOT}/run-{}-{}", std::process::id(), unique("r").rsplit('-').next().unwrap_or("0"));
    in_node_ok(manager(), &format!("mkdir -p {RUN_ROOT} && {JANITOR} && mkdir -p {d}/repos"));
    let mgr = manager();
    let began = Instant::now();
    let (ok, _, err) = docker_cli(&["cp", "-L", env!("CARGO_BIN_EXE_eserveless"), &format!("{mgr}:{d}/eserveless")]);
    assert!(ok, "docker cp of the eserveless binary into {mgr}: {err}");
    eprintln!("copied this build's eserveless into {mgr}:{d} in {:.1}s", began.elapsed().as_secs_f64());
    *dir = Some(d.clone());
    d
}

/// Copies the git repository `repo` (on the host) to `<run dir>/repos/<name>` in the manager,
/// replacing an earlier copy; returns the path to deploy there.
pub fn copy_repo(repo: &Path, name: &str) -> String {
    let dst = format!("{}/repos/{name}", run_dir());
    let mgr = manager();
    in_node_ok(manager(), &format!("rm -rf {dst}"));
    let (ok, _, err) = docker_cli(&["cp", repo.to_str().expect("utf8 path"), &format!("{mgr}:{dst}")]);
    assert!(ok, "docker cp of {} into {mgr}:{dst}: {err}", repo.display());
    dst
}

// ---------------------------------------------------------------------------------------------
// Servers in the manager

/// The watchdogs of the servers started in the manager: `docker exec -i` children whose stdin
/// is this process's pipe. They live as long as this process; when it ends however it ends,
/// the pipe closes and the script in the manager kills its server.
static WATCHDOGS: Mutex<Vec<std::process::Child>> = Mutex::new(Vec::new());

/// An `eserveless serve` of this build running inside the manager, reached from the host.
#[derive(Clone, Debug)]
pub struct LabServer {
    pub port: u16,
    pub url: String,
    pub token: String,
    /// Its data directory, inside the manager.
    pub data: String,
    /// Its log, inside the manager.
    pub log: String,
    pub args: Vec<String>,
    pid_file: String,
}

/// How long a server in the manager may take to answer /healthz.
const START_WITHIN: Duration = Duration::from_secs(240);

/// A port nobody listens on in the manager (the host reaches it through the bridge).
pub fn free_lab_port() -> u16 {
    let mgr_ip = manager_ip();
    loop {
        let p = 20000 + (free_port() % 20000);
        if std::net::TcpStream::connect_timeout(&format!("{mgr_ip}:{p}").parse().expect("addr"), Duration::from_millis(300)).is_err() {
            return p;
        }
    }
}

impl LabServer {
    /// Starts `eserveless serve --listen 0.0.0.0:<port> --allow-local-repos <extra>` in the
    /// manager, on a fresh data directory, with the lab's offline images; waits for /healthz.
    pub async fn start(extra: &[&str]) -> LabServer {
        let n = unique("d");
        let run = run_dir();
        let data = format!("{run}/data-{n}");
        let port = free_lab_port();
        let mgr_ip = manager_ip();
        let mut s = LabServer {
            port,
            url: format!("http://{mgr_ip}:{port}"),
            token: String::new(),
            log: format!("{data}.log"),
            pid_file: format!("{data}.pid"),
            data,
            args: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.spawn().await;
        s
    }

    /// Starts the process (again, after a kill) with the same port, data directory and arguments.
    pub async fn spawn(&mut self) {
        let run = run_dir();
        let mgr = manager();
        let listen = format!("0.0.0.0:{}", self.port);
        let mut cmd = Command::new("docker");
        cmd.args(["exec", "-i"])
            .args(["-e", &format!("ESERVELESS_DATA_DIR={}", self.data)])
            .args(["-e", "ESERVELESS_NODE_IMAGE=eserveless/node:bookworm"])
            .args(["-e", "ESERVELESS_GO_IMAGE=eserveless/go:bookworm"])
            .args(["-e", "ESERVELESS_RUN_IMAGE=eserveless/run:bookworm"])
            .args(["-e", "ESERVELESS_LOG=info,eserveless=debug"])
            .arg(manager())
            .args(["sh", "-c"])
            // The server runs in the background; `cat` waits for this test process's pipe to
            // close, then the server is killed: no server outlives its test run.
            .arg(format!(
                "\"$@\" >>{log} 2>&1 & echo $! >{pid}; cat >/dev/null; kill -9 $(cat {pid}) 2>/dev/null",
                log = self.log,
                pid = self.pid_file
            ))
            .arg("sh")
            .arg(format!("{run}/eserveless"))
            .args(["serve", "--listen", &listen, "--allow-local-repos"])
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("docker exec the server");
        WATCHDOGS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(child);
        let http = client();
        let began = Instant::now();
        loop {
            let up = matches!(http.get(format!("{}/healthz", self.url)).send().await, Ok(r) if r.status() == 200);
            if up {
                let (ok, token, _) = in_node(manager(), &format!("cat {}/admin-token", self.data));
                if ok && !token.trim().is_empty() {
                    self.token = token.trim().to_string();
                    break;
                }
            }
            if began.elapsed() > Duration::from_secs(2) && !self.alive() {
                panic!("the server in {mgr} exited before it was healthy; its log:\n{}", self.tail(60));
            }
            // A first start in swarm mode builds the node guard's image, pushes it to the
            // server's new registry and runs it on every node: a minute or two here.
            if began.elapsed() > START_WITHIN {
                let log = self.tail(60);
                self.kill();
                panic!("the server in {mgr} did not answer /healthz within {START_WITHIN:?} (killed); its log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!("server in {mgr} at {} (data {}, log {}) healthy after {:.1}s", self.url, self.data, self.log, began.elapsed().as_secs_f64());
    }

    pub fn pid(&self) -> String {
        in_node(manager(), &format!("cat {}", self.pid_file)).1.trim().to_string()
    }

    pub fn alive(&self) -> bool {
        in_node(manager(), &format!("kill -0 $(cat {}) 2>/dev/null", self.pid_file)).0
    }

    /// SIGKILLs the server (a crash: nothing cleaned up) and waits until it is gone.
    pub fn kill(&self) {
        in_node(manager(), &format!("kill -9 $(cat {}) 2>/dev/null", self.pid_file));
        let began = Instant::now();
        while self.alive() {
            assert!(began.elapsed() < Duration::from_secs(10), "the server survived SIGKILL");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its identity on the engine (`<data>/server-id`): the `eserveless.owner` label.
    pub fn server_id(&self) -> String {
        in_node_ok(manager(), &format!("cat {}/server-id", self.data)).trim().to_string()
    }

    /// The last `lines` lines of its log.
    pub fn tail(&self, lines: usize) -> String {
        in_node(manager(), &format!("tail -n {lines} {}", self.log)).1
    }

    pub fn http(&self) -> reqwest::Client {
        client_with_token(&self.token)
    }

    pub fn invoke_url(&self, project: &str, function: &str, query: &str) -> String {
        format!("{}/invoke/{project}/{function}{query}", self.url)
    }

    /// Deploys the manager-side path `repo` as `project` and waits for the outcome.
    pub async fn deploy(&self, repo: &str, project: &str) -> Value {
        deploy_and_wait(&self.http(), &self.url, Path::new(repo), project).await
    }

    /// Deploys and asserts it is ready; returns the deployment.
    pub async fn deploy_ready(&self, repo: &str, project: &str) -> Value {
        let d = self.deploy(repo, project).await;
        assert_eq!(d["status"], "ready", "{project} did not deploy: {d:#}\nserver log:\n{}", self.tail(80));
        d
    }

    /// `GET /api/projects/{project}`.
    pub async fn project(&self, project: &str) -> Value {
        let a = api_get(&self.http(), &format!("{}/api/projects/{project}", self.url)).await;
        assert_eq!(a.status, 200, "{}", a.raw);
        a.body
    }

    /// The instances the API lists for `function` (each should carry its `node`).
    pub async fn instances(&self, project: &str, function: &str) -> Vec<Value> {
        let p = self.project(project).await;
        p["functions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f["name"] == function)
            .and_then(|f| f["instances"].as_array().cloned())
            .unwrap_or_default()
    }

    /// `DELETE /api/projects/{project}`; asserts 200.
    pub async fn remove(&self, project: &str) {
        let a = answer(self.http().delete(format!("{}/api/projects/{project}", self.url)).send().await.expect("DELETE project")).await;
        assert_eq!(a.status, 200, "removing {project}: {}", a.raw);
    }
}

/// Removes `project` through `server` when dropped (even when the test failed), then waits
/// until no container or service of it is left on any node.
pub struct LabCleanup {
    pub server: LabServer,
    pub project: String,
}

impl Drop for LabCleanup {
    fn drop(&mut self) {
        let (server, project) = (self.server.clone(), self.project.clone());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Runtime::new() else { return };
            rt.block_on(async {
                let url = format!("{}/api/projects/{project}", server.url);
                let _ = server.http().delete(&url).send().await;
            });
            // Whatever the server left (a failed test may have killed it): services, then
            // containers on every node.
            in_node(manager(), &format!("docker service ls -q --filter label=eserveless.project={project} | xargs -r docker service rm >/dev/null 2>&1"));
            for n in nodes() {
                if node_state(n) == "running" {
                    in_node(n, &format!("docker ps -aq --filter label=eserveless.project={project} | xargs -r docker rm -f >/dev/null 2>&1"));
                    in_node(n, &format!("docker ps -a --format '{{{{.ID}}}} {{{{.Names}}}}' | grep -F -- '-{project}' | cut -d' ' -f1 | xargs -r docker rm -f >/dev/null 2>&1"));
                    // Images pulled by digest onto a node (the server may leave them there):
                    // without this, every run would add its images to the nodes' disks.
                    in_node(n, &format!("docker images --format '{{{{.Repository}}}} {{{{.ID}}}}' | grep -F '/{project}-' | cut -d' ' -f2 | sort -u | xargs -r docker rmi -f >/dev/null 2>&1"));
                }
            }
        })
        .join();
    }
}

// ---------------------------------------------------------------------------------------------
// What the nodes hold

/// Containers (any state) of `project` on `node`: full ids. Every one, or only the functions'
/// (instances and cron runs, which carry a function label; not the gateway's attach container).
pub fn node_containers(node: &str, project: &str, running_only: bool) -> Vec<String> {
    let all = if running_only { "" } else { "-a" };
    let (_, out, _) = in_node(node, &format!("docker ps {all} -q --no-trunc --filter label=eserveless.project={project}"));
    out.split_whitespace().map(str::to_string).collect()
}

/// Containers (any state) on `node` labelled with `project` or named after it (the server's
/// own jobs for it, e.g. the image prune after `rm`), as `name (status)`.
pub fn node_container_names(node: &str, project: &str) -> Vec<String> {
    let (_, out, _) = in_node(node, "docker ps -a --format '{{.Names}}\t{{.Status}}\t{{.Labels}}'");
    out.lines()
        .filter(|l| l.contains(project))
        .map(|l| {
            let mut f = l.split('\t');
            format!("{} ({})", f.next().unwrap_or_default(), f.next().unwrap_or_default())
        })
        .collect()
}

/// Running instances and runs (containers with a function label) of `project` on `node`.
pub fn function_containers_on(node: &str, project: &str) -> Vec<String> {
    let (_, out, _) = in_node(node, &format!("docker ps -q --no-trunc --filter label=eserveless.project={project} --filter label=eserveless.function"));
    out.split_whitespace().map(str::to_string).collect()
}

/// Running function containers of `project` per running node.
pub fn running_per_node(project: &str) -> HashMap<String, usize> {
    nodes()
        .iter()
        .filter(|n| node_state(n) == "running")
        .map(|n| (n.to_string(), function_containers_on(n, project).len()))
        .filter(|(_, c)| *c > 0)
        .collect()
}

/// Running anchor containers of `project` on `node` (the global service that keeps the
/// project's overlay up on every node): full ids.
pub fn anchors_on(node: &str, project: &str) -> Vec<String> {
    let (_, out, _) = in_node(node, &format!("docker ps -q --no-trunc --filter label=eserveless.project={project} --filter label=eserveless.role=anchor"));
    out.split_whitespace().map(str::to_string).collect()
}

/// The anchor services of `project` (the manager's view): names.
pub fn anchor_services(project: &str) -> Vec<String> {
    let (_, out, _) = in_node(manager(), &format!("docker service ls --format '{{{{.Name}}}}' --filter label=eserveless.project={project} --filter label=eserveless.role=anchor"));
    out.split_whitespace().map(str::to_string).collect()
}

/// Waits (at most `within`) until one anchor service of `project` runs exactly one anchor on
/// every running node; returns the anchor containers per node.
pub async fn wait_anchored(project: &str, within: Duration) -> BTreeMap<String, Vec<String>> {
    let began = Instant::now();
    loop {
        let per: BTreeMap<String, Vec<String>> =
            nodes().iter().filter(|n| node_state(n) == "running").map(|n| (n.to_string(), anchors_on(n, project))).collect();
        let services = anchor_services(project);
        if services.len() == 1 && per.values().all(|a| a.len() == 1) {
            return per;
        }
        assert!(began.elapsed() < within, "{project}: not one anchor per node after {within:?}: services {services:?}, containers {per:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Services of `project` on the swarm (the manager's view): ids.
pub fn services_of(project: &str) -> Vec<String> {
    let (_, out, _) = in_node(manager(), &format!("docker service ls -q --filter label=eserveless.project={project}"));
    let mut v: Vec<String> = out.split_whitespace().map(str::to_string).collect();
    v.sort();
    v
}

/// Which node runs which container of `project`: a poller that asks every running node every
/// second and remembers every container it saw (containers of a dead node or a finished cron run
/// stay known). Keys are the 12-character ids a container sees as its hostname.
pub struct Placements {
    map: Arc<Mutex<HashMap<String, String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Placements {
    pub fn watch(project: &str) -> Placements {
        let map: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let (m, project) = (map.clone(), project.to_string());
        let task = tokio::spawn(async move {
            loop {
                let polls = nodes().into_iter().map(|n| {
                    let script = format!("docker ps -aq --filter label=eserveless.project={project}");
                    async move { (n.to_string(), in_node_async(n, &script).await) }
                });
                for (node, (ok, out)) in futures_util::future::join_all(polls).await {
                    if ok {
                        let mut m = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        for id in out.split_whitespace() {
                            m.insert(id.chars().take(12).collect(), node.clone());
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Placements { map, task }
    }

    /// The node of the container whose hostname is `host`, once seen.
    pub fn node_of(&self, host: &str) -> Option<String> {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(host).cloned()
    }

    /// Waits (at most `within`) until the container `host` has been seen on some node.
    pub async fn wait_node_of(&self, host: &str, within: Duration) -> Option<String> {
        let began = Instant::now();
        loop {
            if let Some(n) = self.node_of(host) {
                return Some(n);
            }
            if began.elapsed() > within {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The nodes of `hosts`, waiting a little for containers not seen yet.
    pub async fn nodes_of<'a>(&self, hosts: impl IntoIterator<Item = &'a String>) -> BTreeSet<String> {
        let mut nodes = BTreeSet::new();
        for h in hosts {
            nodes.insert(self.wait_node_of(h, Duration::from_secs(5)).await.unwrap_or_else(|| format!("unknown({h})")));
        }
        nodes
    }
}

impl Drop for Placements {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Networks on `node` whose name or labels mention `project`.
pub fn networks_of(node: &str, project: &str) -> Vec<String> {
    let (_, out, _) = in_node(node, "docker network ls --format '{{.Name}} {{.Labels}}'");
    out.lines().filter(|l| l.contains(project)).map(str::to_string).collect()
}

/// Images on `node` whose repository, tag or labels mention `project`.
pub fn images_on(node: &str, project: &str) -> Vec<String> {
    let (_, out, _) = in_node(node, "docker images -a --no-trunc --format '{{.Repository}}:{{.Tag}} {{.ID}}'");
    let mut found: Vec<String> = out.lines().filter(|l| l.contains(project)).map(str::to_string).collect();
    let (_, labelled, _) = in_node(node, &format!("docker images -aq --filter label=eserveless.project={project}"));
    found.extend(labelled.split_whitespace().map(|id| format!("labelled {id}")));
    found
}

/// The registry service `server` runs for itself on the manager (labelled with its owner and
/// the role `registry`): its service name, if there is one.
pub fn own_registry(server: &LabServer) -> Option<String> {
    let owner = server.server_id();
    let (_, out, _) = in_node(manager(), &format!("docker service ls --format '{{{{.Name}}}}' --filter label=eserveless.role=registry --filter label=eserveless.owner={owner}"));
    out.split_whitespace().next().map(str::to_string)
}

/// Tags of `project`'s repositories in the registry service `service`, read from the registry's
/// storage inside its container (`<root>/docker/registry/v2/repositories/<repo>/_manifests/tags/<tag>`):
/// Docker Distribution deletes that directory when the tag is deleted, and reading the files
/// needs no registry credentials.
pub fn registry_tags_of(service: &str, project: &str) -> Vec<String> {
    let container = in_node_ok(manager(), &format!("docker ps -q --filter label=com.docker.swarm.service.name={service}"));
    let mgr = manager();
    let container = container.split_whitespace().next().unwrap_or_else(|| panic!("the registry service {service} runs no container on {mgr}"));
    let out = in_node_ok(
        manager(),
        &format!(
            "docker exec {container} sh -c 'cd \"${{REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY:-/var/lib/docker-registry}}/docker/registry/v2/repositories\" 2>/dev/null && find . -path \"*/_manifests/tags/*/current\" -type d || true'"
        ),
    );
    out.lines().filter(|l| l.contains(project)).map(|l| l.trim_start_matches("./").trim_end_matches("/current").to_string()).collect()
}

/// Starts a node container again when dropped, if it is not running: a test that kills a node
/// leaves the lab whole even when it fails.
pub struct Revive(pub String);

impl Drop for Revive {
    fn drop(&mut self) {
        if node_state(&self.0) != "running" {
            let _ = docker_cli(&["start", &self.0]);
        }
    }
}

/// Waits (at most `within`) until the manager sees `node` Ready; returns how long it took.
pub async fn wait_ready(node: &str, within: Duration) -> Duration {
    let began = Instant::now();
    loop {
        if swarm_nodes().get(node).map(String::as_str) == Some("Ready") {
            return began.elapsed();
        }
        assert!(began.elapsed() < within, "{node} not Ready within {within:?}: {:?}", swarm_nodes());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Samples of a load run that failed.
pub fn failures(samples: &[Sample]) -> Vec<String> {
    samples.iter().filter_map(|s| s.result.as_ref().err().cloned()).collect()
}
