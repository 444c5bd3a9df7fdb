//! Cron: schedules per live cron function, firing each run in a fresh container with its
//! timeout, never overlapping runs of one function (a firing during a run is recorded as
//! skipped), and recording every run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::task::JoinHandle;

use crate::dataplane::Workload;
use crate::infra::driver::{labels, ContainerSpec, Driver};
use crate::manifest::FunctionType;
use crate::infra::logs::SourceKind;
use crate::infra::store::{LogSource, RunStatus, Store};

/// Runs kept per function.
const RUNS_KEPT: u32 = 200;

/// One cron function of a live revision.
#[derive(Debug, Clone)]
pub struct CronJob {
    pub workload: Workload,
    pub schedule: String,
}

super::deref_workload!(CronJob);

struct Inner {
    driver: Arc<dyn Driver>,
    store: Arc<Store>,
    /// Most output kept from one run.
    log_bytes: usize,
    tasks: Mutex<HashMap<String, Vec<JoinHandle<()>>>>,
    /// Containers of runs in progress: their end is this scheduler's to handle (output kept,
    /// then removed), so the engine reconciler leaves them alone.
    active: Mutex<std::collections::HashSet<String>>,
    /// (project, function) → a run is going. Kept across redeploys so runs never overlap.
    running: Mutex<HashMap<(String, String), Arc<AtomicBool>>>,
}

#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

impl Scheduler {
    pub fn new(driver: Arc<dyn Driver>, store: Arc<Store>, log_bytes: usize) -> Self {
        Scheduler {
            inner: Arc::new(Inner {
                driver,
                store,
                log_bytes,
                tasks: Mutex::new(HashMap::new()),
                active: Mutex::new(std::collections::HashSet::new()),
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

    /// Containers of cron runs in progress.
    pub fn active_containers(&self) -> std::collections::HashSet<String> {
        self.inner.active.lock().unwrap_or_else(|p| p.into_inner()).clone()
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
                let _ = tokio::task::spawn_blocking(move || store.start_cron_run(&j.project, &j.function, j.deployment_id, next, RunStatus::Skipped)).await;
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
    pub async fn run_once(&self, job: &CronJob, scheduled: chrono::DateTime<Utc>) -> RunStatus {
        let inner = &self.inner;
        let store = inner.store.clone();
        let (p, f, d) = (job.project.clone(), job.function.clone(), job.deployment_id);
        let run_id = match tokio::task::spawn_blocking(move || store.start_cron_run(&p, &f, d, scheduled, RunStatus::Running)).await {
            Ok(Ok(id)) => id,
            other => {
                tracing::error!(?other, "cannot record a cron run");
                return RunStatus::Failed;
            }
        };
        let began = std::time::Instant::now();
        let fn_part = crate::names::FunctionName::parse(&job.function).map(|f| f.docker_part()).unwrap_or_else(|_| "fn".into());
        let spec = ContainerSpec {
            name: format!("esl-{}-{}-run{}", job.project, fn_part, run_id),
            image: job.image.clone(),
            env: job.env.clone(),
            labels: {
                let mut l = labels::for_container(&job.project, &job.function, job.deployment_id, FunctionType::Cron.as_str());
                l.insert(labels::RUN.to_string(), run_id.to_string());
                l
            },
            limits: job.limits.clone(),
        };
        // A run needs no address: start it, wait for it, keep its output and exit code,
        // however quickly it ends.
        let (status, exit_code, output) = match inner.driver.start_job(spec).await {
            Err(e) => (RunStatus::Failed, None, format!("eserveless: could not start the run: {e}\n")),
            Ok(id) => {
                inner.active.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone());
                let (status, code, note) = match tokio::time::timeout(job.timeout, self.wait_through_outages(&id)).await {
                    Ok(Ok(0)) => (RunStatus::Succeeded, Some(0), String::new()),
                    Ok(Ok(code)) => (RunStatus::Failed, Some(code), format!("eserveless: the function exited with status {code}\n")),
                    Ok(Err(e)) => (RunStatus::Failed, None, format!("eserveless: lost track of the run: {e}\n")),
                    Err(_) => (
                        RunStatus::TimedOut,
                        None,
                        format!("eserveless: killed after its timeout of {}\n", humantime::format_duration(job.timeout)),
                    ),
                };
                // Saved as timed lines for `logs`, and as text in the run's record for `runs`.
                let src = LogSource {
                    project: job.project.clone(),
                    function: job.function.clone(),
                    revision: job.deployment_id,
                    kind: SourceKind::Run,
                    container: id.clone(),
                    run: Some(run_id),
                };
                let logs = crate::infra::logs::join_lines(&crate::dataplane::save_output(inner.driver.as_ref(), &inner.store, src, inner.log_bytes).await);
                if let Err(e) = inner.driver.remove(&id).await {
                    tracing::warn!(container = %id, error = %e, "could not remove a cron container; the reconciler retries");
                }
                inner.active.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                (status, code, format!("{logs}{note}"))
            }
        };
        let duration = i64::try_from(began.elapsed().as_millis()).unwrap_or(i64::MAX);
        tracing::info!(project = %job.project, function = %job.function, status = status.as_str(), duration_ms = duration, "cron run finished");
        let store = inner.store.clone();
        let (p, f) = (job.project.clone(), job.function.clone());
        let _ = tokio::task::spawn_blocking(move || {
            store.finish_cron_run(run_id, status, exit_code, duration, &output)?;
            store.prune_cron_runs(&p, &f, RUNS_KEPT)
        })
        .await;
        status
    }

    /// Waits for a run's container to exit, riding out an engine that is briefly unreachable
    /// (a restarting dockerd stops the container; its exit status is then what counts).
    async fn wait_through_outages(&self, id: &str) -> crate::infra::driver::Result<i64> {
        loop {
            match self.inner.driver.wait(id).await {
                Err(crate::infra::driver::DriverError::Unreachable(e)) => {
                    tracing::debug!(container = %id, error = %e, "engine unreachable while a cron run goes on; waiting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infra::driver::{Env, Limits};
    use crate::infra::driver::fake::FakeDriver;

    /// Containers that "run" for `run_for`, then exit 0.
    fn slow(run_for: Duration) -> FakeDriver {
        FakeDriver { run_for, ..FakeDriver::default() }
    }

    fn job(timeout: Duration) -> CronJob {
        CronJob {
            workload: Workload {
                project: "p".into(),
                function: "Tick".into(),
                deployment_id: 1,
                image: "img".into(),
                env: Env(vec!["ESERVELESS_A=1".into()]),
                limits: Limits::default(),
                timeout,
            },
            schedule: "* * * * * *".into(),
        }
    }

    #[tokio::test]
    async fn runs_never_overlap_and_late_firings_are_skipped() {
        let store = Arc::new(Store::in_memory().expect("store"));
        let s = Scheduler::new(Arc::new(slow(Duration::from_millis(2500))), store.clone(), 64 * 1024);
        s.set_project("p", vec![job(Duration::from_secs(30))]);
        tokio::time::sleep(Duration::from_millis(4200)).await;
        s.remove_project("p");
        let runs = store.cron_runs("p", "Tick", 100).expect("runs");
        let started = runs.iter().filter(|r| r.status != RunStatus::Skipped).count();
        let skipped = runs.iter().filter(|r| r.status == RunStatus::Skipped).count();
        assert!(started <= 2, "runs overlapped: {runs:?}");
        assert!(skipped >= 1, "a firing during a run is recorded as skipped: {runs:?}");
        let done = runs.iter().find(|r| r.status == RunStatus::Succeeded).expect("one run finished");
        assert_eq!(done.exit_code, Some(0));
        assert!(done.output.starts_with("ran esl-p-tick-run"), "{:?}", done.output);
        assert!(done.duration_ms.unwrap_or(0) >= 2500, "{done:?}");
    }

    #[tokio::test]
    async fn a_run_past_its_timeout_is_killed_and_recorded() {
        let store = Arc::new(Store::in_memory().expect("store"));
        let s = Scheduler::new(Arc::new(slow(Duration::from_secs(60))), store.clone(), 64 * 1024);
        let status = s.run_once(&job(Duration::from_millis(200)), Utc::now()).await;
        assert_eq!(status, RunStatus::TimedOut);
        let run = &store.cron_runs("p", "Tick", 1).expect("runs")[0];
        assert_eq!(run.status, RunStatus::TimedOut);
        assert!(run.output.contains("killed after its timeout of 200ms"), "{:?}", run.output);
    }

    #[tokio::test]
    async fn a_run_outlives_an_engine_outage_and_keeps_its_exit_status() {
        let store = Arc::new(Store::in_memory().expect("store"));
        let driver = slow(Duration::from_millis(10));
        driver.outages.store(2, Ordering::Release);
        let s = Scheduler::new(Arc::new(driver), store.clone(), 64 * 1024);
        let status = s.run_once(&job(Duration::from_secs(30)), Utc::now()).await;
        assert_eq!(status, RunStatus::Succeeded);
        let run = &store.cron_runs("p", "Tick", 1).expect("runs")[0];
        assert_eq!((run.status, run.exit_code), (RunStatus::Succeeded, Some(0)), "{run:?}");
        assert!(s.active_containers().is_empty(), "a finished run is no longer claimed");
    }
}
