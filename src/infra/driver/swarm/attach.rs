//! The gateway's way into a project's overlay: one small "attach" container per project on
//! the manager, joined to the project's attachable overlay, whose network namespace the
//! server opens its connections in ([`NetnsConnector`]); see docs/scale-out-notes-netns.md.
//!
//! The attach container runs nothing but `sleep` (read-only, no capabilities, as nobody). Its
//! namespace keeps only the overlay's route: Docker also gives it a leg on `docker_gwbridge`
//! with the default route, and a connection the server opens for one project to an address
//! outside that overlay (another project's, the host's) must fail there, not leave through the
//! node. The default route is deleted when the container is made (`nsenter` + `ip`).

use std::collections::HashMap;
use std::sync::Arc;

use bollard::models::{ContainerCreateBody, EndpointSettings, HostConfig, NetworkingConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use bollard::Docker;

use super::super::{labels, DriverError, Result};
use crate::infra::netns::{Netns, NetnsConnector};

/// The attach containers of one server, by project, with their connectors.
pub struct Attachments {
    docker: Docker,
    owner: String,
    /// Image with `sleep` (the run image): present on the manager, where builds run.
    image: String,
    /// Project → (attach container id, connector). An async lock held across the create,
    /// so two first starts of a project make one container.
    by_project: tokio::sync::Mutex<HashMap<String, (String, Arc<NetnsConnector>)>>,
}

impl Attachments {
    pub fn new(docker: Docker, owner: &str, image: &str) -> Attachments {
        Attachments { docker, owner: owner.to_string(), image: image.to_string(), by_project: tokio::sync::Mutex::new(HashMap::new()) }
    }

    /// The connector into `project`'s overlay `network`, its attach container made (or
    /// adopted after a restart) when needed, and made again when it died.
    pub async fn connector(&self, project: &str, network: &str) -> Result<Arc<NetnsConnector>> {
        let mut known = self.by_project.lock().await;
        if let Some((id, c)) = known.get(project) {
            if self.running(id).await? {
                return Ok(c.clone());
            }
            tracing::warn!(project, container = %id, "the project's attach container is gone; making a new one");
            known.remove(project);
        }
        let name = attach_name(&self.owner, project);
        let id = match self.inspect_running(&name).await? {
            Some(id) => id,
            None => {
                self.remove_named(&name).await?;
                self.create(&name, project, network).await?
            }
        };
        let key = self.sandbox_key(&id).await?;
        drop_default_route(&key).await?;
        let ns = Netns::open(&key).map_err(|e| DriverError::Engine(format!("cannot open the network namespace of {name} ({key}): {e}")))?;
        let c = Arc::new(
            NetnsConnector::spawn(&ns)
                .await
                .map_err(|e| DriverError::Engine(format!("cannot enter the network namespace of {name} ({key}): {e}")))?,
        );
        known.insert(project.to_string(), (id, c.clone()));
        Ok(c)
    }

    /// Removes `project`'s attach container (before its overlay can go).
    pub async fn remove(&self, project: &str) -> Result<()> {
        self.by_project.lock().await.remove(project);
        self.remove_named(&attach_name(&self.owner, project)).await
    }

    async fn create(&self, name: &str, project: &str, network: &str) -> Result<String> {
        let mut l = HashMap::from([
            (labels::OWNER.to_string(), self.owner.clone()),
            (labels::PROJECT.to_string(), project.to_string()),
            (labels::ROLE.to_string(), "attach".to_string()),
        ]);
        // Not `managed`: the single-host engine adopts or removes managed containers, and
        // this one belongs to the swarm engine of the same server.
        l.insert("eserveless.attach".to_string(), "true".to_string());
        let body = ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: Some(vec!["sleep".into(), "infinity".into()]),
            user: Some("65534:65534".into()),
            labels: Some(l),
            host_config: Some(HostConfig {
                network_mode: Some(network.to_string()),
                readonly_rootfs: Some(true),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                memory: Some(16 * 1024 * 1024),
                pids_limit: Some(8),
                init: Some(false),
                restart_policy: Some(bollard::models::RestartPolicy {
                    name: Some(bollard::models::RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(network.to_string(), EndpointSettings::default())])),
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::default().name(name).build();
        let created = self.docker.create_container(Some(opts), body).await.map_err(|e| {
            DriverError::Engine(format!("cannot make the attach container {name} on overlay {network} (image {}): {e}", self.image))
        })?;
        self.docker.start_container(&created.id, None).await?;
        tracing::info!(project, container = %name, "attach container started on the project's overlay");
        Ok(created.id)
    }

    async fn running(&self, id: &str) -> Result<bool> {
        match self.docker.inspect_container(id, None).await {
            Ok(c) => Ok(c.state.and_then(|s| s.running).unwrap_or(false)),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn inspect_running(&self, name: &str) -> Result<Option<String>> {
        match self.docker.inspect_container(name, None).await {
            Ok(c) if c.state.as_ref().and_then(|s| s.running).unwrap_or(false) => Ok(c.id),
            Ok(_) => Ok(None),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn sandbox_key(&self, id: &str) -> Result<String> {
        let c = self.docker.inspect_container(id, None).await?;
        c.network_settings
            .and_then(|n| n.sandbox_key)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| DriverError::Engine(format!("the attach container {id} has no network namespace")))
    }

    async fn remove_named(&self, name: &str) -> Result<()> {
        let opts = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The attach container's name for a project.
pub fn attach_name(owner: &str, project: &str) -> String {
    format!("esl-attach-{}-{project}", &owner[..owner.len().min(8)])
}

/// Deletes every route of the namespace at `key` but the ones of its overlay leg: the
/// default route and the `docker_gwbridge` subnet go. The overlay is the interface the
/// container was attached with first, `eth0`.
async fn drop_default_route(key: &str) -> Result<()> {
    let out = tokio::process::Command::new("nsenter")
        .arg(format!("--net={key}"))
        .args(["ip", "-4", "route", "show"])
        .output()
        .await
        .map_err(|e| DriverError::Engine(format!("cannot run nsenter/ip (util-linux and iproute2 are needed on the manager): {e}")))?;
    if !out.status.success() {
        return Err(DriverError::Engine(format!(
            "listing the routes of the attach namespace {key} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    for route in routes_to_drop(&String::from_utf8_lossy(&out.stdout)) {
        let del = tokio::process::Command::new("nsenter")
            .arg(format!("--net={key}"))
            .args(["ip", "-4", "route", "del"])
            .args(route.split_whitespace())
            .output()
            .await
            .map_err(|e| DriverError::Engine(format!("cannot run nsenter/ip: {e}")))?;
        if !del.status.success() {
            return Err(DriverError::Engine(format!(
                "deleting the route `{route}` in the attach namespace {key} failed: {}",
                String::from_utf8_lossy(&del.stderr).trim()
            )));
        }
    }
    Ok(())
}

/// The routes of `ip -4 route show` that do not stay on the overlay leg (`dev eth0`).
pub fn routes_to_drop(routes: &str) -> Vec<String> {
    routes
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| l.starts_with("default") || !l.split_whitespace().collect::<Vec<_>>().windows(2).any(|w| w == ["dev", "eth0"]))
        .map(|l| {
            // `ip route del` takes the route's selector: destination, gateway and device.
            let words: Vec<&str> = l.split_whitespace().collect();
            let mut keep = vec![words[0]];
            let mut it = words.iter().skip(1);
            while let Some(w) = it.next() {
                if matches!(*w, "via" | "dev") {
                    if let Some(v) = it.next() {
                        keep.push(w);
                        keep.push(v);
                    }
                }
            }
            keep.join(" ")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_overlay_routes_stay_in_the_attach_namespace() {
        let shown = "default via 172.18.0.1 dev eth1 \n10.0.3.0/24 dev eth0 proto kernel scope link src 10.0.3.5 \n172.18.0.0/16 dev eth1 proto kernel scope link src 172.18.0.4 \n";
        assert_eq!(routes_to_drop(shown), vec!["default via 172.18.0.1 dev eth1".to_string(), "172.18.0.0/16 dev eth1".to_string()]);
        assert!(routes_to_drop("10.0.3.0/24 dev eth0 proto kernel scope link src 10.0.3.5\n").is_empty());
        assert_eq!(attach_name("0123456789ab", "shop"), "esl-attach-01234567-shop");
    }
}
