//! `/api/projects/{name}/functions/{function}/{runs,logs}`: what a live function did and
//! wrote, and a cron run started by hand.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use crate::api::error::ApiError;
use crate::api::types::{CronRun, LogEntry, RunList, RunStarted, RunTrigger, RunsQuery};
use crate::api::AppState;
use crate::engine::Principal;

pub(super) async fn function_runs(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((name, function)): Path<(String, String)>,
    Query(q): Query<RunsQuery>,
) -> Result<Json<RunList>, ApiError> {
    let runs = s.platform.function_runs(&who, &name, &function, q.limit.unwrap_or(50).min(500))?;
    Ok(Json(RunList { runs }))
}

/// Starts a run of a cron function now: 202 with the run's id (and its URL in `Location`).
pub(super) async fn start_run(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((name, function)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let run = s.platform.run_cron_now(&who, &name, &function).await?;
    let link = format!("/api/projects/{name}/functions/{function}/runs/{run}");
    let mut resp = (
        axum::http::StatusCode::ACCEPTED,
        Json(RunStarted { project: name, function, run, trigger: RunTrigger::Manual, link: link.clone() }),
    )
        .into_response();
    if let Ok(v) = link.parse() {
        resp.headers_mut().insert(axum::http::header::LOCATION, v);
    }
    Ok(resp)
}

pub(super) async fn function_run(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((name, function, run)): Path<(String, String, String)>,
) -> Result<Json<CronRun>, ApiError> {
    Ok(Json(s.platform.cron_run(&who, &name, &function, &run)?))
}

/// A function's output: saved output of removed instances, running containers (read from the
/// engine as the answer is sent) and recent cron runs. The answer is streamed entry by entry,
/// so the server holds at most one container's output tail (`--log-bytes`) at a time while
/// reading from the engine, whatever the function wrote.
pub(super) async fn function_logs(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((name, function)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    // What the store holds is read before the answer starts: a store error is still a status.
    let logs = s.platform.function_logs(&who, &name, &function).await?;
    let platform = s.platform.clone();
    let saved_instances: Vec<LogEntry> = logs
        .instances
        .into_iter()
        .map(|l| LogEntry {
            source: "instance".to_string(),
            container: Some(l.container),
            run: None,
            at: l.at,
            status: None,
            output: l.output,
            running: false,
        })
        .collect();
    let saved_runs: Vec<LogEntry> = logs
        .runs
        .into_iter()
        .map(|r| LogEntry {
            source: "cron".to_string(),
            container: None,
            run: Some(r.id),
            at: r.started_at,
            status: Some(r.status),
            output: r.output,
            running: false,
        })
        .collect();
    let running = logs.running;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::convert::Infallible>>(1);
    tokio::spawn(async move {
        let mut first = true;
        let mut send = |v: &LogEntry| {
            let mut chunk = if std::mem::take(&mut first) { b"{\"entries\":[".to_vec() } else { b",".to_vec() };
            match serde_json::to_vec(v) {
                Ok(json) => chunk.extend_from_slice(&json),
                // A struct of strings, numbers and times always serializes; never send a broken document.
                Err(e) => {
                    tracing::error!(error = %e, "a log entry did not serialize");
                    chunk.extend_from_slice(b"null");
                }
            }
            bytes::Bytes::from(chunk)
        };
        for v in &saved_instances {
            if tx.send(Ok(send(v))).await.is_err() {
                return;
            }
        }
        for c in running {
            let Some(out) = platform.container_output(&c).await else { continue };
            let v = LogEntry {
                source: if c.cron { "cron" } else { "instance" }.to_string(),
                container: Some(c.id),
                run: None,
                at: chrono::Utc::now(),
                status: None,
                output: out,
                running: true,
            };
            let chunk = send(&v);
            drop(v);
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
        for v in &saved_runs {
            if tx.send(Ok(send(v))).await.is_err() {
                return;
            }
        }
        let end: &[u8] = if first { b"{\"entries\":[]}" } else { b"]}" };
        let _ = tx.send(Ok(bytes::Bytes::from_static(end))).await;
    });
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) }));
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response())
}
