//! The API's request and answer bodies, typed. Field names are the wire format: the CLI
//! and other clients deserialize the same structs, so a renamed field fails to compile or
//! to parse instead of silently reading as missing.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use crate::manifest::{Access, Scaling};
pub use crate::engine::views::{
    BuildState, CronRunRow as CronRun, DeploymentRow, DeploymentStatus, FunctionType, InstanceInfo, PoolCounts as InstanceCounts, RunStatus,
    RunTrigger,
};
pub use crate::engine::{SourceKind, UploadRequest};
pub use crate::engine::access::TokenInfo as TokenAnswer;
pub use crate::engine::{DeployRequest, SubmitStatus};

/// The header that carries an invoke key.
pub const INVOKE_KEY_HEADER: &str = "X-Eserveless-Key";

// --- server -------------------------------------------------------------------------------

/// `GET /`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServerInfo {
    pub name: String,
    pub version: String,
}

/// `GET /healthz`: `ok` or the problem, for the engine and the data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HealthAnswer {
    /// `ok` or `degraded`.
    pub status: String,
    pub docker: String,
    pub storage: String,
}

// --- users and tokens ---------------------------------------------------------------------

/// `GET /api/whoami`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WhoAmI {
    pub user: String,
    pub admin: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserAnswer {
    pub name: String,
    pub admin: bool,
    pub created_at: DateTime<Utc>,
    pub projects: Vec<String>,
}

/// `GET /api/users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserList {
    pub users: Vec<UserAnswer>,
}

/// `POST /api/users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// 1-32 of `a-z`, `0-9`, `-`, `_`, starting with a letter.
    #[schema(pattern = r"^[a-z][a-z0-9_-]{0,31}$")]
    pub name: String,
    #[serde(default)]
    pub admin: bool,
}

/// A token just made: the only answer that carries its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenCreated {
    pub id: i64,
    pub name: String,
    pub token: String,
}

/// `POST /api/users` answer: the user and its first token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserCreated {
    pub name: String,
    pub admin: bool,
    pub token: TokenCreated,
}

/// A removed user or secret: `{"deleted": name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Deleted {
    pub deleted: String,
}

/// `GET /api/tokens` query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TokensQuery {
    pub user: Option<String>,
    #[serde(default)]
    pub all: bool,
}

/// `GET /api/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenAnswer>,
}

/// `POST /api/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// 1-64 printable characters.
    #[schema(pattern = r"^[^\x00-\x1f\x7f-\x9f]{1,64}$")]
    pub name: String,
    #[serde(default)]
    pub user: Option<String>,
}

/// `DELETE /api/tokens/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Revoked {
    pub revoked: i64,
}

// --- projects and deployments -------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Links {
    pub deployment: String,
    pub project: String,
}

/// `POST /api/projects` and `POST /api/projects/{name}/uploads` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeployAnswer {
    pub project: String,
    pub deployment: i64,
    /// The git commit (for an upload, its checkout's HEAD; empty when not a checkout).
    pub commit: String,
    /// `git` or `upload`.
    #[serde(default)]
    pub source: SourceKind,
    /// Uploads of a checkout: uncommitted changes were uploaded.
    #[serde(default)]
    pub dirty: Option<bool>,
    /// Uploads: `sha256:<hex>` of the tar.
    #[serde(default)]
    pub digest: Option<String>,
    pub status: SubmitStatus,
    /// Only when this request issued the project's key (its first deployment with
    /// `auth: private` functions): the one time the key is shown.
    pub invoke_key: Option<String>,
    pub links: Links,
}

/// A deployment in a project's listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeploymentSummary {
    pub id: i64,
    pub commit: String,
    #[serde(default)]
    pub source: SourceKind,
    #[serde(default)]
    pub dirty: Option<bool>,
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    pub status: DeploymentStatus,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProjectListItem {
    pub name: String,
    pub owner: Option<String>,
    pub repository: String,
    pub live_commit: Option<String>,
    pub latest_deployment: Option<DeploymentSummary>,
}

/// `GET /api/projects`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProjectList {
    pub projects: Vec<ProjectListItem>,
}

/// The live deployment of a project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LiveDeployment {
    pub deployment: i64,
    pub commit: String,
    #[serde(default)]
    pub source: SourceKind,
    #[serde(default)]
    pub dirty: Option<bool>,
    #[serde(default)]
    pub digest: Option<String>,
    pub runtime: Option<String>,
    pub warnings: Vec<String>,
}

/// A live function of a project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProjectFunction {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: FunctionType,
    pub schedule: Option<String>,
    pub invoke_path: Option<String>,
    pub timeout_ms: u64,
    pub scaling: Option<Scaling>,
    pub auth: Option<Access>,
    pub memory_bytes: u64,
    pub cpu_millis: u32,
    pub image: Option<String>,
    pub instances: Option<InstanceCounts>,
    /// Each instance of an http function: id, state and (swarm) node.
    #[serde(default)]
    pub instance_list: Vec<InstanceInfo>,
    /// Cron functions: the schedule's next firing (UTC).
    #[serde(default)]
    pub next_run: Option<DateTime<Utc>>,
    /// Cron functions: the latest run, scheduled or by hand.
    #[serde(default)]
    pub last_run: Option<CronRun>,
}

/// `GET /api/projects/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProjectAnswer {
    pub name: String,
    pub owner: Option<String>,
    pub repository: String,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    pub created_at: DateTime<Utc>,
    pub live: Option<LiveDeployment>,
    pub latest_deployment: Option<DeploymentSummary>,
    pub functions: Vec<ProjectFunction>,
}

/// `DELETE /api/projects/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProjectDeleted {
    pub deleted: String,
    pub containers_removed: usize,
    pub images_removed: usize,
}

/// `POST /api/projects/{name}/invoke-key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvokeKey {
    pub project: String,
    pub invoke_key: String,
    /// The header to send it in.
    pub header: String,
}

/// A function of a deployment, with its build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeploymentFunction {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: FunctionType,
    pub schedule: Option<String>,
    pub image: Option<String>,
    pub build_state: BuildState,
    pub build_log: String,
    pub invoke_path: Option<String>,
}

/// `GET /api/projects/{name}/deployments/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeploymentAnswer {
    #[serde(flatten)]
    pub deployment: DeploymentRow,
    pub live: bool,
    pub functions: Vec<DeploymentFunction>,
}

/// `GET /api/projects/{name}/deployments` query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeploymentsQuery {
    /// At most this many, newest first (default 20; 0 is taken as 1, more than 200 as 200).
    #[param(value_type = Option<u32>, format = Int64, minimum = 0, maximum = 4294967295_u32)]
    pub limit: Option<u32>,
}

/// A deployment in a project's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeploymentListItem {
    pub id: i64,
    pub commit: String,
    /// `git` or `upload`.
    #[serde(default)]
    pub source: SourceKind,
    /// Uploads of a checkout: uncommitted changes were uploaded.
    #[serde(default)]
    pub dirty: Option<bool>,
    /// Uploads: `sha256:<hex>` of the tar.
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    pub repository: String,
    pub runtime: Option<String>,
    pub status: DeploymentStatus,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The user whose request made it (`null` for deployments older than this field).
    pub submitted_by: Option<String>,
    /// For a rollback: the deployment it made live again (nothing was built).
    pub rollback_of: Option<i64>,
    /// It is the one serving now.
    pub live: bool,
    /// For a deployment that went live: whether its images are all still there, so that
    /// `rollback` to it needs no build. `null` for the others (or when Docker did not answer).
    pub images_present: Option<bool>,
}

/// `GET /api/projects/{name}/deployments`: newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeploymentList {
    pub project: String,
    pub deployments: Vec<DeploymentListItem>,
}

/// `POST /api/projects/{name}/rollback` (the body may be empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The deployment to make live again; default: the newest successful one older than the live one.
    #[serde(default)]
    pub deployment: Option<i64>,
}

/// `POST /api/projects/{name}/rollback` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RollbackAnswer {
    pub project: String,
    /// The new deployment that records the rollback; live now.
    pub deployment: i64,
    /// The earlier deployment made live again.
    pub rollback_of: i64,
    pub commit: String,
    /// The deployment that was live before.
    pub previous: Option<i64>,
    /// Always `false`: a rollback uses the images the deployment was built with, and is
    /// refused (`images_removed`) when they are gone.
    pub rebuilt: bool,
    pub links: Links,
}

// --- functions ----------------------------------------------------------------------------

/// `POST .../functions/{function}/runs` answer (202): the run started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunStarted {
    pub project: String,
    pub function: String,
    pub run: i64,
    pub trigger: RunTrigger,
    /// `GET` it to follow the run.
    pub link: String,
}

/// `GET .../runs` query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// At most this many, newest first (default 50; more than 500 is taken as 500).
    #[param(value_type = Option<u32>, format = Int64, minimum = 0, maximum = 4294967295_u32)]
    pub limit: Option<u32>,
}

/// `GET .../runs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunList {
    pub runs: Vec<CronRun>,
}

pub use crate::engine::logs::{LogLine, LogStream, LogsRequest, LineSource, MAX_TAIL};

/// `GET .../logs` query: the filters as sent, checked by [`LogsQuery::parse`] (so a bad value
/// gets a message naming it and the accepted forms, not a generic query error). The answer
/// is NDJSON (`application/x-ndjson`): one [`LogLine`] per line, in time order; with
/// `follow=true` it goes on until the client closes it, with an empty line after 15 s of
/// silence (a keep-alive: skip it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// `true` or `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<bool>)]
    pub follow: Option<String>,
    /// A duration back from now (`90s`, `10m`, `2h`, `1d`) or an RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(pattern = r"^([1-9][0-9]{0,3}[smhd])+$|^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z$")]
    pub since: Option<String>,
    /// The last N lines, 0 to 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<u32>, minimum = 0, maximum = 10000)]
    pub tail: Option<String>,
    /// A deployment id of the project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<i64>, minimum = 1)]
    pub revision: Option<String>,
}

impl LogsQuery {
    /// The request these values ask for, `since` taken back from `now`; or a message that
    /// names the bad value and the forms accepted.
    pub fn parse(&self, now: DateTime<Utc>) -> Result<LogsRequest, String> {
        let follow = match self.follow.as_deref() {
            None | Some("false" | "0" | "") => false,
            Some("true" | "1") => true,
            Some(v) => return Err(format!("follow `{v}` is not a yes/no value; use follow=true or follow=false")),
        };
        let since = self.since.as_deref().map(|v| parse_since(v, now)).transpose()?;
        let tail = self.tail.as_deref().map(parse_tail).transpose()?;
        let revision = match self.revision.as_deref() {
            None => None,
            Some(v) => Some(v.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                format!("revision `{v}` is not a deployment id; use a number from `eserveless show` or the deployments list, e.g. revision=12")
            })?),
        };
        Ok(LogsRequest { follow, since, tail, revision })
    }
}

/// `--since`: a duration back from `now` (`30s`, `10m`, `2h`, `1d`, `1h30m`) or an RFC 3339
/// time (`2026-12-01T21:40:00Z`).
pub fn parse_since(v: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let bad = || {
        format!("since `{v}` is neither a duration back from now (30s, 10m, 2h, 1d) nor an RFC 3339 time (2026-12-01T21:40:00Z)")
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(v.trim()) {
        return Ok(t.with_timezone(&Utc));
    }
    // Durations only with a unit: a bare `10` could mean seconds or minutes.
    if !v.trim().ends_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(bad());
    }
    let d = humantime::parse_duration(v.trim()).map_err(|_| bad())?;
    let d = chrono::Duration::from_std(d).map_err(|_| bad())?;
    now.checked_sub_signed(d).ok_or_else(bad)
}

/// `--tail`: a number of lines, 0 to [`MAX_TAIL`].
pub fn parse_tail(v: &str) -> Result<u32, String> {
    match v.trim().parse::<u64>() {
        Ok(n) if n <= u64::from(MAX_TAIL) => Ok(u32::try_from(n).unwrap_or(MAX_TAIL)),
        Ok(_) => Err(format!("tail `{v}` is more than the {MAX_TAIL} lines kept in hand; use --since to go further back")),
        Err(_) => Err(format!("tail `{v}` is not a number of lines; use a whole number from 0 to {MAX_TAIL}, e.g. tail=100")),
    }
}

// --- secrets ------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretAnswer {
    pub name: String,
    pub updated_at: DateTime<Utc>,
}

/// `GET /api/projects/{name}/secrets`: names only, never values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretList {
    pub secrets: Vec<SecretAnswer>,
}

/// `POST /api/projects/{name}/secrets`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretsChange {
    /// Names (environment variable names, not `ESERVELESS_*` nor one the platform sets) and
    /// their values (at most 64 KiB, no NUL).
    #[serde(default)]
    #[schema(schema_with = secrets_map)]
    pub set: BTreeMap<String, String>,
}

/// `SecretsChange.set`: at least one secret, by environment variable name.
pub fn secrets_map() -> utoipa::openapi::Object {
    let name = utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::schema::Type::String).pattern(Some(SECRET_NAME));
    let mut o = utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Object)
        .property_names(Some(name))
        .additional_properties(Some(utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::schema::Type::String).max_length(Some(8192)).pattern(Some(r"^[^\x00]*$"))))
        .min_properties(Some(1))
        .build();
    o.description = Some("The secrets to set, by name".to_string());
    o
}

/// A secret's name as the server takes it: an environment variable name, neither `ESERVELESS_*`
/// nor one the platform sets (`PORT`, `HOME`, `PATH`, `NODE_ENV`, `NODE_OPTIONS`, `LD_*`),
/// in any case.
pub const SECRET_NAME: &str = r"^(?![Ee][Ss][Ee][Rr][Vv][Ee][Rr][Ll][Ee][Ss][Ss]_)(?!([Pp][Oo][Rr][Tt]|[Hh][Oo][Mm][Ee]|[Pp][Aa][Tt][Hh]|[Nn][Oo][Dd][Ee]_[Ee][Nn][Vv]|[Nn][Oo][Dd][Ee]_[Oo][Pp][Tt][Ii][Oo][Nn][Ss]|[Ll][Dd]_[Pp][Rr][Ee][Ll][Oo][Aa][Dd]|[Ll][Dd]_[Ll][Ii][Bb][Rr][Aa][Rr][Yy]_[Pp][Aa][Tt][Hh])$)[A-Za-z_][A-Za-z0-9_]{0,127}$";

/// `POST /api/projects/{name}/secrets` answer: the names set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretsSet {
    pub set: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(v: &serde_json::Value) -> Vec<&str> {
        let mut k: Vec<&str> = v.as_object().expect("object").keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }

    #[test]
    fn since_takes_a_duration_or_a_time() {
        let now = DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z").expect("t").with_timezone(&Utc);
        let ago = |v: &str| (now - parse_since(v, now).expect(v)).num_seconds();
        assert_eq!(ago("90s"), 90);
        assert_eq!(ago("10m"), 600);
        assert_eq!(ago("2h"), 7200);
        assert_eq!(ago("1d"), 86400);
        assert_eq!(ago("1h30m"), 5400);
        assert_eq!(parse_since("2026-12-01T21:40:00.5+01:00", now).expect("rfc").to_rfc3339(), "2026-12-01T20:40:00.500+00:00");
        for bad in ["10", "ten minutes ago", "", "-5m", "2026-13-01T00:00:00Z", "5 parsecs"] {
            let e = parse_since(bad, now).expect_err(bad);
            assert!(e.contains(&format!("`{bad}`")) && e.contains("10m") && e.contains("RFC 3339"), "{e}");
        }
    }

    #[test]
    fn tail_is_a_bounded_count() {
        assert_eq!(parse_tail("0"), Ok(0));
        assert_eq!(parse_tail("100"), Ok(100));
        assert_eq!(parse_tail(&MAX_TAIL.to_string()), Ok(MAX_TAIL));
        let e = parse_tail("10001").expect_err("too many");
        assert!(e.contains("`10001`") && e.contains("10000"), "{e}");
        for bad in ["-1", "x", "1.5", ""] {
            let e = parse_tail(bad).expect_err(bad);
            assert!(e.contains(&format!("`{bad}`")) && e.contains("whole number"), "{e}");
        }
    }

    #[test]
    fn a_logs_query_parses_each_filter_and_names_a_bad_one() {
        let now = Utc::now();
        let q = LogsQuery { follow: Some("true".into()), since: None, tail: Some("5".into()), revision: Some("12".into()) };
        assert_eq!(q.parse(now), Ok(LogsRequest { follow: true, since: None, tail: Some(5), revision: Some(12) }));
        assert_eq!(LogsQuery::default().parse(now), Ok(LogsRequest::default()));
        let e = LogsQuery { follow: Some("yes".into()), ..LogsQuery::default() }.parse(now).expect_err("follow");
        assert!(e.contains("`yes`") && e.contains("follow=true"), "{e}");
        let e = LogsQuery { revision: Some("abc".into()), ..LogsQuery::default() }.parse(now).expect_err("revision");
        assert!(e.contains("`abc`") && e.contains("deployment id"), "{e}");
    }

    /// Absent optional values are sent as `null` (clients test for it), and read back.
    #[test]
    fn deploy_answer_round_trips_with_null_key() {
        let a = DeployAnswer {
            project: "p".into(),
            deployment: 1,
            commit: "abc".into(),
            source: SourceKind::Git,
            dirty: None,
            digest: None,
            status: SubmitStatus::Queued,
            invoke_key: None,
            links: Links { deployment: "/api/projects/p/deployments/1".into(), project: "/api/projects/p".into() },
        };
        let v = serde_json::to_value(&a).expect("json");
        assert_eq!(v["invoke_key"], json!(null));
        assert_eq!(v["status"], json!("queued"));
        assert_eq!(serde_json::from_value::<DeployAnswer>(v).expect("back"), a);
    }

    /// A deployment's answer is its record flattened, with `ref` (not `git_ref`), `live` and
    /// `functions` beside it: the shape clients read.
    #[test]
    fn deployment_answer_is_the_record_flattened() {
        let at = DateTime::<Utc>::from_timestamp(0, 0).expect("epoch");
        let a = DeploymentAnswer {
            deployment: DeploymentRow {
                id: 4,
                project: "p".into(),
                repository: "https://example.com/r.git".into(),
                git_ref: Some("main".into()),
                commit: "abc".into(),
                source: SourceKind::Upload,
                dirty: Some(true),
                digest: Some("sha256:00".into()),
                runtime: Some("node".into()),
                status: DeploymentStatus::Ready,
                error: None,
                warnings: vec![],
                log: String::new(),
                created_at: at,
                started_at: None,
                finished_at: None,
                submitted_by: Some("admin".into()),
                rollback_of: None,
            },
            live: true,
            functions: vec![],
        };
        let v = serde_json::to_value(&a).expect("json");
        assert_eq!(
            keys(&v),
            [
                "commit", "created_at", "digest", "dirty", "error", "finished_at", "functions", "id", "live", "log", "project", "ref", "repository",
                "rollback_of", "runtime", "source", "started_at", "status", "submitted_by", "warnings"
            ]
        );
        assert_eq!((&v["source"], &v["dirty"]), (&json!("upload"), &json!(true)));
        assert_eq!((&v["ref"], &v["status"], &v["live"]), (&json!("main"), &json!("ready"), &json!(true)));
        assert_eq!(serde_json::from_value::<DeploymentAnswer>(v).expect("back"), a);
    }
}