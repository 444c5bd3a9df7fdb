//! Drives a real swarm through `SwarmDriver`, step by step, and prints what each step saw:
//! the manager check, the nodes, an instance (its task's node and overlay address), a run
//! (exit code and logs, reaching the instance across the overlay), an instance no node can
//! take (NoCapacity, timed), pause refused, a build on the manager, events, and clean-up.
//!
//! Against the lab (`scripts/swarm-lab up`), from the host, through the manager's own socket
//! (no TCP port is opened; root reaches it through the manager's mount namespace):
//!
//! ```sh
//! DOCKER_HOST=unix:///proc/$(docker inspect -f '{{.State.Pid}}' esl-lab-1)/root/run/docker.sock \
//!     cargo run --example swarm_probe
//! ```
//!
//! The functions' images are not on the workers yet (no registry in this step): the lab loads
//! only `eserveless/base:bookworm` into every node, so the probe runs that image. A swarm
//! service takes no command from the driver's `ContainerSpec` (the image's own command runs,
//! here `bash`), so the probe gives bash its program through `BASH_ENV`, which non-interactive
//! bash expands (command substitution included) and sources before reading its empty stdin.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use eserveless::infra::driver::swarm::SwarmDriver;
use eserveless::infra::driver::{labels, BuildRequest, ContainerSpec, Driver, DriverError, Env, Limits};
use futures_util::StreamExt;

const OWNER: &str = "5ab0c0ffee000001";
const PROJECT: &str = "probe";
const BUILD_NETWORK: &str = "esl-probe-build";

/// Runs `script` (bash) as the container's program, through BASH_ENV.
fn program(script: &str, mut env: Vec<String>) -> Env {
    env.push(format!("PROBE_SCRIPT={script}"));
    env.push(r#"BASH_ENV=$(printf '%s\n' "$PROBE_SCRIPT" >/tmp/probe.sh; echo /tmp/probe.sh)"#.to_string());
    Env(env)
}

fn spec(name: &str, function: &str, role: &str, image: &str, env: Env, limits: Limits) -> ContainerSpec {
    ContainerSpec {
        name: name.to_string(),
        image: image.to_string(),
        env,
        labels: labels::for_container(PROJECT, function, 1, role),
        limits,
    }
}

const ECHO: &str = r#"exec perl -MIO::Socket::INET -e 'my $s = IO::Socket::INET->new(LocalPort => 8080, Listen => 16, ReuseAddr => 1) or die "$!"; while (my $c = $s->accept) { print $c "hello from $ENV{HOSTNAME}\n"; close $c }'"#;

const JOB: &str = r#"echo "run on container $(hostname) as uid:gid $(id -u):$(id -g)"
grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status
grep ' /tmp ' /proc/self/mounts
echo "nofile $(ulimit -n)"
touch /probe-write 2>&1 || true
echo "memory.limit_in_bytes $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max)"
echo "pids.max $(cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max)"
echo "cpu quota/period $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null)/$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us 2>/dev/null)"
if exec 3<>"/dev/tcp/$INSTANCE_IP/8080"; then echo "instance at $INSTANCE_IP says: $(cat <&3)"; fi
echo "this line goes to stderr" >&2
exit 3"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let image = std::env::var("SWARM_PROBE_IMAGE").unwrap_or_else(|_| "eserveless/base:bookworm".into());
    let t = Instant::now();
    let driver = Arc::new(SwarmDriver::connect(OWNER, BUILD_NETWORK, "eserveless/base:bookworm").await.context("connect")?);
    println!("connect: a manager, {} ms", t.elapsed().as_millis());
    let mut created = Vec::new();
    let result = steps(&driver, &image, &mut created).await;
    if let Err(e) = &result {
        println!("\nFAILED: {e:#}");
    }
    println!("\n== clean-up");
    for id in &created {
        driver.remove(id).await.with_context(|| format!("remove {id}"))?;
    }
    for _ in 0..50 {
        if driver.list_managed().await?.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("services removed: {} (a missing one again: {:?})", created.len(), driver.remove("no-such-service").await);
    println!("managed after removal: {}", driver.list_managed().await?.len());
    // The overlay goes once its tasks are gone on every node.
    let mut removed = Err(anyhow::anyhow!("not tried"));
    for _ in 0..40 {
        removed = driver.remove_project_network(PROJECT).await.map_err(anyhow::Error::from);
        if removed.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("project overlay removed: {removed:?}");
    driver.docker().remove_network(BUILD_NETWORK).await.context("remove the build network")?;
    result
}

async fn steps(driver: &Arc<SwarmDriver>, image: &str, created: &mut Vec<String>) -> anyhow::Result<()> {
    println!("\n== nodes");
    let nodes = driver.nodes().await?;
    for n in &nodes {
        println!("{} ready={} memory={} MiB cpus={}", n.hostname, n.ready, n.memory_bytes >> 20, n.nano_cpus / 1_000_000_000);
    }

    let events = Arc::new(Mutex::new(Vec::new()));
    let t_events = Instant::now();
    let collector = {
        let events = events.clone();
        let mut stream = driver.events();
        tokio::spawn(async move {
            while let Some(ev) = stream.next().await {
                let line = match ev {
                    Ok(ev) => format!("{:>6} ms {} {}", t_events.elapsed().as_millis(), ev.action, ev.id),
                    Err(e) => format!("{:>6} ms error {e}", t_events.elapsed().as_millis()),
                };
                events.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        })
    };

    println!("\n== instance ({image})");
    let t = Instant::now();
    let started = driver
        .run(spec("esl-probe-echo-1-0", "echo", "http", image, program(ECHO, vec!["PORT=8080".into()]), Limits::default()))
        .await
        .context("run an instance")?;
    created.push(started.id.clone());
    println!("run: service {} running at {} after {} ms", started.id, started.ip, t.elapsed().as_millis());
    if let Some(p) = driver.placement(&started.id).await? {
        println!("placement: task {} on node {} ({}; {}) address {:?}", p.task_id, p.node, p.state, p.message, p.address);
    }
    for c in driver.list_managed().await? {
        println!(
            "list_managed: {} running={} stopped={} paused={} ip={:?} role={:?}",
            c.id,
            c.running,
            c.stopped,
            c.paused,
            c.ip,
            c.labels.get(labels::ROLE)
        );
    }
    println!("pause: {}", driver.pause(&started.id).await.map_or_else(|e| e.to_string(), |()| "paused?!".into()));

    let instance_node = driver.placement(&started.id).await?.map(|p| p.node).unwrap_or_default();
    println!("\n== run (a replicated job); again until one runs on a node other than {instance_node}");
    let mut job = String::new();
    for attempt in 1..=4 {
        let t = Instant::now();
        job = driver
            .start_job(spec(
                &format!("esl-probe-tick-run{attempt}"),
                "tick",
                "cron",
                image,
                program(JOB, vec![format!("INSTANCE_IP={}", started.ip)]),
                Limits::default(),
            ))
            .await
            .context("start a run")?;
        created.push(job.clone());
        println!("start_job: service {job} placed after {} ms", t.elapsed().as_millis());
        let node = driver.placement(&job).await?.map(|p| (p.node, p.state)).unwrap_or_default();
        println!("placement: node {} ({})", node.0, node.1);
        let code = driver.wait(&job).await.context("wait")?;
        println!("wait: exit code {code} after {} ms", t.elapsed().as_millis());
        let logs = driver.logs(&job, 64 * 1024).await.context("logs")?;
        if attempt == 1 || node.0 != instance_node {
            println!("logs:\n{}", logs.trim_end());
        } else {
            println!("logs: {:?}", logs.lines().find(|l| l.starts_with("instance at")));
        }
        if node.0 != instance_node {
            break;
        }
    }
    let short = driver.logs(&job, 64).await?;
    println!("logs capped at 64 bytes:\n{}", short.trim_end());

    println!("\n== more memory than any node has");
    let most = nodes.iter().map(|n| n.memory_bytes).max().unwrap_or(0);
    let huge = || Limits { memory_bytes: most.saturating_mul(2), ..Limits::default() };
    let t = Instant::now();
    match driver.run(spec("esl-probe-huge-1-0", "huge", "http", image, program(ECHO, vec![]), huge())).await {
        Err(e @ DriverError::NoCapacity(_)) => println!("run: NoCapacity after {} ms: {e}", t.elapsed().as_millis()),
        Err(e) => anyhow::bail!("expected NoCapacity, got: {e}"),
        Ok(s) => {
            created.push(s.id.clone());
            anyhow::bail!("an instance of {} MiB started at {}", most.saturating_mul(2) >> 20, s.ip)
        }
    }
    let t = Instant::now();
    match driver.start_job(spec("esl-probe-huge-run1", "huge", "cron", image, program("exit 0", vec![]), huge())).await {
        Err(e @ DriverError::NoCapacity(_)) => println!("start_job: NoCapacity after {} ms: {e}", t.elapsed().as_millis()),
        Err(e) => anyhow::bail!("expected NoCapacity, got: {e}"),
        Ok(id) => {
            created.push(id);
            anyhow::bail!("a run larger than any node was placed")
        }
    }
    let left = driver.list_managed().await?.into_iter().filter(|c| c.labels.get(labels::FUNCTION).is_some_and(|f| f == "huge")).count();
    println!("services left by the refusals: {left}");

    println!("\n== reservations add up: instances of 45% of a node's memory, until one does not fit");
    let share = Limits { memory_bytes: most / 100 * 45, ..Limits::default() };
    let mut fill = Vec::new();
    for i in 0..=2 * nodes.len() {
        let t = Instant::now();
        match driver.run(spec(&format!("esl-probe-fill-1-{i}"), "fill", "http", image, program(ECHO, vec![]), share.clone())).await {
            Ok(s) => {
                created.push(s.id.clone());
                let node = driver.placement(&s.id).await?.map(|p| p.node).unwrap_or_default();
                println!("fill {i}: on {node} at {} after {} ms", s.ip, t.elapsed().as_millis());
                fill.push(s.id);
            }
            Err(e @ DriverError::NoCapacity(_)) => {
                println!("fill {i}: NoCapacity after {} ms: {e}", t.elapsed().as_millis());
                break;
            }
            Err(e) => anyhow::bail!("fill {i}: {e}"),
        }
    }
    for id in fill {
        driver.remove(&id).await?;
    }

    println!("\n== an image only the manager has (eserveless/node:bookworm)");
    let t = Instant::now();
    match driver
        .run(spec("esl-probe-node-1-0", "nodeimg", "http", "eserveless/node:bookworm", program(ECHO, vec![]), Limits::default()))
        .await
    {
        Ok(s) => {
            created.push(s.id.clone());
            let node = driver.placement(&s.id).await?.map(|p| p.node).unwrap_or_default();
            println!("run: running on {node} after {} ms (the manager holds the image)", t.elapsed().as_millis());
        }
        Err(e) => println!("run: failed after {} ms: {e}", t.elapsed().as_millis()),
    }

    println!("\n== build on the manager");
    let mut tar = tar::Builder::new(Vec::new());
    let dockerfile = b"FROM eserveless/base:bookworm\nRUN echo built on $(hostname) > /built\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "Dockerfile", &dockerfile[..])?;
    let context_tar = tar.into_inner()?;
    let tag = "esl-probe/built:1";
    let t = Instant::now();
    let log = driver
        .build_image(BuildRequest {
            context_tar,
            dockerfile: "Dockerfile".into(),
            tag: tag.into(),
            labels: HashMap::from([(labels::MANAGED.to_string(), "true".to_string())]),
            timeout: Duration::from_secs(120),
            target: None,
            publish: true,
            on_line: None,
        })
        .await
        .context("build")?;
    println!("build: {} ms, {} log lines, last: {:?}", t.elapsed().as_millis(), log.lines().count(), log.lines().last());
    println!("image_exists({tag}): {}", driver.image_exists(tag).await?);
    println!("remove_image({tag}): {}", driver.remove_image(tag).await?);

    println!("\n== events (instance removed, then 2 s)");
    let removed_at = t_events.elapsed().as_millis();
    driver.remove(&started.id).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    collector.abort();
    for line in events.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        println!("event: {line}");
    }
    println!("(instance {} removed at {removed_at} ms; the runs ended earlier)", started.id);
    Ok(())
}
