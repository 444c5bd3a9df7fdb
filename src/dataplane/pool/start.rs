//! Starting an instance: the container's name, environment and labels, running it, and
//! waiting until it accepts connections (or saving why it did not).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::state::{Instance, InstanceState};
use super::{lock, remove_container, FunctionPool, StartError, FUNCTION_PORT};
use crate::dataplane::upstream::{Endpoint, SOCKET_IN_CONTAINER};
use crate::infra::driver::{labels, ContainerSpec, DriverError};
use crate::infra::netns::NetnsConnector;

impl FunctionPool {
    /// Starts one container and waits for readiness. `claimed` counts the caller's request
    /// as in flight on it. The caller has already counted it in `starting`.
    pub(super) async fn start_instance(self: &Arc<Self>, claimed: bool) -> Result<(String, Arc<Endpoint>), StartError> {
        let r = &self.revision;
        let seq = self.shared.seq.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let fn_part = crate::names::FunctionName::parse(&r.function).map(|f| f.docker_part()).unwrap_or_else(|_| "fn".into());
        let name = format!("esl-{}-{}-{}-{:x}{:x}", r.project, fn_part, r.deployment_id, nanos, seq);
        let mut env = r.env.clone();
        env.0.push(format!("PORT={FUNCTION_PORT}"));
        env.0.push(format!("ESERVELESS_SOCKET={SOCKET_IN_CONTAINER}"));
        let spec = ContainerSpec {
            name,
            image: r.image.clone(),
            env,
            labels: {
                let mut l = labels::for_container(&r.project, &r.function, r.deployment_id, "http");
                l.insert(labels::CONFIG.to_string(), self.config.clone());
                l
            },
            limits: r.limits.clone(),
        };
        let result = async {
            let t0 = Instant::now();
            let started = self.shared.driver.run(spec).await.map_err(|e| match e {
                DriverError::NoCapacity(_) => StartError::NoRoom(e.to_string()),
                DriverError::NoSuchContainer(_) | DriverError::NodeLost(_) => StartError::Lost(e.to_string()),
                // An image that dies at once under the sandbox: say why, as below.
                e => StartError::Failed(with_sandbox_hint(e.to_string())),
            })?;
            let via = match self.shared.driver.connector(&r.project).await {
                Ok(via) => via,
                Err(e) => {
                    remove_container(&self.shared, &r.project, &r.function, r.deployment_id, &started.id).await;
                    return Err(StartError::Failed(format!("cannot reach the instance's network: {e}")));
                }
            };
            let engine_ms = t0.elapsed().as_millis();
            let ip: std::net::IpAddr =
                started.ip.parse().map_err(|_| format!("container address `{}` is not an IP", started.ip))?;
            let addr = SocketAddr::new(ip, FUNCTION_PORT);
            let probing = Arc::new(super::Probing::default());
            self.shared.probing.lock().unwrap_or_else(|p| p.into_inner()).insert(started.id.clone(), probing.clone());
            let probed = probe_ready(addr, via.as_deref(), &probing.dead, Instant::now() + self.shared.config.start_timeout).await;
            self.shared.probing.lock().unwrap_or_else(|p| p.into_inner()).remove(&started.id);
            tracing::debug!(container = %started.id, engine_ms, ready_ms = t0.elapsed().as_millis(), "cold start timings");
            if let Err(why) = probed {
                if probing.lost.load(Ordering::Acquire) {
                    // Lost with its node before it was ready: no output to show, and another
                    // start may well work.
                    remove_container(&self.shared, &r.project, &r.function, r.deployment_id, &started.id).await;
                    return Err(StartError::Lost(format!("{why} (the engine reported it gone)")));
                }
                let logs = self.shared.driver.logs(&started.id, 4096).await.unwrap_or_default();
                remove_container(&self.shared, &r.project, &r.function, r.deployment_id, &started.id).await;
                let tail: String = logs.lines().rev().take(10).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
                let message = if tail.is_empty() { why.to_string() } else { format!("{why}; its output ends with:\n{tail}") };
                return Err(StartError::Failed(with_sandbox_hint(message)));
            }
            // Opened only now that the container is known to run (and was not seen to die).
            let endpoint = Arc::new(
                Endpoint::for_container(addr, started.pid, self.metrics.connects.clone()).via(via).on_node(started.node),
            );
            Ok((started.id, endpoint))
        }
        .await;
        let mut g = lock(&self.inner);
        g.starting = g.starting.saturating_sub(1);
        if let Ok((id, endpoint)) = &result {
            tracing::info!(container = %id, project = %r.project, function = %r.function, "instance started");
            g.instances.push(Instance {
                id: Arc::from(id.as_str()),
                endpoint: endpoint.clone(),
                state: InstanceState::Ready,
                in_flight: u32::from(claimed),
                last_used: Instant::now(),
            });
        }
        drop(g);
        self.changed.notify_waiters();
        // Started for a revision that was replaced meanwhile: it serves its one request, then goes.
        if let Ok((id, _)) = &result {
            if self.retired.load(Ordering::Acquire) {
                self.evict(id, "revision retired during start");
            }
        }
        result
    }

    /// Starts an instance ahead of traffic (used before a revision goes live).
    pub async fn prewarm(self: &Arc<Self>) -> Result<(), String> {
        {
            let mut g = lock(&self.inner);
            g.starting += 1;
        }
        self.start_instance(false).await.map(|_| ()).map_err(|e| e.to_string())
    }
}

/// What to do when an instance's last words say the sandbox stopped it: an image made to run
/// as root, or to write where it may not, crashes at once under the platform's rules.
pub fn sandbox_hint(output: &str) -> Option<&'static str> {
    let o = output.to_ascii_lowercase();
    let denied = ["permission denied", "operation not permitted", "eacces", "eperm"].iter().any(|w| o.contains(w));
    let read_only = ["read-only file system", "erofs"].iter().any(|w| o.contains(w));
    (denied || read_only).then_some(
        "eserveless: functions run as user 65534 (not root), with a read-only file system except /tmp, and listen on \
         $PORT (8080); make the image write only under /tmp (or $HOME, which is /tmp) and serve on $PORT as a non-root user",
    )
}

/// A start failure's message, with [`sandbox_hint`]'s advice when its output calls for it.
fn with_sandbox_hint(message: String) -> String {
    match sandbox_hint(&message) {
        Some(hint) => format!("{message}\n{hint}"),
        None => message,
    }
}

async fn probe_ready(addr: SocketAddr, via: Option<&NetnsConnector>, dead: &AtomicBool, until: Instant) -> Result<(), &'static str> {
    loop {
        if dead.load(Ordering::Acquire) {
            return Err("the container exited before it accepted connections");
        }
        let connect = async {
            match via {
                Some(c) => c.connect(addr).await,
                None => tokio::net::TcpStream::connect(addr).await,
            }
        };
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), connect).await {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err("the container did not accept connections in time");
        }
        // A short pause between probes; readiness is observed, not assumed.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::sandbox_hint;

    #[test]
    fn an_instance_stopped_by_the_sandbox_is_told_why() {
        for out in [
            "nginx: [emerg] mkdir() \"/var/cache/nginx/client_temp\" failed (30: Read-only file system)",
            "Error: listen EACCES: permission denied 0.0.0.0:80",
            "su: Authentication failure\nsetgroups: Operation not permitted",
        ] {
            let hint = sandbox_hint(out).unwrap_or_else(|| panic!("no hint for {out}"));
            assert!(hint.contains("user 65534") && hint.contains("/tmp") && hint.contains("$PORT"), "{hint}");
        }
        assert_eq!(sandbox_hint("TypeError: x is not a function"), None, "a plain crash is the code's own");
    }
}
