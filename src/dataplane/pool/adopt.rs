//! Adoption after a restart: which running containers are kept (their revision is live and
//! their configuration digest matches), and the digest itself.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::time::Instant;

use super::state::{Instance, InstanceState};
use super::{lock, remove_container, PoolManager, Revision, FUNCTION_PORT};
use crate::dataplane::upstream::Endpoint;
use crate::infra::driver::{labels, ManagedContainer};

impl PoolManager {
    /// Adopts running containers whose revision has a pool; removes every other managed one.
    pub async fn adopt(&self) -> Result<(usize, usize), crate::infra::driver::DriverError> {
        let containers = self.shared.driver.list_managed().await?;
        let pools = self.live_pools();
        let (mut adopted, mut removed) = (0, 0);
        for c in containers {
            let pool = pools.iter().find(|p| !p.retired.load(Ordering::Acquire) && belongs_to(&c.labels, &p.revision, &p.config));
            let adoptable = pool.zip(serving_address(&c));
            if let Some((pool, ip)) = adoptable {
                let pid = self.shared.driver.init_pid(&c.id).await.ok().flatten();
                let via = match self.shared.driver.connector(&pool.revision.project).await {
                    Ok(via) => via,
                    Err(e) => {
                        tracing::warn!(container = %c.id, error = %e, "cannot reach the instance's network; not adopted");
                        remove_container(&self.shared, &pool.revision.project, &pool.revision.function, pool.revision.deployment_id, &c.id).await;
                        removed += 1;
                        continue;
                    }
                };
                let endpoint = Arc::new(
                    Endpoint::for_container(SocketAddr::new(ip, FUNCTION_PORT), pid, pool.metrics.connects.clone())
                        .via(via)
                        .on_node(c.node.clone()),
                );
                let mut g = lock(&pool.inner);
                if g.instances.len() < pool.revision.scaling.max_instances as usize {
                    g.instances.push(Instance {
                        id: Arc::from(c.id.as_str()),
                        endpoint,
                        state: if c.paused { InstanceState::Paused } else { InstanceState::Ready },
                        in_flight: 0,
                        last_used: Instant::now(),
                    });
                    adopted += 1;
                    tracing::info!(container = %c.id, project = %pool.revision.project, function = %pool.revision.function, "instance adopted");
                    continue;
                }
            }
            let project = c.labels.get(labels::PROJECT).cloned().unwrap_or_default();
            let function = c.labels.get(labels::FUNCTION).cloned().unwrap_or_default();
            let revision = c.labels.get(labels::REVISION).and_then(|r| r.parse().ok()).unwrap_or(0);
            remove_container(&self.shared, &project, &function, revision, &c.id).await;
            removed += 1;
        }
        Ok((adopted, removed))
    }
}

/// Whether a managed container with `container_labels` is an instance of the live revision
/// `r`, whose [`config_digest`] is `config`: pure, tested without Docker.
pub(super) fn belongs_to(container_labels: &HashMap<String, String>, r: &Revision, config: &str) -> bool {
    let get = |k: &str| container_labels.get(k).map(String::as_str).unwrap_or("");
    get(labels::ROLE) == "http"
        && get(labels::PROJECT) == r.project
        && get(labels::FUNCTION) == r.function
        && get(labels::REVISION) == r.deployment_id.to_string()
        // Started before a secret change or under other limits: not this revision's
        // configuration any more, so it is replaced rather than adopted.
        && get(labels::CONFIG) == config
}

/// Where an adopted container serves: only a running one with a valid address is kept.
pub(super) fn serving_address(c: &ManagedContainer) -> Option<IpAddr> {
    if !c.running {
        return None;
    }
    c.ip.as_deref().and_then(|ip| ip.parse().ok())
}

/// What an instance of `r` is started with, as a short digest: image, environment (secrets
/// included: `docker inspect` shows the environment itself anyway) and limits.
pub(super) fn config_digest(r: &Revision) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(r.image.as_bytes());
    for var in &r.env.0 {
        h.update([0u8]);
        h.update(var.as_bytes());
    }
    // Each limit by name, in a fixed order: a stable encoding, where `Debug` output could
    // change with a harmless derive or field reorder and replace every container after an
    // upgrade. A new limit is appended here (and then replaces containers once, as it should).
    let l = &r.limits;
    let fields: [(&str, String); 7] = [
        ("memory_bytes", l.memory_bytes.to_string()),
        ("nano_cpus", l.nano_cpus.to_string()),
        ("pids", l.pids.to_string()),
        ("nofile", l.nofile.to_string()),
        ("tmpfs_size", l.tmpfs_size.clone()),
        ("user", l.user.clone()),
        ("oci_runtime", l.oci_runtime.clone().unwrap_or_default()),
    ];
    for (name, value) in fields {
        h.update([0u8]);
        h.update(name.as_bytes());
        h.update(b"=");
        h.update(value.as_bytes());
    }
    h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::manifest::Scaling;
    use crate::dataplane::Workload;
    use crate::infra::driver::{Env, Limits};

    #[test]
    fn config_digest_follows_env_and_limits() {
        let r = Revision {
            workload: Workload {
                project: "p".into(),
                function: "f".into(),
                deployment_id: 1,
                image: "img".into(),
                env: Env(vec!["A=1".into()]),
                limits: Limits::default(),
                timeout: Duration::from_secs(1),
            },
            private: false,
            scaling: Scaling::default(),
        };
        let d = config_digest(&r);
        assert_eq!(d.len(), 32);
        // Pinned: the encoding is part of the upgrade contract (a changed digest replaces
        // every running container); change this only on purpose.
        assert_eq!(d, "f7edc0db09f4763c25535ef62249a5c9", "the digest of a known revision changed");
        assert_eq!(d, config_digest(&r.clone()), "stable");
        let mut secret = r.clone();
        secret.env.0.push("TOKEN=new".into());
        assert_ne!(config_digest(&secret), d, "a secret change changes it");
        let mut smaller = r.clone();
        smaller.limits.memory_bytes /= 2;
        assert_ne!(config_digest(&smaller), d, "other limits change it");
        let mut gvisor = r.clone();
        gvisor.limits.oci_runtime = Some("runsc".into());
        assert_ne!(config_digest(&gvisor), d, "the OCI runtime changes it");
        let mut split = r.clone();
        split.env.0 = vec!["A=1B=2".into()];
        let mut two = r.clone();
        two.env.0 = vec!["A=1".into(), "B=2".into()];
        assert_ne!(config_digest(&split), config_digest(&two), "variables are delimited");
    }

    fn revision() -> Revision {
        Revision {
            workload: Workload {
                project: "p".into(),
                function: "f".into(),
                deployment_id: 3,
                image: "img".into(),
                env: Env::default(),
                limits: Limits::default(),
                timeout: Duration::from_secs(1),
            },
            private: false,
            scaling: Scaling::default(),
        }
    }

    #[test]
    fn which_containers_are_adopted() {
        let r = revision();
        let ours = || {
            let mut l = labels::for_container("p", "f", 3, "http");
            l.insert(labels::CONFIG.to_string(), "digest".to_string());
            l
        };
        let with = |k: &str, v: &str| {
            let mut l = ours();
            l.insert(k.to_string(), v.to_string());
            l
        };
        let without = |k: &str| {
            let mut l = ours();
            l.remove(k);
            l
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, HashMap<String, String>, bool)> = vec![
            ("this revision, same configuration", ours(), true),
            ("another configuration (secrets or limits changed)", with(labels::CONFIG, "other"), false),
            ("no configuration label (started by an older version)", without(labels::CONFIG), false),
            ("another revision", with(labels::REVISION, "2"), false),
            ("another function", with(labels::FUNCTION, "g"), false),
            ("another project", with(labels::PROJECT, "q"), false),
            ("a cron run", with(labels::ROLE, "cron"), false),
        ];
        for (what, container_labels, want) in cases {
            assert_eq!(belongs_to(&container_labels, &r, "digest"), want, "{what}");
        }
    }

    #[test]
    fn only_running_containers_with_an_address_are_kept() {
        let c = |running: bool, ip: Option<&str>| ManagedContainer {
            id: "c".into(),
            labels: HashMap::new(),
            running,
            paused: false,
            stopped: !running,
            ip: ip.map(str::to_string),
            node: None,
        };
        let ip: IpAddr = "10.0.0.2".parse().expect("an address");
        assert_eq!(serving_address(&c(true, Some("10.0.0.2"))), Some(ip));
        assert_eq!(serving_address(&c(false, Some("10.0.0.2"))), None, "stopped");
        assert_eq!(serving_address(&c(true, None)), None, "no address");
        assert_eq!(serving_address(&c(true, Some("not-an-ip"))), None, "a bad address");
    }
}
