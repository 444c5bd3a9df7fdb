//! Upgraded connections through the gateway (WebSocket): which requests are proxied as
//! upgrades, and the relay that carries the bytes between the client and the instance once
//! both sides switched protocols.
//!
//! Only `Upgrade: websocket` is proxied. Any other protocol in an `Upgrade` header (`h2c`,
//! say) is ignored, as RFC 9110 7.8 allows a server to: the request is served as plain
//! HTTP/1.1.
//!
//! The relay holds the request's lease on its instance for the life of the connection (it
//! counts against the function's `concurrency`), and ends the connection:
//! - when either side closes its end, or fails, or takes no byte of what is sent to it for
//!   the idle timeout (a client that stopped reading or vanished): the other side is closed too;
//! - after `--upgrade-idle-timeout` without a byte either way;
//! - `--upgrade-grace` after its revision was replaced (a redeploy, a rollback, new secrets);
//! - when the instance is found dead.
//!
//! The last three close cleanly: the gateway tracks the WebSocket frame headers going to the
//! client, and at a frame boundary sends the client a close frame (1001 "going away") of its
//! own; the client's answering close frame goes on to the instance (whose own close is then
//! dropped), and both connections are closed. The same code serves every runtime, and the
//! runtimes need no part in it.

use std::time::Duration;

use axum::http::{header, HeaderMap, Method, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use crate::config::UpgradeLimits;

/// Whatever the server holds for one client connection (its places under the connection
/// caps), put in each request's extensions; an upgraded connection keeps it until it ends,
/// so it keeps counting against the caps after its HTTP part is over.
/// It also carries the server's `stopping` signal: at shutdown an upgraded connection is
/// closed with 1001 at once, and the server waits for that as it waits for requests.
#[derive(Clone)]
pub struct ConnectionHold {
    _held: std::sync::Arc<dyn std::any::Any + Send + Sync>,
    stopping: CancellationToken,
}

impl ConnectionHold {
    pub fn new(held: std::sync::Arc<dyn std::any::Any + Send + Sync>, stopping: CancellationToken) -> Self {
        ConnectionHold { _held: held, stopping }
    }

    /// Cancelled when the server begins to shut down.
    pub fn stopping(&self) -> CancellationToken {
        self.stopping.clone()
    }
}

/// True for a WebSocket opening handshake (RFC 6455 4.1): an HTTP/1.1 GET with
/// `Connection: upgrade` and `Upgrade: websocket` (tokens, any case).
pub fn is_websocket(method: &Method, version: Version, headers: &HeaderMap) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    *method == Method::GET
        && version == Version::HTTP_11
        && has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, "websocket")
}

/// WebSocket close code 1001: the endpoint is going away.
const GOING_AWAY: u16 = 1001;
/// Once the gateway starts closing a connection, the longest it waits for the instance to
/// finish the frame it is sending, and then for the client's answering close frame.
const CLOSING_TIME: Duration = Duration::from_secs(5);

/// A close frame with `code` and `reason` (at most 123 bytes), masked (client to server, a
/// random key) or not (server to client).
pub fn close_frame(code: u16, reason: &str, masked: bool) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    let len = u8::try_from(payload.len()).expect("a close payload is at most 125 bytes");
    let mut frame = vec![0x88, len | if masked { 0x80 } else { 0 }];
    if masked {
        let mut key = [0u8; 4];
        // A fixed key is still valid framing; an unpredictable one is what RFC 6455 asks.
        let _ = getrandom::fill(&mut key);
        frame.extend_from_slice(&key);
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    frame.extend_from_slice(&payload);
    frame
}

/// Follows the frames of one direction of a WebSocket connection (RFC 6455 5.2) from their
/// headers alone, to know where one frame ends and the next begins.
#[derive(Debug, Default)]
pub struct FrameTracker {
    /// The header bytes of the frame being read, while its header is incomplete.
    head: Vec<u8>,
    /// Payload bytes of the current frame still to come.
    left: u64,
    /// The opcode of the current frame.
    opcode: u8,
    /// The header was read and its payload (`left` bytes) is being read.
    in_payload: bool,
}

impl FrameTracker {
    /// True between two frames (nothing of a frame was seen, or the last one was complete).
    pub fn at_boundary(&self) -> bool {
        !self.in_payload && self.head.is_empty()
    }

    /// Reads `data` up to the end of the current frame at most: how many bytes it took, and
    /// the opcode of the frame it completed, if it did.
    pub fn take_frame(&mut self, data: &[u8]) -> (usize, Option<u8>) {
        let mut used = 0;
        if !self.in_payload {
            while used < data.len() {
                self.head.push(data[used]);
                used += 1;
                if let Some(payload) = header_complete(&self.head) {
                    self.opcode = self.head[0] & 0x0f;
                    self.head.clear();
                    self.left = payload;
                    self.in_payload = true;
                    break;
                }
            }
            if !self.in_payload {
                return (used, None);
            }
        }
        let rest = u64::try_from(data.len() - used).unwrap_or(u64::MAX);
        let take = self.left.min(rest);
        self.left -= take;
        used += usize::try_from(take).expect("at most the length of the data");
        if self.left == 0 {
            self.in_payload = false;
            return (used, Some(self.opcode));
        }
        (used, None)
    }

    /// Reads all of `data`: true when a close frame (opcode 8) was completed in it.
    pub fn feed(&mut self, mut data: &[u8]) -> bool {
        let mut closed = false;
        while !data.is_empty() {
            let (n, done) = self.take_frame(data);
            closed |= done == Some(0x8);
            data = &data[n..];
        }
        closed
    }
}

/// The payload length once `head` holds a whole frame header, else `None`.
fn header_complete(head: &[u8]) -> Option<u64> {
    if head.len() < 2 {
        return None;
    }
    let masked = head[1] & 0x80 != 0;
    let (ext, len) = match head[1] & 0x7f {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(u64::from(n))),
    };
    let need = 2 + ext + if masked { 4 } else { 0 };
    if head.len() < need {
        return None;
    }
    Some(len.unwrap_or_else(|| head[2..2 + ext].iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))))
}

/// Why the relay ended a connection, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    ClientClosed,
    InstanceClosed,
    Idle,
    Redeployed,
    InstanceGone,
    /// The server is shutting down.
    ServerStopping,
}

/// Where the relay is in closing a connection on its own.
enum Phase {
    Open,
    /// Waiting for the end of the frame the instance is sending, to send the close frame.
    GoingAway { since: Instant, why: Ended },
    /// The close frame went to the client; waiting for its answering close frame.
    Closing { since: Instant, why: Ended },
}

/// Carries bytes both ways between `client` and `instance` until the connection ends (see
/// the module comment); `retiring` is the revision's, `stopping` the server's, `gone` resolves
/// when the instance is known dead. Both connections are closed on return.
pub async fn relay<C, I>(
    mut client: C,
    mut instance: I,
    limits: UpgradeLimits,
    retiring: CancellationToken,
    stopping: CancellationToken,
    gone: impl std::future::Future<Output = ()>,
) -> Ended
where
    C: AsyncRead + AsyncWrite + Unpin,
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut from_client = vec![0u8; 16 * 1024];
    let mut from_instance = vec![0u8; 16 * 1024];
    let mut to_client = FrameTracker::default();
    let mut to_instance = FrameTracker::default();
    let mut last_byte = Instant::now();
    let mut grace_ends: Option<Instant> = None;
    let mut phase = Phase::Open;
    // The instance sent its close frame.
    let mut instance_closed = false;
    tokio::pin!(gone);
    let far = || Instant::now() + Duration::from_secs(86_400 * 365);
    let ended = loop {
        let open = matches!(phase, Phase::Open);
        let closing_deadline = match phase {
            Phase::Open => far(),
            Phase::GoingAway { since, .. } | Phase::Closing { since, .. } => since + CLOSING_TIME,
        };
        tokio::select! {
            () = retiring.cancelled(), if grace_ends.is_none() => {
                grace_ends = Some(Instant::now() + limits.grace);
                continue;
            }
            () = tokio::time::sleep_until(grace_ends.unwrap_or_else(far)), if open && grace_ends.is_some() => {
                phase = go_away(Ended::Redeployed, &to_client);
            }
            () = tokio::time::sleep_until(last_byte + limits.idle), if open => {
                phase = go_away(Ended::Idle, &to_client);
            }
            () = &mut gone, if open => {
                phase = go_away(Ended::InstanceGone, &to_client);
            }
            () = stopping.cancelled(), if open => {
                phase = go_away(Ended::ServerStopping, &to_client);
            }
            () = tokio::time::sleep_until(closing_deadline), if !open => {
                break match phase { Phase::GoingAway { why, .. } | Phase::Closing { why, .. } => why, Phase::Open => Ended::Idle };
            }
            r = client.read(&mut from_client) => {
                let n = match r { Ok(0) | Err(_) => break closed_by(&phase, Ended::ClientClosed), Ok(n) => n };
                last_byte = Instant::now();
                let data = &from_client[..n];
                let client_closed = to_instance.feed(data);
                if !write_within(&mut instance, data, limits.idle).await {
                    break closed_by(&phase, Ended::InstanceClosed);
                }
                if client_closed {
                    if let Phase::Closing { why, .. } = phase {
                        // The closing handshake with the client is done.
                        break why;
                    }
                }
                continue;
            }
            r = instance.read(&mut from_instance) => {
                let n = match r {
                    Ok(0) | Err(_) => {
                        // An instance that ended without its close frame (it crashed, or its
                        // project was removed): the client still gets one, 1001, if no frame
                        // is cut short.
                        if matches!(phase, Phase::Open) && !instance_closed && to_client.at_boundary() {
                            let _ = write_within(&mut client, &close_frame(GOING_AWAY, "instance gone", false), CLOSING_TIME).await;
                        }
                        break closed_by(&phase, Ended::InstanceClosed);
                    }
                    Ok(n) => n,
                };
                last_byte = Instant::now();
                let data = &from_instance[..n];
                match phase {
                    Phase::Open => {
                        instance_closed |= to_client.feed(data);
                        if !write_within(&mut client, data, limits.idle).await {
                            break closed_by(&phase, Ended::ClientClosed);
                        }
                    }
                    Phase::GoingAway { why, .. } => {
                        // The rest of the current frame goes; what follows it does not.
                        let (k, _) = to_client.take_frame(data);
                        if !write_within(&mut client, &data[..k], CLOSING_TIME).await {
                            break why;
                        }
                        if to_client.at_boundary() {
                            phase = Phase::Closing { since: Instant::now(), why };
                        }
                    }
                    // What the instance sends after the close frame is dropped.
                    Phase::Closing { .. } => continue,
                }
            }
        }
        if let Phase::Closing { why, since } = phase {
            let reason = match why {
                Ended::Idle => "idle timeout",
                Ended::Redeployed => "function redeployed",
                Ended::ServerStopping => "server shutting down",
                _ => "instance gone",
            };
            if !write_within(&mut client, &close_frame(GOING_AWAY, reason, false), CLOSING_TIME).await {
                break why;
            }
            let _ = tokio::time::timeout(CLOSING_TIME, client.flush()).await;
            // Only the close frame's answer is awaited now: read until it passed.
            let _ = wait_close_answer(&mut client, &mut instance, &mut to_instance, &mut from_client, since + CLOSING_TIME).await;
            break why;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), client.shutdown()).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), instance.shutdown()).await;
    ended
}

/// Starts closing a connection on its own: at once between two frames, else once the frame
/// under way to the client ends.
fn go_away(why: Ended, to_client: &FrameTracker) -> Phase {
    if to_client.at_boundary() {
        Phase::Closing { since: Instant::now(), why }
    } else {
        Phase::GoingAway { since: Instant::now(), why }
    }
}

/// Writes all of `data`, unless the other side takes none of it for `within` (a client that
/// stopped reading, or vanished without closing its connection) or fails: then false.
async fn write_within<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8], within: Duration) -> bool {
    let mut sent = 0;
    while sent < data.len() {
        match tokio::time::timeout(within, w.write(&data[sent..])).await {
            Ok(Ok(n)) if n > 0 => sent += n,
            _ => return false,
        }
    }
    true
}

/// How a connection ended when one side closed: as the relay was closing it, or by that side.
fn closed_by(phase: &Phase, side: Ended) -> Ended {
    match phase {
        Phase::Open => side,
        Phase::GoingAway { why, .. } | Phase::Closing { why, .. } => *why,
    }
}

/// After the gateway's close frame went to the client: forwards what the client sends to the
/// instance until the client's close frame passed, the client closed, or `until`.
async fn wait_close_answer<C, I>(client: &mut C, instance: &mut I, to_instance: &mut FrameTracker, buf: &mut [u8], until: Instant) -> Result<(), ()>
where
    C: AsyncRead + Unpin,
    I: AsyncWrite + Unpin,
{
    loop {
        let n = match tokio::time::timeout_at(until, client.read(buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return Err(()),
        };
        let closed = to_instance.feed(&buf[..n]);
        if !write_within(instance, &buf[..n], CLOSING_TIME).await {
            return Err(());
        }
        if closed {
            let _ = tokio::time::timeout(CLOSING_TIME, instance.flush()).await;
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, payload: &[u8], mask: bool) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        let m = if mask { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | u8::try_from(n).expect("small")),
            n if n < 65536 => {
                f.push(m | 126);
                f.extend_from_slice(&u16::try_from(n).expect("u16").to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&u64::try_from(n).expect("u64").to_be_bytes());
            }
        }
        if mask {
            f.extend_from_slice(&[1, 2, 3, 4]);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        f
    }

    #[test]
    fn websocket_handshakes_are_told_from_other_upgrades() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(*k, v.parse().expect("value"));
            }
            m
        };
        let ws = h(&[("connection", "keep-alive, Upgrade"), ("upgrade", "WebSocket")]);
        assert!(is_websocket(&Method::GET, Version::HTTP_11, &ws));
        assert!(!is_websocket(&Method::POST, Version::HTTP_11, &ws), "a handshake is a GET");
        assert!(!is_websocket(&Method::GET, Version::HTTP_10, &ws), "and HTTP/1.1");
        assert!(!is_websocket(&Method::GET, Version::HTTP_11, &h(&[("connection", "upgrade"), ("upgrade", "h2c")])), "h2c is not proxied");
        assert!(!is_websocket(&Method::GET, Version::HTTP_11, &h(&[("upgrade", "websocket")])), "no Connection: upgrade");
    }

    #[test]
    fn frame_boundaries_are_found_whatever_the_reads() {
        let mut stream = Vec::new();
        let frames = [frame(0x1, b"hello", false), frame(0x2, &[7u8; 300], true), frame(0x2, &[9u8; 70_000], false), frame(0x9, b"", false), frame(0x8, &[3, 233], true)];
        let mut ends = Vec::new();
        for f in &frames {
            stream.extend_from_slice(f);
            ends.push(stream.len());
        }
        for chunk in [1, 2, 3, 7, 100, 4096, stream.len()] {
            let mut t = FrameTracker::default();
            let mut seen = Vec::new();
            let mut at = 0;
            let mut closed = false;
            while at < stream.len() {
                let piece = &stream[at..(at + chunk).min(stream.len())];
                let mut off = 0;
                while off < piece.len() {
                    let (n, done) = t.take_frame(&piece[off..]);
                    off += n;
                    if let Some(op) = done {
                        seen.push(at + off);
                        closed |= op == 0x8;
                        assert!(t.at_boundary());
                    } else {
                        assert!(!t.at_boundary() || off == piece.len());
                    }
                }
                at += piece.len();
            }
            assert_eq!(seen, ends, "reads of {chunk} bytes");
            assert!(closed);
        }
    }

    #[test]
    fn close_frames_carry_their_code_and_are_masked_towards_instances() {
        let f = close_frame(1001, "function redeployed", false);
        assert_eq!(&f[..4], &[0x88, 21, 0x03, 0xe9]);
        assert_eq!(&f[4..], b"function redeployed");
        let m = close_frame(1001, "x", true);
        assert_eq!((m[0], m[1]), (0x88, 0x80 | 3));
        let key = [m[2], m[3], m[4], m[5]];
        let payload: Vec<u8> = m[6..].iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect();
        assert_eq!(payload, vec![0x03, 0xe9, b'x']);
        assert!(FrameTracker::default().feed(&m));
        let long = close_frame(1000, &"é".repeat(100), false);
        assert!(long.len() <= 2 + 125 && std::str::from_utf8(&long[4..]).is_ok(), "cut on a char boundary");
    }

    /// Both ends of a relay in memory: (the test's client end, the test's instance end, the relay).
    fn relayed(limits: UpgradeLimits, retiring: CancellationToken) -> (tokio::io::DuplexStream, tokio::io::DuplexStream, tokio::task::JoinHandle<Ended>) {
        relayed_until(limits, retiring, CancellationToken::new())
    }

    fn relayed_until(limits: UpgradeLimits, retiring: CancellationToken, stopping: CancellationToken) -> (tokio::io::DuplexStream, tokio::io::DuplexStream, tokio::task::JoinHandle<Ended>) {
        let (client, client_side) = tokio::io::duplex(1 << 20);
        let (instance, instance_side) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(relay(client_side, instance_side, limits, retiring, stopping, std::future::pending()));
        (client, instance, task)
    }

    async fn read_exact(s: &mut tokio::io::DuplexStream, n: usize) -> Vec<u8> {
        let mut b = vec![0; n];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b)).await.expect("in time").expect("read");
        b
    }

    #[tokio::test]
    async fn bytes_pass_both_ways_and_a_closed_side_closes_the_other() {
        let limits = UpgradeLimits { grace: Duration::from_secs(60), idle: Duration::from_secs(60) };
        let (mut c, mut i, task) = relayed(limits, CancellationToken::new());
        c.write_all(&frame(1, b"ping", true)).await.expect("w");
        assert_eq!(read_exact(&mut i, 10).await, frame(1, b"ping", true));
        i.write_all(&frame(1, b"pong", false)).await.expect("w");
        assert_eq!(read_exact(&mut c, 6).await, frame(1, b"pong", false));
        drop(c);
        assert_eq!(task.await.expect("relay"), Ended::ClientClosed);
        let mut rest = Vec::new();
        i.read_to_end(&mut rest).await.expect("eof");
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn after_a_redeploy_and_its_grace_the_client_gets_1001_at_a_frame_boundary() {
        let limits = UpgradeLimits { grace: Duration::from_millis(300), idle: Duration::from_secs(600) };
        let retiring = CancellationToken::new();
        let (mut c, mut i, task) = relayed(limits, retiring.clone());
        retiring.cancel();
        // Half a frame is on its way when the grace ends.
        let big = frame(2, &[5u8; 1000], false);
        i.write_all(&big[..500]).await.expect("w");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!task.is_finished());
        i.write_all(&big[500..]).await.expect("w");
        i.write_all(&frame(1, b"after", false)).await.expect("w");
        let got = read_exact(&mut c, big.len()).await;
        assert_eq!(got, big, "the frame under way is finished");
        let close = read_exact(&mut c, 2 + 2 + "function redeployed".len()).await;
        assert_eq!(close, close_frame(1001, "function redeployed", false), "then the close frame, and nothing of the next frame");
        // The client answers; its close goes on to the instance, and both are closed.
        c.write_all(&frame(8, &[0x03, 0xe9], true)).await.expect("w");
        assert_eq!(read_exact(&mut i, 8).await, frame(8, &[0x03, 0xe9], true));
        assert_eq!(task.await.expect("relay"), Ended::Redeployed);
    }

    #[tokio::test]
    async fn an_instance_that_ends_without_a_close_frame_leaves_the_client_a_1001() {
        let limits = UpgradeLimits { grace: Duration::from_secs(600), idle: Duration::from_secs(600) };
        let (mut c, mut i, task) = relayed(limits, CancellationToken::new());
        i.write_all(&frame(1, b"last", false)).await.expect("w");
        assert_eq!(read_exact(&mut c, 6).await, frame(1, b"last", false));
        drop(i);
        let close = read_exact(&mut c, 2 + 2 + "instance gone".len()).await;
        assert_eq!(close, close_frame(1001, "instance gone", false));
        assert_eq!(task.await.expect("relay"), Ended::InstanceClosed);

        // One that closed properly gets no second close frame.
        let (mut c, mut i, task) = relayed(limits, CancellationToken::new());
        i.write_all(&frame(8, &[0x03, 0xe8], false)).await.expect("w");
        drop(i);
        assert_eq!(task.await.expect("relay"), Ended::InstanceClosed);
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.expect("eof");
        assert_eq!(rest, frame(8, &[0x03, 0xe8], false), "only the instance's own close frame");
    }

    #[tokio::test]
    async fn a_server_shutting_down_closes_with_1001_at_once() {
        let limits = UpgradeLimits { grace: Duration::from_secs(600), idle: Duration::from_secs(600) };
        let stopping = CancellationToken::new();
        let (mut c, mut i, task) = relayed_until(limits, CancellationToken::new(), stopping.clone());
        i.write_all(&frame(1, b"before", false)).await.expect("w");
        assert_eq!(read_exact(&mut c, 8).await, frame(1, b"before", false));
        stopping.cancel();
        let close = read_exact(&mut c, 2 + 2 + "server shutting down".len()).await;
        assert_eq!(close, close_frame(1001, "server shutting down", false), "no grace: the server is going");
        c.write_all(&frame(8, &[0x03, 0xe9], true)).await.expect("w");
        assert_eq!(read_exact(&mut i, 8).await, frame(8, &[0x03, 0xe9], true));
        assert_eq!(task.await.expect("relay"), Ended::ServerStopping);
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_dropped_after_the_idle_timeout() {
        let limits = UpgradeLimits { grace: Duration::from_secs(30), idle: Duration::from_millis(500) };
        let (client, client_side) = tokio::io::duplex(1024);
        let (mut i, instance_side) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(relay(client_side, instance_side, limits, CancellationToken::new(), CancellationToken::new(), std::future::pending()));
        // The instance keeps sending; the client never reads (its buffer fills up).
        let writer = tokio::spawn(async move {
            for _ in 0..100 {
                if i.write_all(&frame(2, &[1u8; 1000], false)).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let ended = tokio::time::timeout(Duration::from_secs(5), task).await.expect("ended in time").expect("relay");
        assert_eq!(ended, Ended::ClientClosed);
        writer.abort();
        drop(client);
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_idle_timeout() {
        let limits = UpgradeLimits { grace: Duration::from_secs(30), idle: Duration::from_millis(500) };
        let (mut c, mut i, task) = relayed(limits, CancellationToken::new());
        tokio::time::sleep(Duration::from_millis(350)).await;
        c.write_all(&frame(1, b"x", true)).await.expect("w");
        read_exact(&mut i, 7).await;
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(!task.is_finished(), "a byte restarted the idle time");
        let t0 = Instant::now();
        let close = read_exact(&mut c, 4 + "idle timeout".len()).await;
        assert_eq!(close, close_frame(1001, "idle timeout", false));
        assert!(t0.elapsed() < Duration::from_millis(400), "closed {:?} after the last byte's idle time", t0.elapsed());
        // No answer from the client: closed anyway, a little later.
        assert_eq!(task.await.expect("relay"), Ended::Idle);
    }
}
