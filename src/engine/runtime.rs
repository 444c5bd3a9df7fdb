//! Runtime templates: the embedded `node` and `golang` sets (× `http`, `cron`), an operator's
//! override directory, and their rendering into build-context files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use include_dir::{include_dir, Dir};
use serde::Serialize;

use crate::manifest::FunctionType;

static EMBEDDED: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/runtimes");

/// A runtime's directory of files common to all its kinds.
pub const SHARED: &str = "shared";

/// The directory, inside the build context, that holds the rendered template files.
pub const BUILD_DIR: &str = ".eserveless-build";

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("runtime `{runtime}` has no `{kind}` template (known runtimes: {known})")]
    Missing { runtime: String, kind: String, known: String },
    #[error("cannot read template directory {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("template {file} of runtime `{runtime}`/{kind} failed to render")]
    Render { runtime: String, kind: String, file: String, #[source] source: minijinja::Error },
}

/// The values every template sees.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateVars {
    pub function: String,
    /// Serialized as the manifest spells it (`http`, `cron`), which the templates compare with.
    pub kind: FunctionType,
    pub project: String,
    pub commit: String,
    pub node_image: String,
    pub go_image: String,
    pub run_image: String,
    pub port: u16,
    pub has_package_json: bool,
    pub has_package_lock: bool,
    pub has_go_mod: bool,
    pub go_module: String,
}

/// Templates by (runtime, kind), each a set of relative file paths and their text.
#[derive(Debug, Clone, Default)]
pub struct Templates {
    sets: BTreeMap<(String, String), BTreeMap<PathBuf, String>>,
}

fn collect_embedded(dir: &Dir<'_>, out: &mut BTreeMap<(String, String), BTreeMap<PathBuf, String>>) {
    for file in dir.files() {
        let path = file.path();
        let mut parts = path.components();
        let (Some(rt), Some(kind)) = (parts.next(), parts.next()) else { continue };
        let rest: PathBuf = parts.collect();
        if rest.as_os_str().is_empty() {
            continue;
        }
        let (Some(rt), Some(kind), Some(text)) =
            (rt.as_os_str().to_str(), kind.as_os_str().to_str(), file.contents_utf8())
        else {
            continue;
        };
        out.entry((rt.to_string(), kind.to_string())).or_default().insert(rest, text.to_string());
    }
    for sub in dir.dirs() {
        collect_embedded(sub, out);
    }
}

impl Templates {
    /// The templates compiled into the binary.
    pub fn embedded() -> Self {
        let mut sets = BTreeMap::new();
        collect_embedded(&EMBEDDED, &mut sets);
        Templates { sets }
    }

    /// Embedded templates, with each `DIR/<runtime>/<kind>/` replacing or adding a set.
    pub fn with_overrides(dir: &Path) -> Result<Self, TemplateError> {
        let mut t = Self::embedded();
        let read = |p: &Path| std::fs::read_dir(p).map_err(|e| TemplateError::Read(p.to_path_buf(), e));
        for rt in read(dir)? {
            let rt = rt.map_err(|e| TemplateError::Read(dir.to_path_buf(), e))?;
            if !rt.path().is_dir() {
                continue;
            }
            for kind in read(&rt.path())? {
                let kind = kind.map_err(|e| TemplateError::Read(rt.path(), e))?;
                let kdir = kind.path();
                if !kdir.is_dir() {
                    continue;
                }
                let mut files = BTreeMap::new();
                for entry in walkdir::WalkDir::new(&kdir).follow_links(false) {
                    let entry = entry.map_err(|e| TemplateError::Read(kdir.clone(), e.into()))?;
                    if !entry.file_type().is_file() {
                        continue;
                    }
                    let rel = entry.path().strip_prefix(&kdir).expect("walkdir yields paths under its root").to_path_buf();
                    let text = std::fs::read_to_string(entry.path())
                        .map_err(|e| TemplateError::Read(entry.path().to_path_buf(), e))?;
                    files.insert(rel, text);
                }
                let key = (
                    rt.file_name().to_string_lossy().into_owned(),
                    kind.file_name().to_string_lossy().into_owned(),
                );
                t.sets.insert(key, files);
            }
        }
        Ok(t)
    }

    /// Runtimes that have both an `http` and a `cron` template, or at least one of them.
    pub fn runtimes(&self) -> Vec<String> {
        let mut v: Vec<String> = self.sets.keys().filter(|(_, k)| k != SHARED).map(|(r, _)| r.clone()).collect();
        v.dedup();
        v
    }

    /// Renders the (runtime, kind) set into `(relative path, contents)` pairs. Files of the
    /// runtime's `shared/` directory are included unless the kind has its own of that name.
    pub fn render(&self, runtime: &str, kind: &str, vars: &TemplateVars) -> Result<Vec<(PathBuf, String)>, TemplateError> {
        let missing = || TemplateError::Missing {
            runtime: runtime.to_string(),
            kind: kind.to_string(),
            known: self.runtimes().join(", "),
        };
        if kind == SHARED {
            return Err(missing());
        }
        let own = self.sets.get(&(runtime.to_string(), kind.to_string())).ok_or_else(missing)?;
        let mut set = self.sets.get(&(runtime.to_string(), SHARED.to_string())).cloned().unwrap_or_default();
        set.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
        let set = &set;
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        let mut out = Vec::new();
        for (path, text) in set {
            let render_err = |source| TemplateError::Render {
                runtime: runtime.to_string(),
                kind: kind.to_string(),
                file: path.display().to_string(),
                source,
            };
            let mut rendered = env.render_str(text, minijinja::value::Serde(vars)).map_err(render_err)?;
            // Jinja drops the final newline; files keep theirs.
            if text.ends_with('\n') && !rendered.ends_with('\n') {
                rendered.push('\n');
            }
            out.push((path.clone(), rendered));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(function: &str, kind: &str) -> TemplateVars {
        TemplateVars {
            function: function.into(),
            kind: FunctionType::parse(kind).expect("tests name a real kind"),
            project: "p".into(),
            commit: "abc".into(),
            node_image: "node-img".into(),
            go_image: "go-img".into(),
            run_image: "run-img".into(),
            port: 8080,
            has_package_json: true,
            has_package_lock: false,
            has_go_mod: true,
            go_module: "github.com/example/gofns".into(),
        }
    }

    #[test]
    fn embedded_runtimes_cover_node_and_golang() {
        let t = Templates::embedded();
        assert_eq!(t.runtimes(), vec!["golang".to_string(), "node".to_string()]);
        for rt in ["node", "golang"] {
            for kind in ["http", "cron"] {
                let files = t.render(rt, kind, &vars("API", kind)).expect("renders");
                let dockerfile = files
                    .iter()
                    .find(|(p, _)| p == Path::new("Dockerfile"))
                    .map(|(_, s)| s)
                    .expect("every set has a Dockerfile");
                assert!(!dockerfile.contains("{{"), "{rt}/{kind} left a placeholder");
            }
        }
    }

    #[test]
    fn golang_templates_import_the_users_module_and_name_the_function() {
        let t = Templates::embedded();
        let files = t.render("golang", "http", &vars("Hello", "http")).expect("renders");
        let main = files.iter().find(|(p, _)| p == Path::new("main.go")).map(|(_, s)| s).expect("main.go");
        assert!(main.contains("\"github.com/example/gofns\""), "{main}");
        assert!(main.contains("Hello"), "{main}");
        assert!(main.contains("package main"), "{main}");
        let df = files.iter().find(|(p, _)| p == Path::new("Dockerfile")).map(|(_, s)| s).expect("Dockerfile");
        assert!(df.contains("FROM go-img"), "{df}");
        assert!(df.contains("FROM run-img"), "{df}");
    }

    #[test]
    fn node_templates_use_the_node_image() {
        let t = Templates::embedded();
        let files = t.render("node", "http", &vars("API", "http")).expect("renders");
        let df = files.iter().find(|(p, _)| p == Path::new("Dockerfile")).map(|(_, s)| s).expect("Dockerfile");
        assert!(df.contains("FROM node-img"), "{df}");
        assert!(df.contains("package"), "dependency install present: {df}");
    }

    #[test]
    fn shared_files_render_per_kind() {
        let t = Templates::embedded();
        let http = t.render("node", "http", &vars("API", "http")).expect("renders");
        let cron = t.render("node", "cron", &vars("Tick", "cron")).expect("renders");
        let df = |files: &[(PathBuf, String)]| files.iter().find(|(p, _)| p == Path::new("Dockerfile")).map(|(_, s)| s.clone()).expect("Dockerfile");
        let (h, c) = (df(&http), df(&cron));
        assert!(h.contains(r#"CMD ["node", "--snapshot-blob", "/app/.eserveless-build/snapshot.blob"]"#), "{h}");
        assert!(h.contains("--build-snapshot .eserveless-build/snapshot.cjs") && !h.contains("cron.cjs"), "{h}");
        assert!(http.iter().any(|(p, _)| p == Path::new("snapshot.cjs")), "the http kind carries its snapshot entry");
        assert!(c.contains(r#"CMD ["node", "/app/.eserveless-build/cron.cjs"]"#) && !c.contains("snapshot") && !c.contains("server.cjs"), "{c}");
        assert!(h.contains("ENV NODE_EXTRA_CA_CERTS=\n") && c.contains("ENV NODE_EXTRA_CA_CERTS=\n"), "both kinds skip the CA bundle parse");
        assert!(http.iter().any(|(p, _)| p == Path::new("loader.cjs")), "shared loader included");
        // The typed kind reaches the templates as the manifest's text.
        assert!(h.contains(r#"eserveless.kind="http""#) && c.contains(r#"eserveless.kind="cron""#), "{h}\n{c}");
        assert!(t.render("node", "shared", &vars("API", "http")).is_err(), "shared is not a kind");
    }

    #[test]
    fn missing_runtime_is_named() {
        let e = Templates::embedded().render("python", "http", &vars("API", "http")).expect_err("no python");
        assert_eq!(e.to_string(), "runtime `python` has no `http` template (known runtimes: golang, node)");
    }

    #[test]
    fn overrides_replace_and_add() {
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("python/http");
        std::fs::create_dir_all(&p).expect("mkdir");
        std::fs::write(p.join("Dockerfile"), "FROM {{ node_image }}\nCMD echo {{ function }}\n").expect("write");
        let t = Templates::with_overrides(dir.path()).expect("load");
        assert_eq!(t.runtimes(), vec!["golang".to_string(), "node".to_string(), "python".to_string()]);
        let files = t.render("python", "http", &vars("F", "http")).expect("render");
        assert_eq!(files[0].1, "FROM node-img\nCMD echo F\n");
    }
}
