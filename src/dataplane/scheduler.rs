//! Cron: schedules per live cron function, firing each run in a fresh container with its
//! timeout, never overlapping runs of one function (a firing during a run is recorded as
//! skipped; a run asked for by hand during a run is refused), and recording every run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::task::JoinHandle;

use crate::dataplane::Workload;
use crate::infra::driver::{labels, ContainerSpec, Driver};
use crate::manifest::FunctionType;
use crate::infra::logs::LineSource;
use crate::infra::store::{LogSource, RunStatus, RunTrigger, Store};

/// Runs kept per function.
const RUNS_KEPT: u32 = 200;

/// A function's run flag: no run going.
const IDLE: i64 = 0;
/// A function's run flag: a run is claimed and not yet recorded (then it holds the run's id).
const CLAIMED: i64 = -1;

/// Why [`Scheduler::run_now`] started nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunNowError {
    /// The function is not a cron function of a live revision.
    NotScheduled,
    /// A run of the function is going: its id, once recorded.
    Running(Option<i64>),
    /// The run could not be recorded.
    Store(String),
}

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
    /// Each project's live cron jobs, for runs asked for by hand.
    jobs: Mutex<HashMap<String, Vec<CronJob>>>,
    /// Containers of runs in progress: their end is this scheduler's to handle (output kept,
    /// then removed), so the engine reconciler leaves them alone.
    active: Mutex<std::collections::HashSet<String>>,
    /// (project, function) → [`IDLE`], [`CLAIMED`], or the id of the run going. Kept across
    /// redeploys so runs never overlap, whatever started them.
    running: Mutex<HashMap<(String, String), Arc<AtomicI64>>>,
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
                jobs: Mutex::new(HashMap::new()),
                active: Mutex::new(std::collections::HashSet::new()),
                running: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Replaces a project's schedules.
    pub fn set_project(&self, project: &str, jobs: Vec<CronJob>) {
        self.inner.jobs.lock().unwrap_or_else(|p| p.into_inner()).insert(project.to_string(), jobs.clone());
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
        self.inner.jobs.lock().unwrap_or_else(|p| p.into_inner()).remove(project);
        let old = self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()).remove(project);
        for h in old.into_iter().flatten() {
            h.abort();
        }
    }

    /// Containers of cron runs in progress.
    pub fn active_containers(&self) -> std::collections::HashSet<String> {
        self.inner.active.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn running_flag(&self, job: &CronJob) -> Arc<AtomicI64> {
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
            if flag.compare_exchange(IDLE, CLAIMED, Ordering::AcqRel, Ordering::Acquire).is_err() {
                tracing::info!(project = %job.project, function = %job.function, "previous run still going; firing skipped");
                let store = self.inner.store.clone();
                let j = job.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    store.start_cron_run(&j.project, &j.function, j.deployment_id, next, RunStatus::Skipped, RunTrigger::Schedule)
                })
                .await;
                continue;
            }
            let me = self.clone();
            let j = job.clone();
            let f = flag.clone();
            // The run goes on even if the schedule is replaced meanwhile.
            tokio::spawn(async move {
                if let Ok(id) = me.record_start(&j, next, RunTrigger::Schedule).await {
                    f.store(id, Ordering::Release);
                    me.execute(&j, id).await;
                }
                f.store(IDLE, Ordering::Release);
            });
        }
    }

    /// Starts a run of `project`'s live cron function `function` now, unless one is going
    /// (the same rule as a firing: runs never overlap); returns the run's id at once. The run
    /// is recorded like a scheduled one, with the trigger `manual`.
    pub async fn run_now(&self, project: &str, function: &str) -> Result<i64, RunNowError> {
        let job = self
            .inner
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(project)
            .and_then(|jobs| jobs.iter().find(|j| j.function == function).cloned())
            .ok_or(RunNowError::NotScheduled)?;
        let flag = self.running_flag(&job);
        if let Err(going) = flag.compare_exchange(IDLE, CLAIMED, Ordering::AcqRel, Ordering::Acquire) {
            return Err(RunNowError::Running((going > 0).then_some(going)));
        }
        let id = match self.record_start(&job, Utc::now(), RunTrigger::Manual).await {
            Ok(id) => id,
            Err(e) => {
                flag.store(IDLE, Ordering::Release);
                return Err(RunNowError::Store(e));
            }
        };
        flag.store(id, Ordering::Release);
        let me = self.clone();
        tokio::spawn(async move {
            me.execute(&job, id).await;
            flag.store(IDLE, Ordering::Release);
        });
        Ok(id)
    }

    /// Runs the function once, records the run, and returns its status.
    #[cfg(test)]
    pub async fn run_once(&self, job: &CronJob, scheduled: chrono::DateTime<Utc>) -> RunStatus {
        match self.record_start(job, scheduled, RunTrigger::Schedule).await {
            Ok(id) => self.execute(job, id).await,
            Err(_) => RunStatus::Failed,
        }
    }

    /// Records a run as `running`; returns its id.
    async fn record_start(&self, job: &CronJob, scheduled: chrono::DateTime<Utc>, trigger: RunTrigger) -> Result<i64, String> {
        let store = self.inner.store.clone();
        let (p, f, d) = (job.project.clone(), job.function.clone(), job.deployment_id);
        match tokio::task::spawn_blocking(move || store.start_cron_run(&p, &f, d, scheduled, RunStatus::Running, trigger)).await {
            Ok(Ok(id)) => Ok(id),
            Ok(Err(e)) => {
                let chain = anyhow::Error::from(e);
                tracing::error!(error = format!("{chain:#}"), "cannot record a cron run");
                Err(format!("{chain:#}"))
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot record a cron run");
                Err(e.to_string())
            }
        }
    }

    /// Runs the recorded run `run_id` in a fresh container and records how it ended.
    async fn execute(&self, job: &CronJob, run_id: i64) -> RunStatus {
        let inner = &self.inner;
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
                    kind: LineSource::Run,
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
    async fn a_run_by_hand_is_recorded_and_never_overlaps_another() {
        let store = Arc::new(Store::in_memory().expect("store"));
        let s = Scheduler::new(Arc::new(slow(Duration::from_millis(1500))), store.clone(), 64 * 1024);
        assert_eq!(s.run_now("p", "Tick").await, Err(RunNowError::NotScheduled), "no such cron job yet");
        // Just after a second starts, so the first firing is most of a second away.
        while Utc::now().timestamp_subsec_millis() > 100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        s.set_project("p", vec![job(Duration::from_secs(30))]);
        let id = s.run_now("p", "Tick").await.expect("a run starts");
        assert_eq!(s.run_now("p", "Tick").await, Err(RunNowError::Running(Some(id))), "a second run by hand waits");
        let run = &store.cron_runs("p", "Tick", 1).expect("runs")[0];
        assert_eq!((run.id, run.status, run.trigger), (id, RunStatus::Running, RunTrigger::Manual));
        // The schedule fires during the run by hand: skipped, as during a scheduled run.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let runs = store.cron_runs("p", "Tick", 100).expect("runs");
        assert!(runs.iter().any(|r| r.status == RunStatus::Skipped && r.trigger == RunTrigger::Schedule), "{runs:?}");
        assert_eq!(runs.iter().filter(|r| r.status == RunStatus::Running).count(), 1, "runs overlapped: {runs:?}");
        tokio::time::sleep(Duration::from_millis(400)).await;
        s.remove_project("p");
        let done = store.cron_runs("p", "Tick", 100).expect("runs").into_iter().find(|r| r.id == id).expect("the run");
        assert_eq!((done.status, done.exit_code, done.trigger), (RunStatus::Succeeded, Some(0), RunTrigger::Manual), "{done:?}");
        assert_eq!(s.run_now("p", "Tick").await, Err(RunNowError::NotScheduled), "a removed project has no jobs");
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
