//! The reaper's pass over one pool: the decision ([`plan_reap`]: which idle instances to
//! pause, which to remove, how many to start to keep `min_instances` warm), and carrying it out.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::time::Instant;

use super::state::{live, InstanceState, InstanceView};
use super::{lock, remove_container, FunctionPool};
use crate::manifest::Scaling;

/// What one reaper pass does to a pool, decided from its bookkeeping alone.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct ReapPlan {
    /// Instances to pause, by index, in the order to pause them.
    pub pause: Vec<usize>,
    /// Instances to remove, by index, ascending.
    pub remove: Vec<usize>,
    /// New instances to start so that `min_instances` stay warm.
    pub start: u32,
}

/// Which idle instances to pause and which to remove at `now`, and how many to start: pure,
/// so it is tested without Docker. A retired revision loses every idle instance (and keeps
/// none warm); otherwise the most recently used `min_instances` stay, the others are removed
/// after `idle_timeout` or paused after `pause_after`.
pub(super) fn plan_reap(instances: &[impl InstanceView], starting: u32, scaling: &Scaling, retired: bool, now: Instant) -> ReapPlan {
    let mut plan = ReapPlan::default();
    if retired {
        plan.remove = (0..instances.len())
            .filter(|&k| {
                let i = &instances[k];
                i.in_flight() == 0 && i.state() != InstanceState::Pausing && i.state() != InstanceState::Resuming
            })
            .collect();
        return plan;
    }
    // The most recently used `min_instances` stay warm.
    let mut order: Vec<usize> = (0..instances.len()).collect();
    order.sort_by_key(|&k| std::cmp::Reverse(instances[k].last_used()));
    let mut kept = 0u32;
    for k in order {
        let i = &instances[k];
        let idle = now.saturating_duration_since(i.last_used());
        if !matches!(i.state(), InstanceState::Ready | InstanceState::Paused) {
            continue;
        }
        if kept < scaling.min_instances {
            kept += 1;
            continue;
        }
        if i.in_flight() > 0 {
            continue;
        }
        if idle >= scaling.idle_timeout {
            plan.remove.push(k);
        } else if i.state() == InstanceState::Ready && idle >= scaling.pause_after {
            plan.pause.push(k);
        }
    }
    plan.remove.sort_unstable();
    // Every removed instance was ready or paused, so counted as live.
    let live = live(instances).saturating_sub(u32::try_from(plan.remove.len()).unwrap_or(u32::MAX)) + starting;
    plan.start = scaling.min_instances.saturating_sub(live);
    plan
}

impl FunctionPool {
    /// Pauses and removes idle instances, and keeps `min_instances` warm.
    pub(super) async fn reap(self: &Arc<Self>) {
        // An engine that cannot pause (swarm) keeps idle instances warm until `idle_timeout`.
        let unpausable;
        let s = if self.shared.driver.can_pause() {
            &self.revision.scaling
        } else {
            unpausable = Scaling { pause_after: self.revision.scaling.idle_timeout, ..self.revision.scaling.clone() };
            &unpausable
        };
        let retired = self.retired.load(Ordering::Acquire);
        let now = Instant::now();
        let (to_pause, to_remove, to_start) = {
            let mut g = lock(&self.inner);
            let plan = plan_reap(&g.instances, g.starting, s, retired, now);
            // Ids first: the removals below shift the indices.
            let to_pause: Vec<String> = plan
                .pause
                .iter()
                .map(|&k| {
                    let i = &mut g.instances[k];
                    i.set(InstanceState::Pausing);
                    i.id.to_string()
                })
                .collect();
            let mut to_remove = Vec::with_capacity(plan.remove.len());
            for &k in plan.remove.iter().rev() {
                let mut i = g.instances.remove(k);
                i.set(InstanceState::Removed);
                to_remove.push(i.id.to_string());
            }
            g.starting += plan.start;
            (to_pause, to_remove, plan.start)
        };
        for id in to_remove {
            tracing::info!(container = %id, function = %self.revision.function, "idle instance removed");
            remove_container(&self.shared, &self.revision.project, &self.revision.function, self.revision.deployment_id, &id).await;
        }
        for id in to_pause {
            let ok = self.shared.driver.pause(&id).await;
            {
                let mut g = lock(&self.inner);
                if let Some(i) = g.instances.iter_mut().find(|i| *i.id == *id) {
                    match ok {
                        Ok(()) if i.state == InstanceState::Pausing => i.set(InstanceState::Paused),
                        _ => {
                            if i.state == InstanceState::Pausing {
                                i.set(InstanceState::Ready);
                            }
                        }
                    }
                }
            }
            // A request that found only this (pausing) instance is waiting for it.
            self.changed.notify_waiters();
        }
        for _ in 0..to_start {
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.start_instance(false).await {
                    tracing::warn!(function = %me.revision.function, error = %e, "could not keep a warm instance");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::state::Sketch;
    use super::*;
    use InstanceState::*;

    /// What, instances, starting, scaling, retired: the plan.
    type Case = (&'static str, Vec<Sketch>, u32, Scaling, bool, ReapPlan);

    #[test]
    fn which_idle_instances_are_paused_and_removed() {
        let base = Instant::now();
        let now = base + Duration::from_secs(1000);
        // Idle for `secs` at `now`.
        let idle = |state: InstanceState, in_flight: u32, secs: u64| Sketch { state, in_flight, last_used: now - Duration::from_secs(secs), node: None };
        let scaling = |min_instances: u32| Scaling {
            min_instances,
            pause_after: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(100),
            ..Scaling::default()
        };
        let plan = |pause: Vec<usize>, remove: Vec<usize>, start: u32| ReapPlan { pause, remove, start };
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("busy recently: nothing", vec![idle(Ready, 0, 1)], 0, scaling(0), false, plan(vec![], vec![], 0)),
            ("idle past pause_after: paused", vec![idle(Ready, 0, 10)], 0, scaling(0), false, plan(vec![0], vec![], 0)),
            ("idle past idle_timeout: removed", vec![idle(Ready, 0, 100), idle(Paused, 0, 200)], 0, scaling(0), false, plan(vec![], vec![0, 1], 0)),
            ("in flight: kept however long", vec![idle(Ready, 2, 500)], 0, scaling(0), false, plan(vec![], vec![], 0)),
            ("paused and idle a while: stays paused", vec![idle(Paused, 0, 50)], 0, scaling(0), false, plan(vec![], vec![], 0)),
            ("pausing, resuming, draining: left alone", vec![idle(Pausing, 0, 500), idle(Resuming, 0, 500), idle(Draining, 0, 500)], 0, scaling(0), false, plan(vec![], vec![], 0)),
            ("the most recent min_instances stay warm", vec![idle(Ready, 0, 300), idle(Ready, 0, 20), idle(Ready, 0, 200)], 0, scaling(1), false, plan(vec![], vec![0, 2], 0)),
            ("pauses in order of recent use", vec![idle(Ready, 0, 30), idle(Ready, 0, 20)], 0, scaling(0), false, plan(vec![1, 0], vec![], 0)),
            ("below min_instances: start the rest", vec![idle(Ready, 0, 1)], 0, scaling(3), false, plan(vec![], vec![], 2)),
            ("starting ones count towards min_instances", vec![idle(Ready, 0, 1)], 1, scaling(3), false, plan(vec![], vec![], 1)),
            ("draining ones do not", vec![idle(Draining, 1, 1)], 0, scaling(1), false, plan(vec![], vec![], 1)),
            ("retired: every idle one goes, none kept warm", vec![idle(Ready, 0, 1), idle(Ready, 1, 1), idle(Paused, 0, 1), idle(Pausing, 0, 1)], 0, scaling(2), true, plan(vec![], vec![0, 2], 0)),
        ];
        for (what, instances, starting, scaling, retired, want) in cases {
            assert_eq!(plan_reap(&instances, starting, &scaling, retired, now), want, "{what}");
        }
    }
}
