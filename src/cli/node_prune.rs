//! `eserveless node-prune` (hidden): removes a removed project's function images from the
//! node it runs on. Swarm leaves on each node the images its tasks pulled; `rm` of a project
//! runs this once per node (a global job, `infra/driver/swarm/prune.rs`) with the node's
//! Docker socket, so no image of the project stays on any node.
//!
//! Only images labelled with the project *and* named after it (in this server's registry, or
//! as built on the manager) or left nameless are removed, never forced: an image a container
//! still uses stays.

use anyhow::{Context, Result};
use bollard::query_parameters::{ListImagesOptionsBuilder, RemoveImageOptionsBuilder};
use clap::Args;

use crate::infra::driver::labels;

/// Remove what the server's tasks left on this node: finished runs' containers, and a removed
/// project's containers and images (run by the server as a global job)
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct NodePrune {
    /// The server (data directory) whose leftovers these are
    #[arg(long)]
    pub owner: String,
    /// A removed project: all its containers and its images go too
    #[arg(long, requires = "prefix")]
    pub project: Option<String>,
    /// Only images whose every name starts with one of these (`host:port/eserveless/<project>-`
    /// in the registry, `eserveless/<project>-` as built on the manager); repeatable
    #[arg(long)]
    pub prefix: Vec<String>,
}

/// Whether an image with these names belongs to what is pruned: every name it has (tags and
/// digests) starts with one of `prefixes`, so an image also known under another name is left
/// alone.
pub fn prunable(names: &[String], prefixes: &[String]) -> bool {
    !names.is_empty() && names.iter().all(|n| prefixes.iter().any(|p| n.starts_with(p.as_str())))
}

/// Whether a container of the server's is garbage: any of a removed project's; else one that
/// has exited and was a cron run or an earlier prune (Swarm 20.10 does not remove a finished
/// job's container when its service is removed; the server reads a run's output before).
pub fn sweepable(container_labels: &std::collections::HashMap<String, String>, state: &str, project: Option<&str>) -> bool {
    let get = |k: &str| container_labels.get(k).map(String::as_str);
    if project.is_some() && get(labels::PROJECT) == project {
        return true;
    }
    state == "exited" && matches!(get(labels::ROLE), Some("cron" | "prune"))
}

impl NodePrune {
    pub async fn run(self) -> Result<i32> {
        let docker = bollard::Docker::connect_with_local_defaults().context("cannot reach this node's Docker engine")?;
        let filters = std::collections::HashMap::from([("label", vec![format!("{}={}", labels::OWNER, self.owner)])]);
        let opts = bollard::query_parameters::ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let mine = docker.list_containers(Some(opts)).await.context("cannot list this node's containers")?;
        let mut containers = 0;
        for c in mine {
            let state = c.state.map(|s| s.to_string()).unwrap_or_default();
            let Some(id) = c.id else { continue };
            if !sweepable(&c.labels.unwrap_or_default(), &state, self.project.as_deref()) {
                continue;
            }
            let opts = bollard::query_parameters::RemoveContainerOptionsBuilder::default().force(true).build();
            if docker.remove_container(&id, Some(opts)).await.is_ok() {
                containers += 1;
            }
        }
        let (mut removed, mut kept) = (0, 0);
        if let (Some(project), false) = (&self.project, self.prefix.is_empty()) {
            let filters = std::collections::HashMap::from([("label", vec![format!("{}={}", labels::PROJECT, project)])]);
            let opts = ListImagesOptionsBuilder::default().all(false).filters(&filters).build();
            let images = docker.list_images(Some(opts)).await.context("cannot list this node's images")?;
            let mut pending: Vec<String> = images
                .into_iter()
                .filter(|img| {
                    let mut names = img.repo_tags.clone();
                    names.extend(img.repo_digests.iter().cloned());
                    names.retain(|n| n != "<none>:<none>" && n != "<none>@<none>");
                    // A nameless image of the project's is one the server untagged while a
                    // container (now removed above) still used it: garbage too.
                    names.is_empty() || prunable(&names, &self.prefix)
                })
                .map(|img| img.id)
                .collect();
            // A shared image goes once the functions' images built upon it have: passes
            // until one removes nothing more.
            loop {
                let mut left = Vec::new();
                for id in pending.iter() {
                    let opts = RemoveImageOptionsBuilder::default().force(false).build();
                    match docker.remove_image(id, Some(opts), None).await {
                        Ok(_) => removed += 1,
                        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
                        Err(e) => left.push((id.clone(), e)),
                    }
                }
                if left.is_empty() || left.len() == pending.len() {
                    for (id, e) in &left {
                        tracing::warn!(image = %id, error = %e, "image kept");
                    }
                    kept = left.len();
                    break;
                }
                pending = left.into_iter().map(|(id, _)| id).collect();
            }
        }
        tracing::info!(project = ?self.project, containers, images = removed, kept, "node pruned");
        Ok(i32::from(kept > 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_images_known_by_the_project_registry_names_alone_are_pruned() {
        let p = &["10.0.0.5:5000/eserveless/shop-".to_string(), "eserveless/shop-".to_string()];
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(prunable(&s(&["10.0.0.5:5000/eserveless/shop-api@sha256:ab"]), p));
        assert!(!prunable(&s(&["10.0.0.5:5000/eserveless/shop-api@sha256:ab", "mine/other:1"]), p), "also another name");
        assert!(!prunable(&s(&["10.0.0.5:5000/eserveless/shopping-api@sha256:ab"]), p), "another project");
        assert!(!prunable(&[], p), "a nameless image is not known to be the project's");
        assert!(prunable(&s(&["10.0.0.5:5000/eserveless/shop-api:1", "eserveless/shop-api:1"]), p), "built on the manager");
        assert!(!prunable(&s(&["eserveless/shop-api:1", "eserveless/cart-api:1"]), p), "shared with another project");
    }

    #[test]
    fn finished_runs_and_a_removed_projects_containers_are_swept() {
        let l = |role: &str, project: &str| {
            std::collections::HashMap::from([(labels::ROLE.to_string(), role.to_string()), (labels::PROJECT.to_string(), project.to_string())])
        };
        assert!(sweepable(&l("cron", "shop"), "exited", None), "a finished run");
        assert!(!sweepable(&l("cron", "shop"), "running", None), "a run still running");
        assert!(!sweepable(&l("http", "shop"), "exited", None), "an instance is the pool's");
        assert!(sweepable(&l("prune", ""), "exited", None), "an earlier prune");
        assert!(sweepable(&l("http", "shop"), "running", Some("shop")), "all of a removed project");
        assert!(!sweepable(&l("http", "cart"), "running", Some("shop")));
    }
}
