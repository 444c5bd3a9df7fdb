//! Host firewall rules that isolate function containers (iptables, IPv4).
//!
//! # Threat model
//!
//! Function code is untrusted. Its containers sit on one Docker bridge network
//! (`eserveless` by default, created by the driver with
//! `com.docker.network.bridge.enable_icc=false`). The server (management API and
//! gateway) runs on the host and opens connections *to* the containers; nothing
//! needs connections *from* them. Without extra rules a container can reach:
//!
//! * every port of the host itself, through the bridge gateway address or any
//!   other host address (the API, sshd, a Docker API on TCP, databases bound
//!   to `0.0.0.0`...): these packets go through the `INPUT` chain, which Docker
//!   does not filter at all;
//! * link-local addresses such as a cloud metadata service (`169.254.169.254`),
//!   which hands out credentials;
//! * the private networks around the host (other machines of the LAN/VPC,
//!   other Docker networks).
//!
//! Inter-container traffic on the bridge is already dropped by Docker because of
//! `enable_icc=false`; these rules leave it to Docker.
//!
//! # Rules
//!
//! Two dedicated chains, refilled on every [`apply`] in one `iptables-restore
//! --noflush` transaction, so applying is idempotent and atomic, and [`remove`] takes
//! everything away:
//!
//! * `ESERVELESS-INPUT`, jumped to from the top of `INPUT` for packets arriving
//!   on the bridge: replies (`ESTABLISHED,RELATED`) to the server's own
//!   connections are accepted, everything else is dropped.
//! * `ESERVELESS-FWD`, jumped to from the top of `DOCKER-USER` (the chain Docker
//!   jumps to first from `FORWARD` and never flushes) for packets arriving on the
//!   bridge: replies are accepted; traffic staying on the bridge is returned to
//!   Docker's own rules; DNS to the host's upstream resolvers is accepted (see
//!   below); link-local is dropped; the private ranges are dropped when
//!   [`FirewallPolicy::block_private`]; everything else leaving the bridge is
//!   dropped when egress is off.
//!
//! # DNS
//!
//! On user-defined networks Docker's embedded DNS server (`127.0.0.11`) lives in
//! the container's network namespace, so the `INPUT` rules do not affect it. It
//! forwards queries to the host's upstream resolvers *from the container's
//! namespace*, so those queries do cross `FORWARD`: when a resolver is in a
//! private or link-local range (a VPC resolver like `10.0.0.2`, GCP's
//! `169.254.169.254`, a home router) it must be allowed explicitly, which is what
//! [`FirewallPolicy::dns_servers`] (filled by [`host_resolvers`]) is for: only
//! port 53 of those addresses is opened. With egress off, DNS to them still works.
//! Resolvers set with dockerd's `--dns`/`daemon.json` are not seen by
//! [`host_resolvers`] and must be added by the caller.
//!
//! # Swarm mode: `docker_gwbridge` (the node guard)
//!
//! In swarm mode a function container sits on its project's overlay *and* on
//! `docker_gwbridge`, which carries its default route. The same two chains, under
//! [`Chains::NODE_GUARD`]'s names and for `-i docker_gwbridge`, are installed on
//! every node by `eserveless node-guard` (a global service, see
//! `infra/driver/swarm/guard.rs`): `INPUT` closes the node's own ports (the API,
//! swarm's 2377/7946, a registry) reached through the gwbridge gateway or any node
//! address; `DOCKER-USER` drops the overlays' address pool ([`FirewallPolicy::deny`],
//! whatever `block_private` says: a packet for another project's overlay would
//! otherwise leave the node by its uplink), link-local, the private ranges (the
//! other nodes, the LAN) and, egress off, everything else. Traffic between tasks of
//! one overlay never crosses these chains (it is VXLAN in the overlay's namespace);
//! gwbridge to gwbridge is left to Docker's `enable_icc=false` on that bridge.
//!
//! # Limits
//!
//! * IPv4 only. `ip6tables` is not touched: the driver does not enable IPv6 on the
//!   network, so containers have no IPv6 route out of their namespace. If IPv6 is
//!   ever enabled on the network, equivalent `ip6tables` rules are needed first.
//! * One eserveless bridge per set of chains: [`apply`] removes jumps to its
//!   chains from any other bridge (e.g. after the network was recreated and got a
//!   new `br-…` name). The single-host engine uses [`Chains::HOST`]; swarm mode's
//!   node guard (`eserveless node-guard`, for `docker_gwbridge`) uses
//!   [`Chains::NODE_GUARD`], so both can live on one host.
//! * The chains are refilled atomically (`iptables-restore`); the jumps are only
//!   added once the chains are complete, and a misplaced jump is replaced by
//!   inserting the new one before deleting the old one.
//! * Rules do not survive a reboot or `iptables` flush: apply them at every
//!   server start. A Docker restart keeps `DOCKER-USER` and `INPUT` rules.
//! * Uses whichever `iptables` is on `PATH` (nf_tables or legacy backend); it
//!   must be the same backend Docker uses, which is the case with Debian's
//!   alternatives.
//!
//! Commands are run as argv lists (never through a shell), always with `-w` to
//! wait for the xtables lock.

use std::process::Output;

use bollard::query_parameters::InspectNetworkOptions;
use bollard::Docker;

/// Chain holding the `INPUT` rules for packets from the bridge.
pub const INPUT_CHAIN: &str = "ESERVELESS-INPUT";
/// Chain holding the `DOCKER-USER` (forwarding) rules for packets from the bridge.
pub const FORWARD_CHAIN: &str = "ESERVELESS-FWD";

/// The pair of chains a policy fills (iptables limits a chain name to 28 characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chains {
    /// Jumped to from `INPUT`.
    pub input: &'static str,
    /// Jumped to from `DOCKER-USER`.
    pub forward: &'static str,
}

impl Chains {
    /// The single-host engine's, for its functions bridge.
    pub const HOST: Chains = Chains { input: INPUT_CHAIN, forward: FORWARD_CHAIN };
    /// Swarm mode's node guard, for `docker_gwbridge`: other names, so that a single-host
    /// server on the same host (or the swarm server's own build bridge) keeps its rules.
    pub const NODE_GUARD: Chains = Chains { input: "ESERVELESS-GUARD-INPUT", forward: "ESERVELESS-GUARD-FWD" };
}
/// Link-local range, where cloud metadata services live.
pub const LINK_LOCAL: &str = "169.254.0.0/16";
/// Ranges dropped when [`FirewallPolicy::block_private`] is set (RFC 1918 and CGNAT).
pub const PRIVATE_RANGES: [&str; 4] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"];

/// The `iptables` command used unless a policy names another (see [`FirewallPolicy::iptables`]).
pub const IPTABLES: &str = "iptables";
const HINT: &str = "run the server as root (or with CAP_NET_ADMIN and CAP_NET_RAW), \
                    or start it with the host firewall disabled (e.g. --firewall=false)";

/// What containers on the bridge may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallPolicy {
    /// Linux bridge interface of the functions' network (see [`bridge_interface`]).
    pub bridge: String,
    /// Allow connections from containers to outside the host (internet).
    pub egress: bool,
    /// Drop connections from containers to 10/8, 172.16/12, 192.168/16 and 100.64/10.
    /// Traffic staying on the bridge itself is left to Docker.
    pub block_private: bool,
    /// Upstream resolvers Docker's embedded DNS forwards to; port 53 (UDP and TCP)
    /// of these IPv4 addresses stays reachable whatever the other settings.
    pub dns_servers: Vec<String>,
    /// Ranges (CIDR) dropped whatever `block_private` says, after the DNS exceptions:
    /// in swarm mode, the overlays' address pools, which a container would otherwise
    /// reach (or send out of the node) through its `docker_gwbridge` default route.
    pub deny: Vec<String>,
    /// The chains to fill.
    pub chains: Chains,
    /// A word (no spaces) written as a comment-only rule at the top of the input chain,
    /// so that the process that installed the rules can tell them from another's
    /// ([`installed_marker`]); `None` for none.
    pub marker: Option<String>,
    /// The command to run: `iptables`, or `iptables-legacy` on a host whose dockerd uses
    /// the legacy backend.
    pub iptables: String,
}

impl FirewallPolicy {
    /// Defaults: egress allowed, private ranges blocked, no DNS exception, the
    /// single-host engine's chains.
    pub fn new(bridge: impl Into<String>) -> Self {
        FirewallPolicy {
            bridge: bridge.into(),
            egress: true,
            block_private: true,
            dns_servers: Vec::new(),
            deny: Vec::new(),
            chains: Chains::HOST,
            marker: None,
            iptables: IPTABLES.to_string(),
        }
    }
}

/// The bridge behind a Docker network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeNetwork {
    /// Linux interface name, e.g. `br-2804ddc8201e`.
    pub iface: String,
    /// First IPv4 subnet of the network, e.g. `172.19.0.0/16` (informational).
    pub subnet: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("cannot run `{0}`: {1}; install iptables, or start the server with the host firewall disabled (e.g. --firewall=false)")]
    Spawn(String, std::io::Error),
    #[error("`{argv}` failed ({status}): {stderr}; {hint}")]
    Command { argv: String, status: String, stderr: String, hint: &'static str },
    #[error("cannot inspect docker network `{network}`: {source}")]
    Docker { network: String, source: bollard::errors::Error },
    #[error("docker network `{network}` is not usable for the host firewall: {reason}")]
    Network { network: String, reason: String },
    #[error(
        "iptables chain DOCKER-USER does not exist: is dockerd running with iptables enabled \
         (not `--iptables=false`) and using the same iptables backend (nft/legacy) as this host's `iptables`?"
    )]
    NoDockerUser,
}

fn s(x: &str) -> String {
    x.to_string()
}

fn argv(parts: &[&str]) -> Vec<String> {
    std::iter::once("-w").chain(parts.iter().copied()).map(s).collect()
}

/// The jump rule spec (without `-A/-I/-C chain`) from `parent` into our chain.
fn jump_spec(bridge: &str, target: &str) -> Vec<String> {
    vec![s("-i"), s(bridge), s("-j"), s(target)]
}

/// The rules as `iptables` argv lists (without the binary), in order: create and flush
/// both chains, fill them, jump to them.
///
/// [`apply`] does not run them one by one: the `-A` entries go through one
/// `iptables-restore --noflush` transaction ([`restore_input`]), which creates or
/// flushes the chains itself; an `-I parent 1 spec…` is skipped when that jump is
/// already the parent's first rule and its only jump to the chain (otherwise it is
/// inserted, then the other jumps to the chain are deleted).
pub fn rules(p: &FirewallPolicy) -> Vec<Vec<String>> {
    let br = p.bridge.as_str();
    let (input, forward) = (p.chains.input, p.chains.forward);
    let est = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"];
    let mut out = Vec::new();
    for chain in [input, forward] {
        out.push(argv(&["-N", chain]));
        out.push(argv(&["-F", chain]));
    }

    if let Some(marker) = &p.marker {
        // No target: matches and counts, decides nothing.
        out.push(argv(&["-A", input, "-m", "comment", "--comment", marker]));
    }
    // INPUT: the host only answers.
    out.push(argv(&[&["-A", input][..], &est[..]].concat()));
    out.push(argv(&["-A", input, "-j", "DROP"]));

    // FORWARD (via DOCKER-USER).
    out.push(argv(&[&["-A", forward][..], &est[..]].concat()));
    // Bridge to the same bridge: Docker's icc=false rules decide (they drop).
    out.push(argv(&["-A", forward, "-o", br, "-j", "RETURN"]));
    for dns in &p.dns_servers {
        for proto in ["udp", "tcp"] {
            out.push(argv(&["-A", forward, "-d", dns, "-p", proto, "--dport", "53", "-j", "ACCEPT"]));
        }
    }
    out.push(argv(&["-A", forward, "-d", LINK_LOCAL, "-j", "DROP"]));
    for range in &p.deny {
        out.push(argv(&["-A", forward, "-d", range, "-j", "DROP"]));
    }
    if p.block_private {
        for range in PRIVATE_RANGES {
            out.push(argv(&["-A", forward, "-d", range, "-j", "DROP"]));
        }
    }
    if !p.egress {
        out.push(argv(&["-A", forward, "!", "-o", br, "-j", "DROP"]));
    }

    // Hook the chains in last, once they are complete.
    for (parent, target) in parents(p) {
        let mut a = argv(&["-I", parent, "1"]);
        a.extend(jump_spec(br, target));
        out.push(a);
    }
    out
}

/// Each built-in (or Docker's) chain with the chain of ours it jumps to.
fn parents(p: &FirewallPolicy) -> [(&'static str, &'static str); 2] {
    [("INPUT", p.chains.input), ("DOCKER-USER", p.chains.forward)]
}

/// Installs (or refreshes) the rules for `p`. Needs root (CAP_NET_ADMIN).
///
/// The two chains are created or refilled in one `iptables-restore --noflush` transaction
/// ([`restore_input`]): never seen empty or half filled, by packets or by another process
/// reading them (a guard handing over to a newer one). The jumps are then put in place.
pub async fn apply(p: &FirewallPolicy) -> Result<(), FirewallError> {
    let ipt = p.iptables.as_str();
    if !probe(ipt, &argv(&["-n", "-L", "DOCKER-USER"])).await? {
        return Err(FirewallError::NoDockerUser);
    }
    restore(ipt, &restore_input(p)).await?;
    for a in rules(p) {
        if a.get(1).map(String::as_str) != Some("-I") || a.get(3).map(String::as_str) != Some("1") {
            continue;
        }
        let (parent, spec) = (a[2].as_str(), &a[4..]);
        let target = spec.last().map(String::as_str).unwrap_or_default();
        if jump_in_place(&list(ipt, parent).await?, spec, target) {
            continue;
        }
        // The new jump goes on top first, then the others (left from another bridge name,
        // duplicates, ours when something was put above it) go, by number: the chain is
        // never without its jump meanwhile.
        check(ipt, &a).await?;
        for n in extra_jumps(&list(ipt, parent).await?, target) {
            check(ipt, &argv(&["-D", parent, &n.to_string()])).await?;
        }
    }
    tracing::info!(bridge = %p.bridge, egress = p.egress, block_private = p.block_private, "host firewall applied");
    Ok(())
}

/// The `iptables-restore --noflush` input that creates or refills (declaring a chain that
/// exists flushes it) both chains with [`rules`]' `-A` entries, in one transaction.
pub fn restore_input(p: &FirewallPolicy) -> String {
    let mut out = String::from("*filter\n");
    for chain in [p.chains.input, p.chains.forward] {
        out.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for a in rules(p).iter().filter(|a| a.get(1).map(String::as_str) == Some("-A")) {
        out.push_str(&a[1..].join(" "));
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    out
}

/// Runs `<ipt>-restore -w --noflush` (`iptables-restore`, `iptables-legacy-restore`) on `input`.
async fn restore(ipt: &str, input: &str) -> Result<(), FirewallError> {
    use tokio::io::AsyncWriteExt;
    let bin = format!("{ipt}-restore");
    let args = [s("-w"), s("--noflush")];
    let mut child = tokio::process::Command::new(&bin)
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| FirewallError::Spawn(bin.clone(), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).await.map_err(|e| FirewallError::Spawn(bin.clone(), e))?;
    }
    let out = child.wait_with_output().await.map_err(|e| FirewallError::Spawn(bin.clone(), e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(failed(&bin, &[args.to_vec(), vec![format!("<<< {}", input.replace('\n', "; "))]].concat(), &out))
}

/// Takes away what [`apply`] installed for `p`'s chains: every jump to them (from any
/// bridge), then the chains. Chains or jumps already gone are fine.
pub async fn remove(p: &FirewallPolicy) -> Result<(), FirewallError> {
    let ipt = p.iptables.as_str();
    for (parent, target) in parents(p) {
        if !probe(ipt, &argv(&["-n", "-L", parent])).await? {
            continue;
        }
        for spec in list(ipt, parent).await?.into_iter().filter(|r| jumps_to(r, target)) {
            check(ipt, &[argv(&["-D", parent]), spec].concat()).await?;
        }
    }
    for chain in [p.chains.input, p.chains.forward] {
        if probe(ipt, &argv(&["-n", "-L", chain])).await? {
            check(ipt, &argv(&["-F", chain])).await?;
            check(ipt, &argv(&["-X", chain])).await?;
        }
    }
    tracing::info!(bridge = %p.bridge, "host firewall removed");
    Ok(())
}

/// What is installed for `p`'s chains, as [`inspect`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// Both jumps are in place (once each, first in their parent chain) and both chains
    /// hold as many rules as [`rules`] makes for `p`.
    pub current: bool,
    /// The marker found at the top of the input chain (see [`FirewallPolicy::marker`]).
    pub marker: Option<String>,
}

/// Reads the installed rules back, to tell whether [`apply`] is needed again. Counts the
/// chains' rules rather than comparing their text: `iptables -S` rewrites what it was
/// given (`RELATED,ESTABLISHED`, `/32`, `-m udp`), and only a flush or a rewrite by
/// someone else is expected to change them. One `iptables -S` of the whole table: a
/// snapshot, so that another process's [`apply`] in between cannot mix two states.
pub async fn inspect(p: &FirewallPolicy) -> Result<Installed, FirewallError> {
    let out = check(&p.iptables, &argv(&["-S"])).await?;
    Ok(installed_in(p, &String::from_utf8_lossy(&out.stdout)))
}

/// [`inspect`]'s verdict on an `iptables -S` listing of the filter table.
fn installed_in(p: &FirewallPolicy, listing: &str) -> Installed {
    let expected = rules(p);
    let exists = |chain: &str| listing.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["-N", chain]);
    let mut current = true;
    let mut marker = None;
    for (parent, target) in parents(p) {
        if !exists(target) {
            return Installed { current: false, marker: None };
        }
        let installed = parse_rules(listing, target);
        let want = expected
            .iter()
            .filter(|a| a.get(1).map(String::as_str) == Some("-A") && a.get(2).map(String::as_str) == Some(target))
            .count();
        current &= installed.len() == want;
        if target == p.chains.input {
            marker = installed.first().and_then(|r| comment_of(r));
        }
        current &= jump_in_place(&parse_rules(listing, parent), &jump_spec(&p.bridge, target), target);
    }
    Installed { current, marker }
}

/// The text of a rule's `--comment`, quotes taken off.
fn comment_of(spec: &[String]) -> Option<String> {
    let i = spec.iter().position(|w| w == "--comment")?;
    spec.get(i + 1).map(|c| c.trim_matches('"').to_string())
}

/// Rule specs (after `-A parent`) of the rules in `parent`, in order.
async fn list(ipt: &str, parent: &str) -> Result<Vec<Vec<String>>, FirewallError> {
    let out = check(ipt, &argv(&["-S", parent])).await?;
    Ok(parse_rules(&String::from_utf8_lossy(&out.stdout), parent))
}

/// From `iptables -S parent` output. Splitting on whitespace is exact for the
/// rules we look at (`-i <iface> -j <chain>`, a one-word comment: no spaces).
fn parse_rules(listing: &str, parent: &str) -> Vec<Vec<String>> {
    listing
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() > 2 && w[0] == "-A" && w[1] == parent).then(|| w[2..].iter().map(|x| s(x)).collect())
        })
        .collect()
}

fn jumps_to(spec: &[String], target: &str) -> bool {
    spec.windows(2).any(|p| p[0] == "-j" && p[1] == target)
}

/// The rule numbers (1-based, highest first, so that deleting one does not renumber the
/// next) of the jumps to `target` other than the chain's first rule.
fn extra_jumps(rules: &[Vec<String>], target: &str) -> Vec<usize> {
    let mut n: Vec<usize> = rules.iter().enumerate().skip(1).filter(|(_, r)| jumps_to(r, target)).map(|(i, _)| i + 1).collect();
    n.reverse();
    n
}

/// Exactly one jump to `target`, `keep`, first in the chain.
fn jump_in_place(rules: &[Vec<String>], keep: &[String], target: &str) -> bool {
    rules.iter().filter(|r| jumps_to(r, target)).count() == 1 && rules.first().map(Vec::as_slice) == Some(keep)
}

async fn run(ipt: &str, args: &[String]) -> Result<Output, FirewallError> {
    tokio::process::Command::new(ipt)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| FirewallError::Spawn(ipt.to_string(), e))
}

/// A yes/no question (`-L chain`, `-C rule`): iptables exits 1 for "no such
/// chain/rule"; anything else (4: permission denied, lock) is an error, so that a
/// non-root run reports the real cause instead of "chain missing".
async fn probe(ipt: &str, args: &[String]) -> Result<bool, FirewallError> {
    let out = run(ipt, args).await?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(failed(ipt, args, &out)),
    }
}

async fn check(ipt: &str, args: &[String]) -> Result<Output, FirewallError> {
    let out = run(ipt, args).await?;
    if out.status.success() {
        return Ok(out);
    }
    Err(failed(ipt, args, &out))
}

fn failed(ipt: &str, args: &[String], out: &Output) -> FirewallError {
    FirewallError::Command {
        argv: format!("{ipt} {}", args.join(" ")),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        hint: HINT,
    }
}

/// Whether `ipt` sees Docker's `DOCKER-USER` chain: tells which iptables backend
/// (`iptables` or `iptables-legacy`) dockerd uses on this host.
pub async fn sees_docker_user(ipt: &str) -> bool {
    matches!(probe(ipt, &argv(&["-n", "-L", "DOCKER-USER"])).await, Ok(true))
}

/// Linux bridge interface and subnet of a Docker bridge network: the
/// `com.docker.network.bridge.name` option if set, else `br-` + the first 12 hex
/// digits of the network id.
pub async fn bridge_interface(docker: &Docker, network: &str) -> Result<BridgeNetwork, FirewallError> {
    let info = docker
        .inspect_network(network, None::<InspectNetworkOptions>)
        .await
        .map_err(|source| FirewallError::Docker { network: network.to_string(), source })?;
    let bad = |reason: &str| FirewallError::Network { network: network.to_string(), reason: reason.to_string() };
    if info.driver.as_deref() != Some("bridge") {
        return Err(bad(&format!("driver is {:?}, not \"bridge\"", info.driver.unwrap_or_default())));
    }
    let named = info.options.as_ref().and_then(|o| o.get("com.docker.network.bridge.name")).filter(|n| !n.is_empty());
    let iface = match named {
        Some(n) => n.clone(),
        None => match info.id.as_deref() {
            Some(id) if id.len() >= 12 && id.is_char_boundary(12) => format!("br-{}", &id[..12]),
            _ => return Err(bad("no network id")),
        },
    };
    let subnet = info
        .ipam
        .and_then(|i| i.config)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| c.subnet)
        .find(|s| !s.contains(':'));
    Ok(BridgeNetwork { iface, subnet })
}

/// Non-loopback IPv4 nameservers the Docker daemon will forward DNS to, read the
/// way dockerd does: `/etc/resolv.conf`, or systemd-resolved's upstream file when
/// that only lists the local stub. Empty when there are none (Docker then uses
/// public resolvers, which need no exception).
pub fn host_resolvers() -> Vec<String> {
    let read = |p: &str| std::fs::read_to_string(p).map(|t| parse_resolvers(&t)).unwrap_or_default();
    let found = read("/etc/resolv.conf");
    if found.is_empty() {
        read("/run/systemd/resolve/resolv.conf")
    } else {
        found
    }
}

fn parse_resolvers(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        .filter_map(|a| a.parse::<std::net::Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback())
        .map(|a| a.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(r: &[String]) -> String {
        r.join(" ")
    }

    fn all(p: &FirewallPolicy) -> Vec<String> {
        rules(p).iter().map(|r| words(r)).collect()
    }

    fn pos(rs: &[String], needle: &str) -> usize {
        rs.iter().position(|r| r == needle).unwrap_or_else(|| panic!("missing rule `{needle}` in {rs:#?}"))
    }

    #[test]
    fn default_policy_exact_rules() {
        let p = FirewallPolicy::new("br-2804ddc8201e");
        assert_eq!(
            all(&p),
            vec![
                "-w -N ESERVELESS-INPUT",
                "-w -F ESERVELESS-INPUT",
                "-w -N ESERVELESS-FWD",
                "-w -F ESERVELESS-FWD",
                "-w -A ESERVELESS-INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
                "-w -A ESERVELESS-INPUT -j DROP",
                "-w -A ESERVELESS-FWD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
                "-w -A ESERVELESS-FWD -o br-2804ddc8201e -j RETURN",
                "-w -A ESERVELESS-FWD -d 169.254.0.0/16 -j DROP",
                "-w -A ESERVELESS-FWD -d 10.0.0.0/8 -j DROP",
                "-w -A ESERVELESS-FWD -d 172.16.0.0/12 -j DROP",
                "-w -A ESERVELESS-FWD -d 192.168.0.0/16 -j DROP",
                "-w -A ESERVELESS-FWD -d 100.64.0.0/10 -j DROP",
                "-w -I INPUT 1 -i br-2804ddc8201e -j ESERVELESS-INPUT",
                "-w -I DOCKER-USER 1 -i br-2804ddc8201e -j ESERVELESS-FWD",
            ]
        );
    }

    #[test]
    fn every_argv_is_separate_words_with_lock_wait() {
        let p = FirewallPolicy { egress: false, dns_servers: vec!["10.0.0.2".into()], ..FirewallPolicy::new("br-x") };
        for r in rules(&p) {
            assert_eq!(r[0], "-w");
            assert!(r.iter().all(|w| !w.is_empty() && !w.contains(' ')), "{r:?}");
        }
    }

    #[test]
    fn replies_accepted_before_any_drop() {
        let rs = all(&FirewallPolicy { egress: false, ..FirewallPolicy::new("br-x") });
        for chain in [INPUT_CHAIN, FORWARD_CHAIN] {
            let accept = pos(&rs, &format!("-w -A {chain} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"));
            let flush = pos(&rs, &format!("-w -F {chain}"));
            assert!(flush < accept);
            for (i, r) in rs.iter().enumerate() {
                if r.starts_with(&format!("-w -A {chain} ")) && r.ends_with("DROP") {
                    assert!(accept < i, "`{r}` before the ESTABLISHED accept");
                }
            }
        }
    }

    #[test]
    fn jumps_come_last_once_chains_are_filled() {
        let rs = all(&FirewallPolicy::new("br-x"));
        let n = rs.len();
        assert_eq!(rs[n - 2], "-w -I INPUT 1 -i br-x -j ESERVELESS-INPUT");
        assert_eq!(rs[n - 1], "-w -I DOCKER-USER 1 -i br-x -j ESERVELESS-FWD");
        assert_eq!(rs.iter().filter(|r| r.contains("-j ESERVELESS-")).count(), 2);
    }

    #[test]
    fn egress_off_adds_final_drop() {
        let on = all(&FirewallPolicy::new("br-x"));
        let off = all(&FirewallPolicy { egress: false, ..FirewallPolicy::new("br-x") });
        let drop = "-w -A ESERVELESS-FWD ! -o br-x -j DROP";
        assert!(!on.iter().any(|r| r == drop));
        let i = pos(&off, drop);
        assert_eq!(off.len(), on.len() + 1);
        // Last rule of the chain: after link-local and private drops.
        assert!(pos(&off, "-w -A ESERVELESS-FWD -d 100.64.0.0/10 -j DROP") < i);
        assert!(off[i + 1].starts_with("-w -I INPUT 1"));
    }

    #[test]
    fn block_private_toggles_only_private_ranges() {
        let on = all(&FirewallPolicy::new("br-x"));
        let off = all(&FirewallPolicy { block_private: false, ..FirewallPolicy::new("br-x") });
        for range in PRIVATE_RANGES {
            let r = format!("-w -A ESERVELESS-FWD -d {range} -j DROP");
            assert!(on.contains(&r));
            assert!(!off.contains(&r));
        }
        // Metadata stays blocked either way.
        assert!(off.contains(&"-w -A ESERVELESS-FWD -d 169.254.0.0/16 -j DROP".to_string()));
    }

    #[test]
    fn own_bridge_returned_before_private_drop() {
        // The bridge subnet (172.19/16 here) is inside 172.16/12: intra-bridge
        // traffic must leave our chain before the private-range drop.
        let rs = all(&FirewallPolicy::new("br-x"));
        assert!(
            pos(&rs, "-w -A ESERVELESS-FWD -o br-x -j RETURN")
                < pos(&rs, "-w -A ESERVELESS-FWD -d 172.16.0.0/12 -j DROP")
        );
    }

    #[test]
    fn dns_exceptions_precede_drops() {
        let p = FirewallPolicy {
            egress: false,
            dns_servers: vec!["10.255.255.53".into(), "169.254.169.254".into()],
            ..FirewallPolicy::new("br-x")
        };
        let rs = all(&p);
        let udp = pos(&rs, "-w -A ESERVELESS-FWD -d 10.255.255.53 -p udp --dport 53 -j ACCEPT");
        let tcp = pos(&rs, "-w -A ESERVELESS-FWD -d 169.254.169.254 -p tcp --dport 53 -j ACCEPT");
        let first_drop = pos(&rs, "-w -A ESERVELESS-FWD -d 169.254.0.0/16 -j DROP");
        assert!(udp < first_drop && tcp < first_drop);
        assert_eq!(rs.iter().filter(|r| r.contains("--dport 53")).count(), 4);
    }

    fn spec(r: &str) -> Vec<String> {
        r.split(' ').map(String::from).collect()
    }

    #[test]
    fn parses_listing() {
        let listing = "-P INPUT ACCEPT\n\
                       -A INPUT -i br-old -j ESERVELESS-INPUT\n\
                       -A INPUT -s 1.2.3.4/32 -j DROP\n\
                       -A OUTPUT -j ACCEPT\n";
        assert_eq!(parse_rules(listing, "INPUT"), vec![spec("-i br-old -j ESERVELESS-INPUT"), spec("-s 1.2.3.4/32 -j DROP")]);
        assert!(parse_rules(listing, "DOCKER-USER").is_empty());
    }

    #[test]
    fn the_jump_is_in_place_once_and_first_and_extra_ones_go_by_number() {
        let t = FORWARD_CHAIN;
        let keep = jump_spec("br-new", t);
        let ret = spec("-j RETURN");
        let other = spec("-i br-new -j ESERVELESS-FWDX");
        let old = jump_spec("br-old", t);
        // Already right.
        assert!(jump_in_place(&[keep.clone(), other.clone(), ret.clone()], &keep, t));
        assert!(extra_jumps(&[keep.clone(), other.clone(), ret.clone()], t).is_empty());
        // None yet, left from an older bridge name, duplicated, not first: not in place.
        assert!(!jump_in_place(std::slice::from_ref(&ret), &keep, t));
        assert!(!jump_in_place(&[keep.clone(), old.clone(), ret.clone()], &keep, t));
        assert!(!jump_in_place(&[keep.clone(), ret.clone(), keep.clone()], &keep, t));
        assert!(!jump_in_place(&[other.clone(), keep.clone(), ret.clone()], &keep, t));
        // After the new jump was inserted on top: every other jump to the chain goes,
        // highest number first.
        assert_eq!(extra_jumps(&[keep.clone(), other.clone(), old.clone(), ret.clone(), keep.clone()], t), vec![5, 3]);
        assert_eq!(extra_jumps(&[keep.clone(), other, keep], t), vec![3]);
    }

    fn guard() -> FirewallPolicy {
        FirewallPolicy {
            deny: vec!["10.0.0.0/8".into()],
            chains: Chains::NODE_GUARD,
            marker: Some("esl-guard-0000000000000001".into()),
            block_private: false,
            ..FirewallPolicy::new("docker_gwbridge")
        }
    }

    #[test]
    fn node_guard_exact_rules_for_docker_gwbridge() {
        assert_eq!(
            all(&guard()),
            vec![
                "-w -N ESERVELESS-GUARD-INPUT",
                "-w -F ESERVELESS-GUARD-INPUT",
                "-w -N ESERVELESS-GUARD-FWD",
                "-w -F ESERVELESS-GUARD-FWD",
                "-w -A ESERVELESS-GUARD-INPUT -m comment --comment esl-guard-0000000000000001",
                "-w -A ESERVELESS-GUARD-INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
                "-w -A ESERVELESS-GUARD-INPUT -j DROP",
                "-w -A ESERVELESS-GUARD-FWD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
                "-w -A ESERVELESS-GUARD-FWD -o docker_gwbridge -j RETURN",
                "-w -A ESERVELESS-GUARD-FWD -d 169.254.0.0/16 -j DROP",
                // The overlay pool, even with block_private off.
                "-w -A ESERVELESS-GUARD-FWD -d 10.0.0.0/8 -j DROP",
                "-w -I INPUT 1 -i docker_gwbridge -j ESERVELESS-GUARD-INPUT",
                "-w -I DOCKER-USER 1 -i docker_gwbridge -j ESERVELESS-GUARD-FWD",
            ]
        );
    }

    #[test]
    fn the_chains_are_refilled_in_one_restore_transaction() {
        let text = restore_input(&guard());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "*filter");
        assert_eq!(lines[1], ":ESERVELESS-GUARD-INPUT - [0:0]");
        assert_eq!(lines[2], ":ESERVELESS-GUARD-FWD - [0:0]");
        assert_eq!(lines[3], "-A ESERVELESS-GUARD-INPUT -m comment --comment esl-guard-0000000000000001");
        assert_eq!(lines.last(), Some(&"COMMIT"));
        // Exactly the -A rules, in order; no jump (those are inserted afterwards).
        let appended: Vec<String> = rules(&guard()).iter().filter(|a| a[1] == "-A").map(|a| a[1..].join(" ")).collect();
        assert_eq!(lines[3..lines.len() - 1].to_vec(), appended.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(!text.contains("-I ") && !text.contains(" -w"));
    }

    #[test]
    fn inspect_reads_one_listing_of_the_table() {
        let p = guard();
        let good = "-P INPUT ACCEPT\n-N DOCKER-USER\n-N ESERVELESS-GUARD-FWD\n-N ESERVELESS-GUARD-INPUT\n\
            -A INPUT -i docker_gwbridge -j ESERVELESS-GUARD-INPUT\n-A INPUT -i br-x -j ESERVELESS-INPUT\n\
            -A DOCKER-USER -i docker_gwbridge -j ESERVELESS-GUARD-FWD\n-A DOCKER-USER -j RETURN\n\
            -A ESERVELESS-GUARD-FWD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
            -A ESERVELESS-GUARD-FWD -o docker_gwbridge -j RETURN\n-A ESERVELESS-GUARD-FWD -d 169.254.0.0/16 -j DROP\n\
            -A ESERVELESS-GUARD-FWD -d 10.0.0.0/8 -j DROP\n\
            -A ESERVELESS-GUARD-INPUT -m comment --comment esl-guard-0000000000000001\n\
            -A ESERVELESS-GUARD-INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n-A ESERVELESS-GUARD-INPUT -j DROP\n";
        let ok = installed_in(&p, good);
        assert_eq!(ok, Installed { current: true, marker: Some("esl-guard-0000000000000001".into()) });
        // A flushed forward chain, a jump no longer first, no chains at all.
        let flushed: String = good.lines().filter(|l| !l.starts_with("-A ESERVELESS-GUARD-FWD")).map(|l| format!("{l}\n")).collect();
        assert!(!installed_in(&p, &flushed).current);
        let moved = good.replace(
            "-A INPUT -i docker_gwbridge -j ESERVELESS-GUARD-INPUT\n-A INPUT -i br-x -j ESERVELESS-INPUT\n",
            "-A INPUT -i br-x -j ESERVELESS-INPUT\n-A INPUT -i docker_gwbridge -j ESERVELESS-GUARD-INPUT\n",
        );
        assert_eq!(installed_in(&p, &moved), Installed { current: false, marker: ok.marker.clone() });
        assert_eq!(installed_in(&p, "-P INPUT ACCEPT\n-N DOCKER-USER\n"), Installed { current: false, marker: None });
    }

    #[test]
    fn node_guard_chains_never_touch_the_single_host_ones() {
        let p = FirewallPolicy { block_private: true, egress: false, dns_servers: vec!["10.0.0.2".into()], ..guard() };
        for r in all(&p) {
            assert!(!r.contains("ESERVELESS-INPUT") && !r.contains("ESERVELESS-FWD "), "{r}");
            assert!(!r.ends_with("ESERVELESS-FWD"), "{r}");
        }
        for name in [Chains::NODE_GUARD.input, Chains::NODE_GUARD.forward] {
            assert!(name.len() <= 28, "iptables limits chain names to 28 characters: {name}");
        }
        // The pool is dropped after the DNS exceptions and before the egress drop.
        let rs = all(&p);
        assert!(pos(&rs, "-w -A ESERVELESS-GUARD-FWD -d 10.0.0.2 -p tcp --dport 53 -j ACCEPT") < pos(&rs, "-w -A ESERVELESS-GUARD-FWD -d 10.0.0.0/8 -j DROP"));
        assert!(pos(&rs, "-w -A ESERVELESS-GUARD-FWD -d 10.0.0.0/8 -j DROP") < pos(&rs, "-w -A ESERVELESS-GUARD-FWD ! -o docker_gwbridge -j DROP"));
    }

    #[test]
    fn reads_a_marker_back_from_a_listing() {
        let listing = "-N ESERVELESS-GUARD-INPUT\n\
                       -A ESERVELESS-GUARD-INPUT -m comment --comment \"esl-guard-00ab\"\n\
                       -A ESERVELESS-GUARD-INPUT -j DROP\n";
        let rs = parse_rules(listing, "ESERVELESS-GUARD-INPUT");
        assert_eq!(rs.len(), 2);
        assert_eq!(comment_of(&rs[0]).as_deref(), Some("esl-guard-00ab"));
        assert_eq!(comment_of(&rs[1]), None);
    }

    #[test]
    fn parses_resolvers() {
        let conf = "# generated\nsearch lan\nnameserver 127.0.0.53\nnameserver 10.255.255.53\nnameserver ::1\n\
                    nameserver 2001:db8::1\n  nameserver 192.168.1.1 \noptions edns0\n";
        assert_eq!(parse_resolvers(conf), vec!["10.255.255.53", "192.168.1.1"]);
    }
}
