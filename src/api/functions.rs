//! `/api/projects/{name}/functions/{function}/{runs,logs}`: what a live function did and wrote
//! (the logs as a stream of lines), and a cron run started by hand.

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use crate::api::error::ApiError;
use crate::api::openapi::{EngineAndDisk, ErrorBody, TokenOrServer};
use crate::api::types::{CronRun, LogLine, LogsQuery, RunList, RunStarted, RunTrigger, RunsQuery};
use crate::api::{ApiPath, ApiQuery, AppState};
use crate::engine::Principal;

#[utoipa::path(
    get,
    path = "/api/projects/{name}/functions/{function}/runs",
    tag = "functions",
    security(("bearer" = [])),
    extensions(("x-eserveless-access" = json!("owner"))),
    params(("name" = String, Path, description = "The project"), ("function" = String, Path, description = "The function"), RunsQuery),
    responses(
        (status = 200, description = "The function's cron runs, newest first", body = RunList),
        (status = 422, description = "The function is not a cron function (`not_cron`)", body = ErrorBody),
        (status = 400, description = "The query does not match (`invalid_query`)", body = ErrorBody),
        (status = 404, description = "No such project or function (`project_not_found`, `function_not_found`)", body = ErrorBody),
        TokenOrServer,
    ),
)]
pub(super) async fn function_runs(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    ApiPath((name, function)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<RunsQuery>,
) -> Result<Json<RunList>, ApiError> {
    let runs = s.platform.function_runs(&who, &name, &function, q.limit.unwrap_or(50).min(500))?;
    Ok(Json(RunList { runs }))
}

/// Starts a run of a cron function now: 202 with the run's id (and its URL in `Location`).
#[utoipa::path(
    post,
    path = "/api/projects/{name}/functions/{function}/runs",
    tag = "functions",
    security(("bearer" = [])),
    extensions(("x-eserveless-access" = json!("owner"))),
    params(("name" = String, Path, description = "The project"), ("function" = String, Path, description = "The function")),
    responses(
        (status = 202, description = "A run started; its URL in `Location`", body = RunStarted,
            headers(("Location" = String, description = "The run"))),
        (status = 404, description = "No such project or function (`project_not_found`, `function_not_found`)", body = ErrorBody),
        (status = 422, description = "The function is not a cron function (`not_cron`)", body = ErrorBody),
        (status = 409, description = "A run is going already, or the function is not a cron function (`run_in_progress`, `not_cron`, ...)", body = ErrorBody),
        TokenOrServer, EngineAndDisk,
    ),
)]
pub(super) async fn start_run(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    ApiPath((name, function)): ApiPath<(String, String)>,
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

#[utoipa::path(
    get,
    path = "/api/projects/{name}/functions/{function}/runs/{run}",
    tag = "functions",
    security(("bearer" = [])),
    extensions(("x-eserveless-access" = json!("owner"))),
    params(("name" = String, Path, description = "The project"), ("function" = String, Path, description = "The function"), ("run" = String, Path, description = "The run's id")),
    responses(
        (status = 200, description = "The run, with its output", body = CronRun),
        (status = 422, description = "The function is not a cron function (`not_cron`)", body = ErrorBody),
        (status = 404, description = "No such project, function or run (`project_not_found`, `function_not_found`, `run_not_found`)", body = ErrorBody),
        TokenOrServer,
    ),
)]
pub(super) async fn function_run(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    ApiPath((name, function, run)): ApiPath<(String, String, String)>,
) -> Result<Json<CronRun>, ApiError> {
    Ok(Json(s.platform.cron_run(&who, &name, &function, &run)?))
}

/// How long a log answer stays silent before an empty keep-alive line.
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// A function's output as NDJSON, one [`LogLine`](crate::api::types::LogLine) per line, in
/// time order across instances and cron runs; filters in the query ([`LogsQuery`]). With
/// `follow=true` the answer goes on with lines as they are written (instances and runs that
/// start later included) until the client closes it; empty lines are keep-alives. Sent through a bounded channel: a slow
/// client slows the reading, and the server never holds more than a few lines per source.
#[utoipa::path(
    get,
    path = "/api/projects/{name}/functions/{function}/logs",
    tag = "functions",
    security(("bearer" = [])),
    extensions(("x-eserveless-access" = json!("owner"))),
    params(("name" = String, Path, description = "The project"), ("function" = String, Path, description = "The function"), LogsQuery),
    responses(
        (status = 200, description = "NDJSON: one `LogLine` object per line, in time order (described as the array of the lines, since OpenAPI 3.1 has no stream type); with `follow=true` the answer goes on until the client closes it, with an empty line after 15 s of silence (a keep-alive: skip it)", content_type = "application/x-ndjson", body = Vec<LogLine>),
        (status = 400, description = "A filter is not valid (`invalid_log_filter`, `invalid_query`)", body = ErrorBody),
        (status = 404, description = "No such project, function or revision (`project_not_found`, `function_not_found`, `deployment_not_found`)", body = ErrorBody),
        (status = 503, description = "The container engine does not answer (`docker_unavailable`)", body = ErrorBody),
        TokenOrServer,
    ),
)]
pub(super) async fn function_logs(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    ApiPath((name, function)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> Result<Response, ApiError> {
    let req = q.parse(chrono::Utc::now()).map_err(|m| ApiError::bad_request("invalid_log_filter", m))?;
    // Access, the function and the revision are checked before the answer starts: still a status.
    let rx = s.platform.function_logs(&who, &name, &function, req).await?;
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        let line = match tokio::time::timeout(KEEP_ALIVE, rx.recv()).await {
            Ok(line) => line?,
            // An empty line while nothing is written: a client that went away is noticed (the
            // write fails) and its reader stops, and proxies see a live connection.
            Err(_) => return Some((Ok(bytes::Bytes::from_static(b"\n")), rx)),
        };
        let mut json = match serde_json::to_vec(&line) {
            Ok(j) => j,
            // A struct of strings, numbers and times always serializes; never send a broken line.
            Err(e) => {
                tracing::error!(error = %e, "a log line did not serialize");
                return Some((Ok::<_, std::convert::Infallible>(bytes::Bytes::new()), rx));
            }
        };
        json.push(b'\n');
        Some((Ok(bytes::Bytes::from(json)), rx))
    });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson"), (axum::http::header::CACHE_CONTROL, "no-cache")],
        Body::from_stream(lines),
    )
        .into_response())
}
