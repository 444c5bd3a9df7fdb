//! `eserveless node-guard` (hidden): swarm mode's per-node firewall. Run on every node by a
//! global service (`infra/driver/swarm/guard.rs`), on the host's network with NET_ADMIN, it
//! installs `infra/firewall.rs`'s rules for `docker_gwbridge`, checks them every few seconds
//! (a firewall reload or an `iptables -F` would take them away), and removes them on
//! SIGTERM, unless a newer guard has taken them over meanwhile.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::{ArgAction, Args};
use tokio::signal::unix::{signal, SignalKind};

use crate::infra::firewall::{self, Chains, FirewallPolicy};

/// Apply swarm mode's per-node firewall for docker_gwbridge until SIGTERM (run by the server as a global service)
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct NodeGuard {
    /// The bridge function containers reach the node through
    #[arg(long, default_value = "docker_gwbridge")]
    pub bridge: String,
    /// Let functions open connections to the internet
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value_t = true)]
    pub egress: bool,
    /// Drop connections to 10/8, 172.16/12, 192.168/16 and 100.64/10 (the nodes, the LAN)
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value_t = true)]
    pub block_private: bool,
    /// A range (CIDR) dropped whatever --block-private says: the overlays' address pools
    #[arg(long = "deny", value_name = "CIDR", value_parser = parse_ipv4_net)]
    pub deny: Vec<String>,
    /// A resolver whose port 53 stays open (besides those in /etc/resolv.conf)
    #[arg(long = "dns", value_name = "ADDR", value_parser = parse_ipv4)]
    pub dns: Vec<String>,
    /// Seconds between two checks of the installed rules
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub interval_secs: u64,
}

fn parse_ipv4(s: &str) -> Result<String, String> {
    s.parse::<std::net::Ipv4Addr>().map(|a| a.to_string()).map_err(|e| format!("`{s}` is not an IPv4 address: {e}"))
}

fn parse_ipv4_net(s: &str) -> Result<String, String> {
    let (addr, len) = s.split_once('/').ok_or_else(|| format!("`{s}` is not a CIDR range such as 10.0.0.0/8"))?;
    parse_ipv4(addr)?;
    match len.parse::<u8>() {
        Ok(n) if n <= 32 => Ok(s.to_string()),
        _ => Err(format!("`{s}`: the prefix length must be 0 to 32")),
    }
}

/// A marker that sorts after every earlier guard's: the time it started, in fixed-width hex.
fn new_marker() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("esl-guard-{:016x}", u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// What a check of the installed rules calls for.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Keep,
    /// A newer guard (during a service update both run for a moment) owns the rules.
    Yield,
    Reapply,
}

fn next_step(installed: &firewall::Installed, me: &str) -> Step {
    match installed.marker.as_deref() {
        Some(m) if m > me && m.starts_with("esl-guard-") => Step::Yield,
        Some(m) if m == me && installed.current => Step::Keep,
        _ => Step::Reapply,
    }
}

impl NodeGuard {
    /// The rules' policy, on the iptables backend dockerd uses here.
    pub(crate) async fn policy(&self) -> FirewallPolicy {
        let mut dns = self.dns.clone();
        for r in firewall::host_resolvers() {
            if !dns.contains(&r) {
                dns.push(r);
            }
        }
        // Rules in the other backend's tables would be valid and useless: Docker's
        // DOCKER-USER chain tells which one dockerd uses.
        let mut iptables = firewall::IPTABLES.to_string();
        if !firewall::sees_docker_user(&iptables).await && firewall::sees_docker_user("iptables-legacy").await {
            iptables = "iptables-legacy".to_string();
        }
        FirewallPolicy {
            egress: self.egress,
            block_private: self.block_private,
            dns_servers: dns,
            deny: self.deny.clone(),
            chains: Chains::NODE_GUARD,
            marker: Some(new_marker()),
            iptables,
            ..FirewallPolicy::new(self.bridge.clone())
        }
    }

    pub async fn run(self) -> Result<i32> {
        let filter = tracing_subscriber::EnvFilter::try_from_env("ESERVELESS_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        // Plain text: the output goes to the service's logs, not to a terminal. Fails only
        // when a subscriber is set already (tests): logging goes there then.
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).try_init();
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let policy = self.policy().await;
        let me = policy.marker.clone().unwrap_or_default();
        // The first failure ends the process: the service restarts it, and its task's
        // state shows the error to whoever waits for the guard.
        firewall::apply(&policy).await.context("cannot install the node guard's rules")?;
        tracing::info!(bridge = %policy.bridge, iptables = %policy.iptables, marker = %me, deny = ?policy.deny,
            dns = ?policy.dns_servers, "node guard in place");
        let mut yielded = false;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                () = tokio::time::sleep(Duration::from_secs(self.interval_secs)) => {}
            }
            let installed = match firewall::inspect(&policy).await {
                Ok(i) => i,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the node guard's rules back");
                    continue;
                }
            };
            match next_step(&installed, &me) {
                Step::Keep => {}
                Step::Yield => {
                    if !std::mem::replace(&mut yielded, true) {
                        tracing::info!(newer = ?installed.marker, "a newer node guard took the rules over");
                    }
                }
                Step::Reapply => {
                    tracing::warn!(found = ?installed, "the node guard's rules were changed or removed: installing them again");
                    if let Err(e) = firewall::apply(&policy).await {
                        tracing::error!(error = %e, "cannot install the node guard's rules");
                    }
                }
            }
        }
        // Only our own rules go: a newer guard's (or ones being written by another guard)
        // stay, removing them would open the node until that guard's next check.
        match firewall::inspect(&policy).await {
            Ok(i) if i.marker.as_deref() == Some(me.as_str()) => {
                firewall::remove(&policy).await.context("cannot remove the node guard's rules")?;
                tracing::info!("stopping; node guard rules removed");
            }
            Ok(i) => tracing::info!(owner = ?i.marker, "stopping; the rules are not this guard's and stay"),
            Err(e) => tracing::error!(error = %e, "stopping; cannot read the rules back, leaving them"),
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> std::result::Result<NodeGuard, clap::Error> {
        let cli = crate::cli::Cli::try_parse_from(["eserveless", "node-guard"].iter().chain(args))?;
        match cli.command {
            crate::cli::Command::NodeGuard(g) => Ok(g),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn defaults_guard_docker_gwbridge_with_the_servers_defaults() {
        let g = parse(&[]).expect("parse");
        assert_eq!(g.bridge, "docker_gwbridge");
        assert!(g.egress && g.block_private);
        assert!(g.deny.is_empty() && g.dns.is_empty());
        assert_eq!(g.interval_secs, 10);
    }

    #[test]
    fn flags_parse_and_bad_ranges_are_refused() {
        let g = parse(&["--egress=false", "--block-private=false", "--deny", "10.0.0.0/8", "--deny", "10.20.0.0/16", "--dns", "10.0.0.2"])
            .expect("parse");
        assert!(!g.egress && !g.block_private);
        assert_eq!(g.deny, vec!["10.0.0.0/8", "10.20.0.0/16"]);
        assert_eq!(g.dns, vec!["10.0.0.2"]);
        for bad in [&["--deny", "10.0.0.0"][..], &["--deny", "10.0.0.0/33"], &["--deny", "x/8"], &["--dns", "a.b"], &["--interval-secs", "0"]] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_command_is_hidden_from_help() {
        use clap::CommandFactory;
        let help = crate::cli::Cli::command().render_help().to_string();
        assert!(!help.contains("node-guard"), "{help}");
    }

    #[test]
    fn markers_sort_by_start_and_a_newer_guard_wins() {
        let a = new_marker();
        std::thread::sleep(Duration::from_millis(2));
        let b = new_marker();
        assert!(a < b && a.len() == b.len(), "{a} {b}");
        let at = |marker: &str, current: bool| firewall::Installed { current, marker: Some(marker.to_string()) };
        assert_eq!(next_step(&at(&a, true), &a), Step::Keep);
        assert_eq!(next_step(&at(&a, false), &a), Step::Reapply);
        assert_eq!(next_step(&at(&b, true), &a), Step::Yield);
        // An older guard's leftovers, or nothing at all: ours again.
        assert_eq!(next_step(&at(&a, true), &b), Step::Reapply);
        assert_eq!(next_step(&firewall::Installed { current: false, marker: None }, &a), Step::Reapply);
    }
}
