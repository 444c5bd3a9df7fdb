//! TCP connections opened inside another network namespace: how the server, a process on the
//! manager's host, reaches instances at their task addresses on a project's overlay network,
//! which no route of the host leads to (issue 12; docs/scale-out-notes-netns.md).
//!
//! A socket belongs for its whole life to the network namespace of the thread that created it,
//! whichever thread uses it afterwards. So a thread that moved into the namespace (setns(2))
//! creates the socket and starts a non-blocking connect; the socket then goes to tokio and is
//! polled by any worker like any other. The namespace is that of a small container attached to
//! the project's overlay on the server's node (its "attach" container).
//!
//! A thread that entered a namespace never goes back: [`NetnsConnector`] keeps one per
//! namespace that only creates sockets, and [`connect_in`] uses a thread that ends after one
//! connect. Going back after each connect would cost a second setns(2) per connection and,
//! should the way back fail, leave a thread of the server (a tokio worker or blocking-pool
//! thread, say) resolving names and connecting from a project's network.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// A network namespace, held open by a descriptor: it stays the namespace that was opened even
/// when its path later names another one (a pid reused, a container replaced).
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    path: PathBuf,
}

impl Netns {
    /// Opens `path`: `/proc/<pid>/ns/net`, or a bind mount of one such as Docker's
    /// `/var/run/docker/netns/<sandbox>` (`NetworkSettings.SandboxKey`), which does not depend
    /// on the container's first process. Whether it is a network namespace shows on first use.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Netns> {
        let path = path.as_ref();
        let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("open {}: {e}", path.display())))?;
        Ok(Netns { fd, path: path.to_path_buf() })
    }

    /// The calling thread's network namespace.
    pub fn current() -> io::Result<Netns> {
        Netns::open("/proc/thread-self/ns/net")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Device and inode of the namespace: equal for two descriptors of the same namespace.
    pub fn id(&self) -> io::Result<(u64, u64)> {
        let st = rustix::fs::fstat(&self.fd)?;
        Ok((st.st_dev, st.st_ino))
    }

    fn context(&self, what: &str, e: io::Error) -> io::Error {
        io::Error::new(e.kind(), format!("{what} in the network namespace {}: {e}", self.path.display()))
    }
}

/// Moves the calling thread into the network namespace `fd` (EINVAL when `fd` is anything else).
fn enter(fd: impl AsFd) -> io::Result<()> {
    move_into_link_name_space(fd.as_fd(), Some(LinkNameSpaceType::Network)).map_err(io::Error::from)
}

/// Creates a non-blocking TCP socket in the calling thread's namespace and starts connecting it
/// to `addr`. Failures the kernel knows at once (no route, say) come back here; the others
/// when the connect completes ([`finish_connect`]).
fn start_connect(addr: SocketAddr) -> io::Result<std::net::TcpStream> {
    // Socket::new sets close-on-exec: children the server spawns (git, docker) do not inherit it.
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    match socket.connect(&SockAddr::from(addr)) {
        Ok(()) => {}
        Err(e) if Errno::from_io_error(&e) == Some(Errno::INPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(std::net::TcpStream::from(socket))
}

/// Waits, on the runtime, for the connect started by [`start_connect`] to complete.
async fn finish_connect(socket: std::net::TcpStream) -> io::Result<TcpStream> {
    let stream = TcpStream::from_std(socket)?;
    // Writable once connected, or once failed (then SO_ERROR says why): as tokio's own connect.
    stream.writable().await?;
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    Ok(stream)
}

/// Connects to `addr` from inside `ns`, on a thread made for this one connection. For many
/// connections to one namespace, [`NetnsConnector`] saves a thread and a setns(2) each.
pub async fn connect_in(ns: &Netns, addr: SocketAddr) -> io::Result<TcpStream> {
    let fd = ns.fd.try_clone()?;
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new().name("netns-connect".into()).spawn(move || {
        // The thread ends here, still in `ns`: nothing else ever runs on it.
        let _ = tx.send(enter(&fd).and_then(|()| start_connect(addr)));
    })?;
    let socket = rx
        .await
        .map_err(|_| io::Error::other("the connecting thread ended without an answer"))?
        .map_err(|e| ns.context(&format!("connect to {addr}"), e))?;
    finish_connect(socket).await.map_err(|e| ns.context(&format!("connect to {addr}"), e))
}

type ConnectRequest = (SocketAddr, oneshot::Sender<io::Result<std::net::TcpStream>>);

/// A thread living in one network namespace, creating the sockets of connections from there.
/// Dropping the connector ends the thread; connections made through it live on.
#[derive(Debug)]
pub struct NetnsConnector {
    requests: mpsc::Sender<ConnectRequest>,
    path: PathBuf,
}

impl NetnsConnector {
    /// Starts the thread and moves it into `ns`. Fails when `ns` is not a network namespace or
    /// the server may not enter it (setns(2) needs CAP_SYS_ADMIN).
    pub async fn spawn(ns: &Netns) -> io::Result<NetnsConnector> {
        let fd = ns.fd.try_clone()?;
        let (requests, incoming) = mpsc::channel::<ConnectRequest>();
        let (ready, entered) = oneshot::channel();
        let name = ns.path.file_name().map_or_else(|| "netns".into(), |n| format!("netns-{}", n.to_string_lossy()));
        // Thread names are cut at 15 bytes by the kernel; the name only helps reading `top -H`.
        std::thread::Builder::new().name(name).spawn(move || {
            let result = enter(&fd);
            drop(fd);
            let ok = result.is_ok();
            if ready.send(result).is_err() || !ok {
                return;
            }
            // Ends when the connector, the only sender, is dropped.
            for (addr, reply) in incoming {
                let _ = reply.send(start_connect(addr));
            }
        })?;
        entered
            .await
            .map_err(|_| io::Error::other("the namespace's thread ended without an answer"))?
            .map_err(|e| ns.context("enter", e))?;
        Ok(NetnsConnector { requests, path: ns.path.clone() })
    }

    /// Connects to `addr` from inside the connector's namespace. Wrap it in a timeout: an
    /// address nobody answers on waits for the kernel's SYN retries (two minutes) otherwise.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let ctx = |e: io::Error| {
            io::Error::new(e.kind(), format!("connect to {addr} in the network namespace {}: {e}", self.path.display()))
        };
        let (reply, answer) = oneshot::channel();
        self.requests.send((addr, reply)).map_err(|_| ctx(io::Error::other("the namespace's thread ended")))?;
        let socket = answer.await.map_err(|_| ctx(io::Error::other("the namespace's thread ended")))?.map_err(ctx)?;
        finish_connect(socket).await.map_err(ctx)
    }
}

#[cfg(test)]
#[allow(clippy::print_stderr)] // a skipped test says why, as a failed cleanup does
mod tests {
    //! The namespaces here are made by the tests (`ip netns add`, root and iproute2 needed)
    //! and hold only their loopback: nothing the tests send leaves the machine. Without root or
    //! `ip` the tests that need them are skipped, unless `CI=true`, where they fail.

    use super::*;
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn ip(args: &[&str]) -> Result<String, String> {
        let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
        if !out.status.success() {
            return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A named namespace with its loopback up, removed on drop.
    struct TestNs {
        name: String,
    }

    impl TestNs {
        fn path(&self) -> PathBuf {
            PathBuf::from(format!("/run/netns/{}", self.name))
        }
    }

    impl Drop for TestNs {
        fn drop(&mut self) {
            if let Err(e) = ip(&["netns", "del", &self.name]) {
                eprintln!("removing the test namespace {}: {e}", self.name);
            }
        }
    }

    static SEQ: AtomicU32 = AtomicU32::new(0);

    fn make_ns() -> Result<TestNs, String> {
        let pid = std::process::id();
        // Leftovers of killed runs (their process is gone) first.
        for ns in ip(&["netns", "list"])?.lines().filter_map(|l| l.split_whitespace().next()) {
            let owner = ns.strip_prefix("esl-nt-").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok());
            if owner.is_some_and(|o| o != pid && !Path::new(&format!("/proc/{o}")).exists()) {
                let _ = ip(&["netns", "del", ns]);
            }
        }
        let name = format!("esl-nt-{pid}-{}", SEQ.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &name])?;
        let ns = TestNs { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The test's namespace, or `None` to skip (a failure when `CI=true`).
    fn test_ns() -> Option<TestNs> {
        match make_ns() {
            Ok(ns) => Some(ns),
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("cannot create a network namespace: {e}\nCI=true requires it (run as root, with iproute2 installed)")
            }
            Err(e) => {
                eprintln!("skipping: cannot create a network namespace: {e}");
                None
            }
        }
    }

    /// A listener bound from inside `ns` (by a thread that enters it and ends).
    fn bind_in(ns: &Netns, addr: SocketAddr) -> std::net::TcpListener {
        let fd = ns.fd.try_clone().expect("dup");
        std::thread::spawn(move || {
            enter(&fd).expect("enter the test namespace");
            let l = std::net::TcpListener::bind(addr).expect("bind in the test namespace");
            l.set_nonblocking(true).expect("nonblocking");
            l
        })
        .join()
        .expect("binding thread")
    }

    /// Answers each connection with `tag` and closes it.
    fn serve(l: std::net::TcpListener, tag: &'static str) {
        let l = tokio::net::TcpListener::from_std(l).expect("listener");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let _ = s.write_all(tag.as_bytes()).await;
                });
            }
        });
    }

    async fn read_all(mut s: TcpStream) -> String {
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn connects_to_what_only_the_namespace_has() {
        let Some(tns) = test_ns() else { return };
        let ns = Netns::open(tns.path()).expect("open");
        let home = Netns::current().expect("own namespace");
        assert_ne!(ns.id().expect("id"), home.id().expect("id"));
        let inside = bind_in(&ns, ([127, 0, 0, 1], 0).into());
        let addr = inside.local_addr().expect("addr");
        serve(inside, "inside");
        // The same address on the server's own loopback is another listener (when the port is
        // free here), or nothing: either way not the namespace's.
        if let Ok(l) = std::net::TcpListener::bind(addr) {
            l.set_nonblocking(true).expect("nonblocking");
            serve(l, "outside");
            assert_eq!(read_all(TcpStream::connect(addr).await.expect("plain connect")).await, "outside");
        }

        assert_eq!(read_all(connect_in(&ns, addr).await.expect("connect_in")).await, "inside");
        let connector = NetnsConnector::spawn(&ns).await.expect("connector");
        for _ in 0..20 {
            assert_eq!(read_all(connector.connect(addr).await.expect("connector")).await, "inside");
        }
        // The test's thread (the runtime's only one) never moved.
        assert_eq!(Netns::current().expect("own namespace").id().expect("id"), home.id().expect("id"));
    }

    #[tokio::test]
    async fn refused_and_unroutable_fail_at_once() {
        let Some(tns) = test_ns() else { return };
        let ns = Netns::open(tns.path()).expect("open");
        // A port nobody listens on in the namespace: bind one, note it, close it.
        let closed = bind_in(&ns, ([127, 0, 0, 1], 0).into()).local_addr().expect("addr");
        let connector = NetnsConnector::spawn(&ns).await.expect("connector");
        let e = connector.connect(closed).await.expect_err("nothing listens");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
        assert!(e.to_string().contains(&tns.name), "the error names the namespace: {e}");
        let e = connect_in(&ns, closed).await.expect_err("nothing listens");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
        // The namespace has a loopback and no route: nothing leaves, the kernel says so at once.
        let t0 = Instant::now();
        let e = connector.connect(([10, 213, 0, 2], 80).into()).await.expect_err("no route");
        assert!(e.to_string().contains("unreachable"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn only_network_namespaces_are_entered() {
        // Needs no root: the kernel checks the type before the permission.
        let uts = Netns::open("/proc/self/ns/uts").expect("open");
        let e = NetnsConnector::spawn(&uts).await.expect_err("not a network namespace");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let e = connect_in(&Netns::open(file.path()).expect("open"), ([127, 0, 0, 1], 9).into()).await.expect_err("a file");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        let e = Netns::open("/proc/self/ns/no-such").expect_err("missing");
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    }

    #[tokio::test]
    async fn the_own_namespace_works_like_a_plain_connect() {
        // Entering the namespace one is in: the path a server takes for instances on its own
        // network. Needs CAP_SYS_ADMIN only.
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("addr");
        serve(l, "home");
        let home = Netns::current().expect("own namespace");
        match NetnsConnector::spawn(&home).await {
            Ok(c) => assert_eq!(read_all(c.connect(addr).await.expect("connect")).await, "home"),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied && std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("skipping: {e}")
            }
            Err(e) => panic!("{e}"),
        }
    }
}
