//! Lab probe for issue 12 (docs/scale-out-notes-netns.md): connects from this process, a host
//! process on the manager node, to a TCP echo server inside another network namespace (an
//! overlay's "attach" container), with the server's own code in src/infra/netns.rs.
//!
//! ```text
//! netns_probe once  NS ADDR               one line "ping" through NS's connector, prints the answer
//! netns_probe bench NS ADDR [PLAIN] [N]   N connects (and requests) three ways, medians in ms:
//!                                          connector (a thread living in NS), connect_in (a thread
//!                                          per connect) and, with PLAIN (not "-"), a plain connect
//!                                          from this process's own namespace to PLAIN
//! netns_probe loop  NS ADDR SECONDS       one connect + request every 0.5 s through one connector,
//!                                          printing each outcome (the namespace replaced meanwhile)
//! ```
//!
//! The echo server answers each line with the line (the lab runs one in perl).

#![allow(clippy::print_stdout)] // a command-line probe: its output is the point

#[path = "../src/infra/netns.rs"]
#[allow(dead_code)]
mod netns;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use netns::{connect_in, Netns, NetnsConnector};

const TIMEOUT: Duration = Duration::from_secs(5);
/// Requests per connection: the first shows a new path's cost (ARP, conntrack, VXLAN FDB), the
/// rest the steady cost of a request on a kept-alive connection.
const REQUESTS: usize = 5;

/// Sends "ping" and waits for it to come back; returns the round trip.
async fn ping(s: &mut BufReader<TcpStream>) -> Result<Duration> {
    let t0 = Instant::now();
    s.get_mut().write_all(b"ping\n").await?;
    let mut line = String::new();
    tokio::time::timeout(TIMEOUT, s.read_line(&mut line)).await.context("answer timed out")??;
    if line != "ping\n" {
        bail!("unexpected answer {line:?}");
    }
    Ok(t0.elapsed())
}

#[derive(Default)]
struct Samples {
    connect: Vec<Duration>,
    first: Vec<Duration>,
    next: Vec<Duration>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &mut [Duration]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort();
    let p90 = v[(v.len() * 9 / 10).min(v.len() - 1)];
    format!("{:.3} (p90 {:.3})", ms(v[v.len() / 2]), ms(p90))
}

async fn sample<F, Fut>(out: &mut Samples, connect: F) -> Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<TcpStream>>,
{
    let t0 = Instant::now();
    let s = tokio::time::timeout(TIMEOUT, connect()).await.context("connect timed out")??;
    out.connect.push(t0.elapsed());
    s.set_nodelay(true)?;
    let mut s = BufReader::new(s);
    out.first.push(ping(&mut s).await?);
    for _ in 1..REQUESTS {
        out.next.push(ping(&mut s).await?);
    }
    Ok(())
}

fn report(name: &str, s: &mut Samples) {
    println!(
        "{name:<11} n={:<4} connect {}  first request {}  next requests {}",
        s.connect.len(),
        median(&mut s.connect),
        median(&mut s.first),
        median(&mut s.next)
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    let (Some(mode), Some(ns), Some(addr)) = (arg(0), arg(1), arg(2)) else {
        bail!("usage: netns_probe once|bench NS ADDR [PLAIN|-] [N]");
    };
    let ns = Netns::open(ns)?;
    let addr: SocketAddr = addr.parse().context("ADDR")?;
    let connector = NetnsConnector::spawn(&ns).await?;
    match mode {
        "once" => {
            let t0 = Instant::now();
            let s = tokio::time::timeout(TIMEOUT, connector.connect(addr)).await.context("connect timed out")??;
            let connected = t0.elapsed();
            let mut s = BufReader::new(s);
            let rtt = ping(&mut s).await?;
            println!("answer from {addr} via {}: ping (connect {:.3} ms, request {:.3} ms)", ns.path().display(), ms(connected), ms(rtt));
        }
        "bench" => {
            let plain: Option<SocketAddr> = match arg(3) {
                None | Some("-") => None,
                Some(p) => Some(p.parse().context("PLAIN")?),
            };
            let n: usize = arg(4).map_or(Ok(200), str::parse).context("N")?;
            let (mut a, mut b, mut c) = (Samples::default(), Samples::default(), Samples::default());
            // Interleaved, so that the load of the machine (shared with others) weighs on all alike.
            for _ in 0..n {
                sample(&mut a, || connector.connect(addr)).await?;
                sample(&mut b, || connect_in(&ns, addr)).await?;
                if let Some(p) = plain {
                    sample(&mut c, || TcpStream::connect(p)).await?;
                }
            }
            println!("medians in ms over {n} connections, {REQUESTS} requests each, to {addr} via {}", ns.path().display());
            report("connector", &mut a);
            report("connect_in", &mut b);
            if let Some(p) = plain {
                report(&format!("plain {p}"), &mut c);
            }
        }
        "loop" => {
            let secs: u64 = arg(3).map_or(Ok(10), str::parse).context("SECONDS")?;
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(secs) {
                let outcome = match tokio::time::timeout(Duration::from_secs(1), connector.connect(addr)).await {
                    Ok(Ok(s)) => ping(&mut BufReader::new(s)).await.map(|_| "ping".to_string()).unwrap_or_else(|e| format!("{e:#}")),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "connect timed out".into(),
                };
                println!("{:6.1} s {outcome}", t0.elapsed().as_secs_f64());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        m => bail!("unknown mode {m}"),
    }
    Ok(())
}
