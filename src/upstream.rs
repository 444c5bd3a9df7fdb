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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustix::fs::{FileType, Mode, OFlags};

/// Where an instance's runtime binds its Unix socket (given to it as `ESERVELESS_SOCKET`).
pub const SOCKET_IN_CONTAINER: &str = "/tmp/.eserveless-http.sock";
const SOCKET_DIR_IN_CONTAINER: &str = "tmp";
const SOCKET_NAME: &str = ".eserveless-http.sock";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How the gateway reaches one instance, and its idle keep-alive connections.
pub struct Endpoint {
    /// The instance's address on the functions network.
    pub addr: SocketAddr,
    /// The instance's `/tmp`, opened while the container was known to run.
    socket_dir: Option<OwnedFd>,
    /// Connections with no request on them, ready for the next one. At most the function's
    /// `concurrency` are ever in use at once, which bounds this list too.
    idle: Mutex<Vec<SendRequest<Body>>>,
    /// A refused socket was logged at warn level already (once per instance, so a function
    /// cannot flood the log by refusing it on every connection).
    refused_logged: AtomicBool,
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
}

impl Endpoint {
    /// An endpoint reached over TCP only.
    pub fn tcp(addr: SocketAddr) -> Self {
        Endpoint { addr, socket_dir: None, idle: Mutex::new(Vec::new()), refused_logged: AtomicBool::new(false) }
    }

    /// An endpoint for a container whose first process is `pid` (as the host sees it): its
    /// socket is used when it has one, TCP otherwise.
    pub fn for_container(addr: SocketAddr, pid: Option<u32>) -> Self {
        let socket_dir = pid.and_then(|pid| match open_container_dir(&format!("/proc/{pid}/root")) {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::debug!(pid, error = %e, "instance's /tmp cannot be opened; using TCP");
                None
            }
        });
        Endpoint { addr, socket_dir, idle: Mutex::new(Vec::new()), refused_logged: AtomicBool::new(false) }
    }

    #[cfg(test)]
    fn with_dir(addr: SocketAddr, dir: &std::path::Path) -> Self {
        let fd = rustix::fs::open(dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).expect("open dir");
        Endpoint { addr, socket_dir: Some(fd), idle: Mutex::new(Vec::new()), refused_logged: AtomicBool::new(false) }
    }

    /// Sends one request (origin-form URI, `Host` set) on an idle connection or a new one.
    /// A request that an idle connection could not take (the instance closed it meanwhile)
    /// is sent again on a new connection; a request already written is never sent twice.
    pub async fn send(self: &Arc<Self>, mut req: Request<Body>) -> Result<(Response<Incoming>, Checkout), UpstreamError> {
        loop {
            let (mut sender, reused) = match self.take_idle() {
                Some(s) => (s, true),
                None => (self.connect().await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Checkout { endpoint: self.clone(), sender: Some(sender) })),
                Err(mut e) => match e.take_message() {
                    Some(r) if reused => req = r,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    fn take_idle(&self) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(s) = idle.pop() {
            if s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    fn put_idle(&self, s: SendRequest<Body>) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(s);
    }

    /// True when new connections go over the instance's Unix socket.
    #[cfg(test)]
    fn uses_unix_socket(&self) -> bool {
        self.socket_dir.as_ref().is_some_and(|d| open_socket(d).is_ok())
    }

    async fn connect(&self) -> Result<SendRequest<Body>, UpstreamError> {
        if let Some(dir) = &self.socket_dir {
            match connect_unix(dir).await {
                Ok(stream) => return handshake(stream).await,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if !self.refused_logged.swap(true, Ordering::Relaxed) => {
                    tracing::warn!(addr = %self.addr, error = %e, "instance socket refused; using TCP (logged once per instance)")
                }
                Err(e) => tracing::debug!(addr = %self.addr, error = %e, "instance socket refused; using TCP"),
            }
        }
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(self.addr))
            .await
            .map_err(|_| UpstreamError::Connect(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))?
            .map_err(UpstreamError::Connect)?;
        let _ = tcp.set_nodelay(true);
        handshake(tcp).await
    }
}

/// A connection with a request on it; back to the idle list once its answer was read.
pub struct Checkout {
    endpoint: Arc<Endpoint>,
    sender: Option<SendRequest<Body>>,
}

impl Checkout {
    /// The answer was read to its end: the connection may carry the next request.
    pub fn finish(mut self) {
        let Some(mut sender) = self.sender.take() else { return };
        if sender.is_ready() {
            self.endpoint.put_idle(sender);
        } else if !sender.is_closed() {
            // The connection task has not yet seen the end of the answer; hand the connection
            // back once it has (or drop it if it closes).
            let endpoint = self.endpoint.clone();
            tokio::spawn(async move {
                if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(5), sender.ready()).await {
                    endpoint.put_idle(sender);
                }
            });
        }
    }
}

async fn handshake<S>(stream: S) -> Result<SendRequest<Body>, UpstreamError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = http1::Builder::new().handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "instance connection ended with an error");
        }
    });
    Ok(sender)
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

    /// A one-answer-per-request HTTP server on `listener`, answering with `tag`.
    fn serve_unix(listener: tokio::net::UnixListener, tag: &'static str) {
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(answer(TokioIo::new(s), tag));
            }
        });
    }

    fn serve_tcp(listener: tokio::net::TcpListener, tag: &'static str) {
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(answer(TokioIo::new(s), tag));
            }
        });
    }

    async fn answer<S: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static>(io: S, tag: &'static str) {
        let svc = hyper::service::service_fn(move |_req: Request<Incoming>| async move {
            Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(bytes::Bytes::from(tag))))
        });
        let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
    }

    async fn get(ep: &Arc<Endpoint>) -> String {
        let req = Request::builder().uri("/").header("host", "x").body(Body::empty()).expect("request");
        let (resp, checkout) = ep.send(req).await.expect("send");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        checkout.finish();
        String::from_utf8_lossy(&body).into_owned()
    }

    async fn tcp_server(tag: &'static str) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        serve_tcp(l, tag);
        addr
    }

    #[tokio::test]
    async fn uses_the_socket_when_it_is_one_and_reuses_connections() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).expect("mkdir");
        serve_unix(tokio::net::UnixListener::bind(tmp.join(SOCKET_NAME)).expect("bind"), "unix");
        let ep = Arc::new(Endpoint::with_dir(tcp_server("tcp").await, &tmp));
        assert!(ep.uses_unix_socket());
        assert_eq!(get(&ep).await, "unix");
        // Give the connection task its moment to mark the connection ready again.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(ep.idle.lock().expect("lock").len(), 1, "the connection went back to the idle list");
        assert_eq!(get(&ep).await, "unix");
        assert_eq!(ep.idle.lock().expect("lock").len(), 1, "the idle connection was reused, not a second one made");
    }

    #[tokio::test]
    async fn a_symlinked_or_missing_socket_falls_back_to_tcp() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A socket elsewhere (standing in for the host's Docker socket) that must never be reached.
        let elsewhere = dir.path().join("docker.sock");
        serve_unix(tokio::net::UnixListener::bind(&elsewhere).expect("bind"), "HOST SOCKET");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).expect("mkdir");
        let ep = Arc::new(Endpoint::with_dir(tcp_server("tcp").await, &tmp));
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
        // A server that closes each connection after one answer.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(bytes::Bytes::from("once"))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new().keep_alive(false).serve_connection(TokioIo::new(s), svc).await;
                });
            }
        });
        let ep = Arc::new(Endpoint::tcp(addr));
        for _ in 0..3 {
            assert_eq!(get(&ep).await, "once");
        }
    }
}
