//! Instance states and the one table of legal transitions between them, the instance record,
//! and the read-only view of an instance that the pool's pure decisions take.

use std::sync::Arc;

use tokio::time::Instant;

use crate::dataplane::upstream::Endpoint;

/// An instance's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    /// Serving; counts in-flight requests.
    Ready,
    /// Being frozen.
    Pausing,
    /// Frozen by the cgroup freezer.
    Paused,
    /// Being thawed for a request.
    Resuming,
    /// Takes no new requests; removed when its last request ends.
    Draining,
    /// Gone.
    Removed,
}

impl InstanceState {
    /// The legal transitions, all in one place.
    pub fn can_become(self, to: InstanceState) -> bool {
        use InstanceState::*;
        matches!(
            (self, to),
            (Ready, Pausing)
                | (Pausing, Paused)
                | (Pausing, Ready)
                | (Paused, Resuming)
                | (Resuming, Ready)
                | (Ready | Pausing | Paused | Resuming, Draining)
                | (Ready | Pausing | Paused | Resuming | Draining, Removed)
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Ready => "ready",
            InstanceState::Pausing => "pausing",
            InstanceState::Paused => "paused",
            InstanceState::Resuming => "resuming",
            InstanceState::Draining => "draining",
            InstanceState::Removed => "removed",
        }
    }
}

#[derive(Debug)]
pub(super) struct Instance {
    pub(super) id: Arc<str>,
    /// How the gateway reaches it, with its kept-alive connections.
    pub(super) endpoint: Arc<Endpoint>,
    pub(super) state: InstanceState,
    pub(super) in_flight: u32,
    pub(super) last_used: Instant,
}

impl Instance {
    pub(super) fn set(&mut self, to: InstanceState) {
        debug_assert!(self.state.can_become(to), "illegal transition {:?} -> {:?}", self.state, to);
        if self.state.can_become(to) {
            self.state = to;
        } else {
            tracing::error!(container = %self.id, from = self.state.as_str(), to = to.as_str(), "illegal instance transition refused");
        }
    }
}

/// What the pool's decisions read of an instance (so they can be tested on plain values).
pub(super) trait InstanceView {
    fn state(&self) -> InstanceState;
    fn in_flight(&self) -> u32;
    fn last_used(&self) -> Instant;
    /// The node it runs on (swarm), or `None` (the server's own host, or unknown).
    fn node(&self) -> Option<&str>;
}

/// The view of anything with `state`, `in_flight` and `last_used` fields; `$node` reads its node.
macro_rules! instance_view {
    ($t:ty, $node:expr) => {
        impl InstanceView for $t {
            fn state(&self) -> InstanceState {
                self.state
            }
            fn in_flight(&self) -> u32 {
                self.in_flight
            }
            fn last_used(&self) -> Instant {
                self.last_used
            }
            fn node(&self) -> Option<&str> {
                let node: fn(&$t) -> Option<&str> = $node;
                node(self)
            }
        }
    };
}

instance_view!(Instance, |i| i.endpoint.node());

/// Instances that count against `max_instances`: all but those draining.
pub(super) fn live(instances: &[impl InstanceView]) -> u32 {
    u32::try_from(instances.iter().filter(|i| i.state() != InstanceState::Draining).count()).unwrap_or(u32::MAX)
}

/// An instance as plain values, for the decisions' tests.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(super) struct Sketch {
    pub state: InstanceState,
    pub in_flight: u32,
    pub last_used: Instant,
    pub node: Option<&'static str>,
}

#[cfg(test)]
instance_view!(Sketch, |s| s.node);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        use InstanceState::*;
        assert!(Ready.can_become(Pausing));
        assert!(Paused.can_become(Resuming));
        assert!(Resuming.can_become(Ready));
        assert!(!Paused.can_become(Ready), "a paused instance must be resumed first");
        assert!(!Removed.can_become(Ready));
        assert!(!Draining.can_become(Ready));
        assert!(Draining.can_become(Removed));
    }
}
