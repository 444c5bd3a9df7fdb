//! What serves traffic and runs schedules: the gateway, connections to instances, the
//! per-revision pools of instances, and the cron scheduler.

pub mod gateway;
pub mod gateway_metrics;
pub mod pool;
pub mod scheduler;
pub mod upgrade;
pub mod upstream;

use std::time::Duration;

use crate::infra::driver::{Driver, Env, Limits};
use crate::infra::logs::{LogStream, RawLine};
use crate::infra::store::{LogSource, Store};

/// Reads a stopped container's last lines (at most `max_bytes`, marked when cut) and saves
/// them with their times and revision, for `logs`; returns them (a cron run's record keeps
/// them as text too). An unreadable output becomes one `system` line saying why.
pub(crate) async fn save_output(driver: &dyn Driver, store: &std::sync::Arc<Store>, src: LogSource, max_bytes: usize) -> Vec<RawLine> {
    let lines = match crate::infra::driver::read_saved_lines(driver, &src.container, max_bytes).await {
        Ok(lines) => lines,
        Err(crate::infra::driver::DriverError::NoSuchContainer(_)) => return Vec::new(),
        Err(e) => vec![RawLine { time: chrono::Utc::now(), stream: LogStream::System, text: format!("the output could not be read: {e}") }],
    };
    let store = store.clone();
    let saved = lines.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if let Err(e) = store.save_log_lines(&src, &saved) {
            tracing::warn!(error = %e, "could not save container output");
        }
    })
    .await;
    lines
}

/// What runs in a function's container, for an http instance and a cron run alike.
#[derive(Debug, Clone)]
pub struct Workload {
    pub project: String,
    pub function: String,
    pub deployment_id: i64,
    pub image: String,
    /// Environment for the container: `meta` and the project's secrets.
    pub env: Env,
    /// Memory, CPU and the other container limits.
    pub limits: Limits,
    /// Longest one request or one run may take.
    pub timeout: Duration,
}

/// `impl Deref<Target = Workload>` (and `DerefMut`) for a type holding its [`Workload`] in `workload`.
macro_rules! deref_workload {
    ($t:ty) => {
        impl std::ops::Deref for $t {
            type Target = crate::dataplane::Workload;
            fn deref(&self) -> &crate::dataplane::Workload {
                &self.workload
            }
        }
        impl std::ops::DerefMut for $t {
            fn deref_mut(&mut self) -> &mut crate::dataplane::Workload {
                &mut self.workload
            }
        }
    };
}
pub(crate) use deref_workload;
