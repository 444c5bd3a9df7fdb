//! Sandbox tests: the real `eserveless` binary, listening on 0.0.0.0, against the real Docker
//! engine, with `tests/fixtures/hostile-app`, whose functions each try one attack on the
//! sandbox and answer `{"attack", "blocked", "detail", ...}` (see tests/fixtures/README.md).
//!
//! One test, one deployment (building eleven images is the slow part): a `Victim` function is
//! requested every ~50 ms from start to end while the attacks run one after the other. Every
//! attack is checked and reported even when an earlier one failed; the test fails at the end
//! with one line per attack that was not contained. Where the fixture's own verdict could be
//! void (nothing listening, nothing spinning), the test checks the premise from the host too,
//! and where Docker can tell (OOM kill, CPU usage), the test asks Docker rather than trusting
//! the function.
//!
//! Network probes only target listeners the test itself starts: on each of the host's own
//! addresses, and in a network namespace it creates next to the host (a link-local and a
//! private-range address); each answers the host with the test's banner before a function is
//! sent to it. Nothing outside this machine is ever probed.
//!
//! Without a reachable Docker engine the test prints "skipping: ..." and passes, except when
//! `CI=true`, where it fails; the same for the network probes without root or iproute2 (`ip`).
//! The harness lives in `tests/common/mod.rs`.
#![allow(unsafe_code)] // setns(2) into the namespaces the test creates: libc has no safe wrapper

#[macro_use]
mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::query_parameters::{EventsOptionsBuilder, StatsOptionsBuilder};
use bollard::Docker;
use common::*;
use futures_util::StreamExt;
use serde_json::Value;

/// The functions network (the server's default `--network`).
const NETWORK: &str = "eserveless";
/// The pids limit the platform sets.
const PIDS_LIMIT: u64 = 256;
/// The most CPUs a function may use (1 CPU, plus measurement slack).
const MAX_CPUS: f64 = 1.2;

type Check = Result<String, String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        let ok: bool = $cond;
        if !ok {
            return Err(format!($($fmt)+));
        }
    };
}

struct Ctx {
    // Dropped in this order: the server is killed before the cleanup removes what is left.
    server: Server,
    _scene: Scene,
    t0: Instant,
    http: reqwest::Client,
    docker: Docker,
    project: String,
    _repo: tempfile::TempDir,
}

impl Ctx {
    fn log(&self, msg: &str) {
        eprintln!("[{:>6.1}s] {msg}", self.t0.elapsed().as_secs_f64());
    }

    fn url(&self, function: &str, query: &str) -> String {
        self.server.invoke_url(&self.project, function, query)
    }

    /// Invokes a function; a transport error is an `Err`.
    async fn invoke(&self, function: &str, query: &str) -> Result<Answer, String> {
        let url = self.url(function, query);
        match self.http.get(&url).send().await {
            Ok(r) => Ok(answer(r).await),
            Err(e) => Err(format!("GET {url}: {e}")),
        }
    }

    /// Invokes an attack and expects 200 with its report; returns the report.
    async fn attack(&self, function: &str, query: &str) -> Result<Value, String> {
        let a = self.invoke(function, query).await?;
        ensure!(a.status == 200, "{function}{query} answered {} instead of its report: {}", a.status, a.raw);
        ensure!(a.body["attack"].is_string(), "{function}{query}: no report in {}", a.raw);
        self.log(&format!("{function}: blocked={} — {}", a.body["blocked"], a.body["detail"].as_str().unwrap_or("")));
        Ok(a.body)
    }

    /// The full id of the one container of `function` whose id starts with `host`.
    async fn container(&self, function: &str, host: &str) -> Result<String, String> {
        let all = function_containers(&self.docker, &self.project, function).await;
        all.iter()
            .find(|(id, _)| !host.is_empty() && id.starts_with(host))
            .map(|(id, _)| id.clone())
            .ok_or_else(|| format!("no container of {function} has an id starting with `{host}`: {all:?}"))
    }
}

/// `blocked == true` in an attack's report, else an error quoting it.
fn blocked(report: &Value) -> Check {
    let detail = report["detail"].as_str().unwrap_or("").to_string();
    ensure!(report["blocked"] == Value::Bool(true), "NOT BLOCKED: {detail}\n      report: {report}");
    Ok(detail)
}

fn host_of(v: &Value) -> String {
    v["host"].as_str().unwrap_or("").to_string()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // p is in 0..=1
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

// ---------------------------------------------------------------------------------------------
// Host facts

/// The host's own IPv4 addresses other than loopback, from `ip -4 -o addr show` (which only
/// reads the kernel's tables), and the functions network's gateway. Docker's per-network bridges
/// (`br-…`) other than the functions network's, and other runs' probe links (`esl…`), are left
/// out: other test runs on this machine create and remove them at any time.
async fn host_addresses(d: &Docker) -> Result<Vec<Ipv4Addr>, String> {
    let gateway: Option<Ipv4Addr> = match d.inspect_network(NETWORK, None::<bollard::query_parameters::InspectNetworkOptions>).await {
        Ok(n) => n.ipam.and_then(|i| i.config).unwrap_or_default().into_iter().filter_map(|c| c.gateway).find_map(|g| g.parse().ok()),
        Err(e) => return Err(format!("inspect network {NETWORK}: {e}")),
    };
    let mut out = Vec::new();
    for line in ip(&["-4", "-o", "addr", "show"])?.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let (Some(name), Some(addr)) = (w.get(1), w.iter().position(|x| *x == "inet").and_then(|i| w.get(i + 1))) else { continue };
        let Ok(addr) = addr.split('/').next().unwrap_or("").parse::<Ipv4Addr>() else { continue };
        if name.starts_with("br-") && Some(addr) != gateway || name.starts_with("esl") || addr.is_loopback() {
            continue;
        }
        out.push(addr);
    }
    out.extend(gateway);
    let mut seen = BTreeSet::new();
    Ok(out.into_iter().filter(|a| seen.insert(*a)).collect())
}

/// The container's address on the functions network and the port its wrapper listens on
/// (`PORT` in its environment, else its one exposed port).
async fn container_endpoint(d: &Docker, id: &str) -> Result<(String, u16), String> {
    let c = d.inspect_container(id, None).await.map_err(|e| format!("inspect {id}: {e}"))?;
    let ip = c
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|mut n| n.remove(NETWORK))
        .and_then(|e| e.ip_address)
        .filter(|ip| !ip.is_empty())
        .ok_or_else(|| format!("container {id} has no address on {NETWORK}"))?;
    let config = c.config.unwrap_or_default();
    let from_env = config.env.unwrap_or_default().iter().find_map(|e| e.strip_prefix("PORT=").and_then(|p| p.parse().ok()));
    let from_expose = config.exposed_ports.unwrap_or_default().iter().find_map(|p| p.split('/').next().and_then(|p| p.parse().ok()));
    let port = from_env.or(from_expose).ok_or_else(|| format!("container {id}: no PORT and no exposed port"))?;
    Ok((ip, port))
}

/// Total CPU time (ns) the container has used, from a one-shot `docker stats`; and its
/// throttled periods.
async fn cpu_usage(d: &Docker, id: &str) -> Result<(u64, u64), String> {
    let opts = StatsOptionsBuilder::new().stream(false).one_shot(true).build();
    let s = d
        .stats(id, Some(opts))
        .next()
        .await
        .ok_or_else(|| format!("no stats for {id}"))?
        .map_err(|e| format!("stats of {id}: {e}"))?;
    let cpu = s.cpu_stats.ok_or_else(|| format!("no cpu_stats for {id}"))?;
    let total = cpu.cpu_usage.and_then(|u| u.total_usage).ok_or_else(|| format!("no total_usage for {id}"))?;
    let throttled = cpu.throttling_data.and_then(|t| t.throttled_periods).unwrap_or(0);
    Ok((total, throttled))
}

// ---------------------------------------------------------------------------------------------
// The attacks

/// Attack 1: spawning processes stops at the pids limit with EAGAIN; the function recovers.
async fn fork_bomb(ctx: &Ctx) -> Check {
    let r = ctx.attack("ForkBomb", "").await?;
    let detail = blocked(&r)?;
    let spawned = r["spawned"].as_u64().unwrap_or(u64::MAX);
    ensure!(spawned <= PIDS_LIMIT, "spawned {spawned} processes, more than the pids limit {PIDS_LIMIT}: {r}");
    ensure!(r["error"] == "EAGAIN", "spawning failed with {} instead of EAGAIN: {r}", r["error"]);
    ensure!(r["childrenReaped"] == true, "the children were not all reaped within 10s: {r}");
    ensure!(r["spawnWorksAfterwards"] == true, "spawning still failed after the children were killed: {r}");
    let again = ctx.attack("ForkBomb", "?max=1").await?;
    ensure!(again["spawned"] == 1, "the function could not spawn one process after the fork bomb: {again}");
    Ok(format!("{detail} (pids.max {}); spawning works again afterwards", r["pidsMax"]))
}

/// Attack 2: allocating past the memory limit gets the container OOM-killed; the request fails at the
/// gateway and the next one gets a fresh instance.
async fn memory(ctx: &Ctx) -> Check {
    let warm = ctx.attack("Memory", "?mb=0").await?;
    let h = host_of(&warm);
    let id = ctx.container("Memory", &h).await?;

    // Docker's own record of the kill: its `oom` event.
    let filters = HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        ("event".to_string(), vec!["oom".to_string(), "die".to_string()]),
        ("container".to_string(), vec![id.clone()]),
    ]);
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = events.clone();
    let d = ctx.docker.clone();
    let listener = tokio::spawn(async move {
        let mut stream = d.events(Some(EventsOptionsBuilder::new().filters(&filters).build()));
        while let Some(Ok(e)) = stream.next().await {
            let exit = e.actor.and_then(|a| a.attributes).and_then(|a| a.get("exitCode").cloned()).unwrap_or_default();
            sink.lock().expect("events").push(format!("{}{}", e.action.unwrap_or_default(), if exit.is_empty() { String::new() } else { format!("(exit {exit})") }));
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let began = Instant::now();
    let attack = ctx.invoke("Memory", "?mb=1024").await;
    let took = began.elapsed();
    let outcome = match &attack {
        Ok(a) => format!("{} {}", a.status, a.raw),
        Err(e) => e.clone(),
    };
    ctx.log(&format!("Memory ?mb=1024 after {took:?}: {outcome}"));
    let failed = match &attack {
        Ok(a) => a.status >= 500,
        Err(_) => true,
    };

    // The kill, as Docker saw it: the oom event, or the container's OOMKilled flag.
    let mut oom_killed = None;
    let wait = Instant::now();
    let evidence = loop {
        let seen = events.lock().expect("events").clone();
        if seen.iter().any(|e| e.starts_with("oom")) {
            break format!("docker events {seen:?}");
        }
        match ctx.docker.inspect_container(&id, None).await {
            Ok(c) => {
                let s = c.state.unwrap_or_default();
                if s.oom_killed == Some(true) {
                    oom_killed = Some(true);
                    break format!("inspect: OOMKilled, exit code {:?}", s.exit_code);
                }
            }
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                oom_killed.get_or_insert(false);
            }
            Err(e) => return Err(format!("inspect {id}: {e}")),
        }
        if wait.elapsed() > Duration::from_secs(10) {
            break format!("no oom event and no OOMKilled flag within 10s (events {seen:?}, container gone: {})", oom_killed == Some(false));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    listener.abort();
    if let Ok(a) = &attack {
        ensure!(a.status != 200 || a.body["blocked"] != false, "NOT BLOCKED: {}", a.body["detail"]);
    }
    ensure!(failed, "allocating 1 GiB answered {outcome} instead of failing at the gateway");
    let killed = events.lock().expect("events").iter().any(|e| e.starts_with("oom")) || oom_killed == Some(true);
    ensure!(killed, "the request failed ({outcome}) but Docker did not report an OOM kill of {id}: {evidence}");

    // The next request: a fresh instance.
    let next = ctx.attack("Memory", "?mb=0").await.map_err(|e| format!("the request after the OOM kill: {e}"))?;
    ensure!(host_of(&next) != h, "the OOM-killed instance {h} answered again: {next}");
    let gone = Instant::now();
    loop {
        match ctx.docker.inspect_container(&id, None).await {
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => break,
            _ if gone.elapsed() > Duration::from_secs(30) => return Err(format!("the OOM-killed container {id} is still on the engine after 30s")),
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    Ok(format!(
        "1 GiB request failed after {:.1}s with {}; {evidence}; the next request was served by a fresh instance ({} instead of {h})",
        took.as_secs_f64(),
        match &attack {
            Ok(a) => format!("{} {}", a.status, a.body["error"]["code"].as_str().unwrap_or("")),
            Err(_) => "a transport error".to_string(),
        },
        host_of(&next)
    ))
}

/// Attack 3: nothing outside /tmp is writable, /tmp is noexec, and the process is not root.
async fn rootfs_write(ctx: &Ctx) -> Check {
    let r = ctx.attack("RootfsWrite", "").await?;
    let detail = blocked(&r)?;
    ensure!(r["uid"].as_u64().is_some_and(|u| u != 0), "the function runs as uid {}", r["uid"]);
    ensure!(r["tmpWrite"] == "ok", "/tmp is not writable (so noexec was not really tested): {r}");
    Ok(detail)
}

/// Attack 4: no Docker socket in the container.
async fn docker_socket(ctx: &Ctx) -> Check {
    blocked(&ctx.attack("DockerSocket", "").await?)
}

/// The host's Docker socket: where `SocketSwap` points its symlink.
const HOST_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// True when an answer came from Docker's API rather than from a function: Docker's headers
/// (`Api-Version`, `Server: Docker/...`), `/version`'s `ApiVersion`, or `/containers/json`'s array.
fn from_docker(a: &Answer) -> bool {
    !header(a, "api-version").is_empty()
        || header(a, "server").starts_with("Docker")
        || a.body.get("ApiVersion").is_some()
        || a.body.is_array()
}

/// `GET /version` over the host's Docker socket, straight from the host: Docker's `ApiVersion`.
async fn host_docker_version() -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let talk = async {
        let mut s = tokio::net::UnixStream::connect(HOST_DOCKER_SOCKET).await?;
        s.write_all(b"GET /version HTTP/1.0\r\nHost: docker\r\n\r\n").await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&out).into_owned())
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), talk)
        .await
        .map_err(|_| format!("GET /version on {HOST_DOCKER_SOCKET} timed out"))?
        .map_err(|e| format!("GET /version on {HOST_DOCKER_SOCKET}: {e}"))?;
    let body: Value = raw.split_once("\r\n\r\n").and_then(|(_, b)| serde_json::from_str(b).ok()).unwrap_or(Value::Null);
    body["ApiVersion"].as_str().map(str::to_string).ok_or_else(|| format!("{HOST_DOCKER_SOCKET} did not answer Docker's /version: {raw}"))
}

/// Attack 4b: the function swaps the Unix socket the gateway reaches it through for a symlink
/// to the host's Docker socket and drops its connection; the gateway's next connection must not
/// follow the link (it falls back to TCP, to the function itself), whatever path the invoker asks.
async fn socket_swap(ctx: &Ctx) -> Check {
    // The premise: from the host, that path is Docker's API, so a gateway (root, in the host's
    // mount namespace) that followed the link would get Docker's answer.
    let api = host_docker_version().await.map_err(|e| format!("the attack would prove nothing: {e}"))?;
    let before = ctx.attack("SocketSwap", "").await?;
    ensure!(
        before["transport"] == "unix",
        "the gateway did not reach the instance over its Unix socket to begin with (so the swap tests nothing): {before}"
    );
    let h = host_of(&before);
    let swap = ctx.attack("SocketSwap", "?swap=1").await?;
    ensure!(host_of(&swap) == h, "the swap ran on another instance ({}) than the first request ({h}): {swap}", host_of(&swap));
    ensure!(swap["transport"] == "unix", "the swap request did not come over the Unix socket: {swap}");
    ensure!(swap["swapped"] == true, "the function could not replace its socket with a symlink to {HOST_DOCKER_SOCKET}, so nothing was tried: {swap}");
    let mut seen = Vec::new();
    for path in ["/version", "/containers/json"] {
        // The invoker's path after the function's name is what the instance is asked for.
        let a = ctx.invoke("SocketSwap", path).await?;
        ensure!(
            !from_docker(&a),
            "NOT BLOCKED: GET {path} through the gateway was answered by the host's Docker API (the gateway followed the symlink): {} {}",
            a.status,
            a.raw.chars().take(300).collect::<String>()
        );
        ensure!(a.status == 200, "SocketSwap{path} after the swap answered {} instead of the function's report: {}", a.status, a.raw);
        let r = &a.body;
        ensure!(r["attack"] == "socket-swap", "SocketSwap{path} after the swap: no report in {}", a.raw);
        ctx.log(&format!("SocketSwap{path}: blocked={} — {}", r["blocked"], r["detail"].as_str().unwrap_or("")));
        ensure!(host_of(r) == h, "another instance ({}) answered {path} than the one whose socket was swapped ({h}): {r}", host_of(r));
        ensure!(r["path"] == path, "the function was asked for {} instead of {path}: {r}", r["path"]);
        ensure!(r["linkInPlace"] == true, "the symlink was no longer in place when {path} came in, so it was not tested: {r}");
        ensure!(r["freshConnection"] == true, "{path} came on a connection opened before the swap, so no new connection was tested: {r}");
        ensure!(r["transport"] == "tcp", "{path} reached the function over {} instead of the TCP fallback: {r}", r["transport"]);
        blocked(r)?;
        seen.push(format!("{path} → the function over {}", r["transport"].as_str().unwrap_or("?")));
    }
    Ok(format!(
        "fast path in use (unix); {}; after the swap: {} (host's Docker API {api} at {HOST_DOCKER_SOCKET} never answered)",
        swap["detail"].as_str().unwrap_or("").split("; this connection").next().unwrap_or(""),
        seen.join(", ")
    ))
}

/// Attack 5: nothing on the host's own addresses answers a function: neither the server's port
/// (the server listens on 0.0.0.0) nor a listener the test puts on each address, including the
/// link-local and private-range addresses of the host's end of the probe link. The function
/// must also have no way around: its default gateway is one of the addresses tried.
async fn host_port(ctx: &Ctx, hosts: &[Ipv4Addr], listeners: &[Listener]) -> Check {
    // The premise: from the host, each listener greets with its banner and the server answers.
    let mut targets = Vec::new();
    for l in listeners {
        greets(l).await.map_err(|e| format!("the probe proves nothing: {e}"))?;
        targets.push(l.addr.to_string());
    }
    let probe = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().map_err(|e| e.to_string())?;
    for h in hosts {
        let url = format!("http://{h}:{}/healthz", ctx.server.port);
        let r = probe.get(&url).send().await.map(|r| r.status().as_u16());
        ensure!(matches!(r, Ok(200)), "the probe proves nothing: the server (on 0.0.0.0) does not answer GET {url} from the host itself: {r:?}");
        targets.push(format!("{h}:{}", ctx.server.port));
    }
    let r = reach(ctx, &targets, listeners).await?;
    let gateway = r["gateway"].as_str().unwrap_or("");
    ensure!(
        hosts.iter().any(|h| h.to_string() == gateway),
        "the function's default gateway {gateway:?} is not among the host addresses tried ({hosts:?}): {r}"
    );
    Ok(format!("{} (the host reads each listener's banner and gets 200 from the server's /healthz on each address)", blocked(&r)?))
}

/// Attack 5b: nothing on the link-local range (where cloud metadata services live) or the
/// private ranges next to the host answers a function: listeners in the test's network
/// namespace, on the far end of the probe link, which the host reaches.
async fn next_to_host(ctx: &Ctx, n: &Neighbour) -> Check {
    let l = &n.listener;
    let targets: Vec<String> = n.far.iter().map(|a| format!("{a}:{}", l.addr.port())).collect();
    for t in &targets {
        let addr: std::net::SocketAddr = t.parse().map_err(|e| format!("{t}: {e}"))?;
        greets_at(addr, &l.banner).await.map_err(|e| format!("the probe proves nothing: {e}"))?;
    }
    let r = reach(ctx, &targets, std::slice::from_ref(l)).await?;
    Ok(format!("{} (from the host, both answer with the listener's banner)", blocked(&r)?))
}

/// Has `Reach` try `targets`; checks it tried each one, and that none of `listeners` accepted
/// a connection meanwhile (the host's own witness, besides the function's verdict). Returns the
/// report.
async fn reach(ctx: &Ctx, targets: &[String], listeners: &[Listener]) -> Result<Value, String> {
    let before: Vec<usize> = listeners.iter().map(Listener::accepted).collect();
    let r = ctx.attack("Reach", &format!("?targets={}", targets.join(","))).await?;
    let tried: BTreeSet<&str> = r["tries"].as_array().into_iter().flatten().filter_map(|t| t["target"].as_str()).collect();
    let missing: Vec<&String> = targets.iter().filter(|t| !tried.contains(t.as_str())).collect();
    ensure!(missing.is_empty(), "the function did not try {missing:?}: {r}");
    let reached: Vec<String> = listeners
        .iter()
        .zip(before)
        .filter(|(l, n)| l.accepted() != *n)
        .map(|(l, n)| format!("{} ({} connection(s))", l.addr, l.accepted() - n))
        .collect();
    ensure!(reached.is_empty(), "NOT BLOCKED: the test's listeners on {} accepted connections while the function tried them: {r}", reached.join(", "));
    Ok(r)
}

/// Attack 6: another function's container is unreachable directly (only through the gateway).
async fn cross_function(ctx: &Ctx, victim: &str) -> Check {
    let (ip, port) = container_endpoint(&ctx.docker, victim).await?;
    // The premise: the victim answers on that address (from the host).
    let direct = client().get(format!("http://{ip}:{port}/")).timeout(Duration::from_secs(5)).send().await;
    ensure!(
        matches!(&direct, Ok(r) if r.status() == 200),
        "the victim does not answer on {ip}:{port} from the host, so the attack proves nothing: {direct:?}"
    );
    blocked(&ctx.attack("CrossFunction", &format!("?target={ip}:{port}")).await?)
}

/// Attack 7: no mount, directly or in a user namespace.
async fn mount(ctx: &Ctx) -> Check {
    blocked(&ctx.attack("Mount", "").await?)
}

/// Attack 7b: no capabilities, no_new_privs, seccomp filtering; setuid `su` gets nothing.
async fn privileges(ctx: &Ctx) -> Check {
    blocked(&ctx.attack("Privileges", "").await?)
}

/// Attack 8: five spinning threads get at most ~1 CPU, by the function's own clock and by Docker's.
async fn busy_loop(ctx: &Ctx) -> Check {
    let warm = ctx.attack("BusyLoop", "?ms=0").await?;
    let id = ctx.container("BusyLoop", &host_of(&warm)).await?;
    let url = ctx.url("BusyLoop", "?ms=5000&threads=4");
    let http = ctx.http.clone();
    let request = tokio::spawn(async move { http.get(&url).send().await.map_err(|e| e.to_string()) });
    // Sample well inside the 5 s spin (after the workers started, before they stop).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (u1, th1) = cpu_usage(&ctx.docker, &id).await?;
    let t1 = Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (u2, th2) = cpu_usage(&ctx.docker, &id).await?;
    let wall = t1.elapsed();
    let docker_cpus = u2.saturating_sub(u1) as f64 / wall.as_nanos() as f64;
    let a = answer(request.await.map_err(|e| e.to_string())??).await;
    ensure!(a.status == 200, "BusyLoop answered {}: {}", a.status, a.raw);
    let r = a.body;
    ctx.log(&format!("BusyLoop: blocked={} — {}; docker stats: {docker_cpus:.2} CPUs, {} more throttled periods", r["blocked"], r["detail"].as_str().unwrap_or(""), th2.saturating_sub(th1)));
    ensure!(r["allSpun"] == true, "not every worker thread spun: {r}");
    let own = r["cpus"].as_f64().unwrap_or(f64::NAN);
    // The premise: it really was busy (a low bar: the machine may be busy with other work too).
    ensure!(docker_cpus > 0.25, "Docker saw only {docker_cpus:.2} CPUs used during the spin: the attack did not run? {r}");
    ensure!(docker_cpus <= MAX_CPUS, "NOT BLOCKED: Docker saw {docker_cpus:.2} CPUs used (limit 1): {r}");
    let detail = blocked(&r)?;
    ensure!(own <= MAX_CPUS, "NOT BLOCKED: the function measured {own:.2} CPUs: {r}");
    Ok(format!("{detail}; docker stats: {docker_cpus:.2} CPUs over {:.1}s, {} more throttled periods", wall.as_secs_f64(), th2.saturating_sub(th1)))
}

// ---------------------------------------------------------------------------------------------
// The network probes' targets: only listeners the test set up, on this machine's own
// addresses or in its own network namespace (never an address outside the machine, such as a
// cloud's 169.254.169.254). Each one is first shown to answer from the host: a probe of an
// address with nothing behind it fails the same with or without the firewall.

/// Runs `ip` (iproute2) and returns its output.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip` (iproute2): {e}"))?;
    if !out.status.success() {
        return Err(format!("`ip {}` failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A TCP listener of the test: greets every connection with its banner (unique to this run), and
/// counts them.
struct Listener {
    addr: SocketAddr,
    banner: String,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    fn bind(addr: SocketAddr, tag: &str) -> std::io::Result<Listener> {
        Listener::serve(std::net::TcpListener::bind(addr)?, tag)
    }

    fn serve(l: std::net::TcpListener, tag: &str) -> std::io::Result<Listener> {
        use tokio::io::AsyncWriteExt;
        l.set_nonblocking(true)?;
        let l = tokio::net::TcpListener::from_std(l)?;
        let addr = l.local_addr()?;
        let banner = format!("eserveless-probe {tag} {addr} pid {}\n", std::process::id());
        let accepted = Arc::new(AtomicUsize::new(0));
        let (count, greeting) = (accepted.clone(), banner.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let greeting = greeting.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(2), s.write_all(greeting.as_bytes())).await;
                });
            }
        });
        Ok(Listener { addr, banner, accepted, task })
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// From the host: the listener greets with its banner on its address.
async fn greets(l: &Listener) -> Result<(), String> {
    greets_at(l.addr, &l.banner).await
}

/// From the host: a connection to `addr` reads `banner` first.
async fn greets_at(addr: SocketAddr, banner: &str) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    let talk = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let mut got = vec![0u8; banner.len()];
        s.read_exact(&mut got).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&got).into_owned())
    };
    match tokio::time::timeout(Duration::from_secs(3), talk).await {
        Ok(Ok(got)) if got == banner => Ok(()),
        Ok(Ok(got)) => Err(format!("{addr} answered the host with {got:?} instead of the test's banner {banner:?}")),
        Ok(Err(e)) => Err(format!("the test's listener on {addr} does not answer the host: {e}")),
        Err(_) => Err(format!("the test's listener on {addr} did not greet the host within 3s")),
    }
}

/// A machine next to the host, made by the test: a network namespace at the far end of a veth
/// link from the host, with a link-local and a private-range address on each end (a /24 of
/// each, free on this host), and a listener on both far addresses. A function reaching it goes
/// through the host's forwarding path, where the firewall's link-local and private-range rules
/// are; the host's own (near) end is reached through its input path. Removed on drop, even when
/// the test fails.
struct Neighbour {
    // Dropped in this order: the listener, then the namespace and link.
    listener: Listener,
    /// The host's end: `169.254.x.1`, `10.213.x.1`.
    near: [Ipv4Addr; 2],
    /// The namespace's end: `169.254.x.2`, `10.213.x.2`.
    far: [Ipv4Addr; 2],
    net: ProbeNet,
}

/// The probe namespace and the host's end of its link, removed on drop.
struct ProbeNet {
    ns: String,
    link: String,
}

impl Drop for ProbeNet {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both.
        let _ = ip(&["link", "del", &self.link]);
        if let Err(e) = ip(&["netns", "del", &self.ns]) {
            eprintln!("removing the probe namespace {}: {e}", self.ns);
        }
    }
}

/// `(net, prefix length)` overlap.
fn overlaps(a: (Ipv4Addr, u32), b: (Ipv4Addr, u32)) -> bool {
    let len = a.1.min(b.1);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(a.0) & mask == u32::from(b.0) & mask
}

/// The third octet `x` of `169.254.x.0/24` and `10.213.x.0/24`, so that no route or address of
/// this host lies inside either (then the probe link's routes are the most specific ones, and
/// nothing sent there leaves the machine). Never 169: `169.254.169.254` is not ours.
fn free_subnet() -> Result<u8, String> {
    let kinds = ["local", "broadcast", "unicast", "anycast", "multicast", "unreachable", "blackhole", "prohibit", "throw", "nat"];
    let taken: Vec<(Ipv4Addr, u32)> = ip(&["-4", "-o", "route", "show", "table", "all"])?
        .lines()
        .filter_map(|line| {
            let mut w = line.split_whitespace();
            let first = w.next()?;
            let dest = if kinds.contains(&first) { w.next()? } else { first };
            let (addr, len) = dest.split_once('/').unwrap_or((dest, "32"));
            Some((addr.parse().ok()?, len.parse().ok()?))
        })
        .collect();
    let start = std::process::id() as usize;
    (0..253)
        .map(|i| 1 + u8::try_from((start + i) % 253).expect("below 253"))
        .filter(|x| *x != 169)
        .find(|x| {
            let ours = [(Ipv4Addr::new(169, 254, *x, 0), 24), (Ipv4Addr::new(10, 213, *x, 0), 24)];
            !taken.iter().any(|t| t.1 >= 24 && ours.iter().any(|o| overlaps(*o, *t)))
        })
        .ok_or_else(|| "no free 169.254.x.0/24 and 10.213.x.0/24 on this host".to_string())
}

/// Binds a TCP listener inside the named network namespace (from a short-lived thread that
/// enters it; the socket stays in that namespace).
fn bind_in(ns: &str, addr: SocketAddr) -> Result<std::net::TcpListener, String> {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let f = std::fs::File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
            // SAFETY: a plain syscall on a valid descriptor; it only moves this thread, which
            // ends right after binding.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns into {ns}: {}", std::io::Error::last_os_error()));
            }
            std::net::TcpListener::bind(addr).map_err(|e| format!("listen on {addr} in {ns}: {e}"))
        })
        .join()
        .unwrap_or_else(|_| Err(format!("the thread binding in {ns} panicked")))
    })
}

impl Neighbour {
    async fn create() -> Result<Neighbour, String> {
        // Names unique to this process; leftovers of killed runs (their process is gone) go first.
        let pid = std::process::id();
        for ns in ip(&["netns", "list"])?.lines().filter_map(|l| l.split_whitespace().next()) {
            if let Some(other) = ns.strip_prefix("esl-nb-").and_then(|p| p.parse::<u32>().ok()) {
                if !Path::new(&format!("/proc/{other}")).exists() {
                    let _ = ip(&["link", "del", &format!("esln{other}")]);
                    let _ = ip(&["netns", "del", ns]);
                }
            }
        }
        let x = free_subnet()?;
        let (ns, link, far_end) = (format!("esl-nb-{pid}"), format!("esln{pid}"), format!("eslf{pid}"));
        ip(&["netns", "add", &ns])?;
        // From here on, dropping `net` removes what was made.
        let net = ProbeNet { ns: ns.clone(), link: link.clone() };
        let near = [Ipv4Addr::new(169, 254, x, 1), Ipv4Addr::new(10, 213, x, 1)];
        let far = [Ipv4Addr::new(169, 254, x, 2), Ipv4Addr::new(10, 213, x, 2)];
        ip(&["link", "add", &link, "type", "veth", "peer", "name", &far_end, "netns", &ns])?;
        for a in near {
            ip(&["addr", "add", &format!("{a}/24"), "dev", &link])?;
        }
        ip(&["link", "set", &link, "up"])?;
        for a in far {
            ip(&["-n", &ns, "addr", "add", &format!("{a}/24"), "dev", &far_end])?;
        }
        ip(&["-n", &ns, "link", "set", &far_end, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "route", "add", "default", "via", &near[1].to_string()])?;
        let l = bind_in(&ns, ([0, 0, 0, 0], 0).into())?;
        let listener = Listener::serve(l, "neighbour").map_err(|e| format!("serve in {ns}: {e}"))?;
        Ok(Neighbour { listener, near, far, net })
    }
}

// ---------------------------------------------------------------------------------------------
// The test

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_functions_are_contained() {
    require_docker!();
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    // First, as it is the quickest thing to fail: the network the probes need.
    let neighbour = match Neighbour::create().await {
        Ok(n) => Some(n),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("cannot set up the network probes' targets: {e}\nCI=true requires them (run as root, with iproute2 installed)")
        }
        Err(e) => {
            eprintln!("skipping the network probes (the host's addresses, link-local and private ranges): {e}");
            None
        }
    };
    let project = unique("sec");
    let scene = Scene::new(&[&project]).await;
    let server = Server::start_on("0.0.0.0", &scene.data, &scene.images, &[]).await;
    let http = server.http();
    let repo = fixture_repo("hostile-app");
    let ctx = Ctx { server, _scene: scene, t0, http, docker: docker(), project, _repo: repo };
    let d = deploy_and_wait(&ctx.http, &ctx.server.url, ctx._repo.path(), &ctx.project).await;
    assert_eq!(d["status"], "ready", "hostile-app did not deploy: {d:#}");
    ctx.log(&format!("{} live", ctx.project));

    let v = ctx.invoke("Victim", "").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v.status, 200, "the victim: {}", v.raw);
    let victim = ctx.container("Victim", &host_of(&v.body)).await.unwrap_or_else(|e| panic!("{e}"));
    ctx.log(&format!("victim {victim}; server port {}", ctx.server.port));
    // The network probes' targets: listeners on the host's addresses and in the neighbour.
    let probes = match neighbour {
        Some(n) => {
            let mut hosts = host_addresses(&ctx.docker).await.unwrap_or_else(|e| panic!("{e}"));
            hosts.extend(n.near);
            assert!(hosts.len() > 2, "no IPv4 address of the host found besides the probe link's: {hosts:?}");
            let mut listeners = Vec::new();
            for h in &hosts {
                listeners.push(Listener::bind((*h, 0).into(), "host").unwrap_or_else(|e| panic!("listen on {h}: {e}")));
            }
            ctx.log(&format!("host addresses {hosts:?}; neighbour {}: {:?} port {}", n.net.ns, n.far, n.listener.addr.port()));
            Some((hosts, listeners, n))
        }
        None => None,
    };

    // The victim, requested every ~50 ms all along (without a token: /invoke is public).
    let load = RequestLoop::start(vec![ctx.url("Victim", "")], Duration::from_millis(50));
    let attacks_began = Instant::now();
    let mut results: Vec<(&str, Duration, Check)> = Vec::new();
    macro_rules! run {
        ($name:literal, $check:expr) => {{
            ctx.log(concat!("---- ", $name));
            let began = Instant::now();
            let r = $check.await;
            match &r {
                Ok(s) => ctx.log(&format!("{} contained: {s}", $name)),
                Err(e) => ctx.log(&format!("{} FAILED: {e}", $name)),
            }
            results.push(($name, began.elapsed(), r));
        }};
    }
    run!("rootfs write", rootfs_write(&ctx));
    run!("docker socket", docker_socket(&ctx));
    run!("socket swap (symlink to the host's Docker socket)", socket_swap(&ctx));
    run!("mount", mount(&ctx));
    run!("privileges", privileges(&ctx));
    if let Some((hosts, listeners, n)) = &probes {
        run!("the host's own addresses", host_port(&ctx, hosts, listeners));
        run!("link-local and private addresses next to the host", next_to_host(&ctx, n));
    }
    run!("another function", cross_function(&ctx, &victim));
    run!("fork bomb", fork_bomb(&ctx));
    run!("memory", memory(&ctx));
    run!("busy loop", busy_loop(&ctx));
    // A last stretch of victim traffic after the last attack.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let samples = load.finish().await;
    let attacks_took = attacks_began.elapsed();

    let healthz = client().get(format!("{}/healthz", ctx.server.url)).send().await.map(|r| r.status().as_u16());

    // The victim's record.
    let at = |sample: &Sample| (sample.sent - t0).as_secs_f64();
    let answered_ok = |sample: &Sample| sample.field("status").as_deref() == Some("ok");
    let failures: Vec<String> = samples
        .iter()
        .filter(|x| !answered_ok(x))
        .map(|x| format!("at {:.1}s after {:?}: {}", at(x), x.took, x.result.as_ref().map_or_else(String::clone, Value::to_string)))
        .collect();
    let mut lat: Vec<Duration> = samples.iter().filter(|x| answered_ok(x)).map(|x| x.took).collect();
    lat.sort();
    let (p50, p95, p99, max) = (percentile(&lat, 0.5), percentile(&lat, 0.95), percentile(&lat, 0.99), lat.last().copied().unwrap_or_default());
    let victim_hosts: BTreeSet<String> = samples.iter().filter(|x| answered_ok(x)).filter_map(|x| x.field("host")).collect();
    let slowest = samples.iter().max_by_key(|x| x.took).map(|x| format!("{:?} at {:.1}s", x.took, at(x))).unwrap_or_default();

    let mut report = vec![format!("attacks ({:.1}s):", attacks_took.as_secs_f64())];
    for (name, took, r) in &results {
        match r {
            Ok(s) => report.push(format!("  [ok]   {name} ({:.1}s): {s}", took.as_secs_f64())),
            Err(e) => report.push(format!("  [FAIL] {name} ({:.1}s): {e}", took.as_secs_f64())),
        }
    }
    report.push(format!(
        "victim: {} requests, {} failed; latency p50 {p50:?}, p95 {p95:?}, p99 {p99:?}, max {max:?} (slowest {slowest}); served by {victim_hosts:?}",
        samples.len(),
        failures.len()
    ));
    report.push(format!("server /healthz: {healthz:?}; total {:.1}s", t0.elapsed().as_secs_f64()));
    let report = report.join("\n");
    eprintln!("==== security report\n{report}\n====");

    // Remove the project (the Cleanup also does, on any failure).
    let del = ctx.http.delete(format!("{}/api/projects/{}", ctx.server.url, ctx.project)).send().await.map(|r| r.status().as_u16());
    assert_eq!(del.as_ref().ok(), Some(&200), "removing {}: {del:?}\n{report}", ctx.project);
    wait_containers_gone(&ctx.docker, &ctx.project, &report).await;

    let failed: Vec<String> = results.iter().filter_map(|(n, _, r)| r.as_ref().err().map(|e| format!("{n}: {e}"))).collect();
    assert!(failed.is_empty(), "{} of {} attacks were not contained:\n  {}\n\n{report}", failed.len(), results.len(), failed.join("\n  "));
    assert!(failures.is_empty(), "the victim failed {} of {} times during the attacks:\n  {}\n\n{report}", failures.len(), samples.len(), failures[..failures.len().min(10)].join("\n  "));
    assert!(samples.len() >= 100, "only {} victim requests were made during the attacks\n{report}", samples.len());
    assert!(p50 < Duration::from_millis(200), "the victim's median latency was {p50:?} during the attacks\n{report}");
    assert!(max < Duration::from_secs(5), "a victim request took {max:?} during the attacks\n{report}");
    assert_eq!(healthz.as_ref().ok(), Some(&200), "the server's /healthz after the attacks: {healthz:?}\n{report}");
}
