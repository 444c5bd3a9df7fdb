//! Acquiring an instance for one request: the decision ([`choose`]: which instance serves
//! it, or how it waits), and carrying it out (resume, join a resume, start, queue).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::state::{live, InstanceState, InstanceView};
use super::{lock, AcquireError, AcquireKind, FunctionPool, Lease, PoolInner, StartError};
use crate::dataplane::upstream::Endpoint;
use crate::manifest::Scaling;

/// What a request does next, decided from the pool's bookkeeping alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Choice {
    /// Serve on this ready instance (the busiest with room).
    Warm(usize),
    /// Another request is resuming this instance and it has room: wait for it.
    JoinResume(usize),
    /// Resume this paused instance.
    Resume(usize),
    /// An instance is starting and will have room for this request too.
    WaitStarting,
    /// An instance is being paused: it can be resumed in a moment, sooner than a cold start.
    /// Not a place in the queue.
    WaitPausing,
    /// Start a new instance.
    Start,
    /// Wait in the queue for capacity; `enter`: take a place in it now.
    Queue { enter: bool },
    /// The queue is full: refuse.
    Refuse,
}

/// The pool's counters that [`choose`] reads.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Load {
    pub starting: u32,
    pub joining: u32,
    pub waiting: u32,
}

/// Which instance serves a request, or how it waits: pure, so it is tested without Docker.
/// `queued`: this request already holds a place in the queue. `avoid`: nodes whose instances
/// this request must not be sent to (one already failed it: the node is likely dying).
pub(super) fn choose(
    instances: &[impl InstanceView],
    load: Load,
    queued: bool,
    scaling: &Scaling,
    queue_depth: u32,
    avoid: &[String],
) -> Choice {
    let usable = |i: &&_| !i_on(avoid, *i);
    let ready = instances
        .iter()
        .enumerate()
        .filter(|(_, i)| usable(i))
        .filter(|(_, i)| i.state() == InstanceState::Ready && i.in_flight() < scaling.concurrency)
        // Pack requests onto the busiest instance with room, so others can idle out.
        .max_by_key(|(_, i)| i.in_flight());
    if let Some((k, _)) = ready {
        return Choice::Warm(k);
    }
    // An instance on its way back has room: joining it costs the rest of its resume
    // (milliseconds), where a cold start costs a new container (hundreds).
    if let Some(k) = instances.iter().position(|i| usable(&i) && i.state() == InstanceState::Resuming && i.in_flight() < scaling.concurrency) {
        return Choice::JoinResume(k);
    }
    if let Some(k) = instances.iter().position(|i| usable(&i) && i.state() == InstanceState::Paused) {
        return Choice::Resume(k);
    }
    // Each starting instance has room for `concurrency` requests, one of them its starter's:
    // wait for it rather than start one more. A function that never comes up then costs one
    // container, not one per request.
    if load.joining < load.starting.saturating_mul(scaling.concurrency.saturating_sub(1)) {
        return Choice::WaitStarting;
    }
    if instances.iter().any(|i| i.state() == InstanceState::Pausing) {
        return Choice::WaitPausing;
    }
    if live(instances) + load.starting < scaling.max_instances {
        return Choice::Start;
    }
    if queued {
        Choice::Queue { enter: false }
    } else if load.waiting >= queue_depth {
        Choice::Refuse
    } else {
        Choice::Queue { enter: true }
    }
}

/// Whether `i` runs on one of the `avoid`ed nodes.
fn i_on(avoid: &[String], i: &impl InstanceView) -> bool {
    i.node().is_some_and(|n| avoid.iter().any(|a| a == n))
}

/// Instances one request may see lost while starting before it fails.
const MAX_LOST_STARTS: u32 = 2;

impl FunctionPool {
    /// Gets an instance for one request, waiting no later than `deadline`.
    pub async fn acquire(self: &Arc<Self>, deadline: Instant) -> Result<Lease, AcquireError> {
        self.acquire_avoiding(deadline, &[]).await
    }

    /// [`acquire`](Self::acquire), passing over instances on the `avoid`ed nodes: a request
    /// sent again after its instance was lost goes to another machine, not to the next
    /// instance on a dying one.
    pub async fn acquire_avoiding(self: &Arc<Self>, deadline: Instant, avoid: &[String]) -> Result<Lease, AcquireError> {
        let began = Instant::now();
        let queue_deadline = deadline.min(began + self.shared.config.queue_timeout);
        let scaling = &self.revision.scaling;
        let mut queued = false;
        let mut lost_starts = 0;
        let _waiting = WaitingGuard { pool: self, queued: &mut queued };
        loop {
            enum Next {
                Resume(Arc<str>, Arc<Endpoint>),
                /// Another request is resuming this instance and it has room: wait for it.
                JoinResume(Arc<str>, Arc<Endpoint>),
                Start,
                Wait,
                /// An instance is being paused: it can be resumed in a moment, sooner than a
                /// cold start. Not a place in the queue.
                WaitPausing,
                /// An instance is starting and will have room for this request too.
                WaitStarting,
            }
            // Created before the state is read: `notify_waiters` reaches it from here on, so a
            // release between the check and the wait is not missed (no registration lock needed).
            let notified = self.changed.notified();
            let next = {
                let mut g = lock(&self.inner);
                if self.retired.load(Ordering::Acquire) {
                    return Err(AcquireError::Retired);
                }
                let load = Load { starting: g.starting, joining: g.joining, waiting: g.waiting };
                match choose(&g.instances, load, *_waiting.queued, scaling, self.shared.config.queue_depth, avoid) {
                    Choice::Warm(k) => {
                        let i = &mut g.instances[k];
                        i.in_flight += 1;
                        i.last_used = Instant::now();
                        return Ok(self.lease(i.id.clone(), i.endpoint.clone(), AcquireKind::Warm, began));
                    }
                    Choice::JoinResume(k) => {
                        let i = &mut g.instances[k];
                        i.in_flight += 1;
                        i.last_used = Instant::now();
                        Next::JoinResume(i.id.clone(), i.endpoint.clone())
                    }
                    Choice::Resume(k) => {
                        let i = &mut g.instances[k];
                        i.set(InstanceState::Resuming);
                        i.in_flight += 1;
                        i.last_used = Instant::now();
                        Next::Resume(i.id.clone(), i.endpoint.clone())
                    }
                    Choice::WaitStarting => {
                        g.joining += 1;
                        Next::WaitStarting
                    }
                    Choice::WaitPausing => Next::WaitPausing,
                    Choice::Start => {
                        g.starting += 1;
                        Next::Start
                    }
                    Choice::Queue { enter } => {
                        if enter {
                            g.waiting += 1;
                            *_waiting.queued = true;
                        }
                        Next::Wait
                    }
                    Choice::Refuse => return Err(AcquireError::QueueFull(self.revision.function.clone())),
                }
            };
            match next {
                Next::Resume(id, endpoint) => match self.shared.driver.unpause(&id).await {
                    Ok(()) => {
                        self.with_instance(&id, |i| i.set(InstanceState::Ready));
                        // Requests that joined this resume are waiting for it.
                        self.changed.notify_waiters();
                        return Ok(self.lease(id, endpoint, AcquireKind::Resume, began));
                    }
                    Err(e) => {
                        tracing::warn!(container = %id, error = %e, "resume failed; replacing the instance");
                        self.release(&id);
                        self.evict(&id, "resume failed");
                    }
                },
                Next::JoinResume(id, endpoint) => {
                    if self.join_resume(&id, deadline).await? {
                        return Ok(self.lease(id, endpoint, AcquireKind::Resume, began));
                    }
                    // The resume failed and the instance is gone: look again.
                }
                Next::WaitPausing => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return Err(AcquireError::Deadline(self.revision.function.clone()));
                    }
                }
                Next::WaitStarting => {
                    let _joined = JoinGuard(&self.inner);
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return Err(AcquireError::StartDeadline(self.revision.function.clone()));
                    }
                }
                Next::Start => {
                    let (tx, rx) = oneshot::channel();
                    let me = self.clone();
                    // The start runs on its own: if this request gives up, the instance still joins the pool.
                    tokio::spawn(async move {
                        let r = me.start_instance(true).await;
                        let _ = tx.send(r);
                    });
                    match tokio::time::timeout_at(deadline, rx).await {
                        Ok(Ok(Ok((id, endpoint)))) => {
                            return Ok(self.lease(Arc::from(id.as_str()), endpoint, AcquireKind::Cold, began))
                        }
                        Ok(Ok(Err(StartError::NoRoom(detail)))) => {
                            return Err(AcquireError::NoRoom { function: self.revision.function.clone(), detail })
                        }
                        // Its node died under it: choose again (another instance, or another start,
                        // which the engine places elsewhere), a few times within the deadline.
                        Ok(Ok(Err(StartError::Lost(detail)))) if lost_starts < MAX_LOST_STARTS => {
                            lost_starts += 1;
                            tracing::info!(function = %self.revision.function, %detail, "instance lost while starting; trying again");
                        }
                        Ok(Ok(Err(StartError::Lost(detail) | StartError::Failed(detail)))) => {
                            return Err(AcquireError::StartFailed { function: self.revision.function.clone(), detail })
                        }
                        Ok(Err(_)) => {
                            return Err(AcquireError::StartFailed {
                                function: self.revision.function.clone(),
                                detail: "the start task ended unexpectedly".into(),
                            })
                        }
                        Err(_) => return Err(AcquireError::StartDeadline(self.revision.function.clone())),
                    }
                }
                Next::Wait => {
                    if tokio::time::timeout_at(queue_deadline, notified).await.is_err() {
                        return Err(AcquireError::Deadline(self.revision.function.clone()));
                    }
                }
            }
        }
    }

    /// Waits for the resuming instance `id`, on which the caller already holds a place.
    /// `Ok(true)`: it is ready; `Ok(false)`: its resume failed (the place is given back).
    async fn join_resume(self: &Arc<Self>, id: &str, deadline: Instant) -> Result<bool, AcquireError> {
        loop {
            let notified = self.changed.notified();
            let state = lock(&self.inner).instances.iter().find(|i| &*i.id == id).map(|i| i.state);
            match state {
                Some(InstanceState::Ready) => return Ok(true),
                Some(InstanceState::Resuming) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        self.release(id);
                        return Err(AcquireError::StartDeadline(self.revision.function.clone()));
                    }
                }
                _ => {
                    self.release(id);
                    return Ok(false);
                }
            }
        }
    }

    fn lease(
        self: &Arc<Self>,
        id: Arc<str>,
        endpoint: Arc<Endpoint>,
        kind: AcquireKind,
        began: Instant,
    ) -> Lease {
        Lease { pool: self.clone(), id, endpoint, kind, took: began.elapsed() }
    }
}

/// A request's place among those waiting for a starting instance, given back however the
/// wait ends (the client may go away).
struct JoinGuard<'a>(&'a Mutex<PoolInner>);

impl Drop for JoinGuard<'_> {
    fn drop(&mut self) {
        let mut g = lock(self.0);
        g.joining = g.joining.saturating_sub(1);
    }
}

struct WaitingGuard<'a> {
    pool: &'a FunctionPool,
    queued: &'a mut bool,
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        if *self.queued {
            let mut g = lock(&self.pool.inner);
            g.waiting = g.waiting.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::state::Sketch;
    use super::*;
    use InstanceState::*;

    fn at(state: InstanceState, in_flight: u32) -> Sketch {
        Sketch { state, in_flight, last_used: Instant::now(), node: None }
    }

    fn on(node: &'static str, state: InstanceState, in_flight: u32) -> Sketch {
        Sketch { node: Some(node), ..at(state, in_flight) }
    }

    fn scaling(concurrency: u32, max_instances: u32) -> Scaling {
        Scaling { concurrency, max_instances, ..Scaling::default() }
    }

    /// What, instances, load, already queued, scaling, queue depth: the choice.
    type Case = (&'static str, Vec<Sketch>, Load, bool, Scaling, u32, Choice);

    #[test]
    fn which_instance_serves_a_request() {
        let none = Load::default();
        let starting = |starting: u32, joining: u32| Load { starting, joining, waiting: 0 };
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("the busiest ready instance with room", vec![at(Ready, 1), at(Ready, 3), at(Ready, 2)], none, false, scaling(4, 5), 10, Choice::Warm(1)),
            ("a full instance is passed over", vec![at(Ready, 4), at(Ready, 0)], none, false, scaling(4, 5), 10, Choice::Warm(1)),
            ("ready beats resuming", vec![at(Resuming, 1), at(Ready, 0)], none, false, scaling(4, 5), 10, Choice::Warm(1)),
            ("join a resume with room", vec![at(Ready, 4), at(Resuming, 1)], none, false, scaling(4, 5), 10, Choice::JoinResume(1)),
            ("a full resume is not joined", vec![at(Resuming, 4), at(Paused, 0)], none, false, scaling(4, 5), 10, Choice::Resume(1)),
            ("resume a paused instance before starting one", vec![at(Paused, 0)], none, false, scaling(4, 5), 10, Choice::Resume(0)),
            ("wait for a starting instance with room", vec![], starting(1, 2), false, scaling(4, 5), 10, Choice::WaitStarting),
            ("a starting instance full of joiners: start another", vec![], starting(1, 3), false, scaling(4, 5), 10, Choice::Start),
            ("concurrency 1: its starter fills it", vec![], starting(1, 0), false, scaling(1, 5), 10, Choice::Start),
            ("wait for a pausing instance", vec![at(Pausing, 0)], none, false, scaling(4, 5), 10, Choice::WaitPausing),
            ("start when nothing has room", vec![at(Ready, 4)], none, false, scaling(4, 5), 10, Choice::Start),
            ("draining instances do not count against the limit", vec![at(Ready, 4), at(Draining, 1)], none, false, scaling(4, 2), 10, Choice::Start),
            ("starting ones do", vec![at(Ready, 1)], starting(1, 0), false, scaling(1, 2), 10, Choice::Queue { enter: true }),
            ("at the limit: queue", vec![at(Ready, 4), at(Ready, 4)], none, false, scaling(4, 2), 10, Choice::Queue { enter: true }),
            ("already queued: keep the place", vec![at(Ready, 4)], Load { waiting: 10, ..none }, true, scaling(4, 1), 10, Choice::Queue { enter: false }),
            ("queue full: refuse", vec![at(Ready, 4)], Load { waiting: 10, ..none }, false, scaling(4, 1), 10, Choice::Refuse),
        ];
        for (what, instances, load, queued, scaling, depth, want) in cases {
            assert_eq!(choose(&instances, load, queued, &scaling, depth, &[]), want, "{what}");
        }
    }

    #[test]
    fn a_request_sent_again_passes_over_the_node_that_lost_it() {
        let none = Load::default();
        let avoid = ["n1".to_string()];
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<Sketch>, Choice)> = vec![
            ("the busiest is on the avoided node: the next one elsewhere", vec![on("n1", Ready, 3), on("n2", Ready, 1), on("n3", Ready, 0)], Choice::Warm(1)),
            ("only the avoided node has room: start one", vec![on("n1", Ready, 0), on("n2", Ready, 4)], Choice::Start),
            ("a paused instance on the avoided node is not resumed", vec![on("n1", Paused, 0), on("n2", Paused, 0)], Choice::Resume(1)),
            ("a resume on the avoided node is not joined", vec![on("n1", Resuming, 1)], Choice::Start),
            ("instances with no node are not avoided", vec![at(Ready, 1)], Choice::Warm(0)),
        ];
        for (what, instances, want) in cases {
            assert_eq!(choose(&instances, none, false, &scaling(4, 5), 10, &avoid), want, "{what}");
        }
        // Without avoidance the same pool serves on the busiest instance.
        let pool = vec![on("n1", Ready, 3), on("n2", Ready, 1)];
        assert_eq!(choose(&pool, none, false, &scaling(4, 5), 10, &[]), Choice::Warm(0));
    }
}
