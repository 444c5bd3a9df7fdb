//! eserveless: self-hosted serverless functions on a Docker engine, in one binary.
//!
//! The folders follow the data path (see `docs/architecture.md`):
//! - `api/`: the management API: parses requests, calls the engine, formats answers;
//! - `engine/`: deployments from repository to live revision: source, manifest, build, activation;
//! - `dataplane/`: what serves traffic and runs schedules: gateway, upstream connections, pools, cron;
//! - `infra/`: side effects behind narrow types: the Docker driver (and its fake), the SQLite store,
//!   the host firewall, sealed secrets, metrics, the data directory, backups;
//! - `cli/`: the `eserveless` command's client side;
//! - `server.rs` and `config.rs`: `eserveless serve` and its settings.

// Only the CLI talks to people on stdout/stderr; the server logs through tracing.
#![warn(clippy::print_stdout, clippy::print_stderr)]

pub mod api;
#[allow(clippy::print_stdout, clippy::print_stderr)]
pub mod cli;
pub mod config;
pub(crate) mod dataplane;
pub mod engine;
pub(crate) mod http_error;
pub mod infra;
pub(crate) mod manifest;
pub(crate) mod names;
pub mod server;
