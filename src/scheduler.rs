//! Cron: schedules per live cron function, firing each run in a fresh container with its
//! timeout, never overlapping runs of one function (a firing during a run is recorded as
//! skipped), and recording every run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::task::JoinHandle;

use crate::driver::{labels, ContainerSpec, Driver, Limits};
use crate::store::Store;

/// Most output kept from one run.
const RUN_OUTPUT_BYTES: usize = 64 * 1024;
/// Runs kept per function.
const RUNS_KEPT: u32 = 200;

/// One cron function of a live revision.
#[derive(Debug, Clone)]
pub struct CronJob {
    pub project: String,
    pub function: String,
    pub deployment_id: i64,
    pub image: String,
    pub env: Vec<String>,
    pub timeout: Duration,
    pub schedule: String,
}

struct Inner {
    driver: Arc<dyn Driver>,
    store: Arc<Store>,
    limits: Limits,
    tasks: Mutex<HashMap<String, Vec<JoinHandle<()>>>>,
    /// (project, function) → a run is going. Kept across redeploys so runs never overlap.
    running: Mutex<HashMap<(String, String), Arc<AtomicBool>>>,
}

#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

impl Scheduler {
    pub fn new(driver: Arc<dyn Driver>, store: Arc<Store>, limits: Limits) -> Self {
        Scheduler {
            inner: Arc::new(Inner {
                driver,
                store,
                limits,
                tasks: Mutex::new(HashMap::new()),
                running: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Replaces a project's schedules.
    pub fn set_project(&self, project: &str, jobs: Vec<CronJob>) {
        let handles = jobs.into_iter().map(|job| {
            let me = self.clone();
            tokio::spawn(async move { me.schedule_loop(job).await })
        });
        let handles: Vec<_> = handles.collect();
        let old = self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()).insert(project.to_string(), handles);
        for h in old.into_iter().flatten() {
            h.abort();
        }
    }

    pub fn remove_project(&self, project: &str) {
        let old = self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()).remove(project);
        for h in old.into_iter().flatten() {
            h.abort();
        }
    }

    /// Number of scheduled functions of a project.
    pub fn scheduled(&self, project: &str) -> usize {
        self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()).get(project).map_or(0, Vec::len)
    }

    fn running_flag(&self, job: &CronJob) -> Arc<AtomicBool> {
        self.inner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((job.project.clone(), job.function.clone()))
            .or_default()
            .clone()
    }

    async fn schedule_loop(self, job: CronJob) {
        let cron = match crate::manifest::parse_schedule(&job.schedule) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(project = %job.project, function = %job.function, error = %e, "stored schedule is invalid");
                return;
            }
        };
        let flag = self.running_flag(&job);
        loop {
            let now = Utc::now();
            let next = match cron.find_next_occurrence(&now, false) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(function = %job.function, error = %e, "schedule has no next occurrence");
                    return;
                }
            };
            let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
            tokio::time::sleep(wait).await;
            if flag.swap(true, Ordering::AcqRel) {
                tracing::info!(project = %job.project, function = %job.function, "previous run still going; firing skipped");
                let store = self.inner.store.clone();
                let j = job.clone();
                let _ = tokio::task::spawn_blocking(move || store.start_cron_run(&j.project, &j.function, j.deployment_id, next, "skipped")).await;
                continue;
            }
            let me = self.clone();
            let j = job.clone();
            let f = flag.clone();
            // The run goes on even if the schedule is replaced meanwhile.
            tokio::spawn(async move {
                me.run_once(&j, next).await;
                f.store(false, Ordering::Release);
            });
        }
    }

    /// Runs the function once, records the run, and returns its status.
    pub async fn run_once(&self, job: &CronJob, scheduled: chrono::DateTime<Utc>) -> String {
        let inner = &self.inner;
        let store = inner.store.clone();
        let (p, f, d) = (job.project.clone(), job.function.clone(), job.deployment_id);
        let run_id = match tokio::task::spawn_blocking(move || store.start_cron_run(&p, &f, d, scheduled, "running")).await {
            Ok(Ok(id)) => id,
            other => {
                tracing::error!(?other, "cannot record a cron run");
                return "failed".into();
            }
        };
        let began = std::time::Instant::now();
        let fn_part = crate::names::FunctionName::parse(&job.function).map(|f| f.docker_part()).unwrap_or_else(|_| "fn".into());
        let spec = ContainerSpec {
            name: format!("esl-{}-{}-run{}", job.project, fn_part, run_id),
            image: job.image.clone(),
            env: job.env.clone(),
            labels: labels::for_container(&job.project, &job.function, job.deployment_id, "cron"),
            limits: inner.limits.clone(),
        };
        let (status, exit_code, mut output) = match inner.driver.run(spec).await {
            Err(e) => ("failed", None, format!("eserveless: could not start the run: {e}\n")),
            Ok(started) => {
                let waited = tokio::time::timeout(job.timeout, inner.driver.wait(&started.id)).await;
                let (status, code, note) = match waited {
                    Ok(Ok(0)) => ("succeeded", Some(0), String::new()),
                    Ok(Ok(code)) => ("failed", Some(code), format!("eserveless: the function exited with status {code}\n")),
                    Ok(Err(e)) => ("failed", None, format!("eserveless: lost track of the run: {e}\n")),
                    Err(_) => (
                        "timed_out",
                        None,
                        format!("eserveless: killed after its timeout of {}\n", humantime::format_duration(job.timeout)),
                    ),
                };
                let logs = inner.driver.logs(&started.id, RUN_OUTPUT_BYTES).await.unwrap_or_default();
                if let Err(e) = inner.driver.remove(&started.id).await {
                    tracing::warn!(container = %started.id, error = %e, "could not remove a cron container");
                }
                (status, code, format!("{logs}{note}"))
            }
        };
        if output.len() > RUN_OUTPUT_BYTES {
            let cut = output.len() - RUN_OUTPUT_BYTES;
            let cut = (cut..output.len()).find(|&i| output.is_char_boundary(i)).unwrap_or(output.len());
            output.drain(..cut);
        }
        let duration = began.elapsed().as_millis() as i64;
        tracing::info!(project = %job.project, function = %job.function, status, duration_ms = duration, "cron run finished");
        let store = inner.store.clone();
        let (p, f) = (job.project.clone(), job.function.clone());
        let st = status.to_string();
        let _ = tokio::task::spawn_blocking(move || {
            store.finish_cron_run(run_id, &st, exit_code, duration, &output)?;
            store.prune_cron_runs(&p, &f, RUNS_KEPT)
        })
        .await;
        status.to_string()
    }
}
