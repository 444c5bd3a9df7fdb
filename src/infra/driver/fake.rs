//! A recording fake of the engine, shipped in the crate for the unit tests of the pools and
//! the scheduler and the API tests through the router: one fake, not one per test file.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;

use futures_util::StreamExt;

use super::{BuildRequest, ContainerEvent, ContainerSpec, Driver, DriverError, LogRead, ManagedContainer, Result, Started};
use crate::infra::logs::{LogStream, RawLine};

/// A build context entry: path, link target if a symlink, contents.
pub type ContextEntry = (String, Option<String>, Vec<u8>);

/// What the fake was asked to do.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Tag and labels of every image built.
    pub builds: Vec<(String, std::collections::HashMap<String, String>)>,
    /// Every build context's entries.
    pub contexts: Vec<Vec<ContextEntry>>,
    /// Every container started, http instances and jobs alike.
    pub runs: Vec<ContainerSpec>,
    pub removed_images: Vec<String>,
    /// Images removed and not built again since: `image_info` no longer finds them.
    pub gone_images: std::collections::HashSet<String>,
    /// While set, every build fails (a deployment that fails after it was accepted).
    pub fail_builds: bool,
}

/// Containers "run" for `run_for`, then exit 0. An http instance gets `address` (none by
/// default: [`Driver::run`] then fails, as the engine does for a program that has already
/// exited; jobs start with [`Driver::start_job`], which needs none). The first `outages`
/// waits find the engine unreachable; `unpause` takes `unpause_for`.
#[derive(Debug, Default)]
pub struct FakeDriver {
    pub address: Option<String>,
    pub run_for: Duration,
    pub unpause_for: Duration,
    pub outages: AtomicU32,
    /// What `list_managed` answers.
    pub managed: Mutex<Vec<ManagedContainer>>,
    pub unpauses: AtomicU32,
    /// Pauses asked for, done or refused.
    pub pauses: AtomicU32,
    pub rec: Mutex<Recorded>,
    /// No machine has room: `run` fails with [`DriverError::NoCapacity`] (a full swarm).
    pub no_room: bool,
    /// The engine cannot pause (swarm).
    pub cannot_pause: bool,
    /// What `log_lines` answers per container (default: one stdout line `ran ID`, written now).
    /// A followed stream stays open after them, as a running container's does.
    pub lines: Mutex<std::collections::HashMap<String, Vec<RawLine>>>,
}

impl FakeDriver {
    /// A fake whose instances answer at `address`.
    pub fn reachable_at(address: &str) -> Self {
        FakeDriver { address: Some(address.to_string()), ..FakeDriver::default() }
    }

    pub fn recorded(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.rec.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tags of the images built so far.
    pub fn builds(&self) -> Vec<String> {
        self.recorded().builds.iter().map(|(t, _)| t.clone()).collect()
    }

    /// Containers started so far.
    pub fn runs(&self) -> usize {
        self.recorded().runs.len()
    }
}

#[async_trait]
impl Driver for FakeDriver {
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
    async fn image_exists(&self, _: &str) -> Result<bool> {
        Ok(true)
    }
    async fn image_info(&self, image: &str) -> Result<Option<super::ImageInfo>> {
        let rec = self.recorded();
        if rec.gone_images.contains(image) {
            return Ok(None);
        }
        let built = rec.builds.iter().rev().find(|(t, _)| t == image);
        Ok(built.map(|(t, labels)| super::ImageInfo { id: format!("id-of-{t}"), labels: labels.clone() }))
    }
    async fn image_tags(&self, pattern: &str) -> Result<Vec<String>> {
        let prefix = pattern.trim_end_matches('*');
        let mut tags: Vec<String> = self.recorded().builds.iter().map(|(t, _)| t.clone()).filter(|t| t.starts_with(prefix)).collect();
        tags.dedup();
        Ok(tags)
    }
    async fn build_image(&self, req: BuildRequest) -> Result<String> {
        if self.recorded().fail_builds {
            return Err(DriverError::BuildFailed { message: "the build failed (FakeDriver::fail_builds)".into(), log: String::new() });
        }
        let mut entries = Vec::new();
        let mut archive = tar::Archive::new(&req.context_tar[..]);
        let unreadable = |e: std::io::Error| DriverError::Engine(format!("the build context is not a tar: {e}"));
        for e in archive.entries().map_err(unreadable)? {
            let mut e = e.map_err(unreadable)?;
            let path = e.path().map_err(unreadable)?.to_string_lossy().into_owned();
            let link = e.link_name().map_err(unreadable)?.map(|l| l.to_string_lossy().into_owned());
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut bytes).map_err(unreadable)?;
            entries.push((path, link, bytes));
        }
        let mut rec = self.recorded();
        rec.contexts.push(entries);
        rec.gone_images.remove(&req.tag);
        rec.builds.push((req.tag.clone(), req.labels.clone()));
        Ok("log".to_string())
    }
    async fn remove_image(&self, image: &str) -> Result<bool> {
        let mut rec = self.recorded();
        rec.removed_images.push(image.to_string());
        rec.gone_images.insert(image.to_string());
        Ok(true)
    }
    async fn run(&self, spec: ContainerSpec) -> Result<Started> {
        let mut rec = self.recorded();
        let id = format!("fake-{}", rec.runs.len());
        let name = spec.name.clone();
        rec.runs.push(spec);
        if self.no_room {
            return Err(DriverError::NoCapacity(format!("an instance of {name} (no suitable node)")));
        }
        match &self.address {
            Some(ip) => Ok(Started { id, ip: ip.clone(), pid: None, node: None }),
            None => Err(DriverError::Engine(format!("container {name} got no address"))),
        }
    }
    async fn start_job(&self, spec: ContainerSpec) -> Result<String> {
        let name = spec.name.clone();
        self.recorded().runs.push(spec);
        Ok(name)
    }
    fn can_pause(&self) -> bool {
        !self.cannot_pause
    }
    async fn pause(&self, _: &str) -> Result<()> {
        self.pauses.fetch_add(1, Ordering::AcqRel);
        if self.cannot_pause {
            return Err(DriverError::Unsupported("no pause here".into()));
        }
        Ok(())
    }
    async fn unpause(&self, _: &str) -> Result<()> {
        self.unpauses.fetch_add(1, Ordering::AcqRel);
        tokio::time::sleep(self.unpause_for).await;
        Ok(())
    }
    async fn remove(&self, _: &str) -> Result<()> {
        Ok(())
    }
    async fn wait(&self, _: &str) -> Result<i64> {
        if self.outages.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok() {
            return Err(DriverError::Unreachable("engine restarting".into()));
        }
        tokio::time::sleep(self.run_for).await;
        Ok(0)
    }
    async fn logs(&self, id: &str, _: usize) -> Result<String> {
        Ok(format!("ran {id}\n"))
    }
    fn log_lines(&self, id: &str, read: LogRead) -> BoxStream<'static, Result<RawLine>> {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned().unwrap_or_else(|| {
            vec![RawLine { time: chrono::Utc::now(), stream: LogStream::Stdout, text: format!("ran {id}") }]
        });
        let mut lines: Vec<RawLine> = lines.into_iter().filter(|l| read.since.map_or(true, |s| l.time >= s)).collect();
        if let Some(n) = read.tail {
            let skip = lines.len().saturating_sub(usize::try_from(n).unwrap_or(usize::MAX));
            lines.drain(..skip);
        }
        let lines = futures_util::stream::iter(lines.into_iter().map(Ok));
        if read.follow {
            Box::pin(lines.chain(futures_util::stream::pending()))
        } else {
            Box::pin(lines)
        }
    }
    async fn list_managed(&self) -> Result<Vec<ManagedContainer>> {
        Ok(self.managed.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
    fn events(&self) -> BoxStream<'static, Result<ContainerEvent>> {
        Box::pin(futures_util::stream::pending())
    }
}
