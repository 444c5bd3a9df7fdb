//! eserveless: self-hosted serverless functions on a Docker engine, in one binary.

pub mod api;
pub mod auth;
pub mod backup;
pub mod build;
pub mod cli;
pub mod config;
pub mod datadir;
pub mod driver;
pub mod error;
pub mod firewall;
pub mod gateway;
pub mod manifest;
pub mod metrics;
pub mod names;
pub mod platform;
pub mod pool;
pub mod runtime;
pub mod scheduler;
pub mod secrets;
pub mod server;
pub mod source;
pub mod store;
pub mod upstream;
