//! WebSocket through the gateway, against the real engine: echo round trips (node with `ws`
//! from npm, Go with the standard library), `concurrency` respected by 100 connections at
//! once, a redeploy with connections open (closed with 1001 after the grace), a client that
//! vanishes (its slot is freed), the idle timeout, and `auth: private` on the handshake.
//!
//! Needs Docker; without one the tests are skipped, except under `CI=true`.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What a handshake came to: the connection and the 101's headers, or the refusal's status and body.
type Handshake = Result<(Ws, http::HeaderMap), (u16, String)>;

fn ws_url(server: &Server, project: &str, function: &str) -> String {
    server.invoke_url(project, function, "").replacen("http://", "ws://", 1)
}

async fn connect(url: &str, key: Option<&str>) -> Handshake {
    let mut req = url.into_client_request().expect("a WebSocket request");
    if let Some(k) = key {
        req.headers_mut().insert("x-eserveless-key", k.parse().expect("key header"));
    }
    match tokio::time::timeout(Duration::from_secs(40), tokio_tungstenite::connect_async(req)).await {
        Err(_) => Err((0, "the handshake took more than 40 s".into())),
        Ok(Ok((ws, resp))) => Ok((ws, resp.headers().clone())),
        Ok(Err(WsError::Http(resp))) => {
            let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            Err((resp.status().as_u16(), body))
        }
        Ok(Err(e)) => Err((0, e.to_string())),
    }
}

async fn open(url: &str) -> Ws {
    match connect(url, None).await {
        Ok((ws, _)) => ws,
        Err((status, body)) => panic!("handshake with {url} refused: {status} {body}"),
    }
}

/// The next data or close message (pongs and pings skipped), within `within`.
async fn next_message(ws: &mut Ws, within: Duration) -> Option<Message> {
    let until = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(until, ws.next()).await {
            Err(_) => panic!("no message within {within:?}"),
            Ok(None) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(m))) => return Some(m),
        }
    }
}

/// Sends `text` and expects it back.
async fn echo(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::text(text)).await.expect("send");
    match next_message(ws, Duration::from_secs(10)).await {
        Some(Message::Text(t)) => t.to_string(),
        other => panic!("expected a text answer to {text:?}, got {other:?}"),
    }
}

/// `whoami`: (version, instance hostname).
async fn whoami(ws: &mut Ws) -> (String, String) {
    let a = echo(ws, "whoami").await;
    let (v, h) = a.split_once(' ').unwrap_or_else(|| panic!("whoami answer: {a:?}"));
    (v.to_string(), h.to_string())
}

async fn deploy_fixture(server: &Server, fixture: &str, project: &str) -> (tempfile::TempDir, Option<String>) {
    let repo = fixture_repo(fixture);
    let http = server.http();
    let a = deploy(&http, &server.url, repo.path(), project).await;
    assert_eq!(a.status, 202, "{}", a.raw);
    let key = a.body["invoke_key"].as_str().map(str::to_string);
    let id = a.body["deployment"].as_i64().unwrap_or_else(|| panic!("deployment id in {}", a.raw));
    let d = wait_deployment(&http, &server.url, project, id).await;
    assert_eq!(d["status"], "ready", "{fixture} did not deploy: {d:#}");
    (repo, key)
}

/// Text, binary (small, 16-bit and 64-bit lengths) and ping round trips on one connection.
async fn round_trips(ws: &mut Ws) {
    assert_eq!(echo(ws, "hello").await, "hello");
    for len in [4usize, 300, 200_000] {
        let data: Vec<u8> = (0..len).map(|i| u8::try_from(i % 251).expect("below 251")).collect();
        ws.send(Message::binary(data.clone())).await.expect("send");
        match next_message(ws, Duration::from_secs(10)).await {
            Some(Message::Binary(b)) => assert!(b[..] == data[..], "binary echo of {len} bytes differs"),
            other => panic!("expected a binary answer, got {other:?}"),
        }
    }
    ws.send(Message::Ping(b"are you there".to_vec().into())).await.expect("ping");
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(until, ws.next()).await {
            Ok(Some(Ok(Message::Pong(p)))) => {
                assert_eq!(&p[..], b"are you there");
                break;
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("no pong: {other:?}"),
        }
    }
}

/// A close handshake started by the client: the instance answers with the same code.
async fn close_cleanly(mut ws: Ws) {
    ws.close(None).await.expect("close");
    match next_message(&mut ws, Duration::from_secs(10)).await {
        Some(Message::Close(_)) | None => {}
        other => panic!("expected the close answer, got {other:?}"),
    }
}

#[tokio::test]
async fn node_echo_round_trip_and_the_private_handshake() {
    require_docker!();
    let _serial = SERIAL.lock().await;
    let project = unique("ws-node");
    let scene = Scene::new(&[&project]).await;
    let server = Server::start(&scene.data, &scene.images).await;
    let (_repo, key) = deploy_fixture(&server, "ws-node", &project).await;
    let key = key.expect("the project has a private function: its deploy answer has the invoke key");

    let (mut ws, head) = connect(&ws_url(&server, &project, "Echo"), None).await.expect("handshake");
    let timing = head.get("server-timing").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(timing.starts_with("cold;dur=") || timing.starts_with("warm;dur="), "Server-Timing on the 101: {timing:?}");
    round_trips(&mut ws).await;
    assert_eq!(whoami(&mut ws).await.0, "v1");
    close_cleanly(ws).await;

    // The same function still answers plain requests.
    let a = api_get(&client(), &server.invoke_url(&project, "Echo", "")).await;
    assert_eq!((a.status, a.raw.contains("connect with a WebSocket")), (200, true), "{}", a.raw);

    // auth: private applies to the handshake.
    let url = ws_url(&server, &project, "Secret");
    let (status, body) = connect(&url, None).await.map(|_| ()).expect_err("a private handshake without the key");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("invoke_key_required"), "{body}");
    let (status, body) = connect(&url, Some("not-the-key")).await.map(|_| ()).expect_err("a wrong key");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("invoke_key_invalid"), "{body}");
    let (mut ws, _) = connect(&url, Some(&key)).await.expect("the handshake with the key");
    assert_eq!(echo(&mut ws, "secret hello").await, "secret hello");
    close_cleanly(ws).await;

    // The handshakes count as invocations, answered 101.
    let metrics = api_get(&client(), &format!("{}/metrics", server.url)).await.raw;
    let line = "function=\"Echo\",status=\"101\"";
    assert!(metrics.lines().any(|l| l.contains("invocations_total") && l.contains(&project) && l.contains(line)), "no 101 in the invocations:\n{metrics}");
}

#[tokio::test]
async fn go_echo_round_trip_with_the_standard_library() {
    require_docker!();
    let _serial = SERIAL.lock().await;
    let project = unique("ws-go");
    let scene = Scene::new(&[&project]).await;
    let server = Server::start(&scene.data, &scene.images).await;
    let (_repo, _) = deploy_fixture(&server, "ws-go", &project).await;
    let mut ws = open(&ws_url(&server, &project, "Echo")).await;
    round_trips(&mut ws).await;
    assert_eq!(whoami(&mut ws).await.0, "v1");
    // A close with a code: the Go echo answers with the same code.
    ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame { code: CloseCode::Normal, reason: "bye".into() })).await.expect("close");
    match next_message(&mut ws, Duration::from_secs(10)).await {
        Some(Message::Close(Some(f))) => assert_eq!(f.code, CloseCode::Normal),
        other => panic!("expected the close answer, got {other:?}"),
    }
    let a = api_get(&client(), &server.invoke_url(&project, "Echo", "")).await;
    assert_eq!((a.status, a.raw.contains("connect with a WebSocket")), (200, true), "{}", a.raw);
}

/// `Echo` has `concurrency: 10` and `max_instances: 3`; the server queues 20 requests for at
/// most 2 s. Of 100 handshakes at once, 30 are served (ten per instance), 20 wait in the queue
/// and get 503 when it times out, and 50 find the queue full: 429.
#[tokio::test]
async fn a_hundred_connections_respect_concurrency() {
    require_docker!();
    let _serial = SERIAL.lock().await;
    let project = unique("ws-many");
    let scene = Scene::new(&[&project]).await;
    let server = Server::start_with_args(&scene.data, &scene.images, &["--queue-depth", "20", "--queue-timeout", "2s"]).await;
    let (_repo, _) = deploy_fixture(&server, "ws-node", &project).await;
    let url = ws_url(&server, &project, "Echo");

    let t0 = Instant::now();
    let results = futures_util::future::join_all((0..100).map(|_| connect(&url, None))).await;
    eprintln!("100 handshakes answered in {:.1}s", t0.elapsed().as_secs_f64());
    let mut open_ws = Vec::new();
    let mut refused = std::collections::BTreeMap::<u16, usize>::new();
    for r in results {
        match r {
            Ok((ws, _)) => open_ws.push(ws),
            Err((status, body)) => {
                assert!(status == 429 || status == 503, "a refusal other than 429/503: {status} {body}");
                *refused.entry(status).or_default() += 1;
            }
        }
    }
    eprintln!("open: {}, refused: {refused:?}", open_ws.len());
    assert_eq!(open_ws.len(), 30, "10 per instance × 3 instances open at once; refused: {refused:?}");
    assert_eq!(refused.get(&429).copied().unwrap_or(0), 50, "a full queue answers 429 at once: {refused:?}");
    assert_eq!(refused.get(&503).copied().unwrap_or(0), 20, "the queued ones time out with 503: {refused:?}");

    let mut per_instance = std::collections::BTreeMap::<String, Vec<usize>>::new();
    for (k, ws) in open_ws.iter_mut().enumerate() {
        per_instance.entry(whoami(ws).await.1).or_default().push(k);
    }
    let sizes: Vec<usize> = per_instance.values().map(Vec::len).collect();
    assert_eq!(sizes, vec![10, 10, 10], "connections per instance: {per_instance:?}");

    // Full: one more waits its 2 s in the queue and is refused.
    let (status, body) = connect(&url, None).await.map(|_| ()).expect_err("a 31st connection");
    assert_eq!(status, 503, "{body}");
    // Closing five on one instance frees five places there, and only five.
    let on_first: Vec<usize> = per_instance.values().next().expect("an instance").clone();
    let first_host = per_instance.keys().next().expect("an instance").clone();
    for k in on_first[..5].iter().rev() {
        close_cleanly(open_ws.remove(*k)).await;
    }
    for _ in 0..5 {
        let mut ws = open(&url).await;
        assert_eq!(whoami(&mut ws).await.1, first_host, "the freed places are on that instance");
        open_ws.push(ws);
    }
    let (status, _) = connect(&url, None).await.map(|_| ()).expect_err("full again");
    assert_eq!(status, 503);
    for ws in open_ws.iter_mut().take(3) {
        assert_eq!(echo(ws, "still here").await, "still here");
    }
}

/// With `--upgrade-grace 3s`: connections open across a redeploy keep working during the
/// grace, then get a close frame 1001; new connections reach the new revision.
#[tokio::test]
async fn a_redeploy_closes_open_connections_after_the_grace() {
    require_docker!();
    let _serial = SERIAL.lock().await;
    let project = unique("ws-redeploy");
    let scene = Scene::new(&[&project]).await;
    let server = Server::start_with_args(&scene.data, &scene.images, &["--upgrade-grace", "3s"]).await;
    let (repo, _) = deploy_fixture(&server, "ws-node", &project).await;
    let url = ws_url(&server, &project, "Echo");
    let mut old = Vec::new();
    for _ in 0..5 {
        let mut ws = open(&url).await;
        assert_eq!(whoami(&mut ws).await.0, "v1");
        old.push(ws);
    }

    let js = repo.path().join("functions.js");
    let text = std::fs::read_to_string(&js).expect("functions.js");
    std::fs::write(&js, text.replace("const VERSION = \"v1\";", "const VERSION = \"v2\";")).expect("write");
    commit_all(repo.path(), "v2");
    let http = server.http();
    let a = deploy(&http, &server.url, repo.path(), &project).await;
    assert_eq!(a.status, 202, "{}", a.raw);
    let id = a.body["deployment"].as_i64().expect("deployment id");
    let d = wait_deployment(&http, &server.url, &project, id).await;
    let live = Instant::now();
    assert_eq!(d["status"], "ready", "{d:#}");

    // Within the grace, the old connections still work; new ones reach v2.
    assert_eq!(echo(&mut old[0], "during the grace").await, "during the grace");
    let mut new = open(&url).await;
    assert_eq!(whoami(&mut new).await.0, "v2");

    for (k, ws) in old.iter_mut().enumerate() {
        match next_message(ws, Duration::from_secs(20)).await {
            Some(Message::Close(Some(f))) => {
                assert_eq!(f.code, CloseCode::Away, "connection {k}: {f:?}");
                assert_eq!(f.reason.as_str(), "function redeployed", "connection {k}");
            }
            other => panic!("connection {k}: expected a close frame 1001, got {other:?}"),
        }
        // The close frame's answer goes out; then the connection ends.
        let _ = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
    }
    let waited = live.elapsed();
    eprintln!("old connections closed {:.1}s after the new revision went live", waited.as_secs_f64());
    assert!(waited >= Duration::from_secs(2), "closed before the grace: {waited:?}");
    assert!(waited < Duration::from_secs(12), "closed long after the grace: {waited:?}");
    // The new connection was not touched.
    assert_eq!(echo(&mut new, "after").await, "after");
    assert_eq!(whoami(&mut new).await.0, "v2");
}

/// `Solo` takes one connection at a time. A client that drops its TCP connection without a
/// close frame frees the place; a silent connection is closed after the idle timeout.
#[tokio::test]
async fn a_vanished_client_frees_its_slot_and_idle_connections_close() {
    require_docker!();
    let _serial = SERIAL.lock().await;
    let project = unique("ws-vanish");
    let scene = Scene::new(&[&project]).await;
    let args = ["--upgrade-idle-timeout", "3s", "--queue-timeout", "1s"];
    let server = Server::start_with_args(&scene.data, &scene.images, &args).await;
    let (_repo, _) = deploy_fixture(&server, "ws-node", &project).await;
    let url = ws_url(&server, &project, "Solo");

    let mut a = open(&url).await;
    let host = whoami(&mut a).await.1;
    let (status, body) = connect(&url, None).await.map(|_| ()).expect_err("the one place is taken");
    assert_eq!(status, 503, "{body}");

    // Vanish: the TCP connection dropped, no close frame.
    drop(a.into_inner());
    let t0 = Instant::now();
    let mut b = loop {
        match connect(&url, None).await {
            Ok((ws, _)) => break ws,
            Err((503, _)) if t0.elapsed() < Duration::from_secs(10) => continue,
            Err((status, body)) => panic!("the vanished client's place was not freed: {status} {body}"),
        }
    };
    eprintln!("the place was free again after {:.1}s", t0.elapsed().as_secs_f64());
    assert_eq!(whoami(&mut b).await.1, host);

    // Silent for the idle timeout: closed with 1001.
    let t1 = Instant::now();
    match next_message(&mut b, Duration::from_secs(15)).await {
        Some(Message::Close(Some(f))) => {
            assert_eq!((f.code, f.reason.as_str()), (CloseCode::Away, "idle timeout"));
        }
        other => panic!("expected a close frame 1001 after the idle timeout, got {other:?}"),
    }
    let idle = t1.elapsed();
    assert!(idle >= Duration::from_millis(2500) && idle < Duration::from_secs(8), "closed after {idle:?} for a 3 s idle timeout");
    let _ = tokio::time::timeout(Duration::from_secs(10), b.next()).await;
    // And its place is free.
    let mut c = open(&url).await;
    assert_eq!(echo(&mut c, "next").await, "next");

    // The server shutting down (SIGTERM) closes an open connection with 1001 at once, and
    // waits for that before it exits.
    let mut server = server;
    server.signal("TERM");
    match next_message(&mut c, Duration::from_secs(5)).await {
        Some(Message::Close(Some(f))) => {
            assert_eq!((f.code, f.reason.as_str()), (CloseCode::Away, "server shutting down"));
        }
        other => panic!("expected a close frame 1001 when the server stops, got {other:?}"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), c.next()).await;
    let status = server.wait_exit(Duration::from_secs(15)).await.expect("the server exits after its connections closed");
    assert!(status.success(), "the server's exit after SIGTERM: {status:?}");
}

/// The python runtime cannot hand a connection over: the handshake gets a clear 501, and
/// the function still answers plain requests.
#[tokio::test]
async fn python_refuses_the_handshake_clearly() {
    require_docker!();
    let _serial = SERIAL.lock().await;
    let project = unique("ws-python");
    let scene = Scene::new(&[&project]).await;
    let server = Server::start(&scene.data, &scene.images).await;
    let repo = repo_with(&[
        (".eserveless.yaml", "runtime: python\nfunctions:\n  - {name: API, type: http}\n".to_string()),
        ("functions.py", "def API(request):\n    return 'plain'\n".to_string()),
    ]);
    let http = server.http();
    let d = deploy_and_wait(&http, &server.url, repo.path(), &project).await;
    assert_eq!(d["status"], "ready", "{d:#}");
    let (status, body) = connect(&ws_url(&server, &project, "API"), None).await.map(|_| ()).expect_err("python refuses");
    assert_eq!(status, 501, "{body}");
    assert!(body.contains("WebSocket is not supported by the python runtime"), "{body}");
    let a = api_get(&client(), &server.invoke_url(&project, "API", "")).await;
    assert_eq!((a.status, a.raw.as_str()), (200, "plain"));
}
