//! Seeing a dead node in about a second, not in the 10–15 s Swarm takes to mark it down.
//!
//! Swarm's heartbeat leaves a killed node `ready` for 10–15 s (13–15 s in the lab). Its
//! instances keep their place in the pool meanwhile: a request sent on a kept-alive connection
//! to one of them gets no answer (a dead host sends no reset) and fails at its timeout, and a
//! new instance may be placed on the dead node and never run. So the server watches the nodes
//! itself: every [`PROBE_EVERY`] it opens a TCP connection to each other node's gossip port
//! (7946, which every swarm node listens on). [`FAILS_TO_SUSPECT`] failures in a row make a
//! node *suspect*: the driver reports its instances dead (the pool replaces them) and places
//! nothing new on it. One success clears it; Swarm's own `down` still counts as well.
//!
//! The probe only opens and closes a connection: nothing is sent, no node needs configuring.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::models::NodeState;
use bollard::Docker;

/// How often every node is probed.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// How long one probe may take: on an overlay-capable network a live node answers in well
/// under a millisecond; the margin covers a loaded manager.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(400);
/// Failed probes in a row before a node is suspect (about a second).
pub const FAILS_TO_SUSPECT: u32 = 2;
/// How often the node list (addresses) is read again.
const REFRESH_NODES: Duration = Duration::from_secs(5);
/// The port every swarm node listens on (the gossip of the network control plane).
const GOSSIP_PORT: u16 = 7946;

/// Nodes the server believes dead, by node id.
#[derive(Debug, Default, Clone)]
pub struct Suspects(Arc<Mutex<HashSet<String>>>);

impl Suspects {
    pub fn contains(&self, node: &str) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).contains(node)
    }

    pub fn all(&self) -> HashSet<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, now: HashSet<String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = now;
    }
}

/// Counts failures per node and says which nodes are suspect: pure, tested without a swarm.
#[derive(Debug, Default)]
pub struct Tally {
    fails: HashMap<String, u32>,
}

impl Tally {
    /// Records one round of probes (node → answered) and returns the suspect nodes. Nodes no
    /// longer probed are forgotten.
    pub fn round(&mut self, answered: &HashMap<String, bool>) -> HashSet<String> {
        self.fails.retain(|n, _| answered.contains_key(n));
        for (node, ok) in answered {
            let f = self.fails.entry(node.clone()).or_insert(0);
            *f = if *ok { 0 } else { f.saturating_add(1) };
        }
        self.fails.iter().filter(|(_, f)| **f >= FAILS_TO_SUSPECT).map(|(n, _)| n.clone()).collect()
    }
}

/// Starts the watch of every node but `me`; it ends when the returned handle is dropped.
pub fn spawn(docker: Docker, me: String) -> (Suspects, tokio::task::JoinHandle<()>) {
    let suspects = Suspects::default();
    let out = suspects.clone();
    let task = tokio::spawn(async move {
        let mut tally = Tally::default();
        let mut nodes: Vec<(String, String)> = Vec::new();
        let mut read_at: Option<tokio::time::Instant> = None;
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !read_at.is_some_and(|t| t.elapsed() < REFRESH_NODES) {
                if let Ok(list) = docker.list_nodes(None).await {
                    nodes = list
                        .into_iter()
                        .filter_map(|n| {
                            let id = n.id?;
                            let status = n.status?;
                            // A node Swarm already calls down is not probed: Swarm says it.
                            (id != me && status.state == Some(NodeState::READY)).then_some((id, status.addr?))
                        })
                        .collect();
                    read_at = Some(tokio::time::Instant::now());
                }
            }
            let probes = nodes.iter().map(|(id, addr)| async move {
                let ok = matches!(
                    tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect((addr.as_str(), GOSSIP_PORT))).await,
                    Ok(Ok(_))
                );
                (id.clone(), ok)
            });
            let answered: HashMap<String, bool> = futures_util::future::join_all(probes).await.into_iter().collect();
            let now = tally.round(&answered);
            let before = suspects.all();
            for n in now.difference(&before) {
                tracing::warn!(node = %n, "node does not answer on its gossip port: its instances are taken out of the pool and nothing new is placed on it");
            }
            for n in before.difference(&now) {
                // A node Swarm has marked down is no longer probed: that is not an answer.
                if answered.get(n) == Some(&true) {
                    tracing::info!(node = %n, "node answers again");
                }
            }
            suspects.set(now);
        }
    });
    (out, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_failures_in_a_row_make_a_node_suspect_and_one_answer_clears_it() {
        let mut t = Tally::default();
        let round = |t: &mut Tally, a: bool, b: bool| {
            let mut s: Vec<String> = t.round(&HashMap::from([("a".to_string(), a), ("b".to_string(), b)])).into_iter().collect();
            s.sort();
            s
        };
        assert!(round(&mut t, true, false).is_empty(), "one failure is not enough");
        assert_eq!(round(&mut t, true, false), vec!["b".to_string()]);
        assert_eq!(round(&mut t, false, false), vec!["b".to_string()], "a's first failure");
        assert_eq!(round(&mut t, true, true), Vec::<String>::new(), "answers clear both");
        assert!(round(&mut t, false, true).is_empty());
        // A node no longer probed (removed from the swarm, or down for Swarm) is forgotten.
        assert!(t.round(&HashMap::from([("b".to_string(), true)])).is_empty());
        assert!(!t.fails.contains_key("a"));
    }
}
