//! Cron functions by hand: a run started now through the scheduler (so the no-overlap rule is
//! the scheduler's own), and one run read back.

use crate::dataplane::scheduler::RunNowError;
use crate::engine::auth::Principal;
use crate::engine::error::{EngineError, Result};
use crate::engine::Platform;
use crate::infra::store::{CronRunRow, FunctionRow};
use crate::manifest::FunctionType;

impl Platform {
    /// Fails unless `f` is a cron function; `what` is what the caller wanted of it.
    pub(super) fn require_cron(project: &str, f: &FunctionRow, what: &str) -> Result<()> {
        if f.kind == FunctionType::Cron {
            return Ok(());
        }
        Err(EngineError::invalid(
            "not_cron",
            format!(
                "`{}` of project `{project}` is an {} function: {what}; its output is in `eserveless logs {project}/{}`, and it runs when invoked (`eserveless invoke {project}/{}`)",
                f.name, f.kind, f.name, f.name
            ),
        ))
    }

    /// Starts a run of a live cron function now; returns the run's id. Refused while a run of
    /// it (scheduled or by hand) is going.
    pub async fn run_cron_now(&self, who: &Principal, project: &str, function: &str) -> Result<i64> {
        let f = self.live_function(who, project, function)?;
        Self::require_cron(project, &f, "only cron functions have runs to start")?;
        match self.scheduler.run_now(project, function).await {
            Ok(id) => {
                tracing::info!(project, function, run = id, by = %who.name, "cron run started by hand");
                Ok(id)
            }
            Err(RunNowError::Running(run)) => Err(EngineError::wrong_state(
                "run_in_progress",
                match run {
                    Some(id) => format!(
                        "run {id} of `{project}/{function}` is still going; runs never overlap: wait for it (`eserveless runs {project}/{function}`), then start another"
                    ),
                    None => format!("a run of `{project}/{function}` is starting; runs never overlap: wait for it, then start another"),
                },
            )),
            Err(RunNowError::NotScheduled) => Err(EngineError::wrong_state(
                "not_scheduled",
                format!("`{project}/{function}` is not scheduled on this server yet (its deployment is going live); try again in a moment"),
            )),
            Err(RunNowError::Store(e)) => Err(EngineError::internal("a cron run could not be recorded", e)),
        }
    }

    /// One run of a live cron function.
    pub fn cron_run(&self, who: &Principal, project: &str, function: &str, run: &str) -> Result<CronRunRow> {
        let f = self.live_function(who, project, function)?;
        Self::require_cron(project, &f, "it has no cron runs")?;
        let gone = || EngineError::RunNotFound { project: project.to_string(), function: function.to_string(), run: run.to_string() };
        let id: i64 = run.parse().map_err(|_| gone())?;
        self.store.cron_run(project, function, id)?.ok_or_else(gone)
    }
}
