//! The command line: `serve` runs the server; every other command is a client of the API.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::config::ServeArgs;

#[derive(Debug, Parser)]
#[command(name = "eserveless", version, about = "Self-hosted serverless functions on your own Docker engine")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The server's URL
    #[arg(long, env = "ESERVELESS_URL", default_value = "http://127.0.0.1:8000", global = true)]
    pub server: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server
    Serve(ServeArgs),
    /// Deploy a repository (URL, owner/repo, or a local path when the server allows it)
    Deploy {
        repository: String,
        /// Branch, tag or commit
        #[arg(long = "ref")]
        git_ref: Option<String>,
        /// Project name (default: derived from the URL)
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List projects
    Ls {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a project's functions and deployments
    Show {
        project: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a project: its containers, images, schedules and records
    Rm {
        project: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Invoke an http function: PROJECT/FUNCTION [PATH]
    Invoke {
        target: String,
        path: Option<String>,
        #[arg(short = 'X', long = "request", default_value = "GET")]
        method: String,
        #[arg(short = 'd', long = "data")]
        data: Option<String>,
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Output of a function's containers and cron runs: PROJECT/FUNCTION
    Logs {
        target: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cron run history: PROJECT/FUNCTION
    Runs {
        target: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
}

struct Client {
    base: String,
    http: reqwest::Client,
}

fn split_target(target: &str) -> Result<(&str, &str)> {
    target
        .split_once('/')
        .filter(|(p, f)| !p.is_empty() && !f.is_empty() && !f.contains('/'))
        .ok_or_else(|| anyhow!("expected PROJECT/FUNCTION, got `{target}`"))
}

impl Client {
    fn new(args: &ClientArgs) -> Result<Self> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(300)).build()?;
        Ok(Client { base: args.server.trim_end_matches('/').to_string(), http })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.with_context(|| format!("cannot reach the server at {}; is `eserveless serve` running?", self.base))?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 400 {
            let msg = value["error"]["message"].as_str().map(str::to_string).unwrap_or_else(|| value.to_string());
            bail!("{msg} (HTTP {status})");
        }
        Ok((status, value))
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Runs a client command; returns the process exit code.
pub async fn run_client(cmd: Command) -> Result<i32> {
    match cmd {
        Command::Serve(_) => unreachable!("serve is handled by main"),
        Command::Deploy { repository, git_ref, name, client } => deploy(&Client::new(&client)?, repository, git_ref, name).await,
        Command::Ls { client } => {
            let (_, v) = Client::new(&client)?.call(reqwest::Method::GET, "/api/projects", None).await?;
            println!("{:<32} {:<14} {:<10} REPOSITORY", "PROJECT", "LIVE COMMIT", "LATEST");
            for p in v["projects"].as_array().into_iter().flatten() {
                let commit = p["live_commit"].as_str().map(|c| &c[..c.len().min(12)]).unwrap_or("-");
                println!("{:<32} {:<14} {:<10} {}", s(&p["name"]), commit, s(&p["latest_deployment"]["status"]), s(&p["repository"]));
            }
            Ok(0)
        }
        Command::Show { project, client } => {
            let c = Client::new(&client)?;
            let (_, v) = c.call(reqwest::Method::GET, &format!("/api/projects/{project}"), None).await?;
            println!("project     {}", s(&v["name"]));
            println!("repository  {}", s(&v["repository"]));
            println!("live        {} (deployment {})", s(&v["live"]["commit"]), s(&v["live"]["deployment"]));
            println!("latest      deployment {} {}", s(&v["latest_deployment"]["id"]), s(&v["latest_deployment"]["status"]));
            if let Some(e) = v["latest_deployment"]["error"].as_str() {
                println!("error       {e}");
            }
            println!();
            println!("{:<24} {:<6} {:<18} INVOKE", "FUNCTION", "TYPE", "SCHEDULE");
            for f in v["functions"].as_array().into_iter().flatten() {
                let invoke = f["invoke_path"].as_str().map(|p| format!("{}{p}", c.base)).unwrap_or_else(|| "-".into());
                println!("{:<24} {:<6} {:<18} {}", s(&f["name"]), s(&f["type"]), s(&f["schedule"]), invoke);
            }
            Ok(0)
        }
        Command::Rm { project, client } => {
            let (_, v) = Client::new(&client)?.call(reqwest::Method::DELETE, &format!("/api/projects/{project}"), None).await?;
            println!(
                "removed {} ({} containers, {} images)",
                s(&v["deleted"]),
                s(&v["containers_removed"]),
                s(&v["images_removed"])
            );
            Ok(0)
        }
        Command::Invoke { target, path, method, data, headers, client } => {
            let (project, function) = split_target(&target)?;
            let c = Client::new(&client)?;
            let path = path.map(|p| if p.starts_with('/') { p } else { format!("/{p}") }).unwrap_or_default();
            let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                .map_err(|_| anyhow!("invalid method `{method}`"))?;
            let mut req = c.http.request(method, format!("{}/invoke/{project}/{function}{path}", c.base));
            for h in &headers {
                let (k, v) = h.split_once(':').ok_or_else(|| anyhow!("header `{h}` must look like `Name: value`"))?;
                req = req.header(k.trim(), v.trim());
            }
            if let Some(d) = data {
                req = req.body(d);
            }
            let resp = req.send().await.with_context(|| format!("cannot reach the server at {}", c.base))?;
            let status = resp.status();
            let body = resp.bytes().await?;
            use std::io::Write;
            std::io::stdout().write_all(&body)?;
            if !body.ends_with(b"\n") && std::io::stdout().is_terminal() {
                println!();
            }
            if !status.is_success() {
                eprintln!("HTTP {status}");
                return Ok(1);
            }
            Ok(0)
        }
        Command::Logs { target, client } => {
            let (project, function) = split_target(&target)?;
            let c = Client::new(&client)?;
            let (_, v) = c.call(reqwest::Method::GET, &format!("/api/projects/{project}/functions/{function}/logs"), None).await?;
            for e in v["entries"].as_array().into_iter().flatten() {
                let id = e["container"].as_str().map(|c| c[..c.len().min(12)].to_string()).unwrap_or_else(|| format!("run {}", s(&e["run"])));
                println!("==> {} {} {}{}", s(&e["source"]), id, s(&e["at"]), if e["running"].as_bool() == Some(true) { " (running)" } else { "" });
                print!("{}", e["output"].as_str().unwrap_or(""));
            }
            Ok(0)
        }
        Command::Runs { target, limit, client } => {
            let (project, function) = split_target(&target)?;
            let c = Client::new(&client)?;
            let (_, v) = c
                .call(reqwest::Method::GET, &format!("/api/projects/{project}/functions/{function}/runs?limit={limit}"), None)
                .await?;
            println!("{:<8} {:<10} {:<27} {:>9}  OUTPUT", "RUN", "STATUS", "STARTED", "DURATION");
            for r in v["runs"].as_array().into_iter().flatten() {
                let out = r["output"].as_str().unwrap_or("").lines().last().unwrap_or("").to_string();
                println!(
                    "{:<8} {:<10} {:<27} {:>7}ms  {}",
                    s(&r["id"]),
                    s(&r["status"]),
                    s(&r["started_at"]),
                    s(&r["duration_ms"]),
                    out
                );
            }
            Ok(0)
        }
    }
}

async fn deploy(c: &Client, repository: String, git_ref: Option<String>, name: Option<String>) -> Result<i32> {
    let mut body = serde_json::json!({ "repository": repository });
    if let Some(r) = git_ref {
        body["ref"] = Value::String(r);
    }
    if let Some(n) = name {
        body["name"] = Value::String(n);
    }
    let (_, v) = c.call(reqwest::Method::POST, "/api/projects", Some(body)).await?;
    let project = s(&v["project"]);
    let id = s(&v["deployment"]);
    let commit = s(&v["commit"]);
    if v["status"] == "unchanged" {
        println!("{project}: commit {} is already live (deployment {id}); nothing to build", &commit[..commit.len().min(12)]);
        print_invoke_urls(c, &project).await?;
        return Ok(0);
    }
    println!("{project}: deployment {id} of commit {} queued", &commit[..commit.len().min(12)]);
    let tty = std::io::stderr().is_terminal();
    let spinner = tty.then(|| {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    });
    let mut seen: std::collections::HashMap<String, String> = Default::default();
    let mut last_status = String::new();
    let started = std::time::Instant::now();
    let mut slow_note = false;
    let final_v = loop {
        let (_, d) = c.call(reqwest::Method::GET, &format!("/api/projects/{project}/deployments/{id}"), None).await?;
        let status = s(&d["status"]);
        for f in d["functions"].as_array().into_iter().flatten() {
            let (n, st) = (s(&f["name"]), s(&f["build_state"]));
            if seen.get(&n) != Some(&st) {
                let line = format!("  {n:<24} {st}");
                match &spinner {
                    Some(pb) => pb.println(line),
                    None => println!("{line}"),
                }
                seen.insert(n, st);
            }
        }
        if status != last_status {
            let line = format!("deployment {id}: {status}");
            match &spinner {
                Some(pb) => pb.println(line),
                None => println!("{line}"),
            }
            last_status = status.clone();
        }
        if let Some(pb) = &spinner {
            pb.set_message(format!("{status} ({}s)", started.elapsed().as_secs()));
        } else if !slow_note && started.elapsed() > Duration::from_secs(60) {
            println!("this is taking a while (builds can take minutes the first time)…");
            slow_note = true;
        }
        if status == "ready" || status == "failed" {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if let Some(pb) = spinner {
        pb.finish_and_clear();
    }
    for w in final_v["warnings"].as_array().into_iter().flatten() {
        println!("warning: {}", s(w));
    }
    if final_v["status"] == "failed" {
        eprintln!("deployment {id} failed: {}", s(&final_v["error"]));
        for f in final_v["functions"].as_array().into_iter().flatten() {
            if f["build_state"] == "failed" {
                let log = f["build_log"].as_str().unwrap_or("");
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                eprintln!("--- build log of {} (last lines) ---", s(&f["name"]));
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        return Ok(1);
    }
    println!("deployment {id} is live");
    print_invoke_urls(c, &project).await?;
    Ok(0)
}

async fn print_invoke_urls(c: &Client, project: &str) -> Result<()> {
    let (_, v) = c.call(reqwest::Method::GET, &format!("/api/projects/{project}"), None).await?;
    for f in v["functions"].as_array().into_iter().flatten() {
        match f["invoke_path"].as_str() {
            Some(p) => println!("  {:<24} {}{}", s(&f["name"]), c.base, p),
            None => println!("  {:<24} cron {}", s(&f["name"]), s(&f["schedule"])),
        }
    }
    Ok(())
}
