//! Packing a directory for `eserveless deploy DIR`: a gzip-compressed tar of what git would
//! commit and Docker would send. `.gitignore` files (nested ones too, and `.git/info/exclude`)
//! and `.dockerignore` files are honoured, both read with gitignore syntax; `.git/` is never
//! packed; a symlink that points outside the directory and any special file (socket, fifo,
//! device) are refused by name; the unpacked size is capped. Entries are sorted, with fixed
//! owners and times, so the same files give the same archive (the server's "unchanged").

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

/// A packed directory.
pub struct Packed {
    /// The tar.gz.
    pub bytes: Vec<u8>,
    /// Files (and symlinks) packed.
    pub files: usize,
    /// Bytes of file content packed.
    pub size: u64,
}

/// `1.5 MiB`, `3 KiB`.
pub fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
    } else {
        format!("{} KiB", bytes.div_ceil(1024))
    }
}

/// Whether `target` (a link's target, relative to `link_dir`) stays inside `root`, lexically.
fn lexically_inside(root: &Path, link_dir: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let Ok(rel) = link_dir.join(target).strip_prefix(root).map(Path::to_path_buf) else { return false };
    let mut depth = 0usize;
    for c in rel.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                if depth == 0 {
                    return false;
                }
                depth -= 1;
            }
            _ => return false,
        }
    }
    true
}

/// Packs `dir` (made absolute by the caller) under `max_bytes` of file content.
pub fn pack(dir: &Path, max_bytes: u64) -> Result<Packed> {
    let root = dir.canonicalize().with_context(|| format!("cannot read directory `{}`", dir.display()))?;
    let walker = ignore::WalkBuilder::new(&root)
        .hidden(false)
        .parents(true)
        .git_ignore(true)
        .git_exclude(true)
        .git_global(false)
        .require_git(false)
        .ignore(false)
        .follow_links(false)
        .add_custom_ignore_filename(".dockerignore")
        .sort_by_file_name(|a, b| a.cmp(b))
        .filter_entry(|e| e.file_name() != ".git")
        .build();
    let mut entries: Vec<(PathBuf, PathBuf, std::fs::Metadata)> = Vec::new();
    let mut size = 0u64;
    for entry in walker {
        let entry = entry.with_context(|| format!("cannot read `{}`", dir.display()))?;
        let path = entry.path();
        let rel = path.strip_prefix(&root).expect("the walk stays under its root").to_path_buf();
        if rel.as_os_str().is_empty() {
            continue;
        }
        let meta = std::fs::symlink_metadata(path).with_context(|| format!("cannot read `{}`", path.display()))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(path).with_context(|| format!("cannot read link `{}`", path.display()))?;
            let link_dir = path.parent().unwrap_or(&root);
            // Lexically inside, and where it resolves (when it does) inside too.
            let resolved_inside = std::fs::canonicalize(path).map(|p| p.starts_with(&root)).unwrap_or(true);
            if !lexically_inside(&root, link_dir, &target) || !resolved_inside {
                bail!(
                    "symlink `{}` points outside `{}` (to `{}`); an upload holds only what is inside the directory: \
                     replace the link with a copy, or list it in .dockerignore",
                    rel.display(),
                    dir.display(),
                    target.display()
                );
            }
        } else if ft.is_file() {
            size += meta.len();
        } else if !ft.is_dir() {
            bail!(
                "`{}` is not a regular file, directory or symlink (a socket, fifo or device); list it in .dockerignore to deploy `{}`",
                rel.display(),
                dir.display()
            );
        }
        entries.push((path.to_path_buf(), rel, meta));
    }
    if size > max_bytes {
        let mut files: Vec<&(PathBuf, PathBuf, std::fs::Metadata)> = entries.iter().filter(|(_, _, m)| m.is_file()).collect();
        files.sort_by_key(|(_, _, m)| std::cmp::Reverse(m.len()));
        let largest: Vec<String> = files.iter().take(3).map(|(_, rel, m)| format!("{} ({})", rel.display(), human(m.len()))).collect();
        bail!(
            "`{}` holds {} to upload, more than the {} cap; the largest files: {}. Leave what the build does not need out \
             with .gitignore or .dockerignore, or raise the cap with `--max-upload` (the server has its own, `serve --max-upload`)",
            dir.display(),
            human(size),
            human(max_bytes),
            largest.join(", ")
        );
    }
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Deterministic);
    let mut files = 0usize;
    for (path, rel, meta) in &entries {
        let ft = meta.file_type();
        if ft.is_dir() {
            let mut h = header(tar::EntryType::Directory, 0o755, 0);
            tar.append_data(&mut h, rel, std::io::empty()).with_context(|| format!("cannot pack `{}`", rel.display()))?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(path).with_context(|| format!("cannot read link `{}`", path.display()))?;
            let mut h = header(tar::EntryType::Symlink, 0o777, 0);
            tar.append_link(&mut h, rel, &target).with_context(|| format!("cannot pack `{}`", rel.display()))?;
            files += 1;
        } else {
            use std::os::unix::fs::PermissionsExt;
            let mode = if meta.permissions().mode() & 0o111 != 0 { 0o755 } else { 0o644 };
            let f = std::fs::File::open(path).with_context(|| format!("cannot read `{}`", path.display()))?;
            let mut h = header(tar::EntryType::Regular, mode, meta.len());
            tar.append_data(&mut h, rel, f).with_context(|| format!("cannot pack `{}`", rel.display()))?;
            files += 1;
        }
    }
    let mut gz = tar.into_inner().context("cannot finish the archive")?;
    gz.flush().context("cannot finish the archive")?;
    let bytes = gz.finish().context("cannot finish the archive")?;
    Ok(Packed { bytes, files, size })
}

/// A header with fixed owner and time: only content, names and the executable bit matter.
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }

    /// The archive's entries: path → content (`-> target` for links, `/` for directories).
    fn listing(p: &Packed) -> std::collections::BTreeMap<String, String> {
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(&p.bytes[..]));
        let mut out = std::collections::BTreeMap::new();
        for e in a.entries().expect("entries") {
            let mut e = e.expect("entry");
            let path = e.path().expect("path").display().to_string();
            let v = match e.header().entry_type() {
                tar::EntryType::Symlink => format!("-> {}", e.link_name().expect("link").expect("target").display()),
                tar::EntryType::Directory => "/".to_string(),
                _ => {
                    let mut s = String::new();
                    e.read_to_string(&mut s).expect("read");
                    s
                }
            };
            out.insert(path, v);
        }
        out
    }

    #[test]
    fn ignore_files_are_honoured_and_git_is_never_packed() {
        let d = tempfile::tempdir().expect("dir");
        let root = d.path();
        write(root, ".eserveless.yaml", "functions: []\n");
        write(root, "functions.js", "ok");
        write(root, ".gitignore", "node_modules/\n*.log\n");
        write(root, "node_modules/x/index.js", "dep");
        write(root, "debug.log", "log");
        write(root, "sub/.gitignore", "local.txt\n");
        write(root, "sub/local.txt", "nested ignore");
        write(root, "sub/kept.txt", "kept");
        write(root, ".dockerignore", "secrets/*\n!secrets/public.txt\n");
        write(root, "secrets/key.pem", "KEY");
        write(root, "secrets/public.txt", "public");
        write(root, ".git/config", "[core]");
        write(root, ".git/info/exclude", "excluded.txt\n");
        write(root, "excluded.txt", "x");
        std::os::unix::fs::symlink("functions.js", root.join("alias.js")).expect("ln");
        let p = pack(root, 1 << 20).expect("packs");
        let l = listing(&p);
        let names: Vec<&str> = l.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [".dockerignore", ".eserveless.yaml", ".gitignore", "alias.js", "functions.js", "secrets", "secrets/public.txt", "sub", "sub/.gitignore", "sub/kept.txt"],
        );
        assert_eq!(l["alias.js"], "-> functions.js");
        // The same files, the same bytes.
        assert_eq!(pack(root, 1 << 20).expect("again").bytes, p.bytes);
    }

    #[test]
    fn escaping_symlinks_and_special_files_are_refused_by_name() {
        let outside = tempfile::tempdir().expect("outside");
        for target in ["../../outside.txt".to_string(), "/etc/passwd".to_string(), outside.path().display().to_string()] {
            let d = tempfile::tempdir().expect("dir");
            write(d.path(), "a.txt", "a");
            std::fs::create_dir(d.path().join("lib")).expect("mkdir");
            std::os::unix::fs::symlink(&target, d.path().join("lib/up")).expect("ln");
            let e = pack(d.path(), 1 << 20).err().expect("refused").to_string();
            assert!(e.contains("symlink `lib/up` points outside") && e.contains(&target), "{e}");
        }
        // A link to a link that leaves: refused where it resolves.
        let d = tempfile::tempdir().expect("dir");
        std::os::unix::fs::symlink(outside.path(), d.path().join("out")).expect("ln");
        std::os::unix::fs::symlink("out", d.path().join("via")).expect("ln");
        let e = pack(d.path(), 1 << 20).err().expect("refused").to_string();
        assert!(e.contains("points outside"), "{e}");
        // A unix socket: a special file.
        let d = tempfile::tempdir().expect("dir");
        let _sock = std::os::unix::net::UnixListener::bind(d.path().join("s.sock")).expect("socket");
        let e = pack(d.path(), 1 << 20).err().expect("refused").to_string();
        assert!(e.contains("`s.sock` is not a regular file"), "{e}");
    }

    #[test]
    fn the_size_cap_names_the_largest_files() {
        let d = tempfile::tempdir().expect("dir");
        write(d.path(), "small.txt", "x");
        write(d.path(), "big.bin", &"x".repeat(300 * 1024));
        let e = pack(d.path(), 256 * 1024).err().expect("over the cap").to_string();
        assert!(e.contains("256 KiB cap") && e.contains("big.bin (300 KiB)") && e.contains("--max-upload"), "{e}");
        assert!(pack(d.path(), 1 << 20).is_ok());
    }
}
