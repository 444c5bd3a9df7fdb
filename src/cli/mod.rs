//! The command line: `serve` runs the server; `backup` and `restore` work on a data directory
//! (see `backup.rs`); every other command is a client of the API.

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
    /// The server's URL [default: the saved login's, else http://127.0.0.1:8000]
    #[arg(long, env = "ESERVELESS_URL", global = true)]
    pub server: Option<String>,
    /// API token [default: the saved login's]
    #[arg(long, env = "ESERVELESS_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

const DEFAULT_SERVER: &str = "http://127.0.0.1:8000";

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a user and its first API token (admins only)
    Create {
        name: String,
        /// Make the user an admin (sees and changes every project, manages users)
        #[arg(long)]
        admin: bool,
    },
    /// List users and the projects they own (admins only)
    Ls,
    /// Remove a user and its tokens; it must own no projects (admins only)
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create an API token (for yourself, or with --user for another user as an admin)
    Create {
        name: String,
        #[arg(long)]
        user: Option<String>,
    },
    /// List your tokens (--all: everyone's, admins only)
    Ls {
        #[arg(long)]
        all: bool,
    },
    /// Revoke a token by id; it stops working at once
    Revoke { id: i64 },
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Set secrets: PROJECT KEY=VALUE... (VALUE `-` reads it from stdin); running instances restart with them
    Set {
        project: String,
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// List a project's secret names (never values)
    Ls { project: String },
    /// Remove a secret
    Rm { project: String, name: String },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a new invoke key for a project's `auth: private` functions; the old one stops working
    Rotate { project: String },
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
        /// The project's invoke key, for `auth: private` functions
        #[arg(long, env = "ESERVELESS_INVOKE_KEY", hide_env_values = true)]
        key: Option<String>,
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
    /// Check a server URL and token, and save them for the other commands
    Login {
        /// The token (default: read from stdin)
        #[arg(long = "with-token")]
        with_token: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show who the token belongs to
    Whoami {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Manage users (admins)
    Users {
        #[command(subcommand)]
        command: UsersCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Manage API tokens
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Manage a project's secrets (encrypted at rest, injected as environment variables)
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Manage a project's invoke key
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Write a consistent copy of the data directory (database, secrets key, server id) to FILE, while the server runs
    Backup {
        /// The tar file to write (mode 0600; it holds the secrets key)
        file: std::path::PathBuf,
        /// The server's data directory
        #[arg(long, env = "ESERVELESS_DATA_DIR", default_value = ".eserveless")]
        data_dir: std::path::PathBuf,
        /// Replace FILE if it exists
        #[arg(long)]
        force: bool,
    },
    /// Restore a backup into a new or empty data directory
    Restore {
        /// A file written by `eserveless backup`
        file: std::path::PathBuf,
        /// The data directory to create (must be empty or not exist)
        #[arg(long, env = "ESERVELESS_DATA_DIR", default_value = ".eserveless")]
        data_dir: std::path::PathBuf,
        /// Give the restored server a new server id, so it can run beside the original on the same Docker engine
        #[arg(long)]
        new_identity: bool,
    },
}

/// The saved login: `$XDG_CONFIG_HOME/eserveless/login.toml` (or `~/.config/...`), mode 0600.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct SavedLogin {
    server: Option<String>,
    token: Option<String>,
}

fn login_path() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| std::path::PathBuf::from(h).join(".config")))?;
    Some(base.join("eserveless").join("login.toml"))
}

fn saved_login() -> SavedLogin {
    login_path()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| toml::from_str(&t).ok())
        .unwrap_or_default()
}

struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

fn split_target(target: &str) -> Result<(&str, &str)> {
    target
        .split_once('/')
        .filter(|(p, f)| !p.is_empty() && !f.is_empty() && !f.contains('/'))
        .ok_or_else(|| anyhow!("expected PROJECT/FUNCTION, got `{target}`"))
}

impl Client {
    /// Flags and environment win over the saved login, which wins over the defaults.
    fn new(args: &ClientArgs) -> Result<Self> {
        let saved = saved_login();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(300)).build()?;
        let base = args.server.clone().or(saved.server).unwrap_or_else(|| DEFAULT_SERVER.to_string());
        let token = args.token.clone().or(saved.token).filter(|t| !t.trim().is_empty());
        Ok(Client { base: base.trim_end_matches('/').to_string(), token, http })
    }

    /// Calls the management API with the token (never sent to /invoke: functions must not see it).
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.trim());
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.with_context(|| format!("cannot reach the server at {}; is `eserveless serve` running?", self.base))?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 400 {
            let msg = value["error"]["message"].as_str().map(str::to_string).unwrap_or_else(|| value.to_string());
            if status == 401 && self.token.is_none() {
                bail!("{msg} (HTTP 401); log in with `eserveless login`, or set ESERVELESS_TOKEN");
            }
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
        Command::Backup { file, data_dir, force } => crate::infra::backup::run_backup(&data_dir, &file, force),
        Command::Restore { file, data_dir, new_identity } => crate::infra::backup::run_restore(&file, &data_dir, new_identity),
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
        Command::Invoke { target, path, method, data, headers, key, client } => {
            let (project, function) = split_target(&target)?;
            let c = Client::new(&client)?;
            let path = path.map(|p| if p.starts_with('/') { p } else { format!("/{p}") }).unwrap_or_default();
            let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                .map_err(|_| anyhow!("invalid method `{method}`"))?;
            let mut req = c.http.request(method, format!("{}/invoke/{project}/{function}{path}", c.base));
            if let Some(k) = &key {
                req = req.header(crate::dataplane::gateway::INVOKE_KEY_HEADER, k.trim());
            }
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
        Command::Login { with_token, client } => login(client, with_token).await,
        Command::Whoami { client } => {
            let c = Client::new(&client)?;
            let (_, v) = c.call(reqwest::Method::GET, "/api/whoami", None).await?;
            println!("{} at {}{}", s(&v["user"]), c.base, if v["admin"] == true { " (admin)" } else { "" });
            Ok(0)
        }
        Command::Users { command, client } => users(&Client::new(&client)?, command).await,
        Command::Tokens { command, client } => tokens(&Client::new(&client)?, command).await,
        Command::Secrets { command, client } => secrets(&Client::new(&client)?, command).await,
        Command::Keys { command: KeysCommand::Rotate { project }, client } => {
            let c = Client::new(&client)?;
            let (_, v) = c.call(reqwest::Method::POST, &format!("/api/projects/{project}/invoke-key"), None).await?;
            println!("new invoke key of {project} (the old one no longer works; shown once):\n{}", s(&v["invoke_key"]));
            println!("send it as `X-Eserveless-Key: <key>` to the project's `auth: private` functions");
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
    if let Some(key) = v["invoke_key"].as_str() {
        println!("{project}: invoke key for its `auth: private` functions (shown once; `eserveless keys rotate {project}` makes a new one):\n  {key}");
    }
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

async fn login(args: ClientArgs, with_token: Option<String>) -> Result<i32> {
    let token = match with_token.or(args.token.clone()) {
        Some(t) => t,
        None => {
            if std::io::stdin().is_terminal() {
                eprint!("API token: ");
            }
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("cannot read the token from stdin")?;
            line
        }
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        bail!("no token given; pass --with-token, or pipe it in (the first start wrote the admin token to <data dir>/admin-token)");
    }
    let args = ClientArgs { server: args.server, token: Some(token.clone()) };
    let c = Client::new(&args)?;
    let (_, v) = c.call(reqwest::Method::GET, "/api/whoami", None).await?;
    let path = login_path().ok_or_else(|| anyhow!("neither XDG_CONFIG_HOME nor HOME is set; cannot save the login"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = toml::to_string(&SavedLogin { server: Some(c.base.clone()), token: Some(token) })?;
    crate::engine::auth::write_private(&path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    println!("logged in to {} as {}; saved to {}", c.base, s(&v["user"]), path.display());
    Ok(0)
}

async fn users(c: &Client, command: UsersCommand) -> Result<i32> {
    match command {
        UsersCommand::Create { name, admin } => {
            let (_, v) = c.call(reqwest::Method::POST, "/api/users", Some(serde_json::json!({ "name": name, "admin": admin }))).await?;
            println!("created user {}{}; its API token (shown once):\n{}", s(&v["name"]), if admin { " (admin)" } else { "" }, s(&v["token"]["token"]));
        }
        UsersCommand::Ls => {
            let (_, v) = c.call(reqwest::Method::GET, "/api/users", None).await?;
            println!("{:<24} {:<6} {:<27} PROJECTS", "USER", "ADMIN", "CREATED");
            for u in v["users"].as_array().into_iter().flatten() {
                let projects: Vec<String> = u["projects"].as_array().into_iter().flatten().map(s).collect();
                println!("{:<24} {:<6} {:<27} {}", s(&u["name"]), s(&u["admin"]), s(&u["created_at"]), projects.join(","));
            }
        }
        UsersCommand::Rm { name } => {
            c.call(reqwest::Method::DELETE, &format!("/api/users/{name}"), None).await?;
            println!("removed user {name} and its tokens");
        }
    }
    Ok(0)
}

async fn tokens(c: &Client, command: TokensCommand) -> Result<i32> {
    match command {
        TokensCommand::Create { name, user } => {
            let (_, v) = c.call(reqwest::Method::POST, "/api/tokens", Some(serde_json::json!({ "name": name, "user": user }))).await?;
            println!("token {} created (shown once):\n{}", s(&v["id"]), s(&v["token"]));
        }
        TokensCommand::Ls { all } => {
            let (_, v) = c.call(reqwest::Method::GET, if all { "/api/tokens?all=true" } else { "/api/tokens" }, None).await?;
            println!("{:<6} {:<16} {:<20} {:<27} {:<27} REVOKED", "ID", "USER", "NAME", "CREATED", "LAST USED");
            for t in v["tokens"].as_array().into_iter().flatten() {
                println!(
                    "{:<6} {:<16} {:<20} {:<27} {:<27} {}",
                    s(&t["id"]),
                    s(&t["user"]),
                    s(&t["name"]),
                    s(&t["created_at"]),
                    s(&t["last_used_at"]),
                    s(&t["revoked_at"])
                );
            }
        }
        TokensCommand::Revoke { id } => {
            c.call(reqwest::Method::DELETE, &format!("/api/tokens/{id}"), None).await?;
            println!("revoked token {id}");
        }
    }
    Ok(0)
}

async fn secrets(c: &Client, command: SecretsCommand) -> Result<i32> {
    match command {
        SecretsCommand::Set { project, pairs } => {
            let mut set = serde_json::Map::new();
            for pair in pairs {
                let (k, v) = pair.split_once('=').ok_or_else(|| anyhow!("`{pair}` is not KEY=VALUE (use KEY=- to read the value from stdin)"))?;
                let value = if v == "-" {
                    let mut buf = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut buf).context("cannot read the value from stdin")?;
                    buf.trim_end_matches('\n').to_string()
                } else {
                    v.to_string()
                };
                set.insert(k.to_string(), Value::String(value));
            }
            let names: Vec<String> = set.keys().cloned().collect();
            c.call(reqwest::Method::POST, &format!("/api/projects/{project}/secrets"), Some(serde_json::json!({ "set": set }))).await?;
            println!("set {} on {project}; running instances were restarted with them", names.join(", "));
        }
        SecretsCommand::Ls { project } => {
            let (_, v) = c.call(reqwest::Method::GET, &format!("/api/projects/{project}/secrets"), None).await?;
            println!("{:<40} UPDATED", "SECRET");
            for x in v["secrets"].as_array().into_iter().flatten() {
                println!("{:<40} {}", s(&x["name"]), s(&x["updated_at"]));
            }
        }
        SecretsCommand::Rm { project, name } => {
            c.call(reqwest::Method::DELETE, &format!("/api/projects/{project}/secrets/{name}"), None).await?;
            println!("removed {name} from {project}; running instances were restarted without it");
        }
    }
    Ok(0)
}
