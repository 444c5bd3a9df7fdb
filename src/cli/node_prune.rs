//! `eserveless node-prune` (hidden): removes a removed project's function images from the
//! node it runs on. Swarm leaves on each node the images its tasks pulled; `rm` of a project
//! runs this once per node (a global job, `infra/driver/swarm/prune.rs`) with the node's
//! Docker socket, so no image of the project stays on any node.
//!
//! Only images labelled with the project *and* named after it in this server's registry are
//! removed, never forced: an image a container still uses stays.

use anyhow::{Context, Result};
use bollard::query_parameters::{ListImagesOptionsBuilder, RemoveImageOptionsBuilder};
use clap::Args;

use crate::infra::driver::labels;

/// Remove a removed project's images from this node (run by the server as a global job)
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct NodePrune {
    /// The removed project
    #[arg(long)]
    pub project: String,
    /// The server (data directory) that owned it
    #[arg(long)]
    pub owner: String,
    /// Only images whose registry names start with this (`host:port/eserveless/<project>-`)
    #[arg(long)]
    pub prefix: String,
}

/// Whether an image with these names belongs to what is pruned: every name it has (tags and
/// digests) starts with `prefix`, so an image also known under another name is left alone.
pub fn prunable(names: &[String], prefix: &str) -> bool {
    !names.is_empty() && names.iter().all(|n| n.starts_with(prefix))
}

impl NodePrune {
    pub async fn run(self) -> Result<i32> {
        let docker = bollard::Docker::connect_with_local_defaults().context("cannot reach this node's Docker engine")?;
        // Containers of the project's tasks that Swarm left behind (a node that was down when
        // their services were removed keeps them): they would keep the images in use.
        let filters = std::collections::HashMap::from([(
            "label",
            vec![format!("{}={}", labels::PROJECT, self.project), format!("{}={}", labels::OWNER, self.owner)],
        )]);
        let opts = bollard::query_parameters::ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let left = docker.list_containers(Some(opts)).await.context("cannot list this node's containers")?;
        let mut containers = 0;
        for c in left.into_iter().filter_map(|c| c.id) {
            let opts = bollard::query_parameters::RemoveContainerOptionsBuilder::default().force(true).build();
            if docker.remove_container(&c, Some(opts)).await.is_ok() {
                containers += 1;
            }
        }
        let filters = std::collections::HashMap::from([("label", vec![format!("{}={}", labels::PROJECT, self.project)])]);
        let opts = ListImagesOptionsBuilder::default().all(false).filters(&filters).build();
        let images = docker.list_images(Some(opts)).await.context("cannot list this node's images")?;
        let (mut removed, mut kept) = (0, 0);
        for img in images {
            let mut names = img.repo_tags.clone();
            names.extend(img.repo_digests.iter().cloned());
            names.retain(|n| n != "<none>:<none>" && n != "<none>@<none>");
            if !prunable(&names, &self.prefix) {
                continue;
            }
            let opts = RemoveImageOptionsBuilder::default().force(false).build();
            match docker.remove_image(&img.id, Some(opts), None).await {
                Ok(_) => removed += 1,
                Err(e) => {
                    kept += 1;
                    tracing::warn!(image = %img.id, error = %e, "image kept");
                }
            }
        }
        tracing::info!(project = %self.project, containers, removed, kept, "node pruned");
        Ok(i32::from(kept > 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_images_known_by_the_project_registry_names_alone_are_pruned() {
        let p = "10.0.0.5:5000/eserveless/shop-";
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(prunable(&s(&["10.0.0.5:5000/eserveless/shop-api@sha256:ab"]), p));
        assert!(!prunable(&s(&["10.0.0.5:5000/eserveless/shop-api@sha256:ab", "mine/other:1"]), p), "also another name");
        assert!(!prunable(&s(&["10.0.0.5:5000/eserveless/shopping-api@sha256:ab"]), p), "another project");
        assert!(!prunable(&[], p), "a nameless image is not known to be the project's");
    }
}
