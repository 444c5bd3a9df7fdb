//! The command line: `serve` runs the server; `backup` and `restore` work on a data directory
//! (see `infra/backup.rs`); `node-guard` (hidden) is swarm mode's per-node firewall; every
//! other command is a client of the API, one file per command, reading the API's typed
//! answers (`api::types`) through [`client::Client`].

mod client;
mod cron;
mod deploy;
mod history;
mod invoke;
mod login;
mod logs;
pub mod node_guard;
pub mod node_prune;
mod output;
mod pack;
mod projects;
mod scaffold;
mod secrets;
mod users;

use anyhow::Result;
use clap::{Parser, Subcommand};

pub use client::ClientArgs;

use crate::config::ServeArgs;

#[derive(Debug, Parser)]
#[command(name = "eserveless", version, about = "Self-hosted serverless functions on your own Docker engine")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// `serve`'s settings make that variant large; the enum is built once per process.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server
    Serve(ServeArgs),
    Deploy(deploy::Deploy),
    Ls(projects::Ls),
    Show(projects::Show),
    Rm(projects::Rm),
    Invoke(invoke::Invoke),
    Logs(logs::Logs),
    Runs(logs::Runs),
    Deployments(history::Deployments),
    Rollback(history::Rollback),
    Cron(cron::Cron),
    Login(login::Login),
    Whoami(login::Whoami),
    Users(users::Users),
    Tokens(users::Tokens),
    Secrets(secrets::Secrets),
    Keys(projects::Keys),
    New(scaffold::New),
    Validate(scaffold::Validate),
    Completions(scaffold::Completions),
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
    /// Swarm mode's per-node firewall (run by the server as a global service)
    #[command(hide = true)]
    NodeGuard(node_guard::NodeGuard),
    /// Removes a removed project's images from one swarm node (run by the server as a global job)
    #[command(hide = true)]
    NodePrune(node_prune::NodePrune),
}

/// Runs a client command; returns the process exit code.
pub async fn run_client(cmd: Command) -> Result<i32> {
    match cmd {
        Command::Serve(_) => unreachable!("serve is handled by main"),
        Command::Backup { file, data_dir, force } => crate::infra::backup::run_backup(&data_dir, &file, force),
        Command::Restore { file, data_dir, new_identity } => crate::infra::backup::run_restore(&file, &data_dir, new_identity),
        Command::Deploy(c) => c.run().await,
        Command::Ls(c) => c.run().await,
        Command::Show(c) => c.run().await,
        Command::Rm(c) => c.run().await,
        Command::Invoke(c) => c.run().await,
        Command::Logs(c) => c.run().await,
        Command::Runs(c) => c.run().await,
        Command::Deployments(c) => c.run().await,
        Command::Rollback(c) => c.run().await,
        Command::Cron(c) => c.run().await,
        Command::Login(c) => c.run().await,
        Command::Whoami(c) => c.run().await,
        Command::Users(c) => c.run().await,
        Command::Tokens(c) => c.run().await,
        Command::Secrets(c) => c.run().await,
        Command::Keys(c) => c.run().await,
        Command::New(c) => c.run(),
        Command::Validate(c) => c.run(),
        Command::Completions(c) => c.run(),
        Command::NodeGuard(c) => c.run().await,
        Command::NodePrune(c) => c.run().await,
    }
}
