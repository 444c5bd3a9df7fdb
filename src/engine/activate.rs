//! Going live: turns a recorded deployment into routes (pools) and cron schedules, with the
//! project's secrets and the operator's limits applied.

use std::collections::HashMap;
use std::sync::Arc;

use crate::dataplane::gateway::Route;
use crate::dataplane::pool::Revision;
use crate::dataplane::scheduler::CronJob;
use crate::dataplane::Workload;
use crate::manifest::{Access, FunctionOptions};
use crate::engine::Platform;
use crate::infra::driver::{Env, Limits};

impl Platform {
    /// Makes `deployment_id` the serving revision of `project`. With `prewarm`, functions that
    /// had live instances get one ready instance of the new revision before routes switch.
    pub async fn activate(self: &Arc<Self>, project: &str, deployment_id: i64, prewarm: bool) -> anyhow::Result<()> {
        let functions = self.store.functions(deployment_id)?;
        let secrets = self.secret_env(project)?;
        let old = self.routes.project(project);
        let mut routes = HashMap::new();
        let mut jobs = Vec::new();
        for f in functions {
            let image = f.image.clone().ok_or_else(|| anyhow::anyhow!("function {} has no image", f.name))?;
            // Secrets last: an operator's secret wins over a repository's `meta` of the same name.
            let mut env: Vec<String> = f.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            env.extend(secrets.iter().cloned());
            let env = Env(env);
            let limits = self.function_limits(&f.options);
            let timeout = std::time::Duration::from_millis(f.timeout_ms);
            let workload = Workload { project: project.to_string(), function: f.name.clone(), deployment_id, image, env, limits, timeout };
            if f.kind == crate::manifest::FunctionType::Cron {
                jobs.push(CronJob { workload, schedule: f.schedule.clone().unwrap_or_default() });
                routes.insert(f.name.clone(), Route::Cron);
            } else {
                let pool = self.pools.pool(Revision { workload, private: f.options.auth == Access::Private, scaling: f.scaling.clone() });
                let had_instances = matches!(
                    old.as_ref().and_then(|o| o.get(&f.name)),
                    Some(Route::Http(p)) if p.has_instances()
                );
                if prewarm && had_instances {
                    if let Err(e) = pool.prewarm().await {
                        tracing::warn!(project, function = %f.name, error = %e, "new revision failed to start ahead of traffic");
                    }
                }
                routes.insert(f.name.clone(), Route::Http(pool));
            }
        }
        if let Some(h) = self.store.invoke_key_hash(project)? {
            self.routes.set_invoke_key(project, &h);
        }
        let old = self.routes.set_project(project, routes);
        for route in old.iter().flat_map(|o| o.values()) {
            if let Route::Http(pool) = route {
                pool.retire();
            }
        }
        self.scheduler.set_project(project, jobs);
        Ok(())
    }

    /// The project's secrets as `KEY=VALUE`, opened for a container's environment.
    fn secret_env(&self, project: &str) -> anyhow::Result<Vec<String>> {
        self.store
            .secrets(project)?
            .into_iter()
            .map(|s| Ok(format!("{}={}", s.name, self.secrets.open(project, &s.name, &s.sealed)?)))
            .collect()
    }

    /// A function's container limits: its manifest's asks, within the operator's ceilings
    /// (which may have been lowered since it was deployed).
    fn function_limits(&self, o: &FunctionOptions) -> Limits {
        let mut l = self.config.limits.clone();
        if let Some(m) = o.memory_bytes {
            l.memory_bytes = i64::try_from(m.min(self.config.caps.max_memory_bytes)).unwrap_or(i64::MAX);
        }
        if let Some(c) = o.cpu_millis {
            l.nano_cpus = i64::from(c.min(self.config.caps.max_cpu_millis)) * 1_000_000;
        }
        l
    }
}
