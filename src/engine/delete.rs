//! Removing a project: stops its builds, its instances and schedules, then removes its
//! containers, images and records.

use std::sync::Arc;

use crate::dataplane::gateway::Route;
use crate::engine::error::{EngineError, Result};
use crate::engine::Platform;
use crate::infra::driver::labels;

/// What removing a project took away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    pub project: String,
    pub containers_removed: usize,
    pub images_removed: usize,
}

impl Platform {
    /// Removes a project's containers, images, schedules and records.
    pub async fn delete(self: &Arc<Self>, project: &str) -> Result<Deleted> {
        if self.store.project(project)?.is_none() {
            return Err(EngineError::project_not_found(project));
        }
        // Builds in progress or queued for this project stop now; a deploy after this one
        // gets a fresh token.
        if let Some(t) = self.project_removals.lock().unwrap_or_else(|p| p.into_inner()).remove(project) {
            t.cancel();
        }
        let lock = self.project_lock(project);
        let _held = lock.lock().await;
        // Another delete got there first.
        if self.store.project(project)?.is_none() {
            return Err(EngineError::project_not_found(project));
        }
        self.scheduler.remove_project(project);
        let mut containers = 0;
        if let Some(old) = self.routes.remove_project(project) {
            for route in old.values() {
                if let Route::Http(pool) = route {
                    containers += pool.shutdown().await;
                }
            }
        }
        let list = self.driver.list_managed().await.map_err(EngineError::EngineUnavailable)?;
        for c in list.into_iter().filter(|c| c.labels.get(labels::PROJECT).map(String::as_str) == Some(project)) {
            if self.driver.remove(&c.id).await.is_ok() {
                containers += 1;
            }
        }
        let images = self.store.project_images(project)?;
        let mut removed_images = 0;
        for image in &images {
            match self.driver.remove_image(image).await {
                Ok(true) => removed_images += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(image, error = %e, "could not remove an image"),
            }
        }
        // The shared images the functions' images were built upon, and the project's cache.
        let mut shared: Vec<String> = images.iter().filter_map(|i| crate::engine::build::base_of(project, i)).collect();
        shared.sort();
        shared.dedup();
        shared.push(crate::engine::build::cache_tag(project));
        shared.extend(self.driver.image_tags(&crate::engine::build::deps_pattern(project)).await.unwrap_or_default());
        for image in &shared {
            if let Err(e) = self.driver.remove_image(image).await {
                tracing::warn!(image, error = %e, "could not remove an image");
            }
        }
        if let Err(e) = self.driver.forget_project(project).await {
            tracing::warn!(project, error = %e, "could not remove the project's network");
        }
        self.store.delete_project(project)?;
        tracing::info!(project, containers, images = removed_images, "project deleted");
        Ok(Deleted { project: project.to_string(), containers_removed: containers, images_removed: removed_images })
    }
}
