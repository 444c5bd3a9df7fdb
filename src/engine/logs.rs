//! A function's output as one stream of timed lines: the saved lines of removed instances and
//! finished cron runs (the store), and the lines of running containers (the engine), merged
//! in time order; then, when following, the lines of running containers as they are written,
//! containers that start later included, and what is saved meanwhile.
//!
//! Memory is bounded whatever a function writes: lines are capped
//! ([`MAX_LINE_BYTES`](crate::infra::logs::MAX_LINE_BYTES)), the history is merged with one
//! line per source in hand (a page of the store's), `tail` keeps at most `tail` lines, and
//! every channel is bounded, so a slow reader slows the reading from the engine
//! (backpressure) instead of growing a buffer.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::engine::auth::Principal;
use crate::engine::error::{EngineError, Result};
use crate::engine::Platform;
pub use crate::infra::logs::{LogLine, LogStream, LineSource};
use crate::infra::driver::{labels, Driver, LogRead};
use crate::infra::store::{LogFilter, Store};

/// Most lines `tail` may ask for (held in memory until the history is merged).
pub const MAX_TAIL: u32 = 10_000;

/// How often a follower looks for new containers and newly saved lines.
const FOLLOW_POLL: Duration = Duration::from_millis(500);

/// Lines read from the store at once.
const PAGE: u32 = 500;

/// What a logs request asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogsRequest {
    /// Go on with new lines as they are written, until the reader goes away.
    pub follow: bool,
    /// Lines at or after this time only.
    pub since: Option<DateTime<Utc>>,
    /// Only the last this many lines of the history (at most [`MAX_TAIL`]).
    pub tail: Option<u32>,
    /// Lines of this deployment's instances and runs only.
    pub revision: Option<i64>,
}

/// A running container of the function, as its labels say.
#[derive(Debug, Clone)]
struct Source {
    container: String,
    kind: LineSource,
    run: Option<i64>,
    revision: i64,
}

impl Source {
    fn line(&self, raw: crate::infra::logs::RawLine) -> LogLine {
        LogLine {
            time: raw.time,
            source: self.kind,
            instance: self.container.clone(),
            run: self.run,
            revision: self.revision,
            stream: raw.stream,
            line: raw.text,
        }
    }
}

impl Platform {
    /// The lines of a live function `who` may see, as `req` asks, sent into the returned
    /// channel (bounded) by a task that ends when the history is sent (unless following) or
    /// when the receiver is dropped. A function or revision that does not exist is an error
    /// before any line.
    pub async fn function_logs(&self, who: &Principal, project: &str, function: &str, req: LogsRequest) -> Result<mpsc::Receiver<LogLine>> {
        self.live_function(who, project, function)?;
        if let Some(rev) = req.revision {
            let ours = self.store.deployment(rev)?.is_some_and(|d| d.project == project);
            if !ours {
                return Err(EngineError::DeploymentNotFound { project: project.to_string(), deployment: rev.to_string() });
            }
        }
        let filter = LogFilter { project: project.to_string(), function: function.to_string(), since: req.since, revision: req.revision };
        let (tx, rx) = mpsc::channel(64);
        let (driver, store) = (self.driver.clone(), self.store.clone());
        tokio::spawn(async move {
            let mut reader = Reader { driver, store, filter, seen: HashMap::new(), tx };
            if let Err(e) = reader.run(&req).await {
                tracing::warn!(error = %e, "a logs stream ended early");
                let note = LogLine {
                    time: Utc::now(),
                    source: LineSource::Instance,
                    instance: String::new(),
                    run: None,
                    revision: 0,
                    stream: LogStream::System,
                    line: format!("the log stream ended early: {e}"),
                };
                let _ = reader.tx.send(note).await;
            }
        });
        Ok(rx)
    }
}

/// The reader took too long to take a line, or went away.
#[derive(Debug)]
struct Gone;

struct Reader {
    driver: Arc<dyn Driver>,
    store: Arc<Store>,
    filter: LogFilter,
    /// Per container and stream: the time of the last line of it read, so no line is sent
    /// twice when a container's lines arrive both live and saved. Per stream, because the
    /// engine times stdout and stderr apart: only within one are times in write order.
    seen: HashMap<(String, LogStream), DateTime<Utc>>,
    tx: mpsc::Sender<LogLine>,
}

impl Reader {
    async fn run(&mut self, req: &LogsRequest) -> std::result::Result<(), String> {
        let store = self.store.clone();
        // Lines saved after this are the follower's to pick up.
        let mut saved_cursor = blocking(move || store.last_log_line_id()).await?;
        let running = self.running().await?;
        let began = Utc::now();
        match self.history(req, &running).await {
            Ok(()) => {}
            Err(Gone) => return Ok(()),
        }
        // A stream of a running container with no line read had none before the history was
        // read (or none wanted, with tail 0): follow it from then.
        for s in &running {
            for stream in [LogStream::Stdout, LogStream::Stderr, LogStream::System] {
                self.seen.entry((s.container.clone(), stream)).or_insert(began);
            }
        }
        if !req.follow {
            return Ok(());
        }
        let (cand_tx, mut cand_rx) = mpsc::channel::<LogLine>(256);
        let mut live = tokio::task::JoinSet::new();
        let mut attached: std::collections::HashSet<String> = std::collections::HashSet::new();
        for s in running {
            self.attach(&mut live, &mut attached, s, &cand_tx);
        }
        let mut tick = tokio::time::interval(FOLLOW_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.tx.closed() => return Ok(()),
                Some(l) = cand_rx.recv() => {
                    if self.send_new(l).await.is_err() {
                        return Ok(());
                    }
                }
                _ = tick.tick() => {
                    for s in self.running().await.unwrap_or_default() {
                        self.attach(&mut live, &mut attached, s, &cand_tx);
                    }
                    loop {
                        let (store, f, after) = (self.store.clone(), self.filter.clone(), saved_cursor);
                        let page = blocking(move || store.log_lines_saved_after(&f, after, PAGE)).await?;
                        let full = page.len() == PAGE as usize;
                        for (id, l) in page {
                            saved_cursor = id;
                            if self.send_new(l).await.is_err() {
                                return Ok(());
                            }
                        }
                        if !full {
                            break;
                        }
                    }
                    // Finished live streams are reaped; their containers stay attached (a
                    // container never runs twice).
                    while live.try_join_next().is_some() {}
                }
            }
        }
    }

    /// Running containers of the function (of the revision asked for).
    async fn running(&self) -> std::result::Result<Vec<Source>, String> {
        let list = self.driver.list_managed().await.map_err(|e| format!("cannot list the running containers: {e}"))?;
        let f = &self.filter;
        Ok(list
            .into_iter()
            .filter(|c| c.running)
            .filter(|c| c.labels.get(labels::PROJECT) == Some(&f.project) && c.labels.get(labels::FUNCTION) == Some(&f.function))
            .filter_map(|c| {
                let revision = c.labels.get(labels::REVISION).and_then(|r| r.parse().ok()).unwrap_or(0);
                if f.revision.is_some_and(|r| r != revision) {
                    return None;
                }
                let run: Option<i64> = c.labels.get(labels::RUN).and_then(|r| r.parse().ok());
                let cron = c.labels.get(labels::ROLE).map(String::as_str) == Some("cron");
                Some(Source { kind: if cron { LineSource::Run } else { LineSource::Instance }, run, revision, container: c.id })
            })
            .collect())
    }

    /// The lines written so far, in time order: the store's and each running container's,
    /// merged (the last `tail` of them when asked).
    async fn history(&mut self, req: &LogsRequest, running: &[Source]) -> std::result::Result<(), Gone> {
        if req.tail == Some(0) {
            return Ok(());
        }
        let read = LogRead { follow: false, since: self.filter.since, tail: req.tail.map(u64::from) };
        let mut sources: Vec<BoxStream<'static, LogLine>> = vec![saved_lines(self.store.clone(), self.filter.clone(), req.tail)];
        for s in running {
            let s = s.clone();
            let since = self.filter.since;
            let lines = self.driver.log_lines(&s.container, read).filter_map(move |r| {
                // A container gone meanwhile has its lines saved: the follower picks them up.
                let line = r.ok().map(|raw| s.line(raw)).filter(|l| since.map_or(true, |t| l.time >= t));
                async move { line }
            });
            sources.push(lines.boxed());
        }
        let mut heads: Vec<Option<LogLine>> = Vec::with_capacity(sources.len());
        for s in &mut sources {
            heads.push(s.next().await);
        }
        let mut kept: VecDeque<LogLine> = VecDeque::new();
        // The source whose next line is the oldest, while any has one.
        while let Some(i) = (0..heads.len()).filter(|&i| heads[i].is_some()).min_by_key(|&i| heads[i].as_ref().map(|l| l.time)) {
            let line = heads[i].take().expect("chosen among the present heads");
            heads[i] = sources[i].next().await;
            self.seen.insert((line.instance.clone(), line.stream), line.time);
            match req.tail {
                Some(n) => {
                    if kept.len() == n as usize {
                        kept.pop_front();
                    }
                    kept.push_back(line);
                }
                None => self.tx.send(line).await.map_err(|_| Gone)?,
            }
        }
        for line in kept {
            self.tx.send(line).await.map_err(|_| Gone)?;
        }
        Ok(())
    }

    /// Follows a container's new lines, from after the last one read of it.
    fn attach(
        &self,
        live: &mut tokio::task::JoinSet<()>,
        attached: &mut std::collections::HashSet<String>,
        s: Source,
        out: &mpsc::Sender<LogLine>,
    ) {
        if !attached.insert(s.container.clone()) {
            return;
        }
        let seen = [LogStream::Stdout, LogStream::Stderr].iter().filter_map(|&k| self.seen.get(&(s.container.clone(), k)).copied()).min();
        let since = match (seen, self.filter.since) {
            (Some(t), Some(f)) => Some(t.max(f)),
            (t, f) => t.or(f),
        };
        let (driver, out) = (self.driver.clone(), out.clone());
        live.spawn(async move {
            let mut lines = driver.log_lines(&s.container, LogRead { follow: true, since, tail: None });
            while let Some(Ok(raw)) = lines.next().await {
                if out.send(s.line(raw)).await.is_err() {
                    return;
                }
            }
        });
    }

    /// Sends a line unless one at its time or later was sent of its container's stream
    /// already, or it is older than `since`.
    async fn send_new(&mut self, l: LogLine) -> std::result::Result<(), Gone> {
        let key = (l.instance.clone(), l.stream);
        if self.filter.since.is_some_and(|t| l.time < t) || self.seen.get(&key).is_some_and(|&t| l.time <= t) {
            return Ok(());
        }
        self.seen.insert(key, l.time);
        self.tx.send(l).await.map_err(|_| Gone)
    }
}

/// The store's lines matching `f` in time order, a page at a time (the last `tail` only).
fn saved_lines(store: Arc<Store>, f: LogFilter, tail: Option<u32>) -> BoxStream<'static, LogLine> {
    if let Some(n) = tail {
        return futures_util::stream::once(async move { blocking(move || store.log_lines_last(&f, n)).await.unwrap_or_default() })
            .flat_map(|page| futures_util::stream::iter(page.into_iter().map(|(_, l)| l)))
            .boxed();
    }
    futures_util::stream::unfold(Some(None), move |cursor: Option<Option<(i64, i64)>>| {
        let (store, f) = (store.clone(), f.clone());
        async move {
            let after = cursor?;
            let page = blocking(move || store.log_lines_page(&f, after, PAGE)).await.unwrap_or_default();
            let next = if page.len() < PAGE as usize {
                None
            } else {
                page.last().map(|(id, l)| Some((l.time.timestamp_nanos_opt().unwrap_or(i64::MAX), *id)))
            };
            Some((futures_util::stream::iter(page.into_iter().map(|(_, l)| l)), next))
        }
    })
    .flatten()
    .boxed()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::infra::store::Result<T> + Send + 'static,
) -> std::result::Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("the store: {e}")),
        Err(e) => Err(format!("a store task failed: {e}")),
    }
}
