//! Side effects behind narrow types: the container engine, the store, the host firewall,
//! connections from other network namespaces,
//! sealed secrets, the metrics registry, the data directory and backups of it.

// `eserveless backup` and `restore` are commands: they report to the person running them.
#[allow(clippy::print_stdout, clippy::print_stderr)]
pub(crate) mod backup;
pub(crate) mod datadir;
pub mod driver;
pub(crate) mod firewall;
pub(crate) mod keys;
pub mod logs;
pub(crate) mod metrics;
pub mod netns;
pub(crate) mod secrets;
pub mod store;
