//! The embedded SQLite store: schema, migrations and queries for projects, deployments,
//! functions, cron runs and saved container output.
//!
//! Nothing on the request path reads from here; the in-memory route table is rebuilt from it
//! at start and updated when a deployment goes live.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use rusqlite_migration::{Migrations, M};
use serde::{Deserialize, Serialize};

use crate::infra::logs::{LogLine, LogStream, RawLine, LineSource};
use crate::manifest::FunctionType;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database migration failed")]
    Migration(#[from] rusqlite_migration::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// The write failed because the file system holding the database has no room left.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DiskFull)
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![M::up(
        r#"
        CREATE TABLE projects (
            name TEXT PRIMARY KEY,
            repository TEXT NOT NULL,
            git_ref TEXT,
            owner TEXT,
            created_at TEXT NOT NULL,
            live_deployment_id INTEGER
        );
        CREATE TABLE deployments (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            project TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
            repository TEXT NOT NULL,
            git_ref TEXT,
            commit_sha TEXT NOT NULL,
            runtime TEXT,
            status TEXT NOT NULL,
            error TEXT,
            warnings TEXT NOT NULL DEFAULT '[]',
            log TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL,
            started_at TEXT,
            finished_at TEXT
        );
        CREATE INDEX deployments_project ON deployments(project, id);
        CREATE TABLE functions (
            deployment_id INTEGER NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            kind TEXT NOT NULL,
            schedule TEXT,
            env TEXT NOT NULL DEFAULT '{}',
            timeout_ms INTEGER NOT NULL,
            scaling TEXT NOT NULL DEFAULT '{}',
            image TEXT,
            build_state TEXT NOT NULL,
            build_log TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (deployment_id, name)
        );
        CREATE TABLE cron_runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            project TEXT NOT NULL,
            function TEXT NOT NULL,
            deployment_id INTEGER NOT NULL,
            status TEXT NOT NULL,
            scheduled_at TEXT NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            duration_ms INTEGER,
            exit_code INTEGER,
            output TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX cron_runs_fn ON cron_runs(project, function, id);
        CREATE TABLE function_logs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            project TEXT NOT NULL,
            function TEXT NOT NULL,
            container TEXT NOT NULL,
            at TEXT NOT NULL,
            output TEXT NOT NULL
        );
        CREATE INDEX function_logs_fn ON function_logs(project, function, id);
        "#,
    ),
    M::up(
        r#"
        CREATE TABLE users (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE,
            admin INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL
        );
        CREATE TABLE tokens (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            hash BLOB NOT NULL,
            created_at TEXT NOT NULL,
            last_used_at TEXT,
            revoked_at TEXT
        );
        CREATE INDEX tokens_user ON tokens(user_id, id);
        CREATE TABLE secrets (
            project TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
            name TEXT NOT NULL,
            sealed BLOB NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (project, name)
        );
        ALTER TABLE projects ADD COLUMN invoke_key_hash BLOB;
        ALTER TABLE functions ADD COLUMN options TEXT NOT NULL DEFAULT '{}';
        "#,
    ),
    // History and rollback: who submitted a deployment, which deployment a rollback made live
    // again, and whether a cron run was started by its schedule or by hand.
    M::up(
        r#"
        ALTER TABLE deployments ADD COLUMN submitted_by TEXT;
        ALTER TABLE deployments ADD COLUMN rollback_of INTEGER;
        ALTER TABLE cron_runs ADD COLUMN trigger TEXT NOT NULL DEFAULT 'schedule';
        "#,
    ),
    // Deployments of an uploaded directory: where the source came from, its content digest
    // (sha256 of the tar, what "unchanged" compares) and whether the checkout was dirty.
    M::up(
        r#"
        ALTER TABLE deployments ADD COLUMN source TEXT NOT NULL DEFAULT 'git';
        ALTER TABLE deployments ADD COLUMN dirty INTEGER;
        ALTER TABLE deployments ADD COLUMN digest TEXT;
        "#,
    ),
    // Saved output as timed lines (`logs --since/--tail`), with their revision. The output
    // saved before becomes lines at the time it was saved, revision 0 (not recorded then).
    M::up(
        r#"
        CREATE TABLE log_sources (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            project TEXT NOT NULL,
            function TEXT NOT NULL,
            revision INTEGER NOT NULL,
            kind TEXT NOT NULL,
            container TEXT NOT NULL,
            run INTEGER,
            saved_at TEXT NOT NULL
        );
        CREATE INDEX log_sources_fn ON log_sources(project, function, id);
        CREATE TABLE log_lines (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            source_id INTEGER NOT NULL REFERENCES log_sources(id) ON DELETE CASCADE,
            project TEXT NOT NULL,
            function TEXT NOT NULL,
            time_ns INTEGER NOT NULL,
            stream TEXT NOT NULL,
            line TEXT NOT NULL
        );
        CREATE INDEX log_lines_time ON log_lines(project, function, time_ns, id);
        CREATE INDEX log_lines_source ON log_lines(source_id);
        INSERT INTO log_sources (id, project, function, revision, kind, container, run, saved_at)
            SELECT id, project, function, 0, 'instance', container, NULL, at FROM function_logs;
        INSERT INTO log_lines (source_id, project, function, time_ns, stream, line)
            WITH RECURSIVE split(source_id, project, function, at, line, rest) AS (
                SELECT id, project, function, at, NULL,
                       CASE WHEN substr(output, -1) = char(10) THEN output ELSE output || char(10) END FROM function_logs
                UNION ALL
                SELECT source_id, project, function, at, substr(rest, 1, instr(rest, char(10)) - 1),
                       substr(rest, instr(rest, char(10)) + 1)
                FROM split WHERE rest <> ''
            )
            SELECT source_id, project, function, CAST(round((julianday(at) - 2440587.5) * 86400000.0) AS INTEGER) * 1000000,
                   'stdout', line
            FROM split WHERE line IS NOT NULL;
        DROP TABLE function_logs;
        "#,
    )])
}

mod access;
pub use access::{SecretRow, TokenRow, UserRow};

/// A deployment's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentStatus {
    Queued,
    Building,
    Ready,
    Failed,
}

impl DeploymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Building => "building",
            Self::Ready => "ready",
            Self::Failed => "failed",
        }
    }
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "queued" => Self::Queued,
            "building" => Self::Building,
            "ready" => Self::Ready,
            "failed" => Self::Failed,
            other => return Err(StoreError::Corrupt(format!("deployment status `{other}`"))),
        })
    }
    pub fn is_final(self) -> bool {
        matches!(self, Self::Ready | Self::Failed)
    }
}

/// Where a deployment's source came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A commit fetched from a repository.
    #[default]
    Git,
    /// A directory uploaded by the client (`eserveless deploy DIR`).
    Upload,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Git => "git",
            Self::Upload => "upload",
        }
    }
    fn parse(s: &str) -> Result<Self> {
        match s {
            "git" => Ok(Self::Git),
            "upload" => Ok(Self::Upload),
            other => Err(StoreError::Corrupt(format!("deployment source `{other}`"))),
        }
    }
}

/// A function's build state within a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BuildState {
    Queued,
    Building,
    Built,
    Failed,
    Cancelled,
}

impl BuildState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Building => "building",
            Self::Built => "built",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "queued" => Self::Queued,
            "building" => Self::Building,
            "built" => Self::Built,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            other => return Err(StoreError::Corrupt(format!("build state `{other}`"))),
        })
    }
}

/// How a cron run went; `running` until it ends, `skipped` when a firing found the previous
/// run still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Skipped,
}

impl RunStatus {
    pub const ALL: [RunStatus; 5] = [Self::Running, Self::Succeeded, Self::Failed, Self::TimedOut, Self::Skipped];

    /// The text stored in `cron_runs.status` and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Skipped => "skipped",
        }
    }
    fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| StoreError::Corrupt(format!("cron run status `{s}`")))
    }
    /// Whether the run has ended (a skipped firing never started).
    pub fn is_final(self) -> bool {
        self != Self::Running
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What started a cron run: its schedule, or someone (`eserveless cron run`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunTrigger {
    #[default]
    Schedule,
    Manual,
}

impl RunTrigger {
    /// The text stored in `cron_runs.trigger` and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Schedule => "schedule",
            Self::Manual => "manual",
        }
    }
    fn parse(s: &str) -> Result<Self> {
        [Self::Schedule, Self::Manual]
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| StoreError::Corrupt(format!("cron run trigger `{s}`")))
    }
}

impl std::fmt::Display for RunTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

fn function_type(s: &str) -> Result<FunctionType> {
    FunctionType::parse(s).ok_or_else(|| StoreError::Corrupt(format!("function kind `{s}`")))
}

#[derive(Debug, Clone, Serialize)]
pub struct ProjectRow {
    pub name: String,
    pub repository: String,
    pub git_ref: Option<String>,
    /// The user who created it (`None` for projects from before users existed: admin's).
    pub owner: Option<String>,
    pub created_at: DateTime<Utc>,
    pub live_deployment_id: Option<i64>,
}

/// A deployment as recorded (and, flattened, as the API answers it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeploymentRow {
    pub id: i64,
    pub project: String,
    pub repository: String,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    /// The git commit: the one fetched, or for an upload the checkout's HEAD (empty when the
    /// uploaded directory was not a git checkout).
    pub commit: String,
    /// `git` or `upload`.
    #[serde(default)]
    pub source: SourceKind,
    /// Uploads: whether the checkout had uncommitted changes (`None` for git, and for an
    /// upload of a directory that is not a checkout).
    #[serde(default)]
    pub dirty: Option<bool>,
    /// Uploads: `sha256:<hex>` of the uploaded tar; the same digest live is "unchanged".
    #[serde(default)]
    pub digest: Option<String>,
    pub runtime: Option<String>,
    pub status: DeploymentStatus,
    pub error: Option<String>,
    pub warnings: Vec<String>,
    pub log: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The user whose request made it (`None` for deployments from before this was recorded).
    #[serde(default)]
    pub submitted_by: Option<String>,
    /// For a rollback: the earlier deployment it made live again (its images, its functions'
    /// settings); nothing was built.
    #[serde(default)]
    pub rollback_of: Option<i64>,
}

impl DeploymentRow {
    /// What was deployed, for people: `commit abc123def456`, `upload of abc123def456 (dirty)`,
    /// or `upload 1a2b3c4d5e6f` (a directory that is not a checkout: its digest).
    pub fn describe(&self) -> String {
        describe_source(self.source, &self.commit, self.dirty, self.digest.as_deref())
    }
}

/// See [`DeploymentRow::describe`].
pub fn describe_source(source: SourceKind, commit: &str, dirty: Option<bool>, digest: Option<&str>) -> String {
    let short = |s: &str| s.chars().take(12).collect::<String>();
    match source {
        SourceKind::Git => format!("commit {}", short(commit)),
        SourceKind::Upload if !commit.is_empty() => {
            format!("upload of {}{}", short(commit), if dirty == Some(true) { " (dirty)" } else { "" })
        }
        SourceKind::Upload => {
            format!("upload {}", short(digest.unwrap_or("").trim_start_matches("sha256:")))
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FunctionRow {
    pub deployment_id: i64,
    pub name: String,
    pub kind: FunctionType,
    pub schedule: Option<String>,
    pub env: std::collections::BTreeMap<String, String>,
    pub timeout_ms: u64,
    pub scaling: crate::manifest::Scaling,
    pub options: crate::manifest::FunctionOptions,
    pub image: Option<String>,
    pub build_state: BuildState,
    #[serde(skip)]
    pub build_log: String,
}

/// A cron run as recorded (and as the API answers it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CronRunRow {
    pub id: i64,
    pub project: String,
    pub function: String,
    pub deployment_id: i64,
    pub status: RunStatus,
    /// Started by the schedule or by hand.
    #[serde(default)]
    pub trigger: RunTrigger,
    pub scheduled_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub exit_code: Option<i64>,
    pub output: String,
}

/// Saved output kept per function: the lines of its newest this many containers and runs.
const LOG_SOURCES_KEPT: u32 = 100;

/// Which saved lines to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    pub project: String,
    pub function: String,
    /// Lines at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Lines of this deployment's instances and runs only.
    pub revision: Option<i64>,
}

/// Where saved lines came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSource {
    pub project: String,
    pub function: String,
    pub revision: i64,
    pub kind: LineSource,
    pub container: String,
    pub run: Option<i64>,
}

fn time_ns(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(if t.timestamp() < 0 { i64::MIN } else { i64::MAX })
}

const LOG_LINE_COLS: &str = "l.id, l.time_ns, s.kind, s.container, s.run, s.revision, l.stream, l.line";

fn log_line(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, std::result::Result<LogLine, String>)> {
    let id: i64 = r.get(0)?;
    let kind: String = r.get(2)?;
    let stream: String = r.get(6)?;
    let line = match (LineSource::parse(&kind), LogStream::parse(&stream)) {
        (Some(source), Some(stream)) => Ok(LogLine {
            time: DateTime::from_timestamp_nanos(r.get(1)?),
            source,
            instance: r.get(3)?,
            run: r.get(4)?,
            revision: r.get(5)?,
            stream,
            line: r.get(7)?,
        }),
        _ => Err(format!("log line {id}: source `{kind}`, stream `{stream}`")),
    };
    Ok((id, line))
}

/// The store. Cheap to share behind an `Arc`.
pub struct Store {
    conn: Mutex<Connection>,
}

fn ts(s: String) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(&s)
        .map(|d| d.with_timezone(&Utc))
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}

fn opt_ts(s: Option<String>) -> rusqlite::Result<Option<DateTime<Utc>>> {
    s.map(ts).transpose()
}

fn now() -> String {
    Utc::now().to_rfc3339()
}

const DEPLOYMENT_COLS: &str =
    "id, project, repository, git_ref, commit_sha, runtime, status, error, warnings, log, created_at, started_at, finished_at, submitted_by, rollback_of, source, dirty, digest";

fn deployment_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(DeploymentRow, String, String, String)> {
    Ok((
        DeploymentRow {
            id: r.get(0)?,
            project: r.get(1)?,
            repository: r.get(2)?,
            git_ref: r.get(3)?,
            commit: r.get(4)?,
            source: SourceKind::Git,
            dirty: r.get(16)?,
            digest: r.get(17)?,
            runtime: r.get(5)?,
            status: DeploymentStatus::Queued,
            error: r.get(7)?,
            warnings: Vec::new(),
            log: r.get(9)?,
            created_at: ts(r.get(10)?)?,
            started_at: opt_ts(r.get(11)?)?,
            finished_at: opt_ts(r.get(12)?)?,
            submitted_by: r.get(13)?,
            rollback_of: r.get(14)?,
        },
        r.get::<_, String>(6)?,
        r.get::<_, String>(8)?,
        r.get::<_, String>(15)?,
    ))
}

fn finish_deployment((mut d, status, warnings, source): (DeploymentRow, String, String, String)) -> Result<DeploymentRow> {
    d.status = DeploymentStatus::parse(&status)?;
    d.source = SourceKind::parse(&source)?;
    d.warnings = serde_json::from_str(&warnings).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(d)
}

/// A deployment request, validated, resolved to a commit (or an upload's digest), its
/// manifest checked.
pub struct EnqueueRequest<'a> {
    pub project: &'a str,
    pub repository: &'a str,
    pub git_ref: Option<&'a str>,
    pub commit: &'a str,
    /// Who asks: recorded on the deployment, and the owner of a project this request creates.
    pub owner: &'a str,
    pub source: SourceKind,
    /// Uploads: the content digest; compared instead of the commit.
    pub digest: Option<&'a str>,
    pub dirty: Option<bool>,
    /// Set when the manifest has `auth: private` functions: stored as the project's invoke
    /// key hash if the project has none yet (then [`Enqueued::Queued`] says `key_issued`).
    pub invoke_key_hash: Option<[u8; 32]>,
}

/// What [`Store::enqueue_deployment`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// The project belongs to someone the caller may not act for.
    NameTaken,
    /// This commit of this repository is live already.
    Unchanged(i64),
    /// The same commit is already queued or building: follow that deployment.
    Following(i64),
    /// `key_issued`: the request's invoke key hash became the project's (show the key once).
    Queued { id: i64, created_project: bool, key_issued: bool },
}

/// New function record for a deployment.
pub struct NewFunction<'a> {
    pub name: &'a str,
    pub kind: FunctionType,
    pub schedule: Option<&'a str>,
    pub env: &'a std::collections::BTreeMap<String, String>,
    pub timeout_ms: u64,
    pub scaling: &'a crate::manifest::Scaling,
    pub options: &'a crate::manifest::FunctionOptions,
    pub image: &'a str,
}

enum Decision {
    Done(Enqueued),
    Queue { existed: bool },
}

/// Whether `req` is refused, live already or on its way, or is to be queued.
fn decide(conn: &Connection, req: &EnqueueRequest<'_>, may_use: &dyn Fn(Option<&str>) -> bool) -> Result<Decision> {
    let existing: Option<(Option<i64>, Option<String>)> = conn
        .query_row("SELECT live_deployment_id, owner FROM projects WHERE name = ?1", [req.project], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((live, owner)) = existing else { return Ok(Decision::Queue { existed: false }) };
    if !may_use(owner.as_deref()) {
        return Ok(Decision::Done(Enqueued::NameTaken));
    }
    // An upload is its content; a git deployment its repository and commit.
    let same_source = |d: &DeploymentRow| match req.digest {
        Some(digest) => d.digest.as_deref() == Some(digest),
        None => d.digest.is_none() && d.commit == req.commit && d.repository == req.repository,
    };
    if let Some(live) = live {
        let row = conn
            .query_row(&format!("SELECT {DEPLOYMENT_COLS} FROM deployments WHERE id = ?1"), [live], deployment_from_row)
            .optional()?
            .map(finish_deployment)
            .transpose()?;
        if let Some(d) = row.filter(|d| same_source(d)) {
            return Ok(Decision::Done(Enqueued::Unchanged(d.id)));
        }
    }
    let latest = conn
        .query_row(
            &format!("SELECT {DEPLOYMENT_COLS} FROM deployments WHERE project = ?1 ORDER BY id DESC LIMIT 1"),
            [req.project],
            deployment_from_row,
        )
        .optional()?
        .map(finish_deployment)
        .transpose()?;
    if let Some(d) = latest.filter(|d| !d.status.is_final() && same_source(d)) {
        return Ok(Decision::Done(Enqueued::Following(d.id)));
    }
    Ok(Decision::Queue { existed: true })
}

impl Store {
    /// Opens (creating if needed) the database in `dir`, in WAL mode, and migrates it.
    pub fn open(dir: &Path) -> Result<Self> {
        let mut conn = Connection::open(dir.join("eserveless.db"))?;
        Self::setup(&mut conn)?;
        Ok(Store { conn: Mutex::new(conn) })
    }

    /// An in-memory store for tests.
    pub fn in_memory() -> Result<Self> {
        let mut conn = Connection::open_in_memory()?;
        Self::setup(&mut conn)?;
        Ok(Store { conn: Mutex::new(conn) })
    }

    fn setup(conn: &mut Connection) -> Result<()> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrations().to_latest(conn)?;
        Ok(())
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite itself consistent.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates the project for `owner`, or updates its source; the owner never changes.
    pub fn upsert_project(&self, name: &str, repository: &str, git_ref: Option<&str>, owner: &str) -> Result<()> {
        self.conn().execute(
            "INSERT INTO projects (name, repository, git_ref, created_at, owner) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(name) DO UPDATE SET repository = excluded.repository, git_ref = excluded.git_ref",
            params![name, repository, git_ref, now(), owner],
        )?;
        Ok(())
    }

    /// Decides and records a deployment request in one transaction, so that two requests
    /// racing for the same project cannot both create it (and both be shown an invoke key)
    /// or both queue the same commit.
    pub fn enqueue_deployment(&self, req: &EnqueueRequest<'_>, may_use: impl Fn(Option<&str>) -> bool) -> Result<Enqueued> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let existed = match decide(&tx, req, &may_use)? {
            Decision::Done(d) => return Ok(d),
            Decision::Queue { existed } => existed,
        };
        let key = req.invoke_key_hash.as_ref().map(|k| &k[..]);
        tx.execute(
            "INSERT INTO projects (name, repository, git_ref, created_at, owner, invoke_key_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(name) DO UPDATE SET repository = excluded.repository, git_ref = excluded.git_ref",
            params![req.project, req.repository, req.git_ref, now(), req.owner, key],
        )?;
        let key_issued = match key {
            None => false,
            Some(_) if !existed => true,
            Some(k) => tx.execute("UPDATE projects SET invoke_key_hash = ?2 WHERE name = ?1 AND invoke_key_hash IS NULL", params![req.project, k])? > 0,
        };
        tx.execute(
            "INSERT INTO deployments (project, repository, git_ref, commit_sha, status, created_at, submitted_by, source, dirty, digest)
             VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?7, ?8, ?9)",
            params![req.project, req.repository, req.git_ref, req.commit, now(), req.owner, req.source.as_str(), req.dirty, req.digest],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(Enqueued::Queued { id, created_project: !existed, key_issued })
    }

    /// What [`Store::enqueue_deployment`] would answer without queueing (`NameTaken`,
    /// `Unchanged`, `Following`), or `None` when it would queue: lets the engine skip fetching
    /// and checking a source that is live already. Decided again when queueing.
    pub fn enqueue_shortcut(&self, req: &EnqueueRequest<'_>, may_use: impl Fn(Option<&str>) -> bool) -> Result<Option<Enqueued>> {
        let conn = self.conn();
        Ok(match decide(&conn, req, &may_use)? {
            Decision::Done(d) => Some(d),
            Decision::Queue { .. } => None,
        })
    }

    pub fn project(&self, name: &str) -> Result<Option<ProjectRow>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT name, repository, git_ref, created_at, live_deployment_id, owner FROM projects WHERE name = ?1",
                [name],
                |r| {
                    Ok(ProjectRow {
                        name: r.get(0)?,
                        repository: r.get(1)?,
                        git_ref: r.get(2)?,
                        created_at: ts(r.get(3)?)?,
                        live_deployment_id: r.get(4)?,
                        owner: r.get(5)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn projects(&self) -> Result<Vec<ProjectRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, repository, git_ref, created_at, live_deployment_id, owner FROM projects ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ProjectRow {
                name: r.get(0)?,
                repository: r.get(1)?,
                git_ref: r.get(2)?,
                created_at: ts(r.get(3)?)?,
                live_deployment_id: r.get(4)?,
                owner: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn delete_project(&self, name: &str) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM cron_runs WHERE project = ?1", [name])?;
        tx.execute("DELETE FROM log_sources WHERE project = ?1", [name])?;
        let n = tx.execute("DELETE FROM projects WHERE name = ?1", [name])?;
        tx.commit()?;
        Ok(n > 0)
    }

    pub fn create_deployment(
        &self,
        project: &str,
        repository: &str,
        git_ref: Option<&str>,
        commit: &str,
    ) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO deployments (project, repository, git_ref, commit_sha, status, created_at)
             VALUES (?1, ?2, ?3, ?4, 'queued', ?5)",
            params![project, repository, git_ref, commit, now()],
        )?;
        Ok(conn.last_insert_rowid())
    }

    pub fn deployment(&self, id: i64) -> Result<Option<DeploymentRow>> {
        let row = self
            .conn()
            .query_row(&format!("SELECT {DEPLOYMENT_COLS} FROM deployments WHERE id = ?1"), [id], deployment_from_row)
            .optional()?;
        row.map(finish_deployment).transpose()
    }

    pub fn latest_deployment(&self, project: &str) -> Result<Option<DeploymentRow>> {
        let row = self
            .conn()
            .query_row(
                &format!("SELECT {DEPLOYMENT_COLS} FROM deployments WHERE project = ?1 ORDER BY id DESC LIMIT 1"),
                [project],
                deployment_from_row,
            )
            .optional()?;
        row.map(finish_deployment).transpose()
    }

    /// The project's deployments, newest first.
    pub fn deployments(&self, project: &str, limit: u32) -> Result<Vec<DeploymentRow>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare(&format!("SELECT {DEPLOYMENT_COLS} FROM deployments WHERE project = ?1 ORDER BY id DESC LIMIT ?2"))?;
        let rows = stmt.query_map(params![project, limit], deployment_from_row)?;
        rows.map(|r| finish_deployment(r?)).collect()
    }

    /// The project's newest deployment that went live by its own build (not a rollback) and is
    /// older than `before`.
    pub fn ready_build_before(&self, project: &str, before: i64) -> Result<Option<DeploymentRow>> {
        let row = self
            .conn()
            .query_row(
                &format!(
                    "SELECT {DEPLOYMENT_COLS} FROM deployments WHERE project = ?1 AND id < ?2 AND status = 'ready'
                     AND rollback_of IS NULL ORDER BY id DESC LIMIT 1"
                ),
                params![project, before],
                deployment_from_row,
            )
            .optional()?;
        row.map(finish_deployment).transpose()
    }

    /// Records a rollback to `target` by `who`: a new deployment (`building` until it goes
    /// live with [`Store::make_live`]) of the same commit, whose functions are the target's,
    /// with the same images and settings. Returns its id.
    pub fn record_rollback(&self, target: i64, who: &str) -> Result<i64> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let at = now();
        let n = tx.execute(
            "INSERT INTO deployments (project, repository, git_ref, commit_sha, runtime, status, warnings, log, created_at, started_at, submitted_by, rollback_of, source, dirty, digest)
             SELECT project, repository, git_ref, commit_sha, runtime, 'building', warnings, '', ?2, ?2, ?3, id, source, dirty, digest
             FROM deployments WHERE id = ?1",
            params![target, at, who],
        )?;
        if n != 1 {
            return Err(StoreError::Corrupt(format!("deployment {target} vanished during a rollback")));
        }
        let id = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO functions (deployment_id, name, kind, schedule, env, timeout_ms, scaling, image, options, build_state, build_log)
             SELECT ?2, name, kind, schedule, env, timeout_ms, scaling, image, options, build_state, ''
             FROM functions WHERE deployment_id = ?1 ORDER BY rowid",
            params![target, id],
        )?;
        tx.commit()?;
        Ok(id)
    }

    /// Deployments not yet final (after a crash they are marked failed at start).
    pub fn unfinished_deployments(&self) -> Result<Vec<i64>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id FROM deployments WHERE status IN ('queued', 'building')")?;
        let ids = stmt.query_map([], |r| r.get(0))?;
        Ok(ids.collect::<rusqlite::Result<_>>()?)
    }

    pub fn set_deployment_building(&self, id: i64, runtime: &str, warnings: &[String]) -> Result<()> {
        self.conn().execute(
            "UPDATE deployments SET status = 'building', runtime = ?2, warnings = ?3, started_at = COALESCE(started_at, ?4) WHERE id = ?1",
            params![id, runtime, serde_json::to_string(warnings).expect("strings serialize"), now()],
        )?;
        Ok(())
    }

    pub fn set_deployment_started(&self, id: i64) -> Result<()> {
        self.conn().execute(
            "UPDATE deployments SET status = 'building', started_at = ?2 WHERE id = ?1",
            params![id, now()],
        )?;
        Ok(())
    }

    pub fn append_deployment_log(&self, id: i64, line: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE deployments SET log = log || ?2 || char(10) WHERE id = ?1",
            params![id, line],
        )?;
        Ok(())
    }

    pub fn fail_deployment(&self, id: i64, error: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE deployments SET status = 'failed', error = ?2, finished_at = ?3 WHERE id = ?1",
            params![id, error, now()],
        )?;
        tx.execute(
            "UPDATE functions SET build_state = 'cancelled' WHERE deployment_id = ?1 AND build_state IN ('queued', 'building')",
            [id],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Marks the deployment ready and makes it the project's live one, atomically.
    pub fn make_live(&self, id: i64) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE deployments SET status = 'ready', finished_at = ?2 WHERE id = ?1",
            params![id, now()],
        )?;
        tx.execute(
            "UPDATE projects SET live_deployment_id = ?1 WHERE name = (SELECT project FROM deployments WHERE id = ?1)",
            [id],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn add_functions(&self, deployment_id: i64, functions: &[NewFunction<'_>]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for f in functions {
            tx.execute(
                "INSERT INTO functions (deployment_id, name, kind, schedule, env, timeout_ms, scaling, image, options, build_state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'queued')",
                params![
                    deployment_id,
                    f.name,
                    f.kind.as_str(),
                    f.schedule,
                    serde_json::to_string(f.env).expect("maps serialize"),
                    i64::try_from(f.timeout_ms).unwrap_or(i64::MAX),
                    serde_json::to_string(f.scaling).expect("scaling serializes"),
                    f.image,
                    serde_json::to_string(f.options).expect("options serialize"),
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn set_build_state(&self, deployment_id: i64, name: &str, state: BuildState, log: Option<&str>) -> Result<()> {
        self.conn().execute(
            "UPDATE functions SET build_state = ?3, build_log = COALESCE(?4, build_log) WHERE deployment_id = ?1 AND name = ?2",
            params![deployment_id, name, state.as_str(), log],
        )?;
        Ok(())
    }

    pub fn functions(&self, deployment_id: i64) -> Result<Vec<FunctionRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT deployment_id, name, kind, schedule, env, timeout_ms, scaling, image, build_state, build_log, options
             FROM functions WHERE deployment_id = ?1 ORDER BY rowid",
        )?;
        let rows = stmt.query_map([deployment_id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, Option<String>>(7)?,
                r.get::<_, String>(8)?,
                r.get::<_, String>(9)?,
                r.get::<_, String>(10)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (deployment_id, name, kind, schedule, env, timeout_ms, scaling, image, state, build_log, options) = row?;
            out.push(FunctionRow {
                deployment_id,
                name,
                kind: function_type(&kind)?,
                schedule,
                env: serde_json::from_str(&env).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                timeout_ms: u64::try_from(timeout_ms).unwrap_or(0),
                scaling: serde_json::from_str(&scaling).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                options: serde_json::from_str(&options).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                image,
                build_state: BuildState::parse(&state)?,
                build_log,
            });
        }
        Ok(out)
    }

    /// The project's last `n` deployments that went live, newest first. A rollback counts as
    /// the deployment it made live again (it has the same images), and each counts once.
    pub fn recent_ready_deployments(&self, project: &str, n: usize) -> Result<Vec<i64>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT COALESCE(rollback_of, id) AS built FROM deployments WHERE project = ?1 AND status = 'ready'
             GROUP BY built ORDER BY MAX(id) DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![project, i64::try_from(n).unwrap_or(i64::MAX)], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every image any deployment of the project recorded.
    pub fn project_images(&self, project: &str) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT DISTINCT f.image FROM functions f JOIN deployments d ON d.id = f.deployment_id
             WHERE d.project = ?1 AND f.image IS NOT NULL",
        )?;
        let rows = stmt.query_map([project], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn start_cron_run(
        &self,
        project: &str,
        function: &str,
        deployment_id: i64,
        scheduled_at: DateTime<Utc>,
        status: RunStatus,
        trigger: RunTrigger,
    ) -> Result<i64> {
        let conn = self.conn();
        let started = now();
        let finished = if status == RunStatus::Skipped { Some(started.clone()) } else { None };
        conn.execute(
            "INSERT INTO cron_runs (project, function, deployment_id, status, scheduled_at, started_at, finished_at, duration_ms, trigger)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, CASE WHEN ?7 IS NULL THEN NULL ELSE 0 END, ?8)",
            params![project, function, deployment_id, status.as_str(), scheduled_at.to_rfc3339(), started, finished, trigger.as_str()],
        )?;
        Ok(conn.last_insert_rowid())
    }

    pub fn finish_cron_run(
        &self,
        id: i64,
        status: RunStatus,
        exit_code: Option<i64>,
        duration_ms: i64,
        output: &str,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE cron_runs SET status = ?2, exit_code = ?3, duration_ms = ?4, output = ?5, finished_at = ?6 WHERE id = ?1",
            params![id, status.as_str(), exit_code, duration_ms, output, now()],
        )?;
        Ok(())
    }

    /// Marks runs left `running` by a crash as failed.
    pub fn abandon_running_cron_runs(&self) -> Result<usize> {
        Ok(self.conn().execute(
            "UPDATE cron_runs SET status = 'failed', output = output || 'eserveless: the server stopped during this run' || char(10), finished_at = ?1
             WHERE status = 'running'",
            [now()],
        )?)
    }

    pub fn cron_runs(&self, project: &str, function: &str, limit: u32) -> Result<Vec<CronRunRow>> {
        self.query_cron_runs("project = ?1 AND function = ?2 ORDER BY id DESC LIMIT ?3", params![project, function, limit])
    }

    /// One cron run of a function.
    pub fn cron_run(&self, project: &str, function: &str, id: i64) -> Result<Option<CronRunRow>> {
        Ok(self.query_cron_runs("project = ?1 AND function = ?2 AND id = ?3", params![project, function, id])?.pop())
    }

    fn query_cron_runs(&self, filter: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<CronRunRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT id, project, function, deployment_id, status, scheduled_at, started_at, finished_at, duration_ms, exit_code, output, trigger
             FROM cron_runs WHERE {filter}"
        ))?;
        let rows = stmt.query_map(args, |r| {
            Ok((
                CronRunRow {
                    id: r.get(0)?,
                    project: r.get(1)?,
                    function: r.get(2)?,
                    deployment_id: r.get(3)?,
                    // Replaced below by the stored text, which can only be checked outside
                    // this closure (it returns rusqlite's error type).
                    status: RunStatus::Running,
                    scheduled_at: ts(r.get(5)?)?,
                    started_at: ts(r.get(6)?)?,
                    finished_at: opt_ts(r.get(7)?)?,
                    duration_ms: r.get(8)?,
                    exit_code: r.get(9)?,
                    output: r.get(10)?,
                    trigger: RunTrigger::Schedule,
                },
                r.get::<_, String>(4)?,
                r.get::<_, String>(11)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (mut run, status, trigger) = row?;
            run.status = RunStatus::parse(&status)?;
            run.trigger = RunTrigger::parse(&trigger)?;
            out.push(run);
        }
        Ok(out)
    }

    /// Saves a removed container's (or a finished run's) last lines; keeps the lines of the
    /// newest [`LOG_SOURCES_KEPT`] per function.
    pub fn save_log_lines(&self, src: &LogSource, lines: &[RawLine]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO log_sources (project, function, revision, kind, container, run, saved_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![src.project, src.function, src.revision, src.kind.as_str(), src.container, src.run, now()],
        )?;
        let source_id = tx.last_insert_rowid();
        {
            let mut stmt = tx.prepare(
                "INSERT INTO log_lines (source_id, project, function, time_ns, stream, line) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for l in lines {
                stmt.execute(params![source_id, src.project, src.function, time_ns(l.time), l.stream.as_str(), l.text])?;
            }
        }
        tx.execute(
            "DELETE FROM log_sources WHERE project = ?1 AND function = ?2 AND id NOT IN
             (SELECT id FROM log_sources WHERE project = ?1 AND function = ?2 ORDER BY id DESC LIMIT ?3)",
            params![src.project, src.function, LOG_SOURCES_KEPT],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Saved lines matching `f`, in time order, after `after` (a `(time_ns, id)` cursor from
    /// the previous page); at most `limit`. Each with its row id.
    pub fn log_lines_page(&self, f: &LogFilter, after: Option<(i64, i64)>, limit: u32) -> Result<Vec<(i64, LogLine)>> {
        let (t, id) = after.unwrap_or((i64::MIN, i64::MIN));
        let since = f.since.map_or(i64::MIN, time_ns);
        self.log_lines_query(
            &format!(
                "SELECT {LOG_LINE_COLS} FROM log_lines l JOIN log_sources s ON s.id = l.source_id
                 WHERE l.project = ?1 AND l.function = ?2 AND l.time_ns >= ?3 AND (?4 IS NULL OR s.revision = ?4)
                   AND (l.time_ns > ?5 OR (l.time_ns = ?5 AND l.id > ?6))
                 ORDER BY l.time_ns, l.id LIMIT ?7"
            ),
            params![f.project, f.function, since, f.revision, t, id, limit],
        )
    }

    /// The last `n` saved lines matching `f`, in time order.
    pub fn log_lines_last(&self, f: &LogFilter, n: u32) -> Result<Vec<(i64, LogLine)>> {
        let since = f.since.map_or(i64::MIN, time_ns);
        let mut out = self.log_lines_query(
            &format!(
                "SELECT {LOG_LINE_COLS} FROM log_lines l JOIN log_sources s ON s.id = l.source_id
                 WHERE l.project = ?1 AND l.function = ?2 AND l.time_ns >= ?3 AND (?4 IS NULL OR s.revision = ?4)
                 ORDER BY l.time_ns DESC, l.id DESC LIMIT ?5"
            ),
            params![f.project, f.function, since, f.revision, n],
        )?;
        out.reverse();
        Ok(out)
    }

    /// Lines matching `f` saved after row `after_id` (what a follower has not seen), in the
    /// order they were saved; at most `limit`.
    pub fn log_lines_saved_after(&self, f: &LogFilter, after_id: i64, limit: u32) -> Result<Vec<(i64, LogLine)>> {
        let since = f.since.map_or(i64::MIN, time_ns);
        self.log_lines_query(
            &format!(
                "SELECT {LOG_LINE_COLS} FROM log_lines l JOIN log_sources s ON s.id = l.source_id
                 WHERE l.project = ?1 AND l.function = ?2 AND l.time_ns >= ?3 AND (?4 IS NULL OR s.revision = ?4) AND l.id > ?5
                 ORDER BY l.id LIMIT ?6"
            ),
            params![f.project, f.function, since, f.revision, after_id, limit],
        )
    }

    /// The newest saved line's row id (0 when none).
    pub fn last_log_line_id(&self) -> Result<i64> {
        Ok(self.conn().query_row("SELECT COALESCE(MAX(id), 0) FROM log_lines", [], |r| r.get(0))?)
    }

    fn log_lines_query(&self, sql: &str, params: impl rusqlite::Params) -> Result<Vec<(i64, LogLine)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params, log_line)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, line) = row?;
            out.push((id, line.map_err(StoreError::Corrupt)?));
        }
        Ok(out)
    }

    /// Keeps the newest `keep` cron runs per function.
    pub fn prune_cron_runs(&self, project: &str, function: &str, keep: u32) -> Result<()> {
        self.conn().execute(
            "DELETE FROM cron_runs WHERE project = ?1 AND function = ?2 AND id NOT IN
             (SELECT id FROM cron_runs WHERE project = ?1 AND function = ?2 ORDER BY id DESC LIMIT ?3)",
            params![project, function, keep],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Scaling;

    fn line(t: &str, text: &str) -> RawLine {
        RawLine { time: DateTime::parse_from_rfc3339(t).expect("t").with_timezone(&Utc), stream: LogStream::Stdout, text: text.into() }
    }

    fn source(container: &str, revision: i64) -> LogSource {
        LogSource { project: "p".into(), function: "F".into(), revision, kind: LineSource::Instance, container: container.into(), run: None }
    }

    #[test]
    fn saved_lines_read_back_in_time_order_by_page_tail_and_filter() {
        let s = Store::in_memory().expect("store");
        s.save_log_lines(&source("a", 1), &[line("2026-01-01T00:00:01Z", "a1"), line("2026-01-01T00:00:03Z", "a3")]).expect("save");
        s.save_log_lines(&source("b", 2), &[line("2026-01-01T00:00:02Z", "b2"), line("2026-01-01T00:00:04.5Z", "b4")]).expect("save");
        let f = LogFilter { project: "p".into(), function: "F".into(), ..LogFilter::default() };
        let text = |v: Vec<(i64, LogLine)>| v.into_iter().map(|(_, l)| l.line).collect::<Vec<_>>();
        let first = s.log_lines_page(&f, None, 3).expect("page");
        let cursor = first.last().map(|(id, l)| (l.time.timestamp_nanos_opt().expect("ns"), *id));
        assert_eq!(text(first), ["a1", "b2", "a3"]);
        assert_eq!(text(s.log_lines_page(&f, cursor, 3).expect("page")), ["b4"]);
        assert_eq!(text(s.log_lines_last(&f, 2).expect("tail")), ["a3", "b4"]);
        let since = LogFilter { since: Some(line("2026-01-01T00:00:03Z", "").time), ..f.clone() };
        assert_eq!(text(s.log_lines_page(&since, None, 10).expect("since")), ["a3", "b4"]);
        let rev = LogFilter { revision: Some(2), ..f.clone() };
        assert_eq!(text(s.log_lines_last(&rev, 10).expect("rev")), ["b2", "b4"]);
        let after = s.log_lines_page(&f, None, 10).expect("all")[1].0;
        assert_eq!(text(s.log_lines_saved_after(&f, after, 10).expect("after")), ["b4"], "by save order, after a row");
        let l = &s.log_lines_last(&f, 1).expect("one")[0].1;
        assert_eq!((l.instance.as_str(), l.revision, l.source, l.time.timestamp_subsec_millis()), ("b", 2, LineSource::Instance, 500));

        // Only the newest sources' lines are kept; a removed project's go with it.
        for i in 0..LOG_SOURCES_KEPT + 5 {
            s.save_log_lines(&source(&format!("c{i}"), 3), &[line("2026-01-02T00:00:00Z", "c")]).expect("save");
        }
        let sources: i64 = s.conn().query_row("SELECT COUNT(*) FROM log_sources", [], |r| r.get(0)).expect("count");
        assert_eq!(sources, i64::from(LOG_SOURCES_KEPT));
        assert_eq!(s.log_lines_last(&f, 10_000).expect("all").len(), LOG_SOURCES_KEPT as usize, "lines went with their sources");
        s.conn().execute("INSERT INTO projects (name, repository, created_at) VALUES ('p', 'r', '2026-01-01T00:00:00Z')", []).expect("p");
        assert!(s.delete_project("p").expect("delete"));
        assert!(s.log_lines_last(&f, 10).expect("none").is_empty());
    }

    /// Output saved before lines had times becomes lines at its save time, in order.
    #[test]
    fn older_saved_output_becomes_timed_lines() {
        let mut conn = Connection::open_in_memory().expect("db");
        migrations().to_version(&mut conn, 2).expect("the schema before timed lines");
        conn.execute(
            "INSERT INTO function_logs (project, function, container, at, output) VALUES ('p', 'F', 'c1', '2026-01-01T00:00:01.250+00:00', 'one\ntwo\n')",
            [],
        )
        .expect("old row");
        conn.execute(
            "INSERT INTO function_logs (project, function, container, at, output) VALUES ('p', 'F', 'c2', '2026-01-01T00:00:02+00:00', 'three')",
            [],
        )
        .expect("old row");
        migrations().to_latest(&mut conn).expect("migrate");
        let s = Store { conn: Mutex::new(conn) };
        let f = LogFilter { project: "p".into(), function: "F".into(), ..LogFilter::default() };
        let lines: Vec<LogLine> = s.log_lines_page(&f, None, 10).expect("lines").into_iter().map(|(_, l)| l).collect();
        let got: Vec<(&str, &str, String)> =
            lines.iter().map(|l| (l.instance.as_str(), l.line.as_str(), l.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))).collect();
        assert_eq!(
            got,
            [
                ("c1", "one", "2026-01-01T00:00:01.250Z".to_string()),
                ("c1", "two", "2026-01-01T00:00:01.250Z".to_string()),
                ("c2", "three", "2026-01-01T00:00:02.000Z".to_string()),
            ]
        );
    }

    #[test]
    fn racing_requests_create_a_project_once_and_queue_a_commit_once() {
        let s = Store::in_memory().expect("store");
        let req = |commit, owner, key: u8| EnqueueRequest {
            project: "p",
            repository: "https://x/y",
            git_ref: None,
            commit,
            owner,
            source: SourceKind::Git,
            digest: None,
            dirty: None,
            invoke_key_hash: Some([key; 32]),
        };
        let anyone = |_: Option<&str>| true;
        let first = s.enqueue_deployment(&req("aaa", "bob", 1), anyone).expect("first");
        let Enqueued::Queued { id, created_project: true, key_issued: true } = first else { panic!("{first:?}") };
        // The same commit again while the first is queued: follow it, create nothing.
        assert_eq!(s.enqueue_deployment(&req("aaa", "bob", 2), anyone).expect("second"), Enqueued::Following(id));
        // Only the creator's key is the project's.
        assert_eq!(s.invoke_key_hash("p").expect("hash").as_deref(), Some(&[1u8; 32][..]));
        // Another commit queues behind it without creating the project again.
        let third = s.enqueue_deployment(&req("bbb", "bob", 3), anyone).expect("third");
        assert!(matches!(third, Enqueued::Queued { created_project: false, .. }), "{third:?}");
        assert_eq!(s.invoke_key_hash("p").expect("hash").as_deref(), Some(&[1u8; 32][..]));
        // Someone who may not use the project is refused, and nothing is queued.
        let taken = s.enqueue_deployment(&req("ccc", "eve", 4), |owner| owner == Some("eve")).expect("taken");
        assert_eq!(taken, Enqueued::NameTaken);
        assert_eq!(s.latest_deployment("p").expect("latest").expect("some").commit, "bbb");
        // A live commit asked for again is unchanged.
        s.make_live(id).expect("live");
        assert_eq!(s.enqueue_deployment(&req("aaa", "bob", 5), anyone).expect("again"), Enqueued::Unchanged(id));
        assert_eq!(s.enqueue_shortcut(&req("aaa", "bob", 5), anyone).expect("peek"), Some(Enqueued::Unchanged(id)));
        assert_eq!(s.enqueue_shortcut(&req("ddd", "bob", 5), anyone).expect("peek"), None);
    }

    /// An upload is unchanged when its digest is live, whatever commit it names; the invoke
    /// key is issued by the first request whose manifest has private functions, once.
    #[test]
    fn uploads_compare_digests_and_keys_come_with_private_functions() {
        let s = Store::in_memory().expect("store");
        let up = |digest, key: Option<u8>| EnqueueRequest {
            project: "u",
            repository: "upload",
            git_ref: None,
            commit: "c0ffee",
            owner: "bob",
            source: SourceKind::Upload,
            digest: Some(digest),
            dirty: Some(true),
            invoke_key_hash: key.map(|k| [k; 32]),
        };
        let anyone = |_: Option<&str>| true;
        let first = s.enqueue_deployment(&up("sha256:aa", None), anyone).expect("first");
        let Enqueued::Queued { id, created_project: true, key_issued: false } = first else { panic!("{first:?}") };
        assert_eq!(s.invoke_key_hash("u").expect("hash"), None, "no private function, no key");
        let d = s.deployment(id).expect("read").expect("row");
        assert_eq!((d.source, d.dirty, d.digest.as_deref(), d.commit.as_str()), (SourceKind::Upload, Some(true), Some("sha256:aa"), "c0ffee"));
        assert_eq!(d.describe(), "upload of c0ffee (dirty)");
        s.make_live(id).expect("live");
        assert_eq!(s.enqueue_deployment(&up("sha256:aa", Some(1)), anyone).expect("same"), Enqueued::Unchanged(id));
        // Other content, same commit: a new deployment; private functions now: the key is issued.
        let second = s.enqueue_deployment(&up("sha256:bb", Some(2)), anyone).expect("second");
        assert!(matches!(second, Enqueued::Queued { created_project: false, key_issued: true, .. }), "{second:?}");
        let third = s.enqueue_deployment(&up("sha256:cc", Some(3)), anyone).expect("third");
        assert!(matches!(third, Enqueued::Queued { key_issued: false, .. }), "a key is issued once: {third:?}");
        assert_eq!(s.invoke_key_hash("u").expect("hash").as_deref(), Some(&[2u8; 32][..]));
    }

    #[test]
    fn deployment_lifecycle_and_live_switch() {
        let s = Store::in_memory().expect("store");
        s.upsert_project("p", "https://x/y", None, "admin").expect("project");
        let d1 = s.create_deployment("p", "https://x/y", None, "aaa").expect("d1");
        let env = std::collections::BTreeMap::from([("ESERVELESS_A".to_string(), "1".to_string())]);
        let scaling = Scaling::default();
        s.add_functions(
            d1,
            &[NewFunction { name: "API", kind: FunctionType::Http, schedule: None, env: &env, timeout_ms: 30000, scaling: &scaling, options: &Default::default(), image: "img:1" }],
        )
        .expect("fns");
        assert_eq!(s.deployment(d1).expect("get").expect("some").status, DeploymentStatus::Queued);
        s.set_deployment_building(d1, "node", &["w".into()]).expect("building");
        s.set_build_state(d1, "API", BuildState::Built, Some("log")).expect("state");
        s.make_live(d1).expect("live");
        let p = s.project("p").expect("get").expect("some");
        assert_eq!(p.live_deployment_id, Some(d1));
        let d = s.deployment(d1).expect("get").expect("some");
        assert_eq!(d.status, DeploymentStatus::Ready);
        assert_eq!(d.warnings, vec!["w".to_string()]);
        let f = &s.functions(d1).expect("fns")[0];
        assert_eq!(f.env, env);
        assert_eq!(f.build_state, BuildState::Built);
        assert_eq!(f.build_log, "log");

        // A failed deployment never replaces the live one.
        let d2 = s.create_deployment("p", "https://x/y", None, "bbb").expect("d2");
        s.fail_deployment(d2, "boom").expect("fail");
        assert_eq!(s.project("p").expect("get").expect("some").live_deployment_id, Some(d1));
        assert_eq!(s.latest_deployment("p").expect("get").expect("some").id, d2);
        assert_eq!(s.project_images("p").expect("imgs"), vec!["img:1".to_string()]);

        assert!(s.delete_project("p").expect("del"));
        assert!(s.deployment(d1).expect("get").is_none());
        assert!(!s.delete_project("p").expect("del again"));
    }

    #[test]
    fn a_rollback_is_a_new_deployment_with_the_targets_functions_and_counts_as_it() {
        let s = Store::in_memory().expect("store");
        let req = |commit| EnqueueRequest {
            project: "p",
            repository: "https://x/y",
            git_ref: Some("main"),
            commit,
            owner: "bob",
            source: SourceKind::Git,
            digest: None,
            dirty: None,
            invoke_key_hash: None,
        };
        let env = std::collections::BTreeMap::new();
        let scaling = Scaling::default();
        let mut ids = Vec::new();
        for (commit, image) in [("aaa", "img:1"), ("bbb", "img:2")] {
            let Enqueued::Queued { id, .. } = s.enqueue_deployment(&req(commit), |_| true).expect("enqueue") else { panic!("queued") };
            let f = NewFunction { name: "API", kind: FunctionType::Http, schedule: None, env: &env, timeout_ms: 1000, scaling: &scaling, options: &Default::default(), image };
            s.add_functions(id, &[f]).expect("fns");
            s.set_build_state(id, "API", BuildState::Built, Some("long build log")).expect("state");
            s.make_live(id).expect("live");
            ids.push(id);
        }
        let (d1, d2) = (ids[0], ids[1]);
        assert_eq!(s.deployment(d1).expect("get").expect("some").submitted_by.as_deref(), Some("bob"), "the submitter is recorded");
        assert_eq!(s.ready_build_before("p", d2).expect("before").map(|d| d.id), Some(d1));
        assert_eq!(s.ready_build_before("p", d1).expect("before"), None);

        let r = s.record_rollback(d1, "eve").expect("rollback");
        let d = s.deployment(r).expect("get").expect("some");
        assert_eq!((d.rollback_of, d.commit.as_str(), d.git_ref.as_deref(), d.status), (Some(d1), "aaa", Some("main"), DeploymentStatus::Building));
        assert_eq!(d.submitted_by.as_deref(), Some("eve"));
        let f = &s.functions(r).expect("fns")[0];
        assert_eq!((f.image.as_deref(), f.build_state, f.build_log.as_str()), (Some("img:1"), BuildState::Built, ""));
        s.make_live(r).expect("live");
        assert_eq!(s.project("p").expect("p").expect("some").live_deployment_id, Some(r));
        // The rollback stands for v1 in what is kept, and is never the default target itself.
        assert_eq!(s.recent_ready_deployments("p", 5).expect("recent"), vec![d1, d2]);
        assert_eq!(s.recent_ready_deployments("p", 1).expect("recent"), vec![d1]);
        assert_eq!(s.ready_build_before("p", r + 1).expect("before").map(|d| d.id), Some(d2));
        assert_eq!(s.deployments("p", 10).expect("list").iter().map(|d| d.id).collect::<Vec<_>>(), vec![r, d2, d1]);
        assert_eq!(s.deployments("p", 1).expect("list").len(), 1);
    }

    #[test]
    fn cron_runs_are_recorded_and_pruned() {
        let s = Store::in_memory().expect("store");
        for i in 0..5 {
            let id = s.start_cron_run("p", "T", 1, Utc::now(), RunStatus::Running, RunTrigger::Schedule).expect("start");
            s.finish_cron_run(id, RunStatus::Succeeded, Some(0), i, "out").expect("finish");
        }
        s.start_cron_run("p", "T", 1, Utc::now(), RunStatus::Skipped, RunTrigger::Schedule).expect("skip");
        let runs = s.cron_runs("p", "T", 100).expect("runs");
        assert_eq!(runs.len(), 6);
        assert_eq!(runs[0].status, RunStatus::Skipped);
        assert_eq!(runs[0].duration_ms, Some(0));
        s.prune_cron_runs("p", "T", 3).expect("prune");
        assert_eq!(s.cron_runs("p", "T", 100).expect("runs").len(), 3);
        let id = s.start_cron_run("p", "T", 1, Utc::now(), RunStatus::Running, RunTrigger::Schedule).expect("start");
        assert_eq!(s.abandon_running_cron_runs().expect("abandon"), 1);
        assert_eq!(s.cron_runs("p", "T", 1).expect("runs")[0].id, id);
        assert_eq!(s.cron_runs("p", "T", 1).expect("runs")[0].status, RunStatus::Failed);
    }

    #[test]
    fn reopen_keeps_data() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let s = Store::open(dir.path()).expect("open");
            s.upsert_project("p", "r", Some("main"), "admin").expect("p");
        }
        let s = Store::open(dir.path()).expect("reopen");
        assert_eq!(s.project("p").expect("get").expect("some").git_ref.as_deref(), Some("main"));
    }

    #[test]
    fn run_status_and_function_type_text_forms_round_trip() {
        let texts: Vec<&str> = RunStatus::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(texts, ["running", "succeeded", "failed", "timed_out", "skipped"]);
        for r in RunStatus::ALL {
            assert_eq!(RunStatus::parse(r.as_str()).expect("parses"), r);
            // The API's JSON carries the same text as the database.
            assert_eq!(serde_json::to_value(r).expect("json"), serde_json::json!(r.as_str()));
            assert_eq!(r.to_string(), r.as_str());
        }
        for t in FunctionType::ALL {
            assert_eq!(function_type(t.as_str()).expect("parses"), t);
            assert_eq!(serde_json::to_value(t).expect("json"), serde_json::json!(t.as_str()));
        }
        assert_eq!(serde_json::to_value(FunctionType::Http).expect("json"), serde_json::json!("http"));
        assert_eq!(serde_json::to_value(FunctionType::Cron).expect("json"), serde_json::json!("cron"));
    }

    #[test]
    fn unknown_stored_kinds_and_statuses_are_corrupt() {
        let s = Store::in_memory().expect("store");
        let id = s.start_cron_run("p", "T", 1, Utc::now(), RunStatus::Running, RunTrigger::Schedule).expect("start");
        s.conn().execute("UPDATE cron_runs SET status = 'exploded' WHERE id = ?1", [id]).expect("tamper");
        let e = s.cron_runs("p", "T", 10).expect_err("unknown status");
        assert!(matches!(&e, StoreError::Corrupt(m) if m == "cron run status `exploded`"), "{e:?}");

        s.upsert_project("p", "https://x/y", None, "admin").expect("project");
        let d = s.create_deployment("p", "https://x/y", None, "aaa").expect("d");
        let env = std::collections::BTreeMap::new();
        let scaling = Scaling::default();
        let f = NewFunction {
            name: "T",
            kind: FunctionType::Cron,
            schedule: Some("* * * * *"),
            env: &env,
            timeout_ms: 1000,
            scaling: &scaling,
            options: &Default::default(),
            image: "img:1",
        };
        s.add_functions(d, &[f]).expect("fns");
        let stored: String = s.conn().query_row("SELECT kind FROM functions", [], |r| r.get(0)).expect("kind");
        assert_eq!(stored, "cron", "the stored text is unchanged");
        assert_eq!(s.functions(d).expect("fns")[0].kind, FunctionType::Cron);
        s.conn().execute("UPDATE functions SET kind = 'grpc'", []).expect("tamper");
        let e = s.functions(d).expect_err("unknown kind");
        assert!(matches!(&e, StoreError::Corrupt(m) if m == "function kind `grpc`"), "{e:?}");
        assert_eq!(e.to_string(), "stored data is corrupt: function kind `grpc`");
    }
}
