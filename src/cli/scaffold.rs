//! `new`, `validate` and `completions`: the commands that work without a server.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::CommandFactory;
use serde::Serialize;

use super::client::Format;
use crate::engine::build::SourceFacts;
use crate::engine::runtime::Templates;
use crate::manifest::{FunctionType, ResourceCaps, Scaling, MANIFEST_FILE};
use crate::names::ProjectName;

/// The runtimes `new` can start a project in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NewRuntime {
    Node,
    Golang,
    Python,
}

/// The files of a new project, per runtime: (path, text with `{{name}}` for the project's name).
fn skeleton(runtime: NewRuntime) -> &'static [(&'static str, &'static str)] {
    macro_rules! files {
        ($dir:literal: $($f:literal),*) => { &[$(($f, include_str!(concat!("new/", $dir, "/", $f)))),*] };
    }
    match runtime {
        NewRuntime::Node => files!("node": ".eserveless.yaml", "functions.js", "package.json", ".gitignore"),
        NewRuntime::Golang => files!("golang": ".eserveless.yaml", "functions.go", "go.mod", ".gitignore"),
        NewRuntime::Python => files!("python": ".eserveless.yaml", "functions.py", "requirements.txt", ".gitignore"),
    }
}

/// Start a project: a manifest, an http and a cron function, a .gitignore, in a new git repository
#[derive(Debug, clap::Args)]
pub struct New {
    /// The project's name (lowercase letters, digits and dashes); also its directory
    pub name: String,
    #[arg(long, value_enum)]
    pub runtime: NewRuntime,
    /// Where to create it [default: ./NAME]
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

impl New {
    pub fn run(self) -> Result<i32> {
        let name = ProjectName::parse(&self.name).with_context(|| format!("`{}` cannot be a project name", self.name))?;
        let dir = self.dir.unwrap_or_else(|| PathBuf::from(name.as_str()));
        if dir.exists() && std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_some()) {
            bail!("{} already exists and is not empty; choose another NAME, or --dir for an empty or new directory", dir.display());
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for (file, text) in skeleton(self.runtime) {
            let path = dir.join(file);
            std::fs::write(&path, text.replace("{{name}}", name.as_str())).with_context(|| format!("cannot write {}", path.display()))?;
        }
        let git = std::process::Command::new("git").args(["init", "-q"]).current_dir(&dir).status();
        let git_note = match git {
            Ok(s) if s.success() => "",
            _ => " (git init failed: is git installed? the files are written)",
        };
        let files: Vec<&str> = skeleton(self.runtime).iter().map(|(f, _)| *f).collect();
        println!("created {} in {}{git_note}: {}", name, dir.display(), files.join(", "));
        println!("next:\n  cd {}\n  eserveless validate\n  eserveless deploy", dir.display());
        Ok(0)
    }
}

/// Check a project's manifest here, with the server's own checks, before deploying it
#[derive(Debug, clap::Args)]
pub struct Validate {
    /// The project's directory
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// `text` or `json`
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text, env = "ESERVELESS_OUTPUT")]
    pub output: Format,
}

/// `validate -o json`.
#[derive(Debug, Serialize)]
pub struct Validation {
    pub valid: bool,
    pub runtime: Option<String>,
    pub functions: Vec<ValidFunction>,
    pub warnings: Vec<String>,
    /// The manifest's problems, one per entry.
    pub errors: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ValidFunction {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: FunctionType,
    pub schedule: Option<String>,
}

/// The manifest at the root of `dir`, checked as a deployment checks it. Local limits: the
/// operator's scaling defaults, resource ceilings and extra templates are the built-in ones.
pub fn validate(dir: &Path) -> Validation {
    let checked = SourceFacts::read(dir).map_err(|e| e.to_string()).and_then(|facts| {
        let missing = format!("{} has no {MANIFEST_FILE}", dir.display());
        crate::engine::deploy::read_manifest(dir, &missing, &Templates::embedded(), &facts.root_files, &Scaling::default(), ResourceCaps::default())
    });
    match checked {
        Ok(m) => Validation {
            valid: true,
            runtime: Some(m.runtime),
            functions: m
                .functions
                .iter()
                .map(|f| ValidFunction { name: f.name.to_string(), kind: f.kind.function_type(), schedule: f.kind.schedule().map(str::to_string) })
                .collect(),
            warnings: m.warnings,
            errors: Vec::new(),
        },
        Err(e) => {
            // A manifest error lists its problems one per line after its first.
            let errors = match e.split_once("\n  - ") {
                Some(_) => e.split("\n  - ").skip(1).map(str::to_string).collect(),
                None => vec![e],
            };
            Validation { valid: false, runtime: None, functions: Vec::new(), warnings: Vec::new(), errors }
        }
    }
}

impl Validate {
    pub fn run(self) -> Result<i32> {
        if !self.dir.is_dir() {
            bail!("{} is not a directory; give the project's directory (default: the current one)", self.dir.display());
        }
        let v = validate(&self.dir);
        let code = if v.valid { 0 } else { 1 };
        if self.output == Format::Json {
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(code);
        }
        for w in &v.warnings {
            println!("warning: {w}");
        }
        if !v.valid {
            for e in &v.errors {
                eprintln!("error: {e}");
            }
            return Ok(code);
        }
        println!("{MANIFEST_FILE} is valid: runtime {}, {} function(s)", v.runtime.as_deref().unwrap_or("-"), v.functions.len());
        for f in &v.functions {
            println!("  {:<24} {:<5} {}", f.name, f.kind, f.schedule.as_deref().unwrap_or(""));
        }
        Ok(code)
    }
}

/// Print a shell completion script: `eserveless completions bash > /etc/bash_completion.d/eserveless`
#[derive(Debug, clap::Args)]
pub struct Completions {
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

impl Completions {
    pub fn run(self) -> Result<i32> {
        clap_complete::generate(self.shell, &mut super::Cli::command(), "eserveless", &mut std::io::stdout());
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every skeleton is a valid project for its runtime, with an http and a cron function.
    #[test]
    fn new_projects_validate() {
        for rt in [NewRuntime::Node, NewRuntime::Golang, NewRuntime::Python] {
            let dir = tempfile::tempdir().expect("tempdir");
            let p = dir.path().join("demo-app");
            New { name: "demo-app".into(), runtime: rt, dir: Some(p.clone()) }.run().expect("new");
            let v = validate(&p);
            assert!(v.valid, "{rt:?}: {v:?}");
            let kinds: Vec<FunctionType> = v.functions.iter().map(|f| f.kind).collect();
            assert_eq!(kinds, [FunctionType::Http, FunctionType::Cron], "{rt:?}");
            assert!(v.warnings.is_empty(), "{rt:?}: {:?}", v.warnings);
            let manifest = std::fs::read_to_string(p.join(MANIFEST_FILE)).expect("manifest");
            assert!(manifest.contains("/invoke/demo-app/") && !manifest.contains("{{name}}"), "{manifest}");
            // A second `new` into the same, now non-empty, directory is refused.
            let e = New { name: "demo-app".into(), runtime: rt, dir: Some(p.clone()) }.run().expect_err("exists");
            assert!(e.to_string().contains("already exists"), "{e}");
        }
    }

    #[test]
    fn validate_reports_the_servers_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = validate(dir.path());
        assert!(!v.valid && v.errors[0].contains(MANIFEST_FILE), "{v:?}");
        std::fs::write(dir.path().join("functions.js"), "module.exports = {};").expect("write");
        std::fs::write(dir.path().join(MANIFEST_FILE), "functions:\n  - name: A\n    type: htp\n  - name: B\n    type: cron\n").expect("write");
        let v = validate(dir.path());
        assert!(!v.valid, "{v:?}");
        assert_eq!(v.errors.len(), 2, "one entry per problem: {v:?}");
        assert!(v.errors.iter().any(|e| e.contains("htp")), "{v:?}");
        assert!(v.errors.iter().any(|e| e.contains("schedule")), "{v:?}");
    }

    #[test]
    fn bad_names_are_refused_with_the_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = New { name: "Bad_Name".into(), runtime: NewRuntime::Node, dir: Some(dir.path().join("x")) }.run().expect_err("bad");
        assert!(format!("{e:#}").contains("Bad_Name"), "{e:#}");
    }
}
