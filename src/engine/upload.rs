//! Uploaded sources (`eserveless deploy DIR`): a gzip-compressed tar unpacked into a fresh
//! directory, as hostile input. Only regular files, directories and symlinks that stay inside
//! are accepted; absolute paths, `..`, hard links, devices and fifos are refused by name; the
//! unpacked size (counted on the decompressed stream, so a gzip bomb stops at the cap) and
//! the number of entries are capped. The digest is the sha256 of the decompressed tar.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

/// How much an upload may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimits {
    /// Bytes of the decompressed tar (headers included); also the cap of the compressed body.
    pub max_bytes: u64,
    /// Entries (files, directories and links).
    pub max_entries: usize,
}

impl Default for UploadLimits {
    fn default() -> Self {
        UploadLimits { max_bytes: DEFAULT_MAX_UPLOAD, max_entries: 50_000 }
    }
}

/// The default cap of an upload: 64 MiB.
pub const DEFAULT_MAX_UPLOAD: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the upload unpacks to more than {} (the server's upload cap); leave large files out with .gitignore or .dockerignore, or ask the operator to raise `--max-upload`", mib(*.0))]
    TooLarge(u64),
    #[error("the upload holds more than {0} entries; leave generated files out with .gitignore or .dockerignore")]
    TooManyEntries(usize),
    #[error("upload entry `{path}` refused: {why}")]
    Refused { path: String, why: &'static str },
    #[error("the upload is not a gzip-compressed tar archive: {0}")]
    Malformed(String),
    #[error("cannot unpack the upload: {0}")]
    Io(#[source] std::io::Error),
}

/// `64 MiB`, `1.5 MiB`, `512 KiB`.
pub fn mib(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
    } else {
        format!("{} KiB", bytes.div_ceil(1024))
    }
}

/// What was unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// `sha256:<hex>` of the decompressed tar.
    pub digest: String,
    pub entries: usize,
    pub bytes: u64,
}

/// Counts and hashes what is read through it, and fails past the cap.
struct Metered<R> {
    inner: R,
    read: u64,
    cap: u64,
    hash: Sha256,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // Never ask for more than one byte past the cap: the stream is cut there.
        let room = usize::try_from(self.cap.saturating_sub(self.read).saturating_add(1)).unwrap_or(usize::MAX);
        let want = buf.len().min(room);
        let n = self.inner.read(&mut buf[..want])?;
        self.read += n as u64;
        if self.read > self.cap {
            return Err(std::io::Error::other(CapExceeded));
        }
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

#[derive(Debug)]
struct CapExceeded;
impl std::fmt::Display for CapExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upload cap exceeded")
    }
}
impl std::error::Error for CapExceeded {}

/// Whether the cap cut the stream (the tar reader wraps the error it read in its own).
fn is_cap(e: &std::io::Error) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|i| i as &(dyn std::error::Error + 'static));
    while let Some(err) = next {
        if err.is::<CapExceeded>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.get_ref().is_some_and(|i| i.is::<CapExceeded>()) {
                return true;
            }
        }
        next = err.source();
    }
    false
}

/// Checks an entry's path: relative, no `..`, no root or prefix; `./` is dropped. Returns
/// the path to create under the destination (`None` for the archive's root itself).
fn clean_path(raw: &Path) -> Result<Option<PathBuf>, &'static str> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err("its path contains `..`"),
            Component::RootDir | Component::Prefix(_) => return Err("its path is absolute"),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Unpacks the gzip-compressed tar `gz` into `dest` (which must exist and be empty).
pub fn unpack(gz: impl Read, dest: &Path, limits: UploadLimits) -> Result<Unpacked, UploadError> {
    let metered = Metered { inner: flate2::read::GzDecoder::new(gz), read: 0, cap: limits.max_bytes, hash: Sha256::new() };
    let mut archive = tar::Archive::new(metered);
    archive.set_preserve_permissions(false);
    archive.set_preserve_mtime(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let fail = |e: std::io::Error| {
        if is_cap(&e) {
            UploadError::TooLarge(limits.max_bytes)
        } else if e.kind() == std::io::ErrorKind::InvalidInput || e.kind() == std::io::ErrorKind::InvalidData || e.kind() == std::io::ErrorKind::UnexpectedEof || e.kind() == std::io::ErrorKind::Other {
            UploadError::Malformed(e.to_string())
        } else {
            UploadError::Io(e)
        }
    };
    let mut entries = 0usize;
    let mut bytes = 0u64;
    for entry in archive.entries().map_err(fail)? {
        let mut entry = entry.map_err(fail)?;
        let raw = entry.path().map_err(fail)?.into_owned();
        let shown = raw.display().to_string();
        let refuse = |why| UploadError::Refused { path: shown.clone(), why };
        let kind = entry.header().entry_type();
        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous | T::Directory | T::Symlink => {}
            T::Link => return Err(refuse("hard links are not accepted")),
            T::Char | T::Block => return Err(refuse("device files are not accepted")),
            T::Fifo => return Err(refuse("fifos are not accepted")),
            // Headers the tar reader consumes itself; anything else is not a file.
            T::XGlobalHeader => continue,
            _ => return Err(refuse("only regular files, directories and symlinks are accepted")),
        }
        let Some(rel) = clean_path(&raw).map_err(refuse)? else { continue };
        // The source never carries a repository's metadata (as a git checkout does not).
        if rel.components().next().is_some_and(|c| c.as_os_str() == ".git") {
            continue;
        }
        entries += 1;
        if entries > limits.max_entries {
            return Err(UploadError::TooManyEntries(limits.max_entries));
        }
        if kind == T::Symlink {
            let target = entry.link_name().map_err(fail)?.ok_or_else(|| refuse("a symlink without a target"))?;
            let dir = dest.join(&rel);
            let dir = dir.parent().unwrap_or(dest);
            if !crate::engine::build::is_inside(dest, dir, &target) {
                return Err(UploadError::Refused { path: shown, why: "the symlink points outside the uploaded directory" });
            }
        }
        bytes += entry.header().size().unwrap_or(0);
        // unpack_in also refuses to write through a symlink that leads out of `dest`.
        let target = dest.join(&rel);
        if let Some(parent) = target.parent() {
            ensure_dirs(dest, parent).map_err(|why| UploadError::Refused { path: shown.clone(), why })?;
        }
        match entry.unpack_in(dest) {
            Ok(true) => {}
            Ok(false) => return Err(UploadError::Refused { path: shown, why: "it would be written outside the uploaded directory" }),
            Err(e) if is_cap(&e) => return Err(UploadError::TooLarge(limits.max_bytes)),
            Err(e) => return Err(UploadError::Io(std::io::Error::new(e.kind(), format!("{shown}: {e}")))),
        }
    }
    // The end of the archive is not the end of the stream: read (and count) what is left.
    let mut rest = archive.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink()).map_err(fail)?;
    let digest = format!("sha256:{:x}", rest.hash.finalize());
    Ok(Unpacked { digest, entries, bytes })
}

/// Creates the directories leading to an entry, refusing to pass through a symlink.
fn ensure_dirs(dest: &Path, dir: &Path) -> Result<(), &'static str> {
    let rel = dir.strip_prefix(dest).map_err(|_| "it would be written outside the uploaded directory")?;
    let mut at = dest.to_path_buf();
    for c in rel.components() {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => return Err("its path passes through a symlink"),
            Ok(_) => return Err("its path passes through a file"),
            Err(_) => std::fs::create_dir(&at).map_err(|_| "its directory cannot be created")?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A gzip-compressed tar of `entries`, written with raw headers so that hostile paths
    /// (which `tar::Builder` would refuse) can be made.
    fn hostile(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_old();
            {
                let name = &mut h.as_old_mut().name;
                name[..path.len()].copy_from_slice(path.as_bytes());
            }
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            if let Some(l) = link {
                let ln = &mut h.as_old_mut().linkname;
                ln[..l.len()].copy_from_slice(l.as_bytes());
            }
            h.set_cksum();
            b.append(&h, *data).expect("append");
        }
        gz(&b.into_inner().expect("tar"))
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).expect("gz");
        e.finish().expect("gz")
    }

    fn try_unpack(gz: &[u8], limits: UploadLimits) -> (tempfile::TempDir, Result<Unpacked, UploadError>) {
        let dir = tempfile::tempdir().expect("dir");
        let dest = dir.path().join("src");
        std::fs::create_dir(&dest).expect("mkdir");
        let r = unpack(gz, &dest, limits);
        (dir, r)
    }

    const F: tar::EntryType = tar::EntryType::Regular;

    #[test]
    fn a_plain_upload_unpacks_with_its_digest() {
        let gz = hostile(&[
            (".eserveless.yaml", F, b"functions: []\n", None),
            ("lib/", tar::EntryType::Directory, b"", None),
            ("lib/a.js", F, b"a", None),
            ("lib/alias.js", tar::EntryType::Symlink, b"", Some("a.js")),
            ("./b.txt", F, b"b", None),
            (".git/config", F, b"[core]", None),
        ]);
        let (dir, r) = try_unpack(&gz, UploadLimits::default());
        let u = r.expect("unpacks");
        let src = dir.path().join("src");
        assert_eq!(std::fs::read_to_string(src.join("lib/a.js")).expect("a"), "a");
        assert_eq!(std::fs::read_link(src.join("lib/alias.js")).expect("link"), Path::new("a.js"));
        assert_eq!(std::fs::read_to_string(src.join("b.txt")).expect("b"), "b");
        assert!(!src.join(".git").exists(), ".git is never unpacked");
        assert_eq!(u.entries, 5);
        assert!(u.digest.starts_with("sha256:") && u.digest.len() == 7 + 64, "{}", u.digest);
        // The same bytes, the same digest; other bytes, another.
        let (_d, again) = try_unpack(&gz, UploadLimits::default());
        assert_eq!(again.expect("again").digest, u.digest);
        let (_d, other) = try_unpack(&hostile(&[("b.txt", F, b"c", None)]), UploadLimits::default());
        assert_ne!(other.expect("other").digest, u.digest);
    }

    #[test]
    fn hostile_entries_are_refused_by_name() {
        let outside = tempfile::tempdir().expect("outside");
        let abs = format!("{}/pwned", outside.path().display());
        let cases: Vec<(Vec<u8>, &str, &str)> = vec![
            (hostile(&[("../pwned", F, b"x", None)]), "../pwned", "`..`"),
            (hostile(&[("a/../../pwned", F, b"x", None)]), "a/../../pwned", "`..`"),
            (hostile(&[(abs.as_str(), F, b"x", None)]), abs.as_str(), "absolute"),
            (hostile(&[("up", tar::EntryType::Symlink, b"", Some("../.."))]), "up", "outside"),
            (hostile(&[("etc", tar::EntryType::Symlink, b"", Some("/etc"))]), "etc", "outside"),
            (hostile(&[("d/x", tar::EntryType::Symlink, b"", Some("../../y"))]), "d/x", "outside"),
            (hostile(&[("hard", tar::EntryType::Link, b"", Some("/etc/passwd"))]), "hard", "hard links"),
            (hostile(&[("dev", tar::EntryType::Char, b"", None)]), "dev", "device"),
            (hostile(&[("blk", tar::EntryType::Block, b"", None)]), "blk", "device"),
            (hostile(&[("pipe", tar::EntryType::Fifo, b"", None)]), "pipe", "fifos"),
            // A link inside, then a file written through it: refused, nothing lands outside.
            (
                hostile(&[("l", tar::EntryType::Symlink, b"", Some(".")), ("l/f", F, b"x", None)]),
                "l/f",
                "symlink",
            ),
        ];
        for (gz, path, why) in cases {
            let (dir, r) = try_unpack(&gz, UploadLimits::default());
            let e = r.expect_err(path);
            let m = e.to_string();
            assert!(matches!(e, UploadError::Refused { .. }), "{path}: {m}");
            assert!(m.contains(&format!("`{path}`")) && m.contains(why), "{path}: {m}");
            assert!(!dir.path().join("pwned").exists() && !outside.path().join("pwned").exists(), "{path} wrote outside");
        }
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_cap() {
        // 64 MiB of zeros compress to about 64 KiB; the cap is 1 MiB.
        let zeros = vec![0u8; 64 << 20];
        let gz = hostile(&[("big", F, &zeros, None)]);
        assert!(gz.len() < 1 << 20, "the bomb is small: {}", gz.len());
        let limits = UploadLimits { max_bytes: 1 << 20, max_entries: 10 };
        let (dir, r) = try_unpack(&gz, limits);
        let e = r.expect_err("over the cap");
        assert!(matches!(e, UploadError::TooLarge(_)), "{e}");
        assert!(e.to_string().contains("1 MiB") && e.to_string().contains("--max-upload"), "{e}");
        let written = std::fs::metadata(dir.path().join("src/big")).map(|m| m.len()).unwrap_or(0);
        assert!(written <= 1 << 20, "wrote {written} bytes past the cap");

        let many: Vec<(String, tar::EntryType, &[u8], Option<&str>)> = (0..11).map(|i| (format!("f{i}"), F, &b"x"[..], None)).collect();
        let many: Vec<(&str, tar::EntryType, &[u8], Option<&str>)> = many.iter().map(|(p, k, d, l)| (p.as_str(), *k, *d, *l)).collect();
        let (_d, r) = try_unpack(&hostile(&many), limits);
        assert!(matches!(r, Err(UploadError::TooManyEntries(10))), "{r:?}");
    }

    #[test]
    fn not_a_tar_gz_is_malformed() {
        let (_d, r) = try_unpack(b"this is not gzip", UploadLimits::default());
        assert!(matches!(r, Err(UploadError::Malformed(_))), "{r:?}");
    }
}
