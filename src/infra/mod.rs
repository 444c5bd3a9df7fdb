//! Side effects behind narrow types: the container engine, the store, the host firewall,
//! sealed secrets, the metrics registry, the data directory and backups of it.

// `eserveless backup` and `restore` are commands: they report to the person running them.
#[allow(clippy::print_stdout, clippy::print_stderr)]
pub mod backup;
pub mod datadir;
pub mod driver;
pub mod firewall;
pub mod keys;
pub mod metrics;
pub mod secrets;
pub mod store;
