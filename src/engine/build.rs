//! Turning a checkout and a function into a build context (a tar archive) and an image tag.
//!
//! The context holds the checkout without `.git`, without the user's `.dockerignore`, and
//! without any symlink that points outside the checkout; the rendered runtime template sits
//! under [`crate::engine::runtime::BUILD_DIR`].

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use crate::names::{FunctionName, ProjectName};
use crate::engine::runtime::BUILD_DIR;

/// Largest build context accepted.
pub const MAX_CONTEXT_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("the repository is larger than the {} MiB build limit; remove large files or add them to releases", MAX_CONTEXT_BYTES / 1024 / 1024)]
    TooLarge,
    #[error("cannot read {0}")]
    Io(PathBuf, #[source] std::io::Error),
}

/// Facts about a checkout that the templates need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceFacts {
    pub root_files: Vec<String>,
    pub has_package_json: bool,
    pub has_package_lock: bool,
    pub go_mod: Option<String>,
}

impl SourceFacts {
    pub fn read(checkout: &Path) -> Result<Self, ContextError> {
        let mut root_files = Vec::new();
        let entries = std::fs::read_dir(checkout).map_err(|e| ContextError::Io(checkout.to_path_buf(), e))?;
        for e in entries {
            let e = e.map_err(|e| ContextError::Io(checkout.to_path_buf(), e))?;
            root_files.push(e.file_name().to_string_lossy().into_owned());
        }
        root_files.sort();
        let has = |f: &str| root_files.iter().any(|n| n == f);
        let go_mod = if has("go.mod") {
            Some(read_small(&checkout.join("go.mod"))?)
        } else {
            None
        };
        Ok(SourceFacts {
            has_package_json: has("package.json"),
            has_package_lock: has("package-lock.json") || has("npm-shrinkwrap.json"),
            go_mod,
            root_files,
        })
    }

    /// Whether the checkout's root has this entry.
    pub fn has_file(&self, name: &str) -> bool {
        self.root_files.iter().any(|f| f == name)
    }

    /// The module path declared in go.mod.
    pub fn go_module(&self) -> Option<String> {
        self.go_mod.as_deref().and_then(go_module_path)
    }
}

fn read_small(path: &Path) -> Result<String, ContextError> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| ContextError::Io(path.to_path_buf(), e))?;
    if !meta.is_file() || meta.len() > 1024 * 1024 {
        return Ok(String::new());
    }
    std::fs::read_to_string(path).map_err(|e| ContextError::Io(path.to_path_buf(), e))
}

/// Reads `module <path>` from go.mod text.
pub fn go_module_path(go_mod: &str) -> Option<String> {
    go_mod.lines().find_map(|l| {
        let l = l.split("//").next().unwrap_or("").trim();
        let rest = l.strip_prefix("module")?;
        if !rest.starts_with(char::is_whitespace) {
            return None;
        }
        let m = rest.trim().trim_matches('"').to_string();
        (!m.is_empty()).then_some(m)
    })
}

/// Checks a Go checkout for the things a compile error would report badly: the package at
/// the root must not be `main`, and each named function must be declared there.
pub fn check_go_exports(checkout: &Path, functions: &[&FunctionName]) -> Result<(), String> {
    let mut package = None;
    let mut declared = BTreeSet::new();
    let entries = std::fs::read_dir(checkout).map_err(|e| format!("cannot read the checkout: {e}"))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".go") || name.ends_with("_test.go") {
            continue;
        }
        let Ok(text) = read_small(&e.path()) else { continue };
        for line in text.lines() {
            let t = line.trim_start();
            if package.is_none() {
                if let Some(p) = t.strip_prefix("package ") {
                    package = Some(p.split_whitespace().next().unwrap_or("").to_string());
                }
            }
            // Top-level funcs only: `func Name(`, not methods `func (r T) Name(`.
            if let Some(rest) = line.strip_prefix("func ") {
                let ident: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !ident.is_empty() && rest[ident.len()..].trim_start().starts_with(['(', '[']) {
                    declared.insert(ident);
                }
            }
        }
    }
    match package.as_deref() {
        None => return Err("no .go files at the repository root; put the functions' package there".into()),
        Some("main") => {
            return Err("the package at the repository root is `main`, which cannot be imported; \
                 rename it (for example `package functions`): the platform generates its own main"
                .into())
        }
        _ => {}
    }
    let missing: Vec<&str> =
        functions.iter().map(|f| f.as_str()).filter(|f| !declared.contains(*f)).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        let list = |v: &[&str]| v.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ");
        Err(format!(
            "the code does not export {} named in {}; the root package declares: {}",
            list(&missing),
            crate::manifest::MANIFEST_FILE,
            if declared.is_empty() { "no functions".to_string() } else { declared.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ") }
        ))
    }
}

/// The image reference for a function at a commit.
pub fn image_tag(project: &ProjectName, function: &FunctionName, commit: &str) -> String {
    let short = &commit[..commit.len().min(12)];
    format!("eserveless/{}-{}:{}", project, function.docker_part(), short)
}

/// The deployment's shared image, which every function's image of the commit builds upon.
/// A `.` cannot appear in a function's part of a tag, so it never names a function's image.
pub fn base_tag(project: &str, commit: &str) -> String {
    let short = &commit[..commit.len().min(12)];
    format!("eserveless/{project}.base:{short}")
}

/// The project's cache image (the compilers' caches of its last build); one per project.
pub fn cache_tag(project: &str) -> String {
    format!("eserveless/{project}.cache:latest")
}

/// The label on a deps image and a shared image: the hash of the dependency files installed.
pub const DEPS_LABEL: &str = "eserveless.deps";
/// The label on a deps image: the deps image its package manager's cache started from.
pub const DEPS_SEED_LABEL: &str = "eserveless.deps-seed";

/// The files a runtime installs dependencies from.
fn dependency_files(runtime: &str) -> &'static [&'static str] {
    match runtime {
        "node" => &["package.json", "package-lock.json", "npm-shrinkwrap.json"],
        "python" => &["requirements.txt", "pyproject.toml"],
        _ => &[],
    }
}

/// A hash of the runtime's dependency files at the checkout's root (`None` without any).
pub fn deps_hash(checkout: &Path, runtime: &str) -> Result<Option<String>, ContextError> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut any = false;
    for name in dependency_files(runtime) {
        let path = checkout.join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => {
                let bytes = std::fs::read(&path).map_err(|e| ContextError::Io(path.clone(), e))?;
                hasher.update(name.as_bytes());
                hasher.update([0]);
                hasher.update((bytes.len() as u64).to_le_bytes());
                hasher.update(&bytes);
                any = true;
            }
            _ => {}
        }
    }
    Ok(any.then(|| hasher.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()))
}

/// A project's image of a dependency install, by the hash of its dependency files.
pub fn deps_tag(project: &str, hash: &str) -> String {
    format!("eserveless/{project}.deps:{hash}")
}

/// All of a project's deps images, as an image reference pattern.
pub fn deps_pattern(project: &str) -> String {
    format!("eserveless/{project}.deps:*")
}

/// The shared image of the commit a function's image (from [`image_tag`]) was built at.
pub fn base_of(project: &str, function_image: &str) -> Option<String> {
    let (_, commit) = function_image.rsplit_once(':')?;
    Some(base_tag(project, commit))
}

/// Whether a Dockerfile declares a stage of this name (`FROM image AS name`).
pub fn has_stage(dockerfile: &str, stage: &str) -> bool {
    dockerfile.lines().any(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        words.len() == 4 && words[0].eq_ignore_ascii_case("FROM") && words[2].eq_ignore_ascii_case("AS") && words[3] == stage
    })
}

/// One Dockerfile `LABEL` instruction setting `labels` (sorted; values quoted).
pub fn label_line(labels: &std::collections::HashMap<String, String>) -> String {
    let mut pairs: Vec<_> = labels.iter().collect();
    pairs.sort();
    let quote = |v: &str| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', " "));
    let body: Vec<String> = pairs.iter().map(|(k, v)| format!("{}={}", quote(k), quote(v))).collect();
    if body.is_empty() {
        String::new()
    } else {
        format!("\nLABEL {}\n", body.join(" "))
    }
}

/// A build context of the rendered files alone (a function's thin image on a shared one).
pub fn rendered_context(rendered: &[(PathBuf, String)]) -> Result<Vec<u8>, ContextError> {
    let mut tar = tar::Builder::new(Vec::new());
    append_rendered(&mut tar, rendered)?;
    tar.into_inner().map_err(|e| ContextError::Io(PathBuf::from(BUILD_DIR), e))
}

/// Adds the rendered template files under [`BUILD_DIR`].
fn append_rendered(tar: &mut tar::Builder<Vec<u8>>, rendered: &[(PathBuf, String)]) -> Result<(), ContextError> {
    for (path, text) in rendered {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        let dest = Path::new(BUILD_DIR).join(path);
        tar.append_data(&mut header, &dest, text.as_bytes()).map_err(|e| ContextError::Io(dest.clone(), e))?;
    }
    Ok(())
}

pub(crate) fn is_inside(root: &Path, link_dir: &Path, target: &Path) -> bool {
    // Resolve lexically: the target must stay within the checkout.
    let joined = if target.is_absolute() { return false } else { link_dir.join(target) };
    let mut depth: Vec<Component<'_>> = Vec::new();
    let rel = match joined.strip_prefix(root) {
        Ok(r) => r,
        Err(_) => return false,
    };
    for c in rel.components() {
        match c {
            Component::Normal(_) => depth.push(c),
            Component::CurDir => {}
            Component::ParentDir => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

/// Builds the context archive. Returns the tar bytes and warnings about skipped entries.
pub fn build_context(checkout: &Path, rendered: &[(PathBuf, String)]) -> Result<(Vec<u8>, Vec<String>), ContextError> {
    context_archive(checkout, rendered, false)
}

/// The context of a repository built from its own Dockerfile: the checkout as it is, its
/// `.dockerignore` included (the engine honours it, as `docker build` would).
pub fn own_dockerfile_context(checkout: &Path) -> Result<(Vec<u8>, Vec<String>), ContextError> {
    context_archive(checkout, &[], true)
}

fn context_archive(
    checkout: &Path,
    rendered: &[(PathBuf, String)],
    keep_dockerignore: bool,
) -> Result<(Vec<u8>, Vec<String>), ContextError> {
    let mut warnings = Vec::new();
    let mut total: u64 = 0;
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| ContextError::Io(p, e)
    };
    let walker = walkdir::WalkDir::new(checkout).follow_links(false).sort_by_file_name().into_iter().filter_entry(|e| {
        let rel = e.path().strip_prefix(checkout).unwrap_or(e.path());
        let first = rel.components().next().and_then(|c| c.as_os_str().to_str()).unwrap_or("");
        e.file_name() != ".git" && first != BUILD_DIR && (keep_dockerignore || rel != Path::new(".dockerignore"))
    });
    for entry in walker {
        let entry = entry.map_err(|e| ContextError::Io(checkout.to_path_buf(), e.into()))?;
        let rel = entry.path().strip_prefix(checkout).expect("walkdir yields paths under its root");
        if rel.as_os_str().is_empty() {
            continue;
        }
        let ft = entry.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(entry.path()).map_err(io(entry.path()))?;
            let dir = entry.path().parent().unwrap_or(checkout);
            if is_inside(checkout, dir, &target) {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                header.set_mode(0o777);
                tar.append_link(&mut header, rel, &target).map_err(io(entry.path()))?;
            } else {
                warnings.push(format!(
                    "skipped symlink `{}` -> `{}`: it points outside the repository",
                    rel.display(),
                    target.display()
                ));
            }
        } else if ft.is_dir() {
            tar.append_dir(rel, entry.path()).map_err(io(entry.path()))?;
        } else if ft.is_file() {
            let meta = entry.metadata().map_err(|e| ContextError::Io(entry.path().to_path_buf(), e.into()))?;
            total += meta.len();
            if total > MAX_CONTEXT_BYTES {
                return Err(ContextError::TooLarge);
            }
            let mut f = std::fs::File::open(entry.path()).map_err(io(entry.path()))?;
            tar.append_file(rel, &mut f).map_err(io(entry.path()))?;
        }
        // Sockets, fifos and devices never reach a build.
    }
    append_rendered(&mut tar, rendered)?;
    let bytes = tar.into_inner().map_err(io(checkout))?;
    Ok((bytes, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_in(tar_bytes: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries().expect("entries").map(|e| e.expect("entry").path().expect("path").display().to_string()).collect()
    }

    #[test]
    fn context_excludes_git_escaping_symlinks_and_dockerignore() {
        let dir = tempfile::tempdir().expect("dir");
        let root = dir.path();
        std::fs::create_dir_all(root.join(".git/objects")).expect("git");
        std::fs::write(root.join(".git/config"), "secret").expect("w");
        std::fs::write(root.join("functions.js"), "x").expect("w");
        std::fs::write(root.join(".dockerignore"), "*").expect("w");
        std::fs::create_dir(root.join("lib")).expect("lib");
        std::fs::write(root.join("lib/a.js"), "a").expect("w");
        std::os::unix::fs::symlink("/etc/passwd", root.join("passwd")).expect("ln");
        std::os::unix::fs::symlink("../../outside", root.join("lib/up")).expect("ln");
        std::os::unix::fs::symlink("a.js", root.join("lib/alias.js")).expect("ln");
        let rendered = vec![(PathBuf::from("Dockerfile"), "FROM x\n".to_string())];
        let (bytes, warnings) = build_context(root, &rendered).expect("context");
        let names = names_in(&bytes);
        assert!(names.contains(&"functions.js".to_string()), "{names:?}");
        assert!(names.contains(&"lib/alias.js".to_string()), "{names:?}");
        assert!(names.contains(&".eserveless-build/Dockerfile".to_string()), "{names:?}");
        assert!(!names.iter().any(|n| n.starts_with(".git")), "{names:?}");
        assert!(!names.contains(&".dockerignore".to_string()), "{names:?}");
        assert!(!names.contains(&"passwd".to_string()), "{names:?}");
        assert!(!names.contains(&"lib/up".to_string()), "{names:?}");
        assert_eq!(warnings.len(), 2, "{warnings:?}");
    }

    #[test]
    fn go_module_paths() {
        assert_eq!(go_module_path("module github.com/x/y\n\ngo 1.14\n").as_deref(), Some("github.com/x/y"));
        assert_eq!(go_module_path("// c\nmodule \"a/b\" // c\n").as_deref(), Some("a/b"));
        assert_eq!(go_module_path("go 1.14\n"), None);
        assert_eq!(go_module_path("modulex a\n"), None);
    }

    #[test]
    fn go_export_check() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(
            dir.path().join("f.go"),
            "package functions\n\nfunc API(w http.ResponseWriter, r *http.Request) {}\nfunc (s S) Method() {}\nfunc helper() {}\n",
        )
        .expect("w");
        let api = FunctionName::parse("API").expect("n");
        let missing = FunctionName::parse("Missing").expect("n");
        let method = FunctionName::parse("Method").expect("n");
        assert!(check_go_exports(dir.path(), &[&api]).is_ok());
        assert_eq!(
            check_go_exports(dir.path(), &[&api, &missing, &method]).expect_err("missing"),
            "the code does not export `Missing`, `Method` named in .eserveless.yaml; the root package declares: `API`, `helper`"
        );
        std::fs::write(dir.path().join("f.go"), "package main\nfunc API() {}\n").expect("w");
        assert!(check_go_exports(dir.path(), &[&api]).expect_err("main").contains("`main`"));
    }

    #[test]
    fn the_deps_hash_follows_the_dependency_files_only() {
        let dir = tempfile::tempdir().expect("dir");
        let root = dir.path();
        assert_eq!(deps_hash(root, "node").expect("hash"), None, "no dependency file, no install");
        std::fs::write(root.join("package.json"), r#"{"dependencies":{"a":"1"}}"#).expect("w");
        std::fs::write(root.join("functions.js"), "exports.API = 1").expect("w");
        let first = deps_hash(root, "node").expect("hash").expect("some");
        std::fs::write(root.join("functions.js"), "exports.API = 2").expect("w");
        assert_eq!(deps_hash(root, "node").expect("hash").as_deref(), Some(first.as_str()), "a code change keeps the install");
        std::fs::write(root.join("package-lock.json"), "{}").expect("w");
        let locked = deps_hash(root, "node").expect("hash").expect("some");
        assert_ne!(locked, first, "a lock file is part of the install");
        assert_eq!(deps_hash(root, "python").expect("hash"), None, "another runtime's files");
        assert_eq!(deps_hash(root, "golang").expect("hash"), None, "Go keeps its caches in the cache image");
        assert_eq!(deps_tag("shop", &first), format!("eserveless/shop.deps:{first}"));
        assert_eq!(first.len(), 16);
    }

    #[test]
    fn image_tags() {
        let p = ProjectName::parse("acme-app").expect("p");
        let f = FunctionName::parse("My_API").expect("f");
        assert_eq!(image_tag(&p, &f, "0123456789abcdef0123"), "eserveless/acme-app-my-api:0123456789ab");
    }
}
