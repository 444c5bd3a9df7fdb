//! After `rm` of a project: a global job that runs `eserveless node-prune` once on every node
//! (the node guard's image, which holds the server's binary), with the node's Docker socket,
//! to remove the images its tasks pulled there. Swarm itself never removes them.
//!
//! The job is the server's own code, not a function's: it alone gets the socket, runs for a
//! second and is removed once every node reported.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{
    Mount, MountType, ServiceSpec, ServiceSpecMode, TaskSpec, TaskSpecContainerSpec, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum,
};
use bollard::Docker;

use super::super::{labels, DriverError, Result};

/// How long the prune may take on all nodes together.
const PRUNE_TIMEOUT: Duration = Duration::from_secs(60);

/// The global job that sweeps finished runs' containers on every node and, for a removed
/// project (`Some((project, prefixes))`), its containers and its images whose every name
/// starts with one of `prefixes` (its registry names, and on the manager its build names).
pub fn prune_spec(owner: &str, removed: Option<(&str, &[String])>, image: &str) -> ServiceSpec {
    let mut args = vec!["node-prune".to_string(), format!("--owner={owner}")];
    if let Some((project, prefixes)) = removed {
        args.push(format!("--project={project}"));
        args.extend(prefixes.iter().map(|p| format!("--prefix={p}")));
    }
    // One name for every prune and sweep of this server: each run removes the containers the
    // ones before it left (Swarm keeps a finished job's containers), and at most one is left.
    let name = format!("esl-{}-prune", &owner[..owner.len().min(8)]);
    let labels = HashMap::from([
        (labels::MANAGED.to_string(), "true".to_string()),
        (labels::OWNER.to_string(), owner.to_string()),
        // No project label: the prune removes the project's containers and must not take its
        // own; and its own exited container, which Swarm 20.10 keeps until the next prune
        // removes it, is the server's (one per node), not the removed project's.
        (labels::ROLE.to_string(), "prune".to_string()),
    ]);
    ServiceSpec {
        name: Some(name),
        labels: Some(labels.clone()),
        mode: Some(ServiceSpecMode { global_job: Some(Default::default()), ..Default::default() }),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(image.to_string()),
                labels: Some(labels),
                command: Some(vec!["/usr/local/bin/eserveless".into()]),
                args: Some(args),
                mounts: Some(vec![Mount {
                    target: Some("/var/run/docker.sock".into()),
                    source: Some("/var/run/docker.sock".into()),
                    typ: Some(MountType::BIND),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Runs the prune job on every node and waits for it (bounded); the job is removed after.
pub async fn prune_project_images(docker: &Docker, spec: ServiceSpec) -> Result<()> {
    let name = spec.name.clone().unwrap_or_default();
    // A job left by an earlier `rm` of a project with the same name.
    let _ = docker.delete_service(&name).await;
    let created = docker.create_service(spec, None).await?;
    let id = created.id.unwrap_or(name.clone());
    let deadline = tokio::time::Instant::now() + PRUNE_TIMEOUT;
    let outcome = loop {
        let filters = HashMap::from([("service".to_string(), vec![id.clone()])]);
        let opts = bollard::query_parameters::ListTasksOptionsBuilder::default().filters(&filters).build();
        let tasks = docker.list_tasks(Some(opts)).await?;
        let ready: usize = docker
            .list_nodes(None)
            .await?
            .iter()
            .filter(|n| n.status.as_ref().and_then(|s| s.state) == Some(bollard::models::NodeState::READY))
            .count();
        let done = tasks
            .iter()
            .filter(|t| {
                let s = t.status.as_ref().and_then(|s| s.state);
                matches!(s, Some(bollard::models::TaskState::COMPLETE | bollard::models::TaskState::FAILED | bollard::models::TaskState::REJECTED))
            })
            .count();
        if ready > 0 && done >= ready {
            let failed: Vec<String> = tasks
                .iter()
                .filter_map(|t| t.status.as_ref())
                .filter(|s| s.state != Some(bollard::models::TaskState::COMPLETE))
                .map(|s| {
                    let code = s.container_status.as_ref().and_then(|c| c.exit_code);
                    format!("{} (exit {code:?}) {}", s.state.map(|s| s.to_string()).unwrap_or_default(), s.err.clone().unwrap_or_default())
                })
                .collect();
            break if failed.is_empty() {
                Ok(())
            } else {
                Err(DriverError::Engine(format!(
                    "the image prune did not finish cleanly on every node: {} (exit 1: images still in use there)",
                    failed.join("; ")
                )))
            };
        }
        if tokio::time::Instant::now() >= deadline {
            break Err(DriverError::Engine(format!(
                "the image prune job {name} did not finish on every node within {PRUNE_TIMEOUT:?} ({done} of {ready}); see `docker service ps {name}`"
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let _ = docker.delete_service(&id).await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prune_runs_once_per_node_with_the_socket_and_names_what_it_may_remove() {
        let prefixes = ["r:5000/eserveless/shop-".to_string(), "eserveless/shop-".to_string()];
        let s = prune_spec("0123456789", Some(("shop", &prefixes)), "r:5000/eserveless/node-guard@sha256:x");
        let json = serde_json::to_value(&s).expect("json");
        assert!(json["Mode"]["GlobalJob"].is_object(), "{json}");
        assert_eq!(json["TaskTemplate"]["ContainerSpec"]["Mounts"][0]["Source"], "/var/run/docker.sock");
        assert_eq!(json["TaskTemplate"]["ContainerSpec"]["Args"][1], "--owner=0123456789");
        assert_eq!(json["TaskTemplate"]["ContainerSpec"]["Args"][2], "--project=shop");
        assert_eq!(json["TaskTemplate"]["ContainerSpec"]["Args"][3], "--prefix=r:5000/eserveless/shop-");
        assert_eq!(json["TaskTemplate"]["ContainerSpec"]["Args"][4], "--prefix=eserveless/shop-");
        let sweep = serde_json::to_value(prune_spec("0123456789", None, "img")).expect("json");
        assert_eq!(sweep["TaskTemplate"]["ContainerSpec"]["Args"].as_array().map(Vec::len), Some(2), "{sweep}");
        assert_eq!(sweep["Name"], "esl-01234567-prune");
        assert_eq!(json["TaskTemplate"]["RestartPolicy"]["Condition"], "none");
        assert_eq!(json["Labels"]["eserveless.role"], "prune");
        let labels = json["TaskTemplate"]["ContainerSpec"]["Labels"].as_object().expect("labels");
        assert!(labels.values().all(|v| v != "shop"), "no label names the project: it would remove itself, and outlive it: {labels:?}");
    }
}
