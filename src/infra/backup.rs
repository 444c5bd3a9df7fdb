//! `eserveless backup` and `eserveless restore`: a consistent copy of a data directory taken
//! while the server runs (the database through SQLite's online backup API, the secrets key and
//! the server id) in one tar file, and its restore into a new, empty data directory.
//!
//! The archive holds, in this order:
//!
//! * `eserveless-backup.json`: the manifest (format version, eserveless version, time, source,
//!   schema version, counts, and the size and SHA-256 of every other entry). First, so a reader
//!   knows what it holds, and can refuse a newer format, before reading anything large.
//! * `eserveless.db`, `secrets.key`, `server-id`: named as in the data directory, so the
//!   archive is also restorable by hand with `tar -x` into an empty directory.
//!
//! Left out on purpose: `admin-token` (a plaintext credential; the database keeps every
//! token's hash, so existing tokens keep working, and a stolen backup then gives no API access
//! to the running server), `work/` (build scratch) and `lock` (the running server's).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::infra::secrets::KEY_FILE;

/// The archive format this build writes and the newest it reads.
pub const FORMAT: u32 = 1;
/// The manifest's name in the archive.
pub const MANIFEST: &str = "eserveless-backup.json";
/// The database's name, in the data directory and in the archive.
pub const DB_FILE: &str = "eserveless.db";
/// The server's identity on the Docker engine (see `datadir.rs`).
pub use crate::infra::datadir::SERVER_ID_FILE;
const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;
const MAX_SERVER_ID_BYTES: u64 = 64;
/// How long a backup waits for a database that stays busy (only a WAL recovery can do that).
const BUSY_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub projects: i64,
    pub deployments: i64,
    pub secrets: i64,
    pub users: i64,
    pub tokens: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub eserveless_version: String,
    pub created_at: String,
    /// The data directory it was taken from (for the operator's information only).
    pub source: String,
    pub server_id: Option<String>,
    /// SQLite `user_version`: the number of migrations applied to the database.
    pub schema_version: i64,
    pub counts: Counts,
    pub files: Vec<FileEntry>,
}

/// What `backup` wrote.
#[derive(Debug)]
pub struct BackupReport {
    pub file: PathBuf,
    pub bytes: u64,
    pub manifest: Manifest,
    /// Secrets that do not open with the key (the live server cannot open them either).
    pub unopened_secrets: Vec<String>,
}

/// What `restore` did.
#[derive(Debug)]
pub struct RestoreReport {
    pub data_dir: PathBuf,
    pub manifest: Manifest,
    /// Counted in the restored database.
    pub counts: Counts,
    /// The server id now in the data directory, if any.
    pub server_id: Option<String>,
    /// Whether that id is the original's (false: fresh, or none in the backup).
    pub identity_restored: bool,
    pub unopened_secrets: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Backup

/// Writes a consistent copy of `data_dir` to `file` (never a half file: a temporary file beside
/// it is renamed into place). Refuses to replace an existing `file` unless `force`.
pub fn backup(data_dir: &Path, file: &Path, force: bool) -> Result<BackupReport> {
    check_data_dir(data_dir)?;
    if !force && std::fs::symlink_metadata(file).is_ok() {
        bail!("{} exists already; choose another file name, or pass --force to replace it", file.display());
    }
    let parent = parent_dir(file);
    if !parent.is_dir() {
        bail!("the directory {} for the backup file does not exist; create it first, or choose another path", parent.display());
    }
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "backup".into());
    // Staged beside the file, not in /tmp: the same file system (a database can be large, and
    // /tmp is often a small tmpfs), and tempfile makes the directory 0700.
    let stage = tempfile::Builder::new()
        .prefix(&format!(".{name}.stage-"))
        .tempdir_in(&parent)
        .with_context(|| format!("cannot create a staging directory in {}", parent.display()))?;

    let db_copy = stage.path().join(DB_FILE);
    copy_database(&data_dir.join(DB_FILE), &db_copy)?;
    let db = Connection::open(&db_copy).with_context(|| format!("cannot open the copy {}", db_copy.display()))?;
    integrity_check(&db).context("the copy of the database failed `PRAGMA integrity_check`; the original may be damaged")?;
    // One self-contained file: no -wal beside the copy.
    db.pragma_update(None, "journal_mode", "DELETE").context("cannot switch the copy out of WAL mode")?;
    let has_projects: bool = db
        .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'projects'", [], |r| r.get(0))
        .context("cannot read the copy's schema")?;
    if !has_projects {
        bail!("{} is not an eserveless database (it has no `projects` table); pass the server's --data-dir", data_dir.join(DB_FILE).display());
    }
    let counts = counts(&db)?;
    let schema_version: i64 = db.pragma_query_value(None, "user_version", |r| r.get(0))?;

    let mut names = vec![DB_FILE];
    let key_src = data_dir.join(KEY_FILE);
    let unopened_secrets = match std::fs::read(&key_src) {
        Ok(key) => {
            crate::infra::datadir::write_private(&stage.path().join(KEY_FILE), &key)
                .with_context(|| format!("cannot write to {}", stage.path().display()))?;
            names.push(KEY_FILE);
            unopened_secrets(&db, stage.path())?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if counts.secrets > 0 {
                bail!(
                    "{} is missing, but the database holds {} secrets sealed with it; without the key they cannot be opened. \
                     Put the key back (from an older backup) before backing up",
                    key_src.display(),
                    counts.secrets
                );
            }
            Vec::new()
        }
        Err(e) => return Err(read_error(e, &key_src)),
    };
    drop(db);

    let id_src = data_dir.join(SERVER_ID_FILE);
    let server_id = match std::fs::read_to_string(&id_src) {
        Ok(id) if valid_server_id(id.trim()) => {
            let id = id.trim().to_string();
            crate::infra::datadir::write_private(&stage.path().join(SERVER_ID_FILE), id.as_bytes())?;
            names.push(SERVER_ID_FILE);
            Some(id)
        }
        // Malformed: the server replaces it with a new one at its next start, so it names nothing.
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(read_error(e, &id_src)),
    };

    let mut files = Vec::new();
    for n in &names {
        let path = stage.path().join(n);
        let (bytes, sha256) = hash_file(&path)?;
        files.push(FileEntry { name: n.to_string(), bytes, sha256 });
    }
    let manifest = Manifest {
        format: FORMAT,
        eserveless_version: env!("CARGO_PKG_VERSION").to_string(),
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        source: std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf()).display().to_string(),
        server_id,
        schema_version,
        counts,
        files,
    };

    // tempfile creates the file 0600: the archive holds the key.
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(&parent)
        .with_context(|| format!("cannot create a temporary file in {}", parent.display()))?;
    let mut builder = tar::Builder::new(std::io::BufWriter::new(tmp.as_file()));
    let mtime = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
    let manifest_json = serde_json::to_vec_pretty(&manifest)?;
    append(&mut builder, MANIFEST, manifest_json.len() as u64, mtime, &manifest_json[..])?;
    for f in &manifest.files {
        let path = stage.path().join(&f.name);
        let src = std::fs::File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
        append(&mut builder, &f.name, f.bytes, mtime, src)?;
    }
    let mut out = builder.into_inner().context("cannot finish the archive")?;
    out.flush().context("cannot write the archive")?;
    drop(out);
    tmp.as_file().sync_all().context("cannot write the archive to disk")?;
    let bytes = tmp.as_file().metadata()?.len();
    if force {
        tmp.persist(file).map_err(|e| anyhow!(e.error)).with_context(|| format!("cannot write {}", file.display()))?;
    } else {
        tmp.persist_noclobber(file).map_err(|e| {
            if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                anyhow!("{} appeared while the backup ran; choose another file name, or pass --force to replace it", file.display())
            } else {
                anyhow!(e.error).context(format!("cannot write {}", file.display()))
            }
        })?;
    }
    sync_dir(&parent);
    Ok(BackupReport { file: file.to_path_buf(), bytes, manifest, unopened_secrets })
}

use crate::infra::datadir::valid_server_id;

fn check_data_dir(data_dir: &Path) -> Result<()> {
    match std::fs::metadata(data_dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("the data directory {} is not a directory; pass the server's data directory with --data-dir (or ESERVELESS_DATA_DIR)", data_dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "the data directory {} does not exist; pass the server's data directory with --data-dir (or ESERVELESS_DATA_DIR); \
             `serve` defaults to ./.eserveless in the directory it was started from",
            data_dir.display()
        ),
        Err(e) => return Err(read_error(e, data_dir)),
    }
    let db = data_dir.join(DB_FILE);
    if !db.is_file() {
        bail!(
            "{} holds no {DB_FILE}: it is not an eserveless data directory, or no server has started there yet; \
             pass the server's data directory with --data-dir",
            data_dir.display()
        );
    }
    Ok(())
}

/// Copies the live database with SQLite's online backup API: all pages in one step, so the
/// copy is one consistent snapshot (one read transaction), and in WAL mode the running server
/// keeps writing meanwhile. The source is opened read-only: a backup never changes it.
fn copy_database(src_path: &Path, dst_path: &Path) -> Result<()> {
    let src = Connection::open_with_flags(src_path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| read_error_sql(e, src_path))?;
    src.busy_timeout(BUSY_WAIT)?;
    let mut dst = Connection::open(dst_path).with_context(|| format!("cannot create {}", dst_path.display()))?;
    let copy = rusqlite::backup::Backup::new(&src, &mut dst).map_err(|e| read_error_sql(e, src_path))?;
    let began = std::time::Instant::now();
    loop {
        match copy.step(-1).map_err(|e| read_error_sql(e, src_path))? {
            rusqlite::backup::StepResult::Done => return Ok(()),
            _ if began.elapsed() > BUSY_WAIT => {
                bail!("the database {} stayed busy for {}s; try again", src_path.display(), BUSY_WAIT.as_secs())
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn read_error_sql(e: rusqlite::Error, path: &Path) -> anyhow::Error {
    let hint = match &e {
        rusqlite::Error::SqliteFailure(f, _) if matches!(f.code, rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::PermissionDenied | rusqlite::ErrorCode::ReadOnly) => {
            "; run the backup as the user the server runs as"
        }
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::NotADatabase => "; it is not an SQLite database",
        _ => "",
    };
    anyhow!("cannot copy the database {}: {e}{hint}", path.display())
}

fn read_error(e: std::io::Error, path: &Path) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        anyhow!("cannot read {}: {e}; run the backup as the user the server runs as", path.display())
    } else {
        anyhow!("cannot read {}: {e}", path.display())
    }
}

fn integrity_check(db: &Connection) -> Result<()> {
    let mut stmt = db.prepare("PRAGMA integrity_check")?;
    let rows: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    if rows != ["ok"] {
        bail!("{}", rows.iter().take(5).cloned().collect::<Vec<_>>().join("; "));
    }
    Ok(())
}

fn count(db: &Connection, table: &str) -> Result<i64> {
    let exists: bool = db.query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1", [table], |r| r.get(0))?;
    if !exists {
        return Ok(0);
    }
    Ok(db.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?)
}

fn counts(db: &Connection) -> Result<Counts> {
    Ok(Counts {
        projects: count(db, "projects")?,
        deployments: count(db, "deployments")?,
        secrets: count(db, "secrets")?,
        users: count(db, "users")?,
        tokens: count(db, "tokens")?,
    })
}

/// `project/NAME` of every secret in `db` that does not open with the key in `key_dir`.
fn unopened_secrets(db: &Connection, key_dir: &Path) -> Result<Vec<String>> {
    if count(db, "secrets")? == 0 {
        return Ok(Vec::new());
    }
    let secret_box = crate::infra::secrets::SecretBox::open_dir(key_dir)?;
    let mut stmt = db.prepare("SELECT project, name, sealed FROM secrets ORDER BY project, name")?;
    let rows: Vec<(String, String, Vec<u8>)> =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<rusqlite::Result<_>>()?;
    Ok(rows
        .into_iter()
        .filter(|(p, n, sealed)| secret_box.open(p, n, sealed).is_err())
        .map(|(p, n, _)| format!("{p}/{n}"))
        .collect())
}

fn append<W: Write>(b: &mut tar::Builder<W>, name: &str, size: u64, mtime: u64, data: impl Read) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_path(name)?;
    h.set_size(size);
    h.set_mode(0o600);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append(&h, data).with_context(|| format!("cannot add {name} to the archive"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash_file(path: &Path) -> Result<(u64, String)> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut w = HashWriter::new(std::io::sink());
    std::io::copy(&mut f, &mut w)?;
    Ok(w.finish())
}

/// Passes bytes through while hashing and counting them.
struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashWriter<W> {
    fn new(inner: W) -> Self {
        HashWriter { inner, hasher: Sha256::new(), bytes: 0 }
    }
    fn finish(self) -> (u64, String) {
        (self.bytes, hex(&self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Makes a rename in `dir` durable; best effort (some file systems refuse to sync a directory).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

// ---------------------------------------------------------------------------------------------
// Restore

/// Restores `file` into `data_dir`, which must be empty or not exist: the files are unpacked
/// and checked in a staging directory beside it, which is then renamed into place (a rename
/// never replaces a non-empty directory, so a live server's files are never overwritten).
/// With `new_identity`, the data directory gets a fresh server id instead of the original's.
pub fn restore(file: &Path, data_dir: &Path, new_identity: bool) -> Result<RestoreReport> {
    check_target(data_dir)?;
    let parent = parent_dir(data_dir);
    std::fs::create_dir_all(&parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let stage = tempfile::Builder::new()
        .prefix(".eserveless-restore-")
        .tempdir_in(&parent)
        .with_context(|| format!("cannot create a staging directory in {}", parent.display()))?;

    let manifest = unpack(file, stage.path())?;
    let db_path = stage.path().join(DB_FILE);
    let db = Connection::open(&db_path).with_context(|| format!("cannot open the database from {}", file.display()))?;
    integrity_check(&db).with_context(|| format!("the database in {} is damaged; use another copy of the backup", file.display()))?;
    let schema_version: i64 = db.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = current_schema_version()?;
    if schema_version > known {
        bail!(
            "the database in {} has schema version {schema_version}, newer than this eserveless ({}) knows ({known}); \
             restore it with eserveless {} or newer",
            file.display(),
            env!("CARGO_PKG_VERSION"),
            manifest.eserveless_version
        );
    }
    let has_key = stage.path().join(KEY_FILE).exists();
    let counts = counts(&db)?;
    let secrets = counts.secrets;
    if !has_key && secrets > 0 {
        bail!("{} holds {secrets} secrets but no {KEY_FILE} to open them; it is incomplete, use another backup", file.display());
    }
    let unopened = if has_key { unopened_secrets(&db, stage.path())? } else { Vec::new() };
    drop(db);

    let id_path = stage.path().join(SERVER_ID_FILE);
    let original = std::fs::read_to_string(&id_path).ok().map(|id| id.trim().to_string());
    if let Some(id) = &original {
        if !valid_server_id(id) {
            bail!("{}: the server id `{}` is not hexadecimal; it is not a backup this eserveless wrote", file.display(), id.escape_debug());
        }
    }
    let server_id = if new_identity {
        let id = crate::infra::datadir::new_server_id()?;
        crate::infra::datadir::write_private(&id_path, id.as_bytes())?;
        Some(id)
    } else {
        original.clone()
    };
    let identity_restored = !new_identity && original.is_some();

    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(stage.path(), std::fs::Permissions::from_mode(0o700))?;
    sync_dir(stage.path());
    let staged = stage.keep();
    if let Err(e) = std::fs::rename(&staged, data_dir) {
        let _ = std::fs::remove_dir_all(&staged);
        let errno = rustix::io::Errno::from_io_error(&e);
        if errno == Some(rustix::io::Errno::NOTEMPTY) || errno == Some(rustix::io::Errno::EXIST) {
            bail!("{} was filled while the restore ran; nothing was changed there. Restore into another --data-dir", data_dir.display());
        }
        return Err(anyhow!(e).context(format!("cannot move the restored files into {}", data_dir.display())));
    }
    sync_dir(&parent);
    Ok(RestoreReport { data_dir: data_dir.to_path_buf(), manifest, counts, server_id, identity_restored, unopened_secrets: unopened })
}

/// The target must be a directory with nothing in it, or not exist.
fn check_target(data_dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(data_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow!("cannot inspect {}: {e}", data_dir.display())),
        Ok(m) if m.file_type().is_symlink() => bail!(
            "{} is a symbolic link; pass the directory itself (empty or new) as --data-dir",
            data_dir.display()
        ),
        Ok(m) if !m.is_dir() => bail!(
            "{} exists and is not a directory; restore into an empty or new directory: pass another --data-dir",
            data_dir.display()
        ),
        Ok(_) => {
            let mut names: Vec<String> = std::fs::read_dir(data_dir)
                .with_context(|| format!("cannot read {}", data_dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect();
            if names.is_empty() {
                return Ok(());
            }
            names.sort();
            let shown = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
            bail!(
                "{} is not empty (it holds {shown}{}); restore only into an empty or new directory, so no server's files are \
                 overwritten: pass another --data-dir, or stop the server that uses it and move the directory aside",
                data_dir.display(),
                if names.len() > 5 { ", ..." } else { "" }
            )
        }
    }
}

/// The schema version this build migrates to: that of a fresh store.
fn current_schema_version() -> Result<i64> {
    let dir = tempfile::tempdir()?;
    drop(crate::infra::store::Store::open(dir.path()).context("cannot open a scratch database")?);
    let db = Connection::open(dir.path().join(DB_FILE))?;
    Ok(db.pragma_query_value(None, "user_version", |r| r.get(0))?)
}

fn not_a_backup(file: &Path, why: &str) -> anyhow::Error {
    anyhow!("{} is not an eserveless backup ({why}); give the file `eserveless backup` wrote", file.display())
}

/// Unpacks and checks the archive into `into`; returns its manifest.
fn unpack(file: &Path, into: &Path) -> Result<Manifest> {
    let mut f = std::fs::File::open(file).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!("the backup file {} does not exist", file.display()),
        _ => anyhow!("cannot read the backup file {}: {e}", file.display()),
    })?;
    if f.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        bail!("{} is a directory; give the backup file `eserveless backup` wrote", file.display());
    }
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).with_context(|| format!("cannot read the backup file {}", file.display()))?;
    if n == 2 && magic == [0x1f, 0x8b] {
        bail!("{} is gzip-compressed; decompress it first (`gunzip`), then restore the .tar", file.display());
    }
    drop(f);
    let f = std::fs::File::open(file).with_context(|| format!("cannot read the backup file {}", file.display()))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(f));
    let entries = archive.entries().map_err(|e| not_a_backup(file, &format!("not a tar archive: {e}")))?;
    let mut manifest: Option<Manifest> = None;
    let mut seen: Vec<FileEntry> = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            if manifest.is_none() {
                not_a_backup(file, &format!("not a tar archive: {e}"))
            } else {
                anyhow!("{} is damaged or truncated: {e}; use another copy of the backup", file.display())
            }
        })?;
        let name = entry.path().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        let Some(m) = &manifest else {
            if name != MANIFEST {
                return Err(not_a_backup(file, &format!("it starts with `{name}`, not {MANIFEST}")));
            }
            manifest = Some(read_manifest(file, &mut entry)?);
            continue;
        };
        if entry.header().entry_type() != tar::EntryType::Regular {
            bail!("{} holds `{name}`, which is not a regular file; it is not a backup this eserveless wrote", file.display());
        }
        let Some(expected) = m.files.iter().find(|f| f.name == name) else {
            bail!("{} holds `{name}`, which its manifest does not list; it is not a backup this eserveless wrote", file.display());
        };
        if seen.iter().any(|s| s.name == name) {
            bail!("{} holds `{name}` twice; it is not a backup this eserveless wrote", file.display());
        }
        let limit = match name.as_str() {
            DB_FILE => u64::MAX,
            KEY_FILE => 32,
            SERVER_ID_FILE => MAX_SERVER_ID_BYTES,
            _ => unreachable!("the manifest lists only known names"),
        };
        if entry.size() > limit {
            bail!("{}: `{name}` is {} bytes, more than a real one; it is not a backup this eserveless wrote", file.display(), entry.size());
        }
        let path = into.join(&name);
        let out = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)
        }
        .with_context(|| format!("cannot write {}", path.display()))?;
        let mut w = HashWriter::new(std::io::BufWriter::new(out));
        std::io::copy(&mut entry, &mut w)
            .map_err(|e| anyhow!("{} is damaged or truncated ({name}: {e}); use another copy of the backup", file.display()))?;
        w.flush()?;
        w.inner.get_ref().sync_all()?;
        let (bytes, sha256) = w.finish();
        if bytes != expected.bytes || sha256 != expected.sha256 {
            bail!("{} is damaged: `{name}` does not match the checksum in its manifest; use another copy of the backup", file.display());
        }
        seen.push(FileEntry { name, bytes, sha256 });
    }
    let manifest = manifest.ok_or_else(|| not_a_backup(file, "it is empty"))?;
    for f in &manifest.files {
        if !seen.iter().any(|s| s.name == f.name) {
            bail!("{} is incomplete: `{}` is missing; use another copy of the backup", file.display(), f.name);
        }
    }
    if seen.iter().any(|s| s.name == KEY_FILE && s.bytes != 32) {
        bail!("{}: {KEY_FILE} is not 32 bytes; it is not a backup this eserveless wrote", file.display());
    }
    Ok(manifest)
}

fn read_manifest(file: &Path, entry: &mut impl Read) -> Result<Manifest> {
    let mut text = Vec::new();
    entry.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut text)?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(not_a_backup(file, &format!("its {MANIFEST} is larger than 1 MiB")));
    }
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| not_a_backup(file, &format!("its {MANIFEST} is not JSON: {e}")))?;
    let format = value["format"].as_u64().ok_or_else(|| not_a_backup(file, &format!("its {MANIFEST} has no format number")))?;
    if format > u64::from(FORMAT) {
        bail!(
            "{} was written by eserveless {} in backup format {format}; this eserveless ({}) reads format {FORMAT} and older. \
             Restore it with eserveless {} or newer",
            file.display(),
            value["eserveless_version"].as_str().unwrap_or("(unknown version)"),
            env!("CARGO_PKG_VERSION"),
            value["eserveless_version"].as_str().unwrap_or("(that version)")
        );
    }
    let m: Manifest = serde_json::from_value(value).map_err(|e| not_a_backup(file, &format!("its {MANIFEST} is malformed: {e}")))?;
    for f in &m.files {
        if ![DB_FILE, KEY_FILE, SERVER_ID_FILE].contains(&f.name.as_str()) {
            return Err(not_a_backup(file, &format!("its manifest lists `{}`, not a data directory file", f.name.escape_debug())));
        }
    }
    if !m.files.iter().any(|f| f.name == DB_FILE) {
        return Err(not_a_backup(file, &format!("its manifest lists no {DB_FILE}")));
    }
    Ok(m)
}

// ---------------------------------------------------------------------------------------------
// The commands

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} bytes"),
    }
}

fn describe(c: &Counts) -> String {
    format!("{} projects, {} deployments, {} secrets, {} users, {} tokens", c.projects, c.deployments, c.secrets, c.users, c.tokens)
}

/// `eserveless backup FILE`.
pub fn run_backup(data_dir: &Path, file: &Path, force: bool) -> Result<i32> {
    let r = backup(data_dir, file, force)?;
    let m = &r.manifest;
    println!("wrote {} ({}, mode 0600): a consistent copy of {} taken {}", r.file.display(), size(r.bytes), m.source, m.created_at);
    println!("  {DB_FILE:<14} {} (integrity check ok)", describe(&m.counts));
    let has = |n: &str| m.files.iter().any(|f| f.name == n);
    println!("  {KEY_FILE:<14} {}", if has(KEY_FILE) { "the key that opens the secrets" } else { "none in the data directory (no secrets)" });
    match &m.server_id {
        Some(id) => println!("  {SERVER_ID_FILE:<14} {id}"),
        None => println!("  {SERVER_ID_FILE:<14} none in the data directory"),
    }
    println!("  {MANIFEST:<14} format {}, eserveless {}", m.format, m.eserveless_version);
    println!("not included: admin-token (API tokens live in the database as hashes and keep working), work/ (build scratch), lock");
    println!("restore with: eserveless restore {} --data-dir NEW_EMPTY_DIR [--new-identity]", r.file.display());
    if !r.unopened_secrets.is_empty() {
        eprintln!(
            "warning: {} secrets do not open with {KEY_FILE} (the running server cannot open them either): {}",
            r.unopened_secrets.len(),
            r.unopened_secrets.join(", ")
        );
    }
    if has(KEY_FILE) {
        eprintln!(
            "\nWARNING: {} holds {KEY_FILE}, the key that opens every project secret, next to the sealed secrets themselves:\n\
             anyone who has this file can read all of them. Keep it like a password: readable only by you, encrypted\n\
             where it is stored (e.g. `age` or `gpg`), apart from ordinary copies of the server's disk, and delete old\n\
             copies you no longer need. Without the key, restored secrets cannot be opened.",
            r.file.display()
        );
    }
    Ok(0)
}

/// `eserveless restore FILE --data-dir DIR`.
pub fn run_restore(file: &Path, data_dir: &Path, new_identity: bool) -> Result<i32> {
    let r = restore(file, data_dir, new_identity)?;
    let m = &r.manifest;
    println!(
        "restored {} into {} (taken {} from {} by eserveless {})",
        file.display(),
        r.data_dir.display(),
        m.created_at,
        m.source,
        m.eserveless_version
    );
    println!("  {} (database integrity check ok; files 0600, directory 0700)", describe(&r.counts));
    if !r.unopened_secrets.is_empty() {
        eprintln!("warning: {} secrets do not open with the restored key: {}", r.unopened_secrets.len(), r.unopened_secrets.join(", "));
    }
    match (&r.server_id, r.identity_restored) {
        (Some(id), true) => println!(
            "server identity: restored ({id}), the original's. A server started on {} adopts, and removes, the containers\n\
             the original left on the same Docker engine. Do NOT run it beside the original on that engine: stop the original\n\
             first (moving to another engine is fine). For a copy that runs beside it, restore again with --new-identity.",
            r.data_dir.display()
        ),
        (Some(id), false) => println!(
            "server identity: new ({id}){}. A server started on {} leaves the original's containers alone and starts its own.\n\
             Beside the original on the same engine, both serve the same projects from the same images: removing a project on\n\
             one also removes the images the other uses, so use such a copy for tests, not for both to keep.",
            m.server_id.as_deref().map(|o| format!(", not the original's ({o})")).unwrap_or_default(),
            r.data_dir.display()
        ),
        (None, _) => println!("server identity: none in the backup; the server makes a new one at its first start"),
    }
    println!(
        "next: eserveless serve --data-dir {}   (the original's API tokens work; admin-token is not in backups)",
        r.data_dir.display()
    );
    println!("function images are not in backups: on another Docker engine, copy them first (see README, Backup and restore)");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infra::store::Store;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
    }

    /// A data directory as a running server leaves it: the store still open (so recent writes
    /// are in the WAL only), a secret, a server id, an admin token and build scratch.
    fn live_data_dir(root: &Path) -> (PathBuf, Store) {
        let data = root.join("data");
        std::fs::create_dir_all(data.join("work/build-1")).expect("dirs");
        let store = Store::open(&data).expect("store");
        let admin = store.create_user("admin", true).expect("user").expect("new");
        store.create_token(admin.id, "bootstrap", &[7u8; 32]).expect("token");
        store.upsert_project("demo", "https://example.com/demo.git", None, "admin").expect("project");
        store.create_deployment("demo", "https://example.com/demo.git", None, "abc").expect("deployment");
        let key = crate::infra::secrets::SecretBox::open_dir(&data).expect("key");
        store.put_secret("demo", "DB_PASSWORD", &key.seal("demo", "DB_PASSWORD", "hunter2")).expect("secret");
        std::fs::write(data.join(SERVER_ID_FILE), "00112233aabbccdd").expect("id");
        std::fs::write(data.join("admin-token"), "esl_1_secret").expect("token");
        std::fs::write(data.join("lock"), "").expect("lock");
        std::fs::write(data.join("work/build-1/file"), "scratch").expect("scratch");
        (data, store)
    }

    #[test]
    fn round_trip_while_the_store_is_open() {
        let root = tempfile::tempdir().expect("root");
        let (data, store) = live_data_dir(root.path());
        let wal = std::fs::metadata(data.join("eserveless.db-wal")).map(|m| m.len()).unwrap_or(0);
        assert!(wal > 0, "the writes are still in the WAL, so a copy of eserveless.db alone would miss them");

        let file = root.path().join("b.tar");
        let r = backup(&data, &file, false).expect("backup");
        assert_eq!(r.manifest.counts, Counts { projects: 1, deployments: 1, secrets: 1, users: 1, tokens: 1 });
        assert_eq!(r.manifest.server_id.as_deref(), Some("00112233aabbccdd"));
        assert!(r.unopened_secrets.is_empty());
        assert_eq!(mode(&file), 0o600, "the archive holds the key");
        let names: Vec<String> = tar::Archive::new(std::fs::File::open(&file).expect("open"))
            .entries()
            .expect("entries")
            .map(|e| e.expect("entry").path().expect("path").to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [MANIFEST, DB_FILE, KEY_FILE, SERVER_ID_FILE], "no admin-token, work/ or lock");
        let left: Vec<_> = std::fs::read_dir(root.path()).expect("ls").map(|e| e.expect("e").file_name()).collect();
        assert_eq!(left.len(), 2, "no staging or temporary file is left beside the backup: {left:?}");

        let e = backup(&data, &file, false).expect_err("exists");
        assert!(e.to_string().contains("--force") && e.to_string().contains("b.tar"), "{e}");
        backup(&data, &file, true).expect("--force replaces it");
        drop(store);
        // A stopped server: no WAL or shared-memory file, and the read-only copy still works.
        assert!(!data.join("eserveless.db-wal").exists(), "the last connection removed the WAL");
        let stopped = backup(&data, &root.path().join("stopped.tar"), false).expect("backup of a stopped server");
        assert_eq!(stopped.manifest.counts.secrets, 1);
        std::fs::remove_file(root.path().join("stopped.tar")).expect("rm");

        let restored = root.path().join("new/restored");
        let r = restore(&file, &restored, false).expect("restore");
        assert!(r.identity_restored);
        assert_eq!(r.counts, r.manifest.counts, "counted in the restored database");
        assert_eq!(mode(&restored), 0o700);
        let mut files: Vec<String> =
            std::fs::read_dir(&restored).expect("ls").map(|e| e.expect("e").file_name().to_string_lossy().into_owned()).collect();
        files.sort();
        assert_eq!(files, [DB_FILE, KEY_FILE, SERVER_ID_FILE]);
        for f in &files {
            assert_eq!(mode(&restored.join(f)), 0o600, "{f}");
        }
        assert_eq!(std::fs::read_to_string(restored.join(SERVER_ID_FILE)).expect("id"), "00112233aabbccdd");
        let store = Store::open(&restored).expect("the restored database opens and migrates");
        assert_eq!(store.projects().expect("projects").iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["demo"]);
        let secret = &store.secrets("demo").expect("secrets")[0];
        let key = crate::infra::secrets::SecretBox::open_dir(&restored).expect("restored key");
        assert_eq!(key.open("demo", &secret.name, &secret.sealed).expect("opens"), "hunter2");

        let clone = root.path().join("clone");
        std::fs::create_dir(&clone).expect("an empty directory is fine");
        let r = restore(&file, &clone, true).expect("restore --new-identity");
        let id = std::fs::read_to_string(clone.join(SERVER_ID_FILE)).expect("id");
        assert!(!r.identity_restored && r.server_id.as_deref() == Some(id.as_str()));
        assert!(id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()) && id != "00112233aabbccdd", "{id}");
    }

    #[test]
    fn backup_names_a_missing_data_dir_or_database() {
        let root = tempfile::tempdir().expect("root");
        let out = root.path().join("b.tar");
        let e = backup(&root.path().join("nope"), &out, false).expect_err("missing");
        assert!(e.to_string().contains("does not exist") && e.to_string().contains("--data-dir"), "{e}");
        let e = backup(root.path(), &out, false).expect_err("no database");
        assert!(e.to_string().contains("holds no eserveless.db"), "{e}");
        std::fs::write(root.path().join(DB_FILE), "not sqlite at all, just some text that is long enough").expect("w");
        let e = backup(root.path(), &out, false).expect_err("not sqlite");
        assert!(format!("{e:#}").contains("not a database"), "{e:#}");
        assert!(!out.exists());
    }

    /// Rewrites `file`'s entries through `edit(name, bytes)` into a new archive.
    fn rewrite(file: &Path, edit: impl Fn(&str, &mut Vec<u8>)) -> PathBuf {
        let out = file.with_extension("edited.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&out).expect("create"));
        for e in tar::Archive::new(std::fs::File::open(file).expect("open")).entries().expect("entries") {
            let mut e = e.expect("entry");
            let name = e.path().expect("path").to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            e.read_to_end(&mut bytes).expect("read");
            edit(&name, &mut bytes);
            append(&mut b, &name, bytes.len() as u64, 0, &bytes[..]).expect("append");
        }
        b.finish().expect("finish");
        out
    }

    #[test]
    fn corrupt_or_foreign_archives_are_refused_and_leave_nothing() {
        let root = tempfile::tempdir().expect("root");
        let (data, store) = live_data_dir(root.path());
        let file = root.path().join("b.tar");
        backup(&data, &file, false).expect("backup");
        drop(store);
        let target = root.path().join("target");
        let refused = |f: &Path, needle: &str| {
            let e = restore(f, &target, false).expect_err(needle);
            let text = format!("{e:#}");
            assert!(text.contains(needle), "expected `{needle}` in: {text}");
            assert!(!target.exists(), "a refused restore leaves no target");
            let stray: Vec<_> = std::fs::read_dir(root.path())
                .expect("ls")
                .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .filter(|n| n.starts_with(".eserveless-restore-"))
                .collect();
            assert!(stray.is_empty(), "staging left: {stray:?}");
        };

        refused(&root.path().join("missing.tar"), "does not exist");
        let junk = root.path().join("junk.tar");
        std::fs::write(&junk, vec![b'x'; 4096]).expect("w");
        refused(&junk, "not an eserveless backup");
        std::fs::write(&junk, [0x1f, 0x8b, 8, 0]).expect("w");
        refused(&junk, "gzip");
        std::fs::write(&junk, "").expect("w");
        refused(&junk, "empty");

        let flipped = rewrite(&file, |name, bytes| {
            if name == DB_FILE {
                bytes[200] ^= 0xff;
            }
        });
        refused(&flipped, "does not match the checksum");
        let newer = rewrite(&file, |name, bytes| {
            if name == MANIFEST {
                let mut v: serde_json::Value = serde_json::from_slice(bytes).expect("json");
                v["format"] = 2.into();
                v["eserveless_version"] = "9.9.9".into();
                *bytes = serde_json::to_vec(&v).expect("json");
            }
        });
        refused(&newer, "format 2; this eserveless");
        refused(&newer, "eserveless 9.9.9 or newer");
        let no_key = rewrite(&file, |name, bytes| {
            if name == KEY_FILE {
                bytes.clear();
            }
        });
        refused(&no_key, "does not match the checksum");
        // A plain tar of a data directory (no manifest first).
        let plain = root.path().join("plain.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&plain).expect("create"));
        b.append_path_with_name(data.join(DB_FILE), DB_FILE).expect("append");
        b.finish().expect("finish");
        drop(b);
        refused(&plain, "starts with `eserveless.db`");
        // Truncated in the middle of the database.
        let bytes = std::fs::read(&file).expect("read");
        let cut = root.path().join("cut.tar");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("w");
        let e = restore(&cut, &target, false).expect_err("truncated");
        assert!(format!("{e:#}").contains("truncated") || format!("{e:#}").contains("damaged"), "{e:#}");
        assert!(!target.exists());
    }

    #[test]
    fn restore_refuses_a_directory_in_use() {
        let root = tempfile::tempdir().expect("root");
        let (data, store) = live_data_dir(root.path());
        let file = root.path().join("b.tar");
        backup(&data, &file, false).expect("backup");
        // The live data directory itself: nothing there changes.
        let before = std::fs::read(data.join(KEY_FILE)).expect("key");
        let e = restore(&file, &data, false).expect_err("in use");
        let text = e.to_string();
        assert!(text.contains(&data.display().to_string()) && text.contains("not empty") && text.contains("--data-dir"), "{text}");
        assert_eq!(std::fs::read(data.join(KEY_FILE)).expect("key"), before);
        assert_eq!(store.projects().expect("still served").len(), 1);
        // A directory with only a lock file is not empty either.
        let other = root.path().join("other");
        std::fs::create_dir(&other).expect("dir");
        std::fs::write(other.join("lock"), "").expect("lock");
        assert!(restore(&file, &other, false).expect_err("lock").to_string().contains("holds lock"));
        let e = restore(&file, &file, false).expect_err("a file");
        assert!(e.to_string().contains("not a directory"), "{e}");
        let empty = root.path().join("empty");
        std::fs::create_dir(&empty).expect("dir");
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&empty, &link).expect("symlink");
        let e = restore(&file, &link, false).expect_err("a symlink");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(std::fs::symlink_metadata(&link).expect("link").file_type().is_symlink(), "the link is left alone");
    }
}
