//! The data directory: one server at a time (an exclusive lock held for the process's life),
//! the server's identity on the engine, and how much room its file system has left.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;

/// The lock file. It holds the pid of the server that owns the directory.
pub const LOCK_FILE: &str = "lock";
/// The file holding this directory's identity on the engine.
pub const SERVER_ID_FILE: &str = "server-id";

/// Below this much free space the storage is reported full even before a write fails:
/// SQLite needs room for its WAL and journal pages.
const MIN_FREE_BYTES: u64 = 1 << 20;
/// A write that failed for lack of space keeps `/healthz` degraded this long, unless the
/// file system has plenty of room again.
const FULL_MEMORY: Duration = Duration::from_secs(30);
/// Free space that clears a recent "full" at once.
const ROOMY_BYTES: u64 = 64 << 20;

/// The data directory of the running server, locked for it alone.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// Held open for the process's life: the kernel drops the lock when the process ends,
    /// however it ends (SIGKILL included), so a stale lock file never blocks a restart.
    _lock: std::fs::File,
}

impl DataDir {
    /// Creates the directory if needed and takes its lock, or says which process has it.
    pub fn open(path: &Path) -> anyhow::Result<DataDir> {
        std::fs::create_dir_all(path).with_context(|| format!("cannot create the data directory {}", path.display()))?;
        let lock_path = path.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .with_context(|| format!("cannot open the lock file {}", lock_path.display()))?;
        if let Err(e) = rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            if e != rustix::io::Errno::WOULDBLOCK {
                anyhow::bail!("cannot lock the data directory {} ({e}); check that its file system supports locks", path.display());
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim().parse::<u32>() {
                Ok(pid) => format!("pid {pid}"),
                Err(_) => "a process that has not written its pid yet".to_string(),
            };
            anyhow::bail!(
                "the data directory {} is in use by another eserveless server ({holder}); stop that server first, or start this one with another --data-dir",
                path.display()
            );
        }
        // The pid is for the message above only; the lock itself is what counts, so a full
        // disk that refuses the write does not stop the server.
        let _ = file.set_len(0).and_then(|()| file.rewind()).and_then(|()| writeln!(file, "{}", std::process::id()));
        let _ = STORAGE_DIR.set(path.to_path_buf());
        Ok(DataDir { path: path.to_path_buf(), _lock: file })
    }

    /// This data directory's identity on the engine, made once and kept in `server-id`.
    pub fn server_id(&self) -> anyhow::Result<String> {
        let path = self.path.join(SERVER_ID_FILE);
        if let Ok(id) = std::fs::read_to_string(&path) {
            let id = id.trim().to_string();
            if valid_server_id(&id) {
                return Ok(id);
            }
        }
        let id = new_server_id()?;
        std::fs::write(&path, &id).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(id)
    }
}

/// What a server id looks like (it becomes a label value and a filter on the engine).
pub fn valid_server_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit())
}

/// A fresh, random server id.
pub fn new_server_id() -> anyhow::Result<String> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for the server id: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The data directory of this process's server, for messages about its storage.
static STORAGE_DIR: OnceLock<PathBuf> = OnceLock::new();
/// When a write last failed for lack of space (seconds since the epoch; 0: never).
static LAST_FULL: AtomicU64 = AtomicU64::new(0);

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The data directory as people should read it in a message.
pub fn storage_dir_display() -> String {
    STORAGE_DIR.get().map(|p| p.display().to_string()).unwrap_or_else(|| "the data directory".to_string())
}

/// Records that a write failed because the storage is full.
pub fn note_storage_full() {
    LAST_FULL.store(now_secs(), Ordering::Relaxed);
}

/// Bytes an unprivileged writer may still use on the file system holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// `None` when the storage is fine; otherwise what is wrong, for `/healthz`.
pub fn storage_problem(path: &Path) -> Option<String> {
    let free = match free_bytes(path) {
        Ok(f) => f,
        Err(e) => return Some(format!("cannot check the free space of {}: {e}", path.display())),
    };
    let last_full = LAST_FULL.load(Ordering::Relaxed);
    let recently_full = last_full != 0 && now_secs().saturating_sub(last_full) < FULL_MEMORY.as_secs() && free < ROOMY_BYTES;
    if free < MIN_FREE_BYTES || recently_full {
        Some(format!(
            "full: {} has {free} bytes free and writes fail (database or disk is full); free space on its file system",
            path.display()
        ))
    } else {
        None
    }
}

/// Writes a file only its owner can read (created 0600, never world-readable in between).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holders_pid_and_freed_on_drop() {
        let dir = tempfile::tempdir().expect("dir");
        let first = DataDir::open(dir.path()).expect("first");
        let e = DataDir::open(dir.path()).expect_err("second must be refused");
        let msg = e.to_string();
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
        let id = first.server_id().expect("id");
        assert_eq!(id.len(), 16);
        assert_eq!(first.server_id().expect("id again"), id, "the identity is kept");
        drop(first);
        DataDir::open(dir.path()).expect("free again once the holder is gone");
    }

    #[test]
    fn free_space_is_known() {
        let dir = tempfile::tempdir().expect("dir");
        assert!(free_bytes(dir.path()).expect("statvfs") > 0);
    }
}
