//! Wiring for `eserveless serve`: open the store, connect the driver, restore what was live,
//! and serve the router until a signal arrives.

use std::net::SocketAddr;
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
    let driver: Arc<dyn Driver> = Arc::new(DockerDriver::connect(&config.network, &owner).await?);
    for image in [&config.node_image, &config.go_image, &config.run_image] {
        if !driver.image_exists(image).await? {
            tracing::warn!(image = %image, "base image missing; builds that need it will fail. Build offline images with `eval \"$(scripts/offline-images)\"`");
        }
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let platform = Platform::new(store, driver, templates, config);
    platform.restore().await.context("cannot restore the live deployments")?;
    let app = crate::api::app(platform);
    tracing::info!(addr = %listener.local_addr()?, "eserveless listening");

    use axum::serve::ListenerExt;
    // Small responses must not wait on Nagle's algorithm and the client's delayed ACK.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            tracing::info!("shutting down; function containers stay up and are adopted at the next start");
        })
        .await?;
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
