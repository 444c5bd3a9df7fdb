//! What serves traffic and runs schedules: the gateway, connections to instances, the
//! per-revision pools of instances, and the cron scheduler.

pub mod gateway;
pub mod gateway_metrics;
pub mod pool;
pub mod scheduler;
pub mod upstream;

use std::time::Duration;

use crate::infra::driver::{Env, Limits};

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
