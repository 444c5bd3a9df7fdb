//! The gateway's connections to one instance: HTTP/1.1, kept alive and reused for as long as
//! the instance lives, and dropped with it.
//!
//! An instance is reached over the Unix socket its runtime binds in its own `/tmp`
//! ([`SOCKET_IN_CONTAINER`]) when it has one. That path skips the TCP/IP stack, the bridge,
//! conntrack and the firewall rules on every request, for the gateway and for the function
//! alike. Otherwise (images built before the socket existed, an OCI runtime such as gVisor
//! whose files the host cannot see, a server without root) the instance is reached over TCP
//! at its address on the functions network.
//!
//! The socket lives in a directory the function's code can write, so it is handled as
//! untrusted: the container's `/tmp` is opened once through `/proc/<pid>/root` while the
//! container is known to run, and each connection opens the socket inside it without
//! following symlinks and only if it is a socket. A function that swaps its socket for a link
//! to, say, the host's Docker socket gets a TCP connection to itself instead.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustix::fs::{FileType, Mode, OFlags};
use tokio_util::either::Either;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::infra::metrics::Metrics;
use crate::infra::netns::NetnsConnector;

/// Where an instance's runtime binds its Unix socket (given to it as `ESERVELESS_SOCKET`).
pub const SOCKET_IN_CONTAINER: &str = "/tmp/.eserveless-http.sock";
const SOCKET_DIR_IN_CONTAINER: &str = "tmp";
const SOCKET_NAME: &str = ".eserveless-http.sock";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabels {
    project: String,
    function: String,
    transport: String,
}

/// The connections the gateway opens to instances, by function and transport.
#[derive(Clone)]
pub struct UpstreamMetrics {
    connects: Family<TransportLabels, Counter>,
}

impl UpstreamMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let connects = Family::<TransportLabels, Counter>::default();
        metrics.register(
            "upstream_connections",
            "Connections the gateway opened to instances, by transport (unix socket or tcp); kept alive and reused",
            connects.clone(),
        );
        UpstreamMetrics { connects }
    }

    /// One function's counters, looked up once when its pool is made.
    pub fn for_function(&self, project: &str, function: &str) -> ConnectCounters {
        let transport = |t: &str| {
            let l = TransportLabels { project: project.to_string(), function: function.to_string(), transport: t.into() };
            self.connects.get_or_create(&l).clone()
        };
        ConnectCounters { unix: transport("unix"), tcp: transport("tcp") }
    }
}

/// Counts the gateway's new connections to one function's instances.
#[derive(Clone, Debug, Default)]
pub struct ConnectCounters {
    pub unix: Counter,
    pub tcp: Counter,
}

/// How the gateway reaches one instance, and its idle keep-alive connections.
pub struct Endpoint {
    /// The instance's address on the functions network.
    addr: SocketAddr,
    /// The instance's `/tmp`, opened while the container was known to run.
    socket_dir: Option<OwnedFd>,
    /// Connections with no request on them, ready for the next one. At most the function's
    /// `concurrency` are ever in use at once, which bounds this list too.
    idle: Mutex<Vec<Upstream>>,
    /// A refused socket was logged at warn level already (once per instance, so a function
    /// cannot flood the log by refusing it on every connection).
    refused_logged: AtomicBool,
    connects: ConnectCounters,
    /// Where TCP connections are opened when the address is not routed from the server's
    /// own network namespace (a swarm project's overlay); `None`: from here.
    via: Option<Arc<NetnsConnector>>,
    /// The node the instance runs on (swarm), for the operator.
    node: Option<String>,
    /// Cancelled when the instance is known dead: requests waiting on it give up at once.
    gone: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("addr", &self.addr).field("unix_socket", &self.socket_dir.is_some()).finish()
    }
}

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to the instance: {0}")]
    Connect(io::Error),
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// No connection could be opened: the request was not sent, and is handed back so it can
    /// go to another instance.
    #[error("cannot connect to the instance: {source}")]
    Unsent { source: io::Error, request: Box<Request<Body>> },
    /// The instance was found dead (its node stopped answering) before its answer came.
    #[error("the instance was lost (its node stopped answering) before it answered")]
    Gone,
}

type Io = TokioIo<Either<tokio::net::UnixStream, tokio::net::TcpStream>>;

/// One HTTP/1.1 connection to an instance. It has no task of its own: whoever uses it polls
/// it (the request's own task, see [`Endpoint::send`] and [`AnswerBody`]), so an
/// answer is read, and handed on, without a hop between tasks or threads.
struct Upstream {
    sender: SendRequest<Body>,
    /// `None` once the connection ended (closed by either side, or failed). Dropping it at
    /// once matters: a request queued on it then fails as "not sent" and is retried on a new
    /// connection, instead of waiting for an answer that never comes.
    conn: Option<Pin<Box<http1::Connection<Io, Body>>>>,
    idle_since: Instant,
}

impl Upstream {
    fn poll_conn(&mut self, cx: &mut Context<'_>) {
        if let Some(conn) = &mut self.conn {
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                self.conn = None;
                if let Err(e) = r {
                    tracing::debug!(error = %e, "instance connection ended with an error");
                }
            }
        }
    }

    fn done(&self) -> bool {
        self.conn.is_none()
    }

    /// Sends `req` and waits for the answer's head. The connection writes the request (and
    /// its body) and reads the head while it is polled here, in this task.
    async fn exchange(&mut self, req: Request<Body>) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Body>>> {
        let mut sent = std::pin::pin!(self.sender.try_send_request(req));
        std::future::poll_fn(|cx| {
            self.poll_conn(cx);
            sent.as_mut().poll(cx)
        })
        .await
    }

    /// Catches up on what happened while nobody polled it (the instance closing it, most
    /// likely), then says whether it can carry a request now.
    fn usable(&mut self) -> bool {
        if self.idle_since.elapsed() >= MAX_IDLE {
            return false;
        }
        self.poll_conn(&mut Context::from_waker(futures_util::task::noop_waker_ref()));
        !self.done() && self.sender.is_ready()
    }
}

/// Idle connections older than this are closed instead of reused. Below the runtimes' own
/// keep-alive timeout (120 s), so an instance never closes a connection just as it is reused,
/// including right after a long pause, when its overdue timers fire first.
const MAX_IDLE: Duration = Duration::from_secs(60);

/// True when forwarding failed on the caller's side (its request body broke off, most
/// likely), not the instance's: nothing says the instance is unhealthy.
pub fn callers_fault(e: &hyper::Error) -> bool {
    e.is_user()
}

impl UpstreamError {
    /// See [`callers_fault`].
    pub fn is_callers(&self) -> bool {
        matches!(self, UpstreamError::Http(e) if callers_fault(e))
    }

    /// The instance is lost to this request before any answer: another may take it (when
    /// the request can be sent again).
    pub fn instance_lost(&self) -> bool {
        matches!(self, UpstreamError::Unsent { .. } | UpstreamError::Gone)
    }
}

impl Endpoint {
    fn with(addr: SocketAddr, socket_dir: Option<OwnedFd>, connects: ConnectCounters) -> Self {
        Endpoint { addr, socket_dir, idle: Mutex::new(Vec::new()), refused_logged: AtomicBool::new(false), connects, via: None, node: None, gone: Default::default() }
    }

    /// Opens TCP connections through `via` (see [`NetnsConnector`]) when given.
    pub fn via(mut self, via: Option<Arc<NetnsConnector>>) -> Self {
        self.via = via;
        self
    }

    /// Records the node the instance runs on.
    pub fn on_node(mut self, node: Option<String>) -> Self {
        self.node = node;
        self
    }

    /// The instance is dead (its node was lost): requests waiting for an answer from it give
    /// up with [`UpstreamError::Gone`], and its idle connections are closed.
    pub fn mark_gone(&self) {
        self.gone.cancel();
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The node the instance runs on, when the engine has nodes.
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }


    /// An endpoint reached over TCP only.
    #[cfg(test)]
    fn tcp(addr: SocketAddr) -> Self {
        Self::with(addr, None, ConnectCounters::default())
    }

    /// An endpoint for a container whose first process is `pid` (as the host sees it): its
    /// socket is used when it has one, TCP otherwise.
    pub fn for_container(addr: SocketAddr, pid: Option<u32>, connects: ConnectCounters) -> Self {
        let socket_dir = pid.and_then(|pid| match open_container_dir(&format!("/proc/{pid}/root")) {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::debug!(pid, error = %e, "instance's /tmp cannot be opened; using TCP");
                None
            }
        });
        Self::with(addr, socket_dir, connects)
    }

    #[cfg(test)]
    fn with_dir(addr: SocketAddr, dir: &std::path::Path) -> Self {
        let fd = rustix::fs::open(dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).expect("open dir");
        Self::with(addr, Some(fd), ConnectCounters::default())
    }

    /// Sends one request (origin-form URI, `Host` set) on an idle connection or a new one.
    /// A request that an idle connection could not take (the instance closed it meanwhile)
    /// is sent again on a new connection; a request already written is never sent twice.
    pub async fn send(self: &Arc<Self>, mut req: Request<Body>) -> Result<Response<AnswerBody>, UpstreamError> {
        loop {
            if self.gone.is_cancelled() {
                return Err(UpstreamError::Unsent { source: io::Error::other("the instance is gone"), request: Box::new(req) });
            }
            let (mut up, reused) = match self.take_idle() {
                Some(u) => (u, true),
                None => {
                    let connected = tokio::select! {
                        r = self.connect() => r,
                        () = self.gone.cancelled() => Err(UpstreamError::Connect(io::Error::other("the instance is gone"))),
                    };
                    match connected {
                        Ok(u) => (u, false),
                        Err(UpstreamError::Connect(source)) => return Err(UpstreamError::Unsent { source, request: Box::new(req) }),
                        Err(e) => return Err(e),
                    }
                }
            };
            let exchanged = tokio::select! {
                r = up.exchange(req) => r,
                () = self.gone.cancelled() => return Err(UpstreamError::Gone),
            };
            match exchanged {
                Ok(resp) => {
                    return Ok(resp.map(|inner| AnswerBody { inner, checkout: Some(Checkout { endpoint: self.clone(), up }) }))
                }
                Err(mut e) => match e.take_message() {
                    Some(r) if reused => req = r,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    fn take_idle(&self) -> Option<Upstream> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(mut u) = idle.pop() {
            if u.usable() {
                return Some(u);
            }
        }
        None
    }

    fn put_idle(&self, mut u: Upstream) {
        u.idle_since = Instant::now();
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(u);
    }

    /// True when new connections go over the instance's Unix socket.
    #[cfg(test)]
    fn uses_unix_socket(&self) -> bool {
        self.socket_dir.as_ref().is_some_and(|d| open_socket(d).is_ok())
    }

    /// Sends an upgrade request (WebSocket) on a connection of its own, which is never pooled:
    /// after a `101 Switching Protocols` it belongs to the upgraded protocol. The connection
    /// is driven by a task of its own until it is handed over (`hyper::upgrade::on` on the
    /// answer) or the answer is read.
    pub async fn send_upgrade(self: &Arc<Self>, req: Request<Body>) -> Result<Response<AnswerBody>, UpstreamError> {
        if self.gone.is_cancelled() {
            return Err(UpstreamError::Unsent { source: io::Error::other("the instance is gone"), request: Box::new(req) });
        }
        let stream = match self.open().await {
            Ok(s) => s,
            Err(source) => return Err(UpstreamError::Unsent { source, request: Box::new(req) }),
        };
        let (mut sender, conn) = http1::Builder::new().handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upgrade connection to the instance ended with an error");
            }
        });
        let resp = tokio::select! {
            r = sender.send_request(req) => r?,
            () = self.gone.cancelled() => return Err(UpstreamError::Gone),
        };
        Ok(resp.map(|inner| AnswerBody { inner, checkout: None }))
    }

    /// Resolves once the instance is known dead (see [`Endpoint::mark_gone`]).
    pub async fn gone(&self) {
        self.gone.cancelled().await
    }

    async fn connect(&self) -> Result<Upstream, UpstreamError> {
        let stream = self.open().await.map_err(UpstreamError::Connect)?;
        handshake(stream).await
    }

    /// A new stream to the instance: its Unix socket when it has one, else TCP.
    async fn open(&self) -> io::Result<Either<tokio::net::UnixStream, tokio::net::TcpStream>> {
        if let Some(dir) = &self.socket_dir {
            match connect_unix(dir).await {
                Ok(stream) => {
                    self.connects.unix.inc();
                    return Ok(Either::Left(stream));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if !self.refused_logged.swap(true, Ordering::Relaxed) => {
                    tracing::warn!(addr = %self.addr, error = %e, "instance socket refused; using TCP (logged once per instance)")
                }
                Err(e) => tracing::debug!(addr = %self.addr, error = %e, "instance socket refused; using TCP"),
            }
        }
        let connect = async {
            match &self.via {
                Some(c) => c.connect(self.addr).await,
                None => tokio::net::TcpStream::connect(self.addr).await,
            }
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        let _ = tcp.set_nodelay(true);
        self.connects.tcp.inc();
        Ok(Either::Right(tcp))
    }
}

/// A connection with a request on it; back to the idle list once the answer was read whole.
struct Checkout {
    endpoint: Arc<Endpoint>,
    up: Upstream,
}

impl Checkout {
    /// Only a connection that can take the next request now is kept. One still sending its
    /// request body (the function answered before reading it all) is closed: nobody would
    /// poll it while idle, and the client's upload would stall behind it.
    fn finish(mut self) {
        let up = &mut self.up;
        if !up.done() && !up.sender.is_ready() {
            up.poll_conn(&mut Context::from_waker(futures_util::task::noop_waker_ref()));
        }
        if !up.done() && up.sender.is_ready() {
            self.endpoint.put_idle(self.up);
        }
    }
}

/// An answer's body. Reading it drives its connection; read to its end, it hands the
/// connection back for the next request. Dropped early (or failed), the connection closes.
pub struct AnswerBody {
    inner: Incoming,
    checkout: Option<Checkout>,
}

impl http_body::Body for AnswerBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Some(c) = &mut this.checkout {
            c.up.poll_conn(cx);
        }
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => {
                if let Some(c) = this.checkout.take() {
                    c.finish();
                }
            }
            Poll::Ready(Some(Err(_))) => this.checkout = None,
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

async fn handshake(stream: Either<tokio::net::UnixStream, tokio::net::TcpStream>) -> Result<Upstream, UpstreamError> {
    let (sender, conn) = http1::Builder::new().handshake(TokioIo::new(stream)).await?;
    Ok(Upstream { sender, conn: Some(Box::pin(conn)), idle_since: Instant::now() })
}

/// Opens `<root>/tmp` without following a symlink at `tmp` (the root itself may be the
/// `/proc/<pid>/root` link, which is what reaches into the container).
fn open_container_dir(root: &str) -> io::Result<OwnedFd> {
    let root = rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    Ok(rustix::fs::openat(
        &root,
        SOCKET_DIR_IN_CONTAINER,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The instance's socket file, if it is one: never through a symlink.
fn open_socket(dir: &OwnedFd) -> io::Result<OwnedFd> {
    let fd = rustix::fs::openat(dir, SOCKET_NAME, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Socket {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{SOCKET_IN_CONTAINER} in the instance is a {:?}, not a socket", FileType::from_raw_mode(st.st_mode)),
        ));
    }
    Ok(fd)
}

async fn connect_unix(dir: &OwnedFd) -> io::Result<tokio::net::UnixStream> {
    let fd = open_socket(dir)?;
    // Connecting through the descriptor's /proc entry reaches exactly the inode checked above.
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::UnixStream::connect(&path))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    drop(fd);
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// What a test server does with a connection.
    #[derive(Clone, Copy)]
    enum Conns {
        KeepAlive,
        /// `Connection: close` after each answer.
        CloseAfterAnswer,
        /// Kept alive, but closed this long after it was opened (an instance's idle timeout).
        CloseAfter(Duration),
    }

    type Stream = Either<tokio::net::UnixStream, tokio::net::TcpStream>;

    /// Accepts connections on `listener` (unix or tcp), each handled by `each` in a task of its own.
    fn accept_each<F, Fut>(listener: Either<tokio::net::UnixListener, tokio::net::TcpListener>, each: F)
    where
        F: Fn(Stream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(async move {
            loop {
                let stream = match &listener {
                    Either::Left(l) => l.accept().await.map(|(s, _)| Either::Left(s)),
                    Either::Right(l) => l.accept().await.map(|(s, _)| Either::Right(s)),
                };
                let Ok(stream) = stream else { return };
                tokio::spawn(each(stream));
            }
        });
    }

    /// An HTTP server on `listener` (unix or tcp) answering every request with `tag`.
    fn serve(listener: Either<tokio::net::UnixListener, tokio::net::TcpListener>, tag: &'static str, conns: Conns) {
        accept_each(listener, move |stream| async move {
            let svc = hyper::service::service_fn(move |_req: Request<Incoming>| async move {
                Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(bytes::Bytes::from(tag))))
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.keep_alive(!matches!(conns, Conns::CloseAfterAnswer));
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            match conns {
                Conns::CloseAfter(d) => drop(tokio::time::timeout(d, conn).await),
                _ => drop(conn.await),
            }
        });
    }

    fn idle_len(ep: &Endpoint) -> usize {
        ep.idle.lock().expect("lock").len()
    }

    async fn get(ep: &Arc<Endpoint>) -> String {
        let req = Request::builder().uri("/").header("host", "x").body(Body::empty()).expect("request");
        let resp = ep.send(req).await.expect("send");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }

    async fn tcp_server(tag: &'static str, conns: Conns) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        serve(Either::Right(l), tag, conns);
        addr
    }

    #[test]
    fn the_socket_path_is_its_directory_and_name() {
        assert_eq!(SOCKET_IN_CONTAINER, format!("/{SOCKET_DIR_IN_CONTAINER}/{SOCKET_NAME}"));
    }

    #[tokio::test]
    async fn uses_the_socket_when_it_is_one_and_reuses_connections() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).expect("mkdir");
        serve(Either::Left(tokio::net::UnixListener::bind(tmp.join(SOCKET_NAME)).expect("bind")), "unix", Conns::KeepAlive);
        let ep = Arc::new(Endpoint::with_dir(tcp_server("tcp", Conns::KeepAlive).await, &tmp));
        assert!(ep.uses_unix_socket());
        assert_eq!(get(&ep).await, "unix");
        assert_eq!(idle_len(&ep), 1, "the connection went back to the idle list");
        assert_eq!(get(&ep).await, "unix");
        assert_eq!(idle_len(&ep), 1, "the idle connection was reused, not a second one made");
        assert_eq!((ep.connects.unix.get(), ep.connects.tcp.get()), (1, 0), "one connection, over the socket");
    }

    #[tokio::test]
    async fn a_symlinked_or_missing_socket_falls_back_to_tcp() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A socket elsewhere (standing in for the host's Docker socket) that must never be reached.
        let elsewhere = dir.path().join("docker.sock");
        serve(Either::Left(tokio::net::UnixListener::bind(&elsewhere).expect("bind")), "HOST SOCKET", Conns::KeepAlive);
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).expect("mkdir");
        let ep = Arc::new(Endpoint::with_dir(tcp_server("tcp", Conns::KeepAlive).await, &tmp));
        assert!(!ep.uses_unix_socket());
        assert_eq!(get(&ep).await, "tcp", "no socket: TCP");
        std::os::unix::fs::symlink(&elsewhere, tmp.join(SOCKET_NAME)).expect("symlink");
        let fresh = Arc::new(Endpoint::with_dir(ep.addr, &tmp));
        assert!(!fresh.uses_unix_socket());
        assert_eq!(get(&fresh).await, "tcp", "a symlink is never followed");
        std::fs::remove_file(tmp.join(SOCKET_NAME)).expect("rm");
        std::fs::write(tmp.join(SOCKET_NAME), "not a socket").expect("write");
        let fresh = Arc::new(Endpoint::with_dir(ep.addr, &tmp));
        assert_eq!(get(&fresh).await, "tcp", "a regular file is not a socket");
    }

    #[test]
    fn a_symlinked_tmp_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).expect("mkdir");
        std::os::unix::fs::symlink("/", root.join("tmp")).expect("symlink");
        assert!(open_container_dir(root.to_str().expect("utf8")).is_err());
        std::fs::remove_file(root.join("tmp")).expect("rm");
        std::fs::create_dir(root.join("tmp")).expect("mkdir");
        assert!(open_container_dir(root.to_str().expect("utf8")).is_ok());
    }

    #[tokio::test]
    async fn a_connection_the_instance_closed_is_not_reused() {
        let ep = Arc::new(Endpoint::tcp(tcp_server("once", Conns::CloseAfterAnswer).await));
        for n in 1..=3 {
            assert_eq!(get(&ep).await, "once");
            assert_eq!(idle_len(&ep), 0, "a connection closed with its answer was kept idle");
            assert_eq!(ep.connects.tcp.get(), n, "each request needed a new connection");
        }
    }

    /// The race `usable()` cannot close: the instance closes the connection just after it was
    /// taken from the idle list. The request must come back unsent (for a retry), not hang.
    #[tokio::test]
    async fn a_request_on_a_connection_closed_under_it_comes_back_unsent() {
        let ep = Arc::new(Endpoint::tcp(tcp_server("idle", Conns::CloseAfter(Duration::from_millis(100))).await));
        assert_eq!(get(&ep).await, "idle");
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Taken without `usable()`'s look at it, as if it closed right after that look.
        let mut stale = ep.idle.lock().expect("lock").pop().expect("an idle connection");
        let req = Request::builder().uri("/").header("host", "x").body(Body::empty()).expect("request");
        let result = tokio::time::timeout(Duration::from_secs(5), stale.exchange(req)).await;
        let mut err = match result {
            Err(_) => panic!("a request on a connection that had closed hung instead of failing"),
            Ok(Ok(_)) => panic!("a closed connection answered"),
            Ok(Err(e)) => e,
        };
        assert!(err.take_message().is_some(), "the unsent request was not handed back for a retry: {}", err.error());
    }

    #[tokio::test]
    async fn an_idle_connection_the_instance_closed_meanwhile_is_replaced() {
        let ep = Arc::new(Endpoint::tcp(tcp_server("idle", Conns::CloseAfter(Duration::from_millis(100))).await));
        assert_eq!(get(&ep).await, "idle");
        assert_eq!(idle_len(&ep), 1);
        // The instance closes it while nobody polls it; the next request must notice, not fail.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let again = tokio::time::timeout(Duration::from_secs(5), get(&ep)).await;
        assert_eq!(again.ok().as_deref(), Some("idle"), "the request on a connection closed while idle hung");
        assert_eq!(ep.connects.tcp.get(), 2, "the closed connection was replaced by a new one");
    }

    /// An instance that switches every request to an echo of raw bytes (a stand-in for a
    /// WebSocket server), on `listener`.
    fn serve_upgrades(listener: Either<tokio::net::UnixListener, tokio::net::TcpListener>) {
        accept_each(listener, |stream| async move {
            let svc = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
                let on = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    if let Ok(up) = on.await {
                        let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    }
                });
                let resp = Response::builder().status(101).header("connection", "upgrade").header("upgrade", "echo");
                Ok::<_, std::convert::Infallible>(resp.body(http_body_util::Empty::<bytes::Bytes>::new()).expect("101"))
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).with_upgrades().await;
        });
    }

    #[tokio::test]
    async fn an_upgrade_goes_over_the_socket_or_tcp_on_a_connection_of_its_own() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().expect("tempdir");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).expect("mkdir");
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("addr");
        serve_upgrades(Either::Right(tcp));
        serve_upgrades(Either::Left(tokio::net::UnixListener::bind(tmp.join(SOCKET_NAME)).expect("bind")));
        for (ep, unix) in [(Arc::new(Endpoint::with_dir(addr, &tmp)), true), (Arc::new(Endpoint::tcp(addr)), false)] {
            for _ in 0..2 {
                let req = Request::builder().uri("/").header("host", "x").header("connection", "upgrade").header("upgrade", "echo");
                let mut resp = ep.send_upgrade(req.body(Body::empty()).expect("request")).await.expect("101");
                assert_eq!(resp.status(), 101);
                let mut io = TokioIo::new(hyper::upgrade::on(&mut resp).await.expect("upgraded"));
                io.write_all(b"both ways").await.expect("write");
                let mut back = [0u8; 9];
                tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut back)).await.expect("in time").expect("read");
                assert_eq!(&back, b"both ways");
            }
            assert_eq!(idle_len(&ep), 0, "an upgraded connection is never pooled");
            let (u, t) = (ep.connects.unix.get(), ep.connects.tcp.get());
            assert_eq!((u, t), if unix { (2, 0) } else { (0, 2) }, "one connection per upgrade, over the {}", if unix { "socket" } else { "port" });
        }
    }

    #[tokio::test]
    async fn a_lost_instance_gives_up_at_once_and_hands_back_an_unsent_request() {
        // Accepts and reads, never answers: a node that died with the connection open.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let ep = Arc::new(Endpoint::tcp(addr));
        let req = Request::builder().uri("/x").header("host", "x").body(Body::empty()).expect("request");
        let sending = tokio::spawn({
            let ep = ep.clone();
            async move { ep.send(req).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!sending.is_finished(), "no answer yet");
        let t0 = Instant::now();
        ep.mark_gone();
        let e = sending.await.expect("task").map(|_| ()).expect_err("lost");
        assert!(matches!(e, UpstreamError::Gone), "{e:?}");
        assert!(e.instance_lost());
        assert!(t0.elapsed() < Duration::from_secs(1), "at once: {:?}", t0.elapsed());
        // Once gone, nothing is sent: the request comes back whole for another instance.
        let req = Request::builder().method("POST").uri("/y").header("host", "x").body(Body::from("payload")).expect("request");
        match ep.send(req).await {
            Err(UpstreamError::Unsent { request, .. }) => assert_eq!((request.method().as_str(), request.uri().path()), ("POST", "/y")),
            other => panic!("expected the request back, got {:?}", other.map(|_| ())),
        }
        // A closed port: not sent either.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let closed_addr = closed.local_addr().expect("addr");
        drop(closed);
        let ep = Arc::new(Endpoint::tcp(closed_addr));
        let req = Request::builder().uri("/z").header("host", "x").body(Body::empty()).expect("request");
        let e = ep.send(req).await.map(|_| ()).expect_err("refused");
        assert!(matches!(e, UpstreamError::Unsent { .. }) && e.instance_lost(), "{e:?}");
    }
}
