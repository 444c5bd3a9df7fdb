//! The project's anchor: one tiny task of a *global* service on every node, attached to the
//! project's overlay, that keeps the overlay's network up on every node.
//!
//! On a worker, Swarm creates an overlay's namespace and VXLAN device with the first task of
//! that overlay on the node and removes them with its last; the manager keeps them because the
//! project's attach container sits on the overlay. Without the anchor, every cold start from
//! zero on a worker set the overlay up again first (the remote/local cold start ratio was
//! 1.57–1.58×, docs/scale-out.md). A global service also covers a node that joins later.
//!
//! The anchor runs `sleep infinity` from the server's per-node image (the node guard's, which
//! every node pulls from the registry), read-only, as nobody, without capabilities, in 8 MiB
//! and 4 pids. It is made with the project's overlay (or found, after a restart: one name per
//! project and server, so it is adopted, never duplicated) and removed before the overlay.
//! Its `role=anchor` label keeps it out of the pool: [`list_managed`] takes only `http` and
//! `cron` services, and the event poll skips it.
//!
//! [`list_managed`]: super::super::Driver::list_managed

use std::collections::HashMap;

use bollard::models::{
    EndpointSpec, EndpointSpecModeEnum, Limit, NetworkAttachmentConfig, ResourceObject, ServiceSpec, ServiceSpecMode,
    TaskSpec, TaskSpecContainerSpec, TaskSpecContainerSpecPrivileges, TaskSpecLogDriver, TaskSpecPlacement,
    TaskSpecResources, TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum,
};
use bollard::query_parameters::UpdateServiceOptionsBuilder;
use bollard::Docker;

use super::super::{engine_log_options, labels, DriverError, Result};
use super::{overlay_name, service_name};

/// The `role` label of an anchor service.
pub const ANCHOR_ROLE: &str = "anchor";
/// The anchor's memory limit, reserved as much: `sleep` needs well under 1 MiB.
pub const ANCHOR_MEMORY: i64 = 8 * 1024 * 1024;
/// At most this many processes in an anchor (`sleep` is one).
const ANCHOR_PIDS: i64 = 4;
/// A hundredth of a CPU: it never wakes.
const ANCHOR_NANO_CPUS: i64 = 10_000_000;

/// The anchor service's name for `project`: its overlay's name and `-anchor`.
pub fn anchor_name(owner: &str, project: &str) -> String {
    service_name(&format!("{}-anchor", overlay_name(owner, project)))
}

/// The global service that keeps `project`'s overlay (`network`, an id or name) up on every
/// node, running `image` (an image every node can pull, with `sleep`).
pub fn anchor_spec(owner: &str, project: &str, network: &str, image: &str) -> ServiceSpec {
    let labels = HashMap::from([
        (labels::MANAGED.to_string(), "true".to_string()),
        (labels::OWNER.to_string(), owner.to_string()),
        (labels::PROJECT.to_string(), project.to_string()),
        (labels::ROLE.to_string(), ANCHOR_ROLE.to_string()),
    ]);
    let container = TaskSpecContainerSpec {
        image: Some(image.to_string()),
        labels: Some(labels.clone()),
        // Replaces the image's entrypoint (the server's binary).
        command: Some(vec!["sleep".into(), "infinity".into()]),
        user: Some("65534:65534".into()),
        read_only: Some(true),
        capability_drop: Some(vec!["ALL".into()]),
        privileges: Some(TaskSpecContainerSpecPrivileges { no_new_privileges: Some(true), ..Default::default() }),
        init: Some(false),
        // `sleep` as PID 1 ignores SIGTERM: no grace to wait out on removal.
        stop_grace_period: Some(0),
        ..Default::default()
    };
    let task = TaskSpec {
        container_spec: Some(container),
        resources: Some(TaskSpecResources {
            limits: Some(Limit { nano_cpus: Some(ANCHOR_NANO_CPUS), memory_bytes: Some(ANCHOR_MEMORY), pids: Some(ANCHOR_PIDS) }),
            // As the instances: reserved = limit, so Swarm's accounting of a node stays true.
            reservations: Some(ResourceObject { memory_bytes: Some(ANCHOR_MEMORY), ..Default::default() }),
            ..Default::default()
        }),
        // An anchor that died (killed by hand, its node restarted) comes back.
        restart_policy: Some(TaskSpecRestartPolicy {
            condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
            delay: Some(1_000_000_000),
            max_attempts: Some(0),
            ..Default::default()
        }),
        networks: Some(vec![NetworkAttachmentConfig { target: Some(network.to_string()), ..Default::default() }]),
        placement: Some(TaskSpecPlacement { constraints: Some(vec!["node.platform.os==linux".into()]), ..Default::default() }),
        log_driver: Some(TaskSpecLogDriver { name: Some("json-file".into()), options: Some(engine_log_options()) }),
        ..Default::default()
    };
    ServiceSpec {
        name: Some(anchor_name(owner, project)),
        labels: Some(labels),
        task_template: Some(task),
        mode: Some(ServiceSpecMode { global: Some(HashMap::new()), ..Default::default() }),
        // No virtual IP (no IPVS on some kernels) and nothing published.
        endpoint_spec: Some(EndpointSpec { mode: Some(EndpointSpecModeEnum::DNSRR), ports: None }),
        ..Default::default()
    }
}

/// The image an existing service runs.
fn image_of(spec: Option<&ServiceSpec>) -> Option<&str> {
    spec?.task_template.as_ref()?.container_spec.as_ref()?.image.as_deref()
}

/// Creates the anchor `spec`, or adopts the one already there (a restarted server's); one
/// running another image (a server of another build made it) is moved to this one.
pub async fn ensure_anchor(docker: &Docker, spec: ServiceSpec) -> Result<()> {
    let name = spec.name.clone().unwrap_or_default();
    let wanted = image_of(Some(&spec)).unwrap_or_default().to_string();
    match docker.inspect_service(&name, None).await {
        Ok(existing) => {
            if image_of(existing.spec.as_ref()) == Some(wanted.as_str()) {
                return Ok(());
            }
            let version = existing.version.and_then(|v| v.index).unwrap_or(0);
            let version = i32::try_from(version)
                .map_err(|_| DriverError::Engine(format!("service {name} has version {version}, beyond the API's range")))?;
            let opts = UpdateServiceOptionsBuilder::default().version(version).build();
            docker.update_service(&name, spec, opts, None).await?;
            tracing::info!(service = %name, image = %wanted, "project anchor moved to this server's image");
            Ok(())
        }
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => match docker.create_service(spec, None).await {
            // 409: made meanwhile (two servers of one owner do not share a swarm, but be calm).
            Ok(_) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) => {
                tracing::debug!(service = %name, "project anchor created");
                Ok(())
            }
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

/// Removes `project`'s anchor. A missing one is fine.
pub async fn remove_anchor(docker: &Docker, owner: &str, project: &str) -> Result<()> {
    match docker.delete_service(&anchor_name(owner, project)).await {
        Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_anchor_is_one_sleeping_task_per_node_on_the_overlay_in_a_tight_sandbox() {
        let s = anchor_spec("0123456789abcdef", "My_Shop", "net-id", "r:5000/eserveless/node-guard@sha256:x");
        let json = serde_json::to_value(&s).expect("json");
        assert_eq!(json["Name"], "esl-01234567-my-shop-anchor");
        assert!(json["Mode"]["Global"].is_object(), "one task per node, joining nodes included: {json}");
        let t = &json["TaskTemplate"];
        let c = &t["ContainerSpec"];
        assert_eq!(c["Image"], "r:5000/eserveless/node-guard@sha256:x");
        assert_eq!(c["Command"], serde_json::json!(["sleep", "infinity"]));
        assert_eq!(c["User"], "65534:65534");
        assert_eq!(c["ReadOnly"], true);
        assert_eq!(c["CapabilityDrop"], serde_json::json!(["ALL"]));
        assert_eq!(c["StopGracePeriod"], 0);
        assert_eq!(t["Resources"]["Limits"]["MemoryBytes"], ANCHOR_MEMORY);
        assert_eq!(t["Resources"]["Reservations"]["MemoryBytes"], ANCHOR_MEMORY);
        assert_eq!(t["Resources"]["Limits"]["Pids"], 4);
        assert_eq!(t["Networks"][0]["Target"], "net-id");
        assert_eq!(t["RestartPolicy"]["Condition"], "any");
        assert_eq!(json["EndpointSpec"]["Mode"], "dnsrr");
        for l in [&json["Labels"], &c["Labels"]] {
            assert_eq!(l["eserveless.role"], ANCHOR_ROLE, "{l}");
            assert_eq!(l["eserveless.project"], "My_Shop", "{l}");
            assert_eq!(l["eserveless.owner"], "0123456789abcdef", "{l}");
            assert_eq!(l["eserveless.managed"], "true", "{l}");
            assert!(l.get("eserveless.function").is_none(), "an anchor is no function's: {l}");
        }
    }

    #[test]
    fn an_anchor_name_is_a_service_name_even_for_a_long_project() {
        let long = "p".repeat(80);
        let n = anchor_name("0123456789abcdef", &long);
        assert!(n.len() <= 63, "{n}");
        assert_ne!(n, anchor_name("0123456789abcdef", &"p".repeat(81)), "long names stay apart");
        assert_ne!(anchor_name("0123456789abcdef", "shop"), anchor_name("fedcba9876543210", "shop"), "servers stay apart");
    }
}
