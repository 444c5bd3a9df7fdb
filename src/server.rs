//! Wiring for `eserveless serve`: open the store, connect the driver, restore what was live,
//! and serve the router until a signal arrives.

use std::sync::Arc;

use anyhow::Context;

use crate::config::ServerConfig;
use crate::config::EngineKind;
use crate::infra::driver::swarm::SwarmDriver;
use crate::infra::driver::{DockerDriver, Driver};
use crate::engine::Platform;
use crate::engine::runtime::Templates;
use crate::infra::store::Store;

pub async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    // Before anything else touches the directory: one server per data directory.
    let data_dir = crate::infra::datadir::DataDir::open(&config.data_dir)?;
    let store = Arc::new(Store::open(&config.data_dir).context("cannot open the database")?);
    let templates = match &config.templates {
        Some(dir) => Templates::with_overrides(dir)?,
        None => Templates::embedded(),
    };
    let owner = data_dir.server_id()?;
    let driver: Arc<dyn Driver> = match config.engine.engine {
        EngineKind::Docker => Arc::new(single_host(&config, &owner).await?),
        EngineKind::Swarm => Arc::new(swarm(&config, &owner).await?),
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    if let Some(token) = crate::engine::auth::bootstrap_admin(&store, &config.data_dir)? {
        announce_admin_token(&token, &config.data_dir, config.listen);
    }
    let limits = ConnLimits::new(&config);
    let platform = Platform::new(store, driver, templates, config)?;
    platform.restore().await.context("cannot restore the live deployments")?;
    let app = crate::api::app(platform);
    let addr = listener.local_addr()?;
    tracing::info!(%addr, console = %format!("{}/ui/", server_url(addr)), "eserveless listening");

    let served = serve_http(listener, app, limits, shutdown_signal()).await;
    drop(data_dir);
    served
}

/// The single-host engine: this host's Docker, its functions bridge behind the firewall.
async fn single_host(config: &ServerConfig, owner: &str) -> anyhow::Result<DockerDriver> {
    let docker = DockerDriver::connect(&config.network, owner).await?;
    if let Some(runtime) = &config.limits.oci_runtime {
        let known = docker.runtimes().await?;
        anyhow::ensure!(
            known.iter().any(|r| r == runtime),
            "the OCI runtime `{runtime}` is not registered with Docker (it has: {}); add it under \"runtimes\" in /etc/docker/daemon.json and restart dockerd, or drop --oci-runtime",
            known.join(", ")
        );
        tracing::info!(runtime = %runtime, "function containers use this OCI runtime");
    }
    if config.firewall {
        isolate_functions_network(docker.docker(), &config.network, config).await?;
    } else {
        tracing::warn!("host firewall rules are off (--firewall=false): functions can reach the host's ports and link-local addresses");
    }
    warn_missing_base_images(docker.docker(), config).await;
    Ok(docker)
}

/// The swarm engine: this host must be a manager. Builds run here, on a bridge behind the
/// same firewall as the single-host engine's; images reach the nodes through a registry.
async fn swarm(config: &ServerConfig, owner: &str) -> anyhow::Result<SwarmDriver> {
    use crate::infra::driver::swarm::guard::{guard_service_name, publish_guard_image, start_node_guard, GuardPolicy};
    use crate::infra::driver::swarm::registry::{OwnRegistry, Registry};
    anyhow::ensure!(
        config.limits.oci_runtime.is_none(),
        "--oci-runtime cannot be chosen per service in swarm mode: make it the default runtime of every node's dockerd (\"default-runtime\" in /etc/docker/daemon.json) and drop --oci-runtime"
    );
    let driver = SwarmDriver::connect(owner, &config.network, &config.run_image).await?;
    if config.firewall {
        isolate_functions_network(driver.docker(), &config.network, config).await?;
    } else {
        tracing::warn!("host firewall rules are off (--firewall=false): builds can reach the manager's ports and link-local addresses");
    }
    warn_missing_base_images(driver.docker(), config).await;
    let (manager_id, manager_addr) = driver.manager();
    let registry = match &config.engine.registry {
        Some(addr) => {
            let r = Registry::external(addr);
            // Not fatal: deployments say what is wrong with it when they push.
            if let Err(e) = r.ping().await {
                tracing::warn!(registry = %addr, error = %e, "the registry does not answer; deployments will fail until it does");
            }
            r
        }
        None => {
            let own = OwnRegistry {
                owner,
                manager_id,
                manager_addr,
                port: config.engine.registry_port,
                debian_image: &config.run_image,
                build_network: &config.network,
            };
            Registry::ensure_own(driver.docker(), own).await.context("cannot start the registry the swarm's nodes pull images from")?
        }
    };
    tracing::info!(registry = %registry.addr(), manager = %manager_addr, "swarm engine: images are pushed to the registry and run by digest");
    let driver = driver.with_registry(registry);
    if config.firewall {
        // The same host rules as the single-host engine's, on every node, for the bridge that
        // carries the functions' traffic out of their overlays (see swarm/guard.rs).
        let policy = GuardPolicy { egress: config.egress, ..GuardPolicy::default() };
        match start_node_guard(&driver, &config.run_image, &policy).await {
            Ok(image) => tracing::info!(image = %image, "node guard runs on every node"),
            // A guard from an earlier start still stands on the nodes (the registry, say, is
            // down for a while): serve what is live rather than stop; deployments will say
            // what is wrong with the registry.
            Err(e) if driver.docker().inspect_service(&guard_service_name(owner), None).await.is_ok() => {
                tracing::warn!(error = %e, "the node guard could not be updated; the one already on the nodes stays");
            }
            Err(e) => {
                return Err(anyhow::anyhow!(e).context(
                    "cannot run the node guard on every node (functions would reach the nodes' ports and other projects); fix the cause, or start with --firewall=false to run without it",
                ))
            }
        }
    } else {
        tracing::warn!("--firewall=false: no node guard; functions can reach the nodes' ports, the LAN and other projects' overlays");
        // Needed for `rm` to remove a project's images from every node; not for serving.
        if let Err(e) = publish_guard_image(&driver, &config.run_image).await {
            tracing::warn!(error = %e, "the server's per-node image could not be published; `rm` will leave images on the nodes");
        }
    }
    Ok(driver)
}

async fn warn_missing_base_images(docker: &bollard::Docker, config: &ServerConfig) {
    for image in [&config.node_image, &config.go_image, &config.run_image] {
        if !crate::infra::driver::image_exists_on(docker, image).await.unwrap_or(false) {
            tracing::warn!(image = %image, "base image missing; builds that need it will fail. Build offline images with `eval \"$(scripts/offline-images)\"`");
        }
    }
}

/// Keeps function containers off the host, the metadata address and private ranges (see
/// [`crate::infra::firewall`]). Fails closed: without the rules the server does not start.
async fn isolate_functions_network(docker: &bollard::Docker, network: &str, config: &ServerConfig) -> anyhow::Result<()> {
    let net = crate::infra::firewall::bridge_interface(docker, network).await?;
    let mut policy = crate::infra::firewall::FirewallPolicy::new(net.iface.clone());
    policy.egress = config.egress;
    policy.dns_servers = crate::infra::firewall::host_resolvers();
    crate::infra::firewall::apply(&policy).await.map_err(|e| {
        anyhow::anyhow!("{e}\nfunctions would be able to reach this host; fix the cause, or start with --firewall=false to run without the rules")
    })?;
    tracing::info!(bridge = %net.iface, egress = config.egress, "host firewall rules for the functions network in place");
    Ok(())
}

/// Largest request head (request line and headers) accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// File descriptors kept back from client connections: the store, the engine, upstream
/// connections to instances, builds.
const RESERVED_FDS: u64 = 1024;

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down; function containers stay up and are adopted at the next start");
}

/// How many client connections the server holds, and how long a silent one may stay.
#[derive(Debug, Clone)]
struct ConnLimits {
    /// Time to send a request head, from accept and again between keep-alive requests.
    head_timeout: std::time::Duration,
    /// Open client connections, all clients together.
    max: usize,
    /// Open connections of one client address.
    per_client: u32,
}

impl ConnLimits {
    fn new(config: &ServerConfig) -> ConnLimits {
        let fds = raise_fd_limit();
        let mut max = config.max_connections;
        if let Some(fds) = fds {
            let room = usize::try_from(fds.saturating_sub(RESERVED_FDS).max(64)).unwrap_or(usize::MAX);
            if max > room {
                tracing::warn!(max_connections = max, fd_limit = fds, using = room, "--max-connections is above what the open-file limit allows; lowered");
                max = room;
            }
        }
        ConnLimits { head_timeout: config.head_timeout, max, per_client: config.max_client_connections }
    }
}

/// Raises the soft open-file limit to the hard one (a server's usual start-up step) and
/// returns the limit in force.
fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            tracing::debug!(error = %e, "could not raise the open-file limit");
        }
    }
    getrlimit(Resource::Nofile).current
}

/// Open connections by client address; a slot is given back when its guard drops.
#[derive(Default)]
struct ClientSlots(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, u32>>);

struct ClientSlot {
    slots: std::sync::Arc<ClientSlots>,
    ip: std::net::IpAddr,
}

impl ClientSlots {
    fn take(self: &std::sync::Arc<Self>, ip: std::net::IpAddr, cap: u32) -> Option<ClientSlot> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(ClientSlot { slots: self.clone(), ip })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut m = self.slots.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Serves `app` over HTTP/1.1 with limits on the request head's size, on the time to send it
/// (from the moment a connection is accepted, and between keep-alive requests, so a client
/// that never sends a byte is closed too), and on the connections held, in all and per client
/// address. TCP_NODELAY so small answers never wait on Nagle's algorithm.
///
/// HTTP/1.1 only: the HTTP/2 detection step of a protocol-sniffing server reads with no
/// deadline, and every client of a functions gateway speaks HTTP/1.1.
async fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: ConnLimits,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use std::sync::Arc;
    use tower::ServiceExt;

    let mut http = hyper::server::conn::http1::Builder::new();
    // max_header_size is what bounds the head: max_buf_size alone lets a head that arrives in
    // one read through whole, however large (431 and the connection closed over the limit).
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_header_size(MAX_HEAD_BYTES);
    let open = Arc::new(tokio::sync::Semaphore::new(limits.max));
    let clients = Arc::new(ClientSlots::default());
    let stopping = tokio_util::sync::CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let mut refused_logged: Option<std::time::Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Over a cap the connection is closed at once: its descriptor is given back now,
        // rather than held by a client that would take them all.
        let permit = open.clone().try_acquire_owned().ok();
        let slot = clients.take(addr.ip(), limits.per_client);
        let (Some(permit), Some(slot)) = (permit, slot) else {
            if !matches!(refused_logged, Some(t) if t.elapsed() < std::time::Duration::from_secs(10)) {
                refused_logged = Some(std::time::Instant::now());
                tracing::warn!(client = %addr.ip(), max = limits.max, per_client = limits.per_client, "connection refused: too many open connections");
            }
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        // Shared with the requests: an upgraded connection (WebSocket) keeps its places, and
        // a tracker token, so that shutdown waits for it to close as for a request.
        let held: Arc<dyn std::any::Any + Send + Sync> = Arc::new((permit, slot, tracker.token()));
        let hold = crate::dataplane::upgrade::ConnectionHold::new(held.clone(), stopping.clone());
        let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(axum::extract::ConnectInfo(addr));
            req.extensions_mut().insert(hold.clone());
            app.clone().oneshot(req.map(axum::body::Body::new))
        });
        let conn = http.serve_connection(TokioIo::new(tcp), service).with_upgrades();
        let stopping = stopping.clone();
        tracker.spawn(async move {
            let _held = held;
            tokio::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                _ = stopping.cancelled() => {
                    // Requests in flight finish; idle keep-alive connections close now.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(client = %addr, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    stopping.cancel();
    tracker.close();
    if tokio::time::timeout(std::time::Duration::from_secs(10), tracker.wait()).await.is_err() {
        tracing::warn!("connections still open after 10 s; closing them");
    }
    Ok(())
}


/// Prints the first admin token once, to the terminal only (not through the log, which may be
/// shipped elsewhere); it is also in the 0600 file.
#[allow(clippy::print_stdout)]
fn announce_admin_token(token: &str, data_dir: &std::path::Path, listen: std::net::SocketAddr) {
    println!(
        "eserveless: first start: created user `admin` with the API token\n\n    {token}\n\n\
         It is also in {} (mode 0600). Log the CLI in with it (or set ESERVELESS_TOKEN):\n\n    {}\n\n         or open the web console at {}/ui/ and paste it there.\n",
        data_dir.join(crate::engine::auth::ADMIN_TOKEN_FILE).display(),
        login_command(token, listen),
        server_url(listen),
    );
}

/// This server's URL as reached from this machine (an unspecified address becomes loopback).
fn server_url(listen: std::net::SocketAddr) -> String {
    let host = match listen.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("http://{host}:{}", listen.port())
}

/// The exact `eserveless login` for this server, as reached from this machine.
fn login_command(token: &str, listen: std::net::SocketAddr) -> String {
    format!("eserveless login --server {} --with-token {token}", server_url(listen))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_login_command_names_a_reachable_address() {
        let cmd = |a: &str| super::login_command("esl_x", a.parse().expect("addr"));
        assert_eq!(cmd("0.0.0.0:8000"), "eserveless login --server http://127.0.0.1:8000 --with-token esl_x");
        assert_eq!(cmd("10.1.2.3:9000"), "eserveless login --server http://10.1.2.3:9000 --with-token esl_x");
        assert_eq!(cmd("[::]:8000"), "eserveless login --server http://[::1]:8000 --with-token esl_x");
    }
}
