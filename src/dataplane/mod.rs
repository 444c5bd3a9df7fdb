//! What serves traffic and runs schedules: the gateway, connections to instances, the
//! per-revision pools of instances, and the cron scheduler.

pub mod gateway;
pub mod gateway_metrics;
pub mod pool;
pub mod scheduler;
pub mod upstream;
