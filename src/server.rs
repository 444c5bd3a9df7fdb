//! Wiring for `eserveless serve`: open the store, connect the driver, restore what was live,
//! and serve the router until a signal arrives.

use std::sync::Arc;

use anyhow::Context;

use crate::config::ServerConfig;
use crate::driver::{DockerDriver, Driver};
use crate::platform::Platform;
use crate::runtime::Templates;
use crate::store::Store;

pub async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
    let store = Arc::new(Store::open(&config.data_dir).context("cannot open the database")?);
    let templates = match &config.templates {
        Some(dir) => Templates::with_overrides(dir)?,
        None => Templates::embedded(),
    };
    let owner = server_id(&config.data_dir)?;
    let docker = DockerDriver::connect(&config.network, &owner).await?;
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
        isolate_functions_network(&docker, &config).await?;
    } else {
        tracing::warn!("host firewall rules are off (--firewall=false): functions can reach the host's ports and link-local addresses");
    }
    let driver: Arc<dyn Driver> = Arc::new(docker);
    for image in [&config.node_image, &config.go_image, &config.run_image] {
        if !driver.image_exists(image).await? {
            tracing::warn!(image = %image, "base image missing; builds that need it will fail. Build offline images with `eval \"$(scripts/offline-images)\"`");
        }
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    if let Some(token) = crate::auth::bootstrap_admin(&store, &config.data_dir)? {
        // Printed once, to the terminal only (not through the log); also in the 0600 file.
        println!(
            "eserveless: first start: created user `admin` with the API token\n\n    {token}\n\n\
             It is also in {} (mode 0600). Use it with `eserveless login --with-token <token>` or ESERVELESS_TOKEN.",
            config.data_dir.join(crate::auth::ADMIN_TOKEN_FILE).display()
        );
    }
    let platform = Platform::new(store, driver, templates, config)?;
    platform.restore().await.context("cannot restore the live deployments")?;
    let app = crate::api::app(platform);
    tracing::info!(addr = %listener.local_addr()?, "eserveless listening");

    serve_http(listener, app, shutdown_signal()).await
}

/// Keeps function containers off the host, the metadata address and private ranges (see
/// [`crate::firewall`]). Fails closed: without the rules the server does not start.
async fn isolate_functions_network(docker: &DockerDriver, config: &ServerConfig) -> anyhow::Result<()> {
    let net = crate::firewall::bridge_interface(docker.docker(), &config.network).await?;
    let mut policy = crate::firewall::FirewallPolicy::new(net.iface.clone());
    policy.egress = config.egress;
    policy.dns_servers = crate::firewall::host_resolvers();
    crate::firewall::apply(&policy).await.map_err(|e| {
        anyhow::anyhow!("{e}\nfunctions would be able to reach this host; fix the cause, or start with --firewall=false to run without the rules")
    })?;
    tracing::info!(bridge = %net.iface, egress = config.egress, "host firewall rules for the functions network in place");
    Ok(())
}

/// Largest request head (request line and headers) accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Time a client gets to send its request head (slowloris).
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down; function containers stay up and are adopted at the next start");
}

/// Serves `app` with limits on the request head's size and the time to send it, and with
/// TCP_NODELAY so small answers never wait on Nagle's algorithm.
async fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt;

    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEAD_TIMEOUT).max_buf_size(MAX_HEAD_BYTES);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
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
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(axum::extract::ConnectInfo(addr));
            app.clone().oneshot(req.map(axum::body::Body::new))
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(client = %addr, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {},
        _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {
            tracing::warn!("connections still open after 10 s; closing them");
        }
    }
    Ok(())
}

/// This data directory's identity on the engine, made once and kept in `server-id`.
fn server_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Read;
    let path = data_dir.join("server-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim().to_string();
        if !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(id);
        }
    }
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom")?;
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&path, &id).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}
