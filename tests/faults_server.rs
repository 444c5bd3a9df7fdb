//! Server-level fault tests (issue 10, "A fault suite of our own"): the real `eserveless`
//! binary against the real Docker engine, with faults injected from outside the server:
//! malformed and smuggling requests over raw TCP, silent and slow clients, one client opening
//! too many connections, SIGTERM and SIGKILL of the server (under load, during a build, during
//! a cron run), a second server on the same data directory, and a full disk. Function-level
//! faults are in `tests/faults_functions.rs`; the engine restarting under the server is in
//! `tests/faults_engine.rs` (its own binary, since it disturbs everything else).
//!
//! One test per fault; each starts its own server (own data directory and port), deploys
//! `tests/fixtures/faults-app` as its own project when it needs a function, and removes it at
//! the end (the [`Scene`]'s cleanup removes whatever a failed test left). Its `Echo` function
//! records the `?tag=` of every request its one instance receives, so a test can prove that a
//! request never reached the function.
//!
//! Without a reachable Docker engine the tests print "skipping: ..." and pass, except when
//! `CI=true`, where they fail. The harness lives in `tests/common/mod.rs`.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------------
// Test context: one server, one deployment of faults-app

/// A tmpfs mounted on a directory for one test; unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("create the mount point");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(out.status.success(), "mount -t tmpfs on {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
        Tmpfs { dir: dir.to_path_buf() }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process that still has a file open there does not keep the mount alive.
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

struct Ctx {
    // Dropped in this order: the server is killed, the tmpfs (if any) unmounted, and then the
    // scene's cleanup removes what is left on the engine and its temp dir.
    live: Deployed,
    _tmpfs: Option<Tmpfs>,
    scene: Scene,
    /// Echo's instance (its `host`) after the warm-up request.
    echo_host: String,
}

deref_to_deployed!(Ctx, live);

const LONG_CRON: &str = "  - name: Long\n    type: cron\n    schedule: \"* * * * * *\"\n    timeout: 2m\n";

impl Ctx {
    /// A server with `args` and faults-app deployed as a fresh project (with the `Long` cron
    /// when `cron`; with the data directory on a 128 MiB tmpfs when `tmpfs`); Echo warmed up.
    async fn start(prefix: &str, args: &[&str], cron: bool, tmpfs: bool) -> Ctx {
        let t0 = Instant::now();
        let project = unique(prefix);
        let scene = Scene::new(&[&project]).await;
        let tmpfs = tmpfs.then(|| Tmpfs::mount(&scene.data, "128m"));
        let server = Server::start_with_args(&scene.data, &scene.images, args).await;
        let repo = fixture_repo("faults-app");
        if cron {
            let manifest = repo.path().join(".eserveless.yaml");
            let text = std::fs::read_to_string(&manifest).expect("read the manifest");
            std::fs::write(&manifest, format!("{text}{LONG_CRON}")).expect("write the manifest");
            commit_all(repo.path(), "with the Long cron");
        }
        let live = Deployed::deploy(server, args, repo, project, "faults-app", t0).await;
        let mut ctx = Ctx { live, _tmpfs: tmpfs, scene, echo_host: String::new() };
        let a = ctx.echo("?tag=warm").await;
        ctx.echo_host = a.body["host"].as_str().unwrap_or("").to_string();
        ctx.log(&format!("{} live (deployment {}); Echo runs in {}", ctx.project, ctx.deployment, ctx.echo_host));
        ctx
    }

    /// Invokes Echo and expects 200 with its JSON.
    async fn echo(&self, query: &str) -> Answer {
        let a = self.invoke("Echo", query).await;
        assert_eq!(a.status, 200, "Echo{query}: {}", a.raw);
        assert!(a.body["host"].is_string(), "Echo{query}: no `host` in {}", a.raw);
        a
    }

    /// Starts a new server with the same arguments on the same data directory (the old one
    /// is killed first if it still runs).
    async fn restart(&mut self) {
        self.live.restart(&self.scene.data, &self.scene.images).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Raw connections

/// The lossy text of `bytes`, at most `max` characters, for failure messages.
fn shown(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.chars().count() > max {
        format!("{}... ({} bytes)", text.chars().take(max).collect::<String>(), bytes.len())
    } else {
        text.into_owned()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What came back on one raw connection after a request was written to it.
#[derive(Debug)]
struct Exchange {
    /// Every byte the server sent.
    bytes: Vec<u8>,
    /// How the connection ended: `eof`, `reset: ...`, or `open` (still open when we stopped).
    end: String,
    /// The request could not be written whole (the server may answer and close early).
    write_error: Option<String>,
}

impl Exchange {
    fn closed(&self) -> bool {
        self.end != "open"
    }

    /// The status of every answer in the bytes, in order.
    fn statuses(&self) -> Vec<u16> {
        let b = &self.bytes;
        (0..b.len())
            .filter(|&i| (i == 0 || b[i - 1] == b'\n') && b[i..].starts_with(b"HTTP/1."))
            .filter_map(|i| b.get(i + 9..i + 12).and_then(|s| std::str::from_utf8(s).ok()).and_then(|s| s.parse().ok()))
            .collect()
    }
}

/// Connects to `addr`, writes `request`, and reads until the server closes the connection
/// (at most `within`).
async fn exchange(addr: &str, request: &[u8], within: Duration) -> Exchange {
    let mut s = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let write_error = match tokio::time::timeout(within, s.write_all(request)).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("the write did not finish within {within:?}")),
    };
    let deadline = tokio::time::Instant::now() + within;
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let end = loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => break "open".to_string(),
            Ok(Ok(0)) => break "eof".to_string(),
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => break format!("reset: {e}"),
        }
    };
    Exchange { bytes, end, write_error }
}

/// Reads one answer (its head, then a `Content-Length` or chunked body) from `s`:
/// `(status, head, body)`, or what happened instead.
async fn read_answer(s: &mut TcpStream, within: Duration) -> Result<(u16, String, Vec<u8>), String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return Err(format!("no complete answer head within {within:?}; got {:?}", shown(&buf, 300))),
            Ok(Ok(0)) => return Err(format!("the connection ended before an answer head; got {:?}", shown(&buf, 300))),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(format!("read: {e}; got {:?}", shown(&buf, 300))),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).ok_or_else(|| format!("not an answer: {head:?}"))?;
    let lower = head.to_ascii_lowercase();
    let length = lower.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok());
    let mut body = buf[head_end..].to_vec();
    let complete = |body: &Vec<u8>| match length {
        Some(n) => body.len() >= n,
        None if lower.contains("transfer-encoding: chunked") => body.ends_with(b"0\r\n\r\n"),
        None => true,
    };
    while !complete(&body) {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return Err(format!("the body of {status} did not arrive within {within:?}")),
            Ok(Ok(0)) => return Err(format!("the connection ended in the body of {status}")),
            Ok(Ok(n)) => body.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(format!("read: {e}")),
        }
    }
    if let Some(n) = length {
        body.truncate(n);
    }
    Ok((status, head, body))
}

/// How a connection the test keeps silent (or trickling) ended.
#[derive(Debug)]
struct Closed {
    /// From the connect to the close; `None`: still open at the deadline.
    after: Option<Duration>,
    /// Bytes the server sent before closing.
    bytes: Vec<u8>,
    how: String,
}

/// Waits (at most `within` from `since`) for the server to close `s`. With `trickle`, writes
/// one more byte of an unfinished header every `trickle` meanwhile (a slowloris client).
async fn watch_close(mut s: TcpStream, since: Instant, trickle: Option<Duration>, within: Duration) -> Closed {
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::from_std(since + within);
    let mut next_byte = tokio::time::Instant::now();
    loop {
        let tick = tokio::time::sleep_until(if trickle.is_some() { next_byte.min(deadline) } else { deadline });
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) => return Closed { after: Some(since.elapsed()), bytes, how: "eof".into() },
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
                Err(e) => return Closed { after: Some(since.elapsed()), bytes, how: format!("reset: {e}") },
            },
            _ = tick => {
                if tokio::time::Instant::now() >= deadline {
                    return Closed { after: None, bytes, how: "open".into() };
                }
                if let Some(every) = trickle {
                    if let Err(e) = s.write_all(b"a").await {
                        return Closed { after: Some(since.elapsed()), bytes, how: format!("write failed: {e}") };
                    }
                    next_byte += every;
                }
            }
        }
    }
}

/// True when `s` is still open: no byte and no end within `wait`.
async fn still_open(s: &mut TcpStream, wait: Duration) -> Result<(), String> {
    let mut buf = [0u8; 256];
    match tokio::time::timeout(wait, s.read(&mut buf)).await {
        Err(_) => Ok(()),
        Ok(Ok(0)) => Err("closed (eof)".into()),
        Ok(Ok(n)) => Err(format!("the server sent {:?}", shown(&buf[..n], 200))),
        Ok(Err(e)) => Err(format!("reset: {e}")),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Malformed requests

/// One malformed request over a raw connection.
struct Malformed {
    name: String,
    request: Vec<u8>,
    /// Tags that must never reach Echo (the request itself, or one hidden in its body).
    forbidden: Vec<String>,
    /// The request may be served (2xx) as long as the connection closes right after:
    /// `Content-Length` with `Transfer-Encoding: chunked` is read as chunked (RFC 9112 §6.1).
    may_serve: bool,
}

/// The malformed requests sent to `path` (`/invoke/<p>/Echo` or an API route); every tag is
/// prefixed with `target`. A hidden request is always an invoke of Echo, so `seen` shows it.
fn malformed_requests(target: &str, path: &str, project: &str, host: &str, auth: &str) -> Vec<Malformed> {
    let hidden = |tag: &str| format!("GET /invoke/{project}/Echo?tag={tag} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let t = |what: &str| format!("{target}-{what}");
    let mut cases = Vec::new();
    cases.push(Malformed {
        name: format!("{target}: a 70 KB header (the head limit is 64 KiB)"),
        request: format!("GET {path}?tag={} HTTP/1.1\r\nHost: {host}\r\n{auth}X-Filler: {}\r\n\r\n", t("huge-header"), "a".repeat(70_000))
            .into_bytes(),
        forbidden: vec![t("huge-header")],
        may_serve: false,
    });
    cases.push(Malformed {
        name: format!("{target}: a 70 KB URL"),
        request: format!("GET {path}?tag={}&pad={} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n", t("huge-url"), "b".repeat(70_000)).into_bytes(),
        forbidden: vec![t("huge-url")],
        may_serve: false,
    });
    for (order, headers) in [
        ("cl-te", "Content-Length: {len}\r\nTransfer-Encoding: chunked\r\n"),
        ("te-cl", "Transfer-Encoding: chunked\r\nContent-Length: {len}\r\n"),
    ] {
        // Chunked, the body is empty and a second request follows; by Content-Length, that
        // "second request" is the body. Either way it must never run.
        let body = format!("0\r\n\r\n{}", hidden(&t(&format!("smuggled-{order}"))));
        cases.push(Malformed {
            name: format!("{target}: Content-Length and Transfer-Encoding: chunked ({order}), a request hidden after the last chunk"),
            request: format!(
                "POST {path}?tag={} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\n{}\r\n{body}",
                t(&format!("{order}-outer")),
                headers.replace("{len}", &body.len().to_string())
            )
            .into_bytes(),
            forbidden: vec![t(&format!("smuggled-{order}"))],
            may_serve: true,
        });
    }
    let body = hidden(&t("smuggled-dup-cl"));
    cases.push(Malformed {
        name: format!("{target}: two different Content-Lengths, a request hidden in the longer body"),
        request: format!(
            "POST {path}?tag={} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 0\r\nContent-Length: {}\r\n\r\n{body}",
            t("dup-cl"),
            body.len()
        )
        .into_bytes(),
        forbidden: vec![t("dup-cl"), t("smuggled-dup-cl")],
        may_serve: false,
    });
    cases.push(Malformed {
        name: format!("{target}: an invalid method token"),
        request: format!("G(T {path}?tag={} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n", t("bad-method")).into_bytes(),
        forbidden: vec![t("bad-method")],
        may_serve: false,
    });
    cases
}

/// Fault: malformed requests over raw TCP, to the gateway (`/invoke/<p>/Echo`) and to the API
/// (`/api/projects`, with the admin token): a 70 KB header, a 70 KB URL, `Content-Length`
/// together with `Transfer-Encoding: chunked` (both orders) with a request hidden after the
/// last chunk, two different `Content-Length`s with a request hidden in the longer body, an
/// invalid method token; and one connection holding an unfinished 40 KB head meanwhile,
/// completed to 70 KB at the end.
/// Proves: each gets a 4xx (a CL+TE request may be served as chunked) and its connection is
/// closed, with never a second answer on it; none of the rejected requests and none of the
/// hidden ones reaches the function (Echo's one instance lists every tag it received); and
/// other clients (invokes and /healthz) are served throughout without one failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_and_smuggle_nothing() {
    require_docker!();
    run_serial("malformed_requests_are_refused_and_smuggle_nothing", async {
        let ctx = Ctx::start("fs-malformed", &[], false, false).await;
        let addr = format!("127.0.0.1:{}", ctx.server.port);
        let load = RequestLoop::start(vec![ctx.url("Echo", ""), format!("{}/healthz", ctx.server.url)], Duration::from_millis(20));
        let auth = format!("Authorization: Bearer {}\r\n", ctx.server.token);
        let mut cases = malformed_requests("gw", &format!("/invoke/{}/Echo", ctx.project), &ctx.project, &addr, "");
        cases.extend(malformed_requests("api", "/api/projects", &ctx.project, &addr, &auth));
        // Held open meanwhile: the first 40 KB of a head that will end up too large.
        let load_began = Instant::now();
        let held_case = format!("GET /invoke/{}/Echo?tag=held-huge-header HTTP/1.1\r\nHost: {addr}\r\nX-Filler: {}\r\n\r\n", ctx.project, "c".repeat(70_000));
        let mut held = TcpStream::connect(&addr).await.expect("connect the held connection");
        held.write_all(&held_case.as_bytes()[..40_000]).await.expect("the first 40 KB of the held head");
        let mut problems = Vec::new();
        for case in &cases {
            let ex = exchange(&addr, &case.request, Duration::from_secs(10)).await;
            let statuses = ex.statuses();
            ctx.log(&format!(
                "{}: answers {statuses:?}, connection {}{}",
                case.name,
                ex.end,
                ex.write_error.as_ref().map(|e| format!(" (write: {e})")).unwrap_or_default()
            ));
            let what = format!("{}: got {:?}, connection {}", case.name, shown(&ex.bytes, 300), ex.end);
            if !ex.closed() {
                problems.push(format!("{what}: the connection stayed open 10 s after the request"));
            }
            if statuses.len() > 1 {
                problems.push(format!("{what}: more than one answer on the connection (a hidden request was served)"));
            }
            match statuses.first() {
                None if ex.bytes.is_empty() => {}
                None => problems.push(format!("{what}: bytes that are not an HTTP answer")),
                Some(s) if (400..500).contains(s) => {}
                Some(s) if case.may_serve && (200..300).contains(s) => {}
                Some(s) => problems.push(format!("{what}: status {s}, expected a 4xx")),
            }
        }
        // Other clients keep being served while the held head is still incomplete.
        if let Some(rest) = Duration::from_secs(2).checked_sub(load_began.elapsed()) {
            tokio::time::sleep(rest).await;
        }
        let write = held.write_all(&held_case.as_bytes()[40_000..]).await.err();
        let c = watch_close(held, Instant::now(), None, Duration::from_secs(10)).await;
        let statuses = Exchange { bytes: c.bytes.clone(), end: c.how.clone(), write_error: None }.statuses();
        ctx.log(&format!("the held 70 KB head, completed: answers {statuses:?}, connection {} (write: {write:?})", c.how));
        if c.after.is_none() || !(statuses.is_empty() || matches!(statuses.as_slice(), [s] if (400..500).contains(s))) {
            problems.push(format!("the held 70 KB head: got {:?}, connection {}", shown(&c.bytes, 300), c.how));
        }
        cases.push(Malformed { name: "the held 70 KB head".into(), request: Vec::new(), forbidden: vec!["held-huge-header".into()], may_serve: false });
        // Echo's one instance lists every tag it ever received.
        let probe = ctx.echo("?tag=probe").await;
        let samples = load.finish().await;
        assert_eq!(probe.body["host"].as_str(), Some(ctx.echo_host.as_str()), "Echo's instance changed: `seen` is not complete: {}", probe.raw);
        let seen: Vec<String> = probe.body["seen"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)).collect();
        ctx.log(&format!("tags Echo received: {seen:?}"));
        assert!(seen.first().map(String::as_str) == Some("warm") && seen.last().map(String::as_str) == Some("probe"), "{seen:?}");
        for case in &cases {
            for tag in &case.forbidden {
                if seen.contains(tag) {
                    problems.push(format!("{}: `{tag}` reached the function", case.name));
                }
            }
        }
        let failures: Vec<&String> = samples.iter().filter_map(|s| s.result.as_ref().err()).collect();
        ctx.log(&format!("{} requests of other clients meanwhile, {} failed", samples.len(), failures.len()));
        assert!(problems.is_empty(), "malformed requests:\n  {}", problems.join("\n  "));
        assert!(failures.is_empty(), "other clients' requests failed meanwhile: {:#?}", &failures[..failures.len().min(10)]);
        assert!(samples.len() >= 20, "only {} requests of other clients were made meanwhile", samples.len());
        ctx.remove().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 2. Slow, silent and greedy clients

/// Fault: 100 connections that never send a byte and 50 that trickle an unfinished request
/// head (one byte every 250 ms), against a server with `--head-timeout 2s`.
/// Proves: the server closes every one of them within the head timeout plus slack (and not
/// long before it: it is the timeout, counted from accept, that closes them), the silent ones
/// without an answer byte; and a normal client is served throughout without one failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_clients_are_closed_after_the_head_timeout() {
    require_docker!();
    run_serial("silent_and_slow_clients_are_closed_after_the_head_timeout", async {
        let ctx = Ctx::start("fs-slow", &["--head-timeout", "2s"], false, false).await;
        let addr = format!("127.0.0.1:{}", ctx.server.port);
        let load = RequestLoop::start(vec![ctx.url("Echo", ""), format!("{}/healthz", ctx.server.url)], Duration::from_millis(50));
        let mut watchers = Vec::new();
        for n in 0..150 {
            let mut s = TcpStream::connect(&addr).await.unwrap_or_else(|e| panic!("connection {n}: {e}"));
            let since = Instant::now();
            let trickle = (n >= 100).then_some(Duration::from_millis(250));
            if trickle.is_some() {
                s.write_all(format!("GET /invoke/{}/Echo?tag=slow-{n} HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ", ctx.project).as_bytes())
                    .await
                    .expect("the start of a slow head");
            }
            watchers.push(tokio::spawn(watch_close(s, since, trickle, Duration::from_secs(15))));
        }
        ctx.log("150 silent or slow connections open");
        let mut closed = Vec::new();
        for w in watchers {
            closed.push(w.await.expect("a watcher"));
        }
        let samples = load.finish().await;
        let (silent, slow) = closed.split_at(100);
        let times = |c: &[Closed]| {
            let t: Vec<f64> = c.iter().filter_map(|c| c.after.map(|d| d.as_secs_f64())).collect();
            (t.iter().cloned().fold(f64::INFINITY, f64::min), t.iter().cloned().fold(0.0, f64::max))
        };
        ctx.log(&format!("silent closed after {:?} s (min, max), slow after {:?} s", times(silent), times(slow)));
        let mut problems = Vec::new();
        for (n, c) in closed.iter().enumerate() {
            let kind = if n < 100 { "silent" } else { "slow" };
            match c.after {
                None => problems.push(format!("{kind} connection {n} still open after 15 s")),
                Some(t) if t < Duration::from_millis(1500) => {
                    problems.push(format!("{kind} connection {n} closed after {t:?}, before the 2 s head timeout ({})", c.how))
                }
                Some(t) if t > Duration::from_secs(7) => {
                    problems.push(format!("{kind} connection {n} closed after {t:?}: the head timeout is 2 s ({})", c.how))
                }
                Some(_) => {}
            }
            let status = Exchange { bytes: c.bytes.clone(), end: String::new(), write_error: None }.statuses();
            if n < 100 && !c.bytes.is_empty() {
                problems.push(format!("silent connection {n} got answer bytes: {:?}", shown(&c.bytes, 200)));
            }
            if n >= 100 && !c.bytes.is_empty() && !matches!(status.as_slice(), [s] if (400..500).contains(s)) {
                problems.push(format!("slow connection {n} got {:?}, expected nothing or one 4xx", shown(&c.bytes, 200)));
            }
        }
        let failures: Vec<&String> = samples.iter().filter_map(|s| s.result.as_ref().err()).collect();
        ctx.log(&format!("{} requests of a normal client meanwhile, {} failed", samples.len(), failures.len()));
        assert!(problems.is_empty(), "{} of 150 connections:\n  {}", problems.len(), problems[..problems.len().min(20)].join("\n  "));
        assert!(failures.is_empty(), "a normal client's requests failed meanwhile: {:#?}", &failures[..failures.len().min(10)]);
        assert!(samples.len() >= 20, "only {} requests of a normal client were made meanwhile", samples.len());
        let seen = ctx.echo("?tag=probe").await.body["seen"].to_string();
        assert!(!seen.contains("slow-"), "an unfinished head reached the function: {seen}");
        ctx.remove().await;
    })
    .await;
}

/// Fault: one client (127.0.0.1) opens more connections than `--max-client-connections 20`
/// allows, and keeps them silent (`--head-timeout 30s`, so none is closed by the timeout).
/// Proves: its 20 connections stay open and are served; each one over the cap is closed at
/// once without a byte; another client (127.0.0.2) is served meanwhile; and the cap is a
/// count of open connections, not a ban: once the client closes some, it connects again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_over_its_connection_cap_is_closed_at_once() {
    require_docker!();
    run_serial("one_client_over_its_connection_cap_is_closed_at_once", async {
        let scene = Scene::new(&[]).await;
        let server = Server::start_with_args(&scene.data, &scene.images, &["--max-client-connections", "20", "--head-timeout", "30s"]).await;
        let addr = format!("127.0.0.1:{}", server.port);
        let healthz = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        // The start-up health checks' connections are gone by now.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut held = Vec::new();
        for n in 0..20 {
            held.push(TcpStream::connect(&addr).await.unwrap_or_else(|e| panic!("connection {n}: {e}")));
        }
        for (n, s) in held.iter_mut().enumerate() {
            if let Err(e) = still_open(s, Duration::from_millis(300)).await {
                panic!("connection {n} of 20 (the cap) was {e}");
            }
        }
        eprintln!("20 connections from 127.0.0.1 open");
        for n in 0..10 {
            let s = TcpStream::connect(&addr).await.unwrap_or_else(|e| panic!("extra connection {n}: {e}"));
            let c = watch_close(s, Instant::now(), None, Duration::from_secs(3)).await;
            eprintln!("extra connection {n}: {} after {:?}", c.how, c.after);
            let after = c.after.unwrap_or_else(|| panic!("connection {} from a client holding 20 (the cap) is still open after 3 s", 21 + n));
            assert!(after < Duration::from_secs(2), "connection {} over the cap was closed only after {after:?}", 21 + n);
            assert!(c.bytes.is_empty(), "connection {} over the cap got bytes: {:?}", 21 + n, shown(&c.bytes, 200));
        }
        let other = reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
            .timeout(Duration::from_secs(10))
            .build()
            .expect("a client on 127.0.0.2");
        for n in 0..5 {
            let a = answer(other.get(format!("{}/healthz", server.url)).send().await.unwrap_or_else(|e| panic!("127.0.0.2, request {n}: {e}"))).await;
            assert_eq!(a.status, 200, "127.0.0.2, request {n}: {}", a.raw);
        }
        eprintln!("another client (127.0.0.2) served");
        for (n, s) in held.iter_mut().enumerate() {
            s.write_all(healthz.as_bytes()).await.unwrap_or_else(|e| panic!("write on held connection {n}: {e}"));
            let (status, _, body) = read_answer(s, Duration::from_secs(10)).await.unwrap_or_else(|e| panic!("held connection {n}: {e}"));
            assert_eq!(status, 200, "held connection {n}: {}", shown(&body, 300));
        }
        eprintln!("the 20 held connections are served");
        held.truncate(15);
        let began = Instant::now();
        let mut again = loop {
            let mut s = TcpStream::connect(&addr).await.expect("connect after closing 5");
            match still_open(&mut s, Duration::from_millis(300)).await {
                Ok(()) => break s,
                Err(e) => assert!(began.elapsed() < Duration::from_secs(5), "5 s after the client closed 5 of its 20 connections, a new one is still {e}"),
            }
        };
        again.write_all(healthz.as_bytes()).await.expect("write after closing 5");
        let (status, _, body) = read_answer(&mut again, Duration::from_secs(10)).await.expect("an answer after closing 5");
        assert_eq!(status, 200, "{}", shown(&body, 300));
        drop(server);
    })
    .await;
}

/// Fault: a keep-alive client sends three requests 1.2 s apart on one connection, then goes
/// silent, against `--head-timeout 2s`.
/// Proves: the head timeout counts between requests (the connection lives past 2 s while
/// requests keep coming), and once the client is silent the connection is closed after the
/// head timeout (not at once, not much later), without a byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_keep_alive_connection_is_closed_after_the_head_timeout() {
    require_docker!();
    run_serial("silent_keep_alive_connection_is_closed_after_the_head_timeout", async {
        let scene = Scene::new(&[]).await;
        let server = Server::start_with_args(&scene.data, &scene.images, &["--head-timeout", "2s"]).await;
        let addr = format!("127.0.0.1:{}", server.port);
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        let opened = Instant::now();
        for n in 0..3 {
            if n > 0 {
                tokio::time::sleep(Duration::from_millis(1200)).await;
            }
            s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
                .await
                .unwrap_or_else(|e| panic!("request {n} ({:?} after connecting): {e}", opened.elapsed()));
            let (status, head, body) =
                read_answer(&mut s, Duration::from_secs(10)).await.unwrap_or_else(|e| panic!("request {n} ({:?} after connecting): {e}", opened.elapsed()));
            assert_eq!(status, 200, "request {n}: {head}{}", shown(&body, 300));
        }
        let last = Instant::now();
        eprintln!("3 requests served on one connection over {:?}; now silent", opened.elapsed());
        let c = watch_close(s, last, None, Duration::from_secs(15)).await;
        eprintln!("the silent keep-alive connection: {} after {:?}", c.how, c.after);
        let after = c.after.expect("a silent keep-alive connection still open 15 s after its last answer (head timeout 2s)");
        assert!(after >= Duration::from_millis(1500), "closed {after:?} after the last answer, before the 2 s head timeout");
        assert!(after <= Duration::from_secs(7), "closed only {after:?} after the last answer; the head timeout is 2 s");
        assert!(c.bytes.is_empty(), "the server sent {:?} before closing", shown(&c.bytes, 200));
        drop(server);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 3. and 4. The server stopped and killed

/// Fault: SIGTERM while four requests are in flight (Echo sleeps 2.5 s before answering) and
/// while a cron run (`Long`, 60 s) is going; then a new server on the same data directory.
/// Proves: the in-flight requests finish with 200 and the server exits cleanly; after the
/// restart the project is back with the same live deployment, Echo's instance is adopted (the
/// same container answers; one container of Echo, no other http container of this server),
/// the cut cron run is closed (`failed`, not `running`) and its container is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_and_a_restart_restores() {
    require_docker!();
    run_serial("sigterm_finishes_in_flight_requests_and_a_restart_restores", async {
        let mut ctx = Ctx::start("fs-term", &[], true, false).await;
        let run = wait_run(&ctx.http, &ctx.server.url, &ctx.project, "Long", 0, Duration::from_secs(60), |r| r["status"] == "running").await;
        let run_id = run["id"].as_i64().expect("run id");
        // The run is recorded just before its container starts.
        let began = Instant::now();
        let long_before: Vec<String> = loop {
            let running: Vec<String> = function_containers(&ctx.docker, &ctx.project, "Long")
                .await
                .into_iter()
                .filter(|(_, s)| s == "running")
                .map(|(id, _)| id)
                .collect();
            if !running.is_empty() {
                break running;
            }
            assert!(began.elapsed() < Duration::from_secs(15), "cron run {run_id} is `running` but no container of Long runs after 15 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        ctx.log(&format!("cron run {run_id} is running in {long_before:?}"));
        assert_eq!(long_before.len(), 1, "one running container of Long expected (runs never overlap): {long_before:?}");

        let mut requests = Vec::new();
        for n in 0..4 {
            let url = ctx.url("Echo", &format!("?sleep=2500&tag=inflight-{n}"));
            let http = ctx.http.clone();
            requests.push(tokio::spawn(async move {
                let began = Instant::now();
                let r = http.get(&url).send().await;
                let a = match r {
                    Ok(r) => Ok(answer(r).await),
                    Err(e) => Err(e.to_string()),
                };
                (a, began.elapsed())
            }));
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        ctx.server.signal("TERM");
        ctx.log("SIGTERM sent with 4 requests in flight");
        for (n, r) in requests.into_iter().enumerate() {
            let (a, took) = r.await.expect("an in-flight request");
            let a = a.unwrap_or_else(|e| panic!("in-flight request {n} failed after SIGTERM: {e}"));
            assert_eq!(a.status, 200, "in-flight request {n} after SIGTERM: {}", a.raw);
            assert_eq!(a.body["tag"], format!("inflight-{n}"), "{}", a.raw);
            assert!(took >= Duration::from_millis(2400), "in-flight request {n} took only {took:?}");
        }
        let status = ctx.server.wait_exit(Duration::from_secs(20)).await.expect("the server still runs 20 s after SIGTERM");
        ctx.log(&format!("the 4 in-flight requests got 200; the server exited with {status}"));
        assert!(status.success(), "the server exited with {status} after SIGTERM");

        ctx.restart().await;
        let p = api_get(&ctx.http, &format!("{}/api/projects/{}", ctx.server.url, ctx.project)).await;
        assert_eq!(p.status, 200, "the project after the restart: {}", p.raw);
        assert_eq!(p.body["live"]["deployment"].as_i64(), Some(ctx.deployment), "{}", p.raw);
        let a = ctx.echo("?tag=after-restart").await;
        assert_eq!(a.body["host"].as_str(), Some(ctx.echo_host.as_str()), "Echo's instance was replaced, not adopted: {}", a.raw);

        let runs = api_get(&ctx.http, &format!("{}/api/projects/{}/functions/Long/runs?limit=500", ctx.server.url, ctx.project)).await;
        let cut = runs.body["runs"].as_array().into_iter().flatten().find(|r| r["id"].as_i64() == Some(run_id)).cloned();
        let cut = cut.unwrap_or_else(|| panic!("run {run_id} is not listed after the restart: {}", runs.raw));
        ctx.log(&format!("the cut run after the restart: {cut}"));
        assert_eq!(cut["status"], "failed", "the run cut by the stop is not closed: {cut:#}");

        // Settled: one Echo container (the adopted one), the cut run's container gone, no
        // other http container of this server.
        let began = Instant::now();
        loop {
            let echo = function_containers(&ctx.docker, &ctx.project, "Echo").await;
            let long = function_containers(&ctx.docker, &ctx.project, "Long").await;
            let http_role =
                containers_with(&ctx.docker, &[format!("eserveless.owner={}", server_id(&ctx.scene.data)), "eserveless.role=http".into()]).await;
            let old_run_left = long.iter().any(|(id, _)| long_before.contains(id));
            let ok = echo.len() == 1 && echo[0].0.starts_with(&ctx.echo_host) && !old_run_left && http_role.len() == 1 && long.len() <= 1;
            if ok {
                break;
            }
            assert!(
                began.elapsed() < Duration::from_secs(20),
                "20 s after the restart: Echo {echo:?} (expected only {}), Long {long:?} (the cut run's {long_before:?} must be gone), http containers of this server {http_role:?}",
                ctx.echo_host
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        ctx.remove().await;
    })
    .await;
}

/// Fault: SIGKILL of the server while four clients keep requesting Echo; then a new server on
/// the same data directory.
/// Proves: service is back within seconds (Echo answers, from the same adopted instance), a
/// new load runs without one failure, and the server's containers (by its owner label) are
/// exactly those from before the crash: none leaked, none doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_then_service_is_back_within_seconds() {
    require_docker!();
    run_serial("sigkill_under_load_then_service_is_back_within_seconds", async {
        let mut ctx = Ctx::start("fs-kill", &[], false, false).await;
        let before = server_containers(&ctx.docker, &ctx.scene.data).await;
        let urls = (0..4).map(|n| ctx.url("Echo", if n < 2 { "" } else { "?sleep=200" })).collect();
        let load = RequestLoop::start(urls, Duration::ZERO);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let killed_at = Instant::now();
        ctx.server.kill();
        let samples = load.finish().await;
        let done_before = samples.iter().filter(|s| s.sent + s.took < killed_at && s.result.is_ok()).count();
        ctx.log(&format!("SIGKILL under load: {} requests, {done_before} answered 200 before the kill", samples.len()));
        assert!(done_before >= 10, "the load did not run before the kill: {done_before} answers");

        let restarted = Instant::now();
        ctx.restart().await;
        let a = loop {
            let a = ctx.invoke("Echo", "").await;
            if a.status == 200 || restarted.elapsed() > Duration::from_secs(20) {
                break a;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let back = restarted.elapsed();
        ctx.log(&format!("service back {:.1}s after the restart began ({:.1}s after the kill)", back.as_secs_f64(), killed_at.elapsed().as_secs_f64()));
        assert_eq!(a.status, 200, "Echo after the restart: {}", a.raw);
        assert!(back < Duration::from_secs(15), "service came back only {back:?} after the restart began");
        assert_eq!(a.body["host"].as_str(), Some(ctx.echo_host.as_str()), "Echo's instance was not adopted: {}", a.raw);

        let load = RequestLoop::start((0..4).map(|_| ctx.url("Echo", "")).collect(), Duration::ZERO);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let samples = load.finish().await;
        let failures: Vec<&String> = samples.iter().filter_map(|s| s.result.as_ref().err()).collect();
        ctx.log(&format!("load after the restart: {} requests, {} failed", samples.len(), failures.len()));
        assert!(failures.is_empty(), "requests failed after the restart: {:#?}", &failures[..failures.len().min(10)]);
        assert!(samples.len() >= 20, "only {} requests after the restart", samples.len());
        let after = server_containers(&ctx.docker, &ctx.scene.data).await;
        assert_eq!(after, before, "the server's containers before the crash and after the restart differ (leaked or doubled)");
        ctx.remove().await;
    })
    .await;
}

/// Fault: SIGKILL of the server while a deployment is `building` (its `npm install` runs a
/// `postinstall` that sleeps 8 s); then a new server on the same data directory.
/// Proves: the interrupted deployment is marked `failed` with a message, the live one is
/// untouched and served at once by the same instance, the server's containers (owner label)
/// are those from before (no leaked build or instance container, none doubled), and the
/// project is not stuck: deploying the same commit again goes live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_build_marks_it_failed() {
    require_docker!();
    run_serial("sigkill_during_a_build_marks_it_failed", async {
        let mut ctx = Ctx::start("fs-build", &[], false, false).await;
        let before = server_containers(&ctx.docker, &ctx.scene.data).await;
        let pkg = ctx.repo.path().join("package.json");
        let text = std::fs::read_to_string(&pkg).expect("read package.json");
        std::fs::write(&pkg, text.replace("\"dependencies\": {}", "\"scripts\": { \"postinstall\": \"sleep 8\" },\n  \"dependencies\": {}"))
            .expect("write package.json");
        let js = ctx.repo.path().join("functions.js");
        let text = std::fs::read_to_string(&js).expect("read functions.js");
        std::fs::write(&js, text.replace("const VERSION = \"v1\";", "const VERSION = \"v2\";")).expect("write functions.js");
        commit_all(ctx.repo.path(), "v2, with a slow postinstall");
        let a = deploy(&ctx.http, &ctx.server.url, ctx.repo.path(), &ctx.project).await;
        assert_eq!(a.status, 202, "{}", a.raw);
        let id = a.body["deployment"].as_i64().unwrap_or_else(|| panic!("deployment id in {}", a.raw));
        let url = format!("{}/api/projects/{}/deployments/{id}", ctx.server.url, ctx.project);
        let began = Instant::now();
        loop {
            let d = api_get(&ctx.http, &url).await;
            match d.body["status"].as_str() {
                Some("building") => break,
                Some("queued") => {}
                _ => panic!("deployment {id} should be building: {}", d.raw),
            }
            assert!(began.elapsed() < Duration::from_secs(60), "deployment {id} not building after 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Into the image build (the postinstall sleeps 8 s), then the crash.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let d = api_get(&ctx.http, &url).await;
        assert_eq!(d.body["status"], "building", "{}", d.raw);
        ctx.server.kill();
        ctx.log(&format!("SIGKILL with deployment {id} building"));

        ctx.restart().await;
        let a = ctx.echo("").await;
        assert_eq!((a.body["version"].as_str(), a.body["host"].as_str()), (Some("v1"), Some(ctx.echo_host.as_str())), "{}", a.raw);
        let url = format!("{}/api/projects/{}/deployments/{id}", ctx.server.url, ctx.project);
        let d = api_get(&ctx.http, &url).await;
        ctx.log(&format!("deployment {id} after the restart: {} ({})", d.body["status"], d.body["error"]));
        assert_eq!(d.body["status"], "failed", "the interrupted deployment: {}", d.raw);
        let error = d.body["error"].as_str().unwrap_or("");
        assert!(error.contains("server stopped"), "the interrupted deployment has no message saying why: {}", d.raw);
        let p = api_get(&ctx.http, &format!("{}/api/projects/{}", ctx.server.url, ctx.project)).await;
        assert_eq!(p.body["live"]["deployment"].as_i64(), Some(ctx.deployment), "the live deployment changed: {}", p.raw);
        // The engine drops the build once its client is gone; give it a moment, then compare.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = server_containers(&ctx.docker, &ctx.scene.data).await;
        assert_eq!(after, before, "the server's containers before the crash and after the restart differ (leaked or doubled)");

        let d = deploy_and_wait(&ctx.http, &ctx.server.url, ctx.repo.path(), &ctx.project).await;
        assert_eq!(d["status"], "ready", "deploying the interrupted commit again: {d:#}");
        let a = ctx.echo("").await;
        assert_eq!(a.body["version"], "v2", "{}", a.raw);
        ctx.remove().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 5. A second server on the same data directory

/// Fault: a second `eserveless serve` started on the data directory of a running server;
/// then the first one is SIGKILLed.
/// Proves: the second exits with status 1 within a few seconds without ever listening, its
/// stderr names the data directory and `pid <first pid>`; the first server still serves; and
/// after the first dies (SIGKILL: no clean-up), a new server starts on the directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_server_on_the_same_data_dir_is_refused() {
    require_docker!();
    run_serial("second_server_on_the_same_data_dir_is_refused", async {
        let scene = Scene::new(&[]).await;
        let mut first = Server::start(&scene.data, &scene.images).await;
        let first_pid = first.pid();
        let port = free_port();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_eserveless"));
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(&scene.data)
            .arg("--allow-local-repos")
            .envs(scene.images.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let began = Instant::now();
        let mut second = cmd.spawn().expect("start the second server");
        let mut listened = false;
        let status = loop {
            if let Some(status) = second.try_wait().expect("poll the second server") {
                break Some(status);
            }
            if began.elapsed() > Duration::from_secs(10) {
                break None;
            }
            listened |= std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let took = began.elapsed();
        if status.is_none() {
            let _ = second.start_kill();
        }
        let out = second.wait_with_output().await.expect("the second server's output");
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("second server: {status:?} after {took:?}; stderr:\n{stderr}");
        let status = status.unwrap_or_else(|| panic!("a second server on {} still runs after 10 s; stderr:\n{stderr}", scene.data.display()));
        assert_eq!(status.code(), Some(1), "exit status of the second server; stderr:\n{stderr}");
        assert!(!listened, "the second server listened on its port before exiting");
        assert!(stderr.contains(&scene.data.display().to_string()), "stderr does not name the data directory {}:\n{stderr}", scene.data.display());
        assert!(stderr.contains(&format!("pid {first_pid}")), "stderr does not name the holder `pid {first_pid}`:\n{stderr}");

        let a = api_get(&first.http(), &format!("{}/api/projects", first.url)).await;
        assert_eq!(a.status, 200, "the first server after the refused start: {}", a.raw);
        assert!(first.wait_exit(Duration::ZERO).await.is_none(), "the first server stopped");

        first.kill();
        let third = Server::start(&scene.data, &scene.images).await;
        let a = api_get(&third.http(), &format!("{}/api/projects", third.url)).await;
        assert_eq!(a.status, 200, "a new server after the first was killed: {}", a.raw);
        drop(third);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 6. A full disk

/// Writes `path` until the file system is full.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let mut written = 0u64;
    for size in [1 << 20, 4096, 1] {
        let block = vec![0x5au8; size];
        while f.write_all(&block).is_ok() {
            written += size as u64;
        }
    }
    let _ = f.sync_all();
    written
}

/// Fault: the data directory (on a 128 MiB tmpfs) filled to the last byte, with a project
/// live; then the space freed again.
/// Proves: a deploy and a secret change answer 507 `insufficient_storage` naming the data
/// directory; `/healthz` answers 503 with `storage` saying `full`; the live function still
/// answers 200 from the same instance; and once space is free, `/healthz` is ok again, the
/// same deployment is live, and a deploy and a secret change work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_answers_507_and_recovers() {
    require_docker!();
    let root = std::process::Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false);
    if !root {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI=true: the full-disk test needs root to mount a tmpfs");
        eprintln!("skipping: not root, cannot mount a tmpfs");
        return;
    }
    run_serial("full_disk_answers_507_and_recovers", async {
        let ctx = Ctx::start("fs-disk", &[], false, true).await;
        let data = ctx.scene.data.display().to_string();
        let js = ctx.repo.path().join("functions.js");
        let text = std::fs::read_to_string(&js).expect("read functions.js");
        std::fs::write(&js, text.replace("const VERSION = \"v1\";", "const VERSION = \"v2\";")).expect("write functions.js");
        commit_all(ctx.repo.path(), "v2");

        let filler = ctx.scene.data.join("filler");
        let written = fill(&filler);
        ctx.log(&format!("{data} filled ({written} bytes)"));
        let a = deploy(&ctx.http, &ctx.server.url, ctx.repo.path(), &ctx.project).await;
        let message = assert_error(&a, 507, "insufficient_storage");
        assert!(message.contains(&data), "the 507 of a deploy does not name the data directory {data}: {message}");
        let secrets = format!("{}/api/projects/{}/secrets", ctx.server.url, ctx.project);
        let a = answer(ctx.http.post(&secrets).json(&json!({"set": {"FULL_DISK": "x"}})).send().await.expect("POST secrets")).await;
        let message = assert_error(&a, 507, "insufficient_storage");
        assert!(message.contains(&data), "the 507 of a secret change does not name the data directory {data}: {message}");
        let h = api_get(&client(), &format!("{}/healthz", ctx.server.url)).await;
        ctx.log(&format!("/healthz with a full disk: {} {}", h.status, h.raw));
        assert_eq!(h.status, 503, "/healthz with a full disk: {}", h.raw);
        assert_eq!(h.body["status"], "degraded", "{}", h.raw);
        assert!(h.body["storage"].as_str().unwrap_or("").contains("full"), "`storage` does not say full: {}", h.raw);
        let a = ctx.echo("?tag=full").await;
        assert_eq!((a.body["version"].as_str(), a.body["host"].as_str()), (Some("v1"), Some(ctx.echo_host.as_str())), "{}", a.raw);

        std::fs::remove_file(&filler).expect("remove the filler");
        ctx.log("space freed");
        let began = Instant::now();
        loop {
            let h = api_get(&client(), &format!("{}/healthz", ctx.server.url)).await;
            if h.status == 200 && h.body["storage"] == "ok" && h.body["status"] == "ok" {
                break;
            }
            assert!(began.elapsed() < Duration::from_secs(45), "/healthz 45 s after space was freed: {} {}", h.status, h.raw);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        ctx.log(&format!("/healthz ok {:.1}s after space was freed", began.elapsed().as_secs_f64()));
        let p = api_get(&ctx.http, &format!("{}/api/projects/{}", ctx.server.url, ctx.project)).await;
        assert_eq!(p.status, 200, "{}", p.raw);
        assert_eq!(p.body["live"]["deployment"].as_i64(), Some(ctx.deployment), "the live deployment changed: {}", p.raw);
        let a = answer(ctx.http.post(&secrets).json(&json!({"set": {"FULL_DISK": "x"}})).send().await.expect("POST secrets")).await;
        assert_eq!(a.status, 200, "a secret change after space was freed: {}", a.raw);
        let d = deploy_and_wait(&ctx.http, &ctx.server.url, ctx.repo.path(), &ctx.project).await;
        assert_eq!(d["status"], "ready", "a deploy after space was freed: {d:#}");
        let a = ctx.echo("").await;
        assert_eq!(a.body["version"], "v2", "{}", a.raw);
        let listed = api_get(&ctx.http, &format!("{}/api/projects", ctx.server.url)).await;
        let names: Vec<Value> = listed.body["projects"].as_array().into_iter().flatten().map(|p| p["name"].clone()).collect();
        assert_eq!(names, vec![Value::from(ctx.project.as_str())], "{}", listed.raw);
        ctx.remove().await;
    })
    .await;
}
