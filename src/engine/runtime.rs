//! Runtime templates: the embedded `node` and `golang` sets (× `http`, `cron`), an operator's
//! override directory, and their rendering into build-context files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use include_dir::{include_dir, Dir};
use serde::Serialize;

use crate::manifest::FunctionType;

static EMBEDDED: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/runtimes");

/// A runtime's directory of files common to all its kinds (runtimes built one full image
/// per function: an operator's own).
pub const SHARED: &str = "shared";

/// A runtime's directory of the image shared by all the functions of a deployment; with it,
/// each kind's set is a thin `Dockerfile` on top (`FROM {{ base_image }}`).
pub const BASE: &str = "base";

/// The stage of a base Dockerfile that is built first, alone, and kept as the project's cache
/// image: the next deployment gets it as `cache_image`.
pub const CACHE_STAGE: &str = "cache";

/// The stage of a base Dockerfile that installs the dependencies, built first, alone, and kept
/// per dependency files (`eserveless/<project>.deps:<hash>`): a later install starts its
/// package manager's cache from one (`deps_seed`).
pub const DEPS_STAGE: &str = "deps";

/// A `base/` file built first, from nothing but itself, into an image every project of the
/// runtime shares (`toolchain_image`): work that depends on the base image alone.
pub const TOOLCHAIN_FILE: &str = "toolchain.Dockerfile";

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
    pub python_image: String,
    pub has_requirements: bool,
    pub has_pyproject: bool,
    /// Whether any function is an http function.
    pub has_http: bool,
    /// Every function of the deployment (the base image checks and builds them all).
    pub functions: Vec<FunctionVar>,
    /// The deployment's shared image, for the per-function Dockerfiles.
    pub base_image: String,
    /// The project's cache image from its previous deployment, or empty.
    pub cache_image: String,
    /// The deps image whose `/cache` the dependency install starts from, or empty.
    pub deps_seed: String,
    /// The runtime's toolchain image (its `base/toolchain.Dockerfile`, built once per base
    /// image and shared by all projects), or empty.
    pub toolchain_image: String,
}

/// A function as the base templates see it.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionVar {
    pub name: String,
    pub kind: FunctionType,
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
        let mut v: Vec<String> =
            self.sets.keys().filter(|(_, k)| k != SHARED && k != BASE).map(|(r, _)| r.clone()).collect();
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
        if kind == SHARED || kind == BASE {
            return Err(missing());
        }
        let own = self.sets.get(&(runtime.to_string(), kind.to_string())).ok_or_else(missing)?;
        let mut set = self.sets.get(&(runtime.to_string(), SHARED.to_string())).cloned().unwrap_or_default();
        set.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.render_set(runtime, kind, &set, vars)
    }

    /// Whether the runtime builds one shared image per deployment (it has a `base/` set).
    pub fn has_base(&self, runtime: &str) -> bool {
        self.sets.contains_key(&(runtime.to_string(), BASE.to_string()))
    }

    /// Renders the runtime's `base/` set: the deployment's shared image.
    pub fn render_base(&self, runtime: &str, vars: &TemplateVars) -> Result<Vec<(PathBuf, String)>, TemplateError> {
        let set = self.sets.get(&(runtime.to_string(), BASE.to_string())).ok_or_else(|| TemplateError::Missing {
            runtime: runtime.to_string(),
            kind: BASE.to_string(),
            known: self.runtimes().join(", "),
        })?;
        self.render_set(runtime, BASE, set, vars)
    }

    fn render_set(
        &self,
        runtime: &str,
        kind: &str,
        set: &BTreeMap<PathBuf, String>,
        vars: &TemplateVars,
    ) -> Result<Vec<(PathBuf, String)>, TemplateError> {
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
        let fv = |name: &str, kind: &str| FunctionVar { name: name.into(), kind: FunctionType::parse(kind).expect("a real kind") };
        TemplateVars {
            function: function.into(),
            kind: FunctionType::parse(kind).expect("tests name a real kind"),
            project: "p".into(),
            commit: "abc".into(),
            node_image: "node-img".into(),
            go_image: "go-img".into(),
            run_image: "run-img".into(),
            python_image: "py-img".into(),
            port: 8080,
            has_package_json: true,
            has_package_lock: false,
            has_go_mod: true,
            go_module: "github.com/example/gofns".into(),
            has_requirements: true,
            has_pyproject: false,
            has_http: true,
            functions: vec![fv("API", "http"), fv("Ticker", "cron")],
            base_image: "eserveless/p.base:abc".into(),
            cache_image: String::new(),
            deps_seed: String::new(),
            toolchain_image: "eserveless/toolchain-golang:abc".into(),
        }
    }

    fn file<'a>(files: &'a [(PathBuf, String)], name: &str) -> &'a str {
        files.iter().find(|(p, _)| p == Path::new(name)).map(|(_, s)| s.as_str()).unwrap_or_else(|| panic!("no {name} in {files:?}"))
    }

    #[test]
    fn embedded_runtimes_build_one_shared_image_and_thin_function_images() {
        let t = Templates::embedded();
        assert_eq!(t.runtimes(), vec!["golang".to_string(), "node".to_string(), "python".to_string()]);
        for rt in ["node", "golang", "python"] {
            assert!(t.has_base(rt), "{rt}");
            let base = t.render_base(rt, &vars("", "http")).expect("renders");
            assert!(!file(&base, "Dockerfile").contains("{{"), "{rt}/base left a placeholder");
            for kind in ["http", "cron"] {
                let files = t.render(rt, kind, &vars("API", kind)).expect("renders");
                assert_eq!(files.len(), 1, "{rt}/{kind}: a function's image is its Dockerfile alone: {files:?}");
                let df = file(&files, "Dockerfile");
                assert!(df.contains("FROM eserveless/p.base:abc\n"), "{df}");
                assert!(!df.contains("COPY") && !df.contains("RUN"), "{rt}/{kind}: no files, no steps: {df}");
                assert!(df.contains(&format!(r#"eserveless.function="API" eserveless.kind="{kind}""#)), "{df}");
            }
        }
    }

    #[test]
    fn golang_base_compiles_every_function_once_and_reuses_the_projects_caches() {
        let t = Templates::embedded();
        let mut v = vars("", "http");
        let df = t.render_base("golang", &v).expect("renders");
        let d = file(&df, "Dockerfile");
        assert!(d.contains("FROM eserveless/toolchain-golang:abc AS cache") && d.contains("FROM run-img"), "{d}");
        let tc = file(&df, TOOLCHAIN_FILE);
        assert!(tc.contains("FROM go-img\n") && tc.contains("go build -trimpath std"), "{tc}");
        assert_eq!(d.matches("go build -trimpath -ldflags").count(), 1, "one build for all functions: {d}");
        assert!(d.contains("eserveless_entry/API/main.go") && d.contains("eserveless_entry/Ticker/main.go"), "{d}");
        assert!(d.contains("RUN /out/Ticker --eserveless-check") && !d.contains("/out/API --eserveless-check"), "{d}");
        assert!(!d.contains("COPY --from=eserveless"), "no cache on a first deployment: {d}");
        v.cache_image = "eserveless/p.cache:latest".into();
        let d = t.render_base("golang", &v).expect("renders");
        assert!(file(&d, "Dockerfile").contains("COPY --from=eserveless/p.cache:latest /project-cache/ /cache/"), "{d:?}");
        assert!(file(&d, "http.go").contains("\"github.com/example/gofns\"") && file(&d, "http.go").contains("fn.EsvFunction__"));
        assert!(crate::engine::build::has_stage(file(&d, "Dockerfile"), CACHE_STAGE));
    }

    #[test]
    fn node_base_installs_once_checks_all_and_snapshots_only_with_http() {
        let t = Templates::embedded();
        let mut v = vars("", "http");
        let base = t.render_base("node", &v).expect("renders");
        let d = file(&base, "Dockerfile");
        assert!(d.contains("FROM node-img") && d.contains("npm install"), "{d}");
        assert!(d.contains("RUN node .eserveless-build/check.cjs API Ticker\n"), "{d}");
        assert!(d.contains("--build-snapshot"), "{d}");
        assert!(d.contains("ENV NODE_EXTRA_CA_CERTS=\n"), "skips the CA bundle parse: {d}");
        assert!(crate::engine::build::has_stage(d, DEPS_STAGE) && !d.contains("COPY --from=eserveless"), "{d}");
        v.deps_seed = "eserveless/p.deps:0123".into();
        let seeded = t.render_base("node", &v).expect("renders");
        let sd = file(&seeded, "Dockerfile");
        let at = |needle: &str| sd.find(needle).unwrap_or_else(|| panic!("no {needle} in {sd}"));
        assert!(at("AS deps") < at("COPY --from=eserveless/p.deps:0123 /cache /cache") && at("/cache /cache") < at("COPY package*.json"), "{sd}");
        v.has_http = false;
        let base = t.render_base("node", &v).expect("renders");
        assert!(!file(&base, "Dockerfile").contains("--build-snapshot"), "no snapshot without an http function");
        let http = t.render("node", "http", &vars("API", "http")).expect("renders");
        assert!(file(&http, "Dockerfile").contains(r#"CMD ["node", "--snapshot-blob", "/app/.eserveless-build/snapshot.blob", "API"]"#));
        let cron = t.render("node", "cron", &vars("Ticker", "cron")).expect("renders");
        assert!(file(&cron, "Dockerfile").contains(r#"CMD ["node", "/app/.eserveless-build/cron.cjs", "Ticker"]"#));
        assert!(t.render("node", "shared", &vars("API", "http")).is_err(), "shared is not a kind");
        assert!(t.render("node", "base", &vars("API", "http")).is_err(), "base is not a kind");
    }

    #[test]
    fn missing_runtime_is_named() {
        let e = Templates::embedded().render("cobol", "http", &vars("API", "http")).expect_err("no cobol");
        assert!(e.to_string().starts_with("runtime `cobol` has no `http` template (known runtimes: golang, node"), "{e}");
    }

    #[test]
    fn overrides_replace_and_add() {
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("ruby/http");
        std::fs::create_dir_all(&p).expect("mkdir");
        std::fs::write(p.join("Dockerfile"), "FROM {{ node_image }}\nCMD echo {{ function }}\n").expect("write");
        let t = Templates::with_overrides(dir.path()).expect("load");
        assert!(t.runtimes().contains(&"ruby".to_string()));
        assert!(!t.has_base("ruby"), "an operator's runtime without base/ builds one full image per function");
        let files = t.render("ruby", "http", &vars("F", "http")).expect("render");
        assert_eq!(files[0].1, "FROM node-img\nCMD echo F\n");
    }
}
