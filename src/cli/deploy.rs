//! `deploy`: uploads a directory (or submits a repository), follows the build, and prints
//! where the functions are.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::client::{Client, ClientArgs};
use super::pack;
use super::projects::print_invoke_urls;
use crate::api::types::{BuildState, DeployAnswer, DeployRequest, DeploymentAnswer, DeploymentStatus, SourceKind, SubmitStatus};
use crate::infra::store::describe_source;
use crate::names::ProjectName;

/// Deploy a directory (packed and uploaded; the default, `.`) or a git repository
/// (a URL, or `owner/repo` on GitHub) that the server fetches
#[derive(Debug, clap::Args)]
pub struct Deploy {
    /// A directory to upload, or a repository: `https://…`, `ssh://…`, `git@host:owner/repo`,
    /// `owner/repo`. A path that exists is always uploaded
    #[arg(default_value = ".")]
    pub source: String,
    /// Branch, tag or commit (repositories only)
    #[arg(long = "ref")]
    pub git_ref: Option<String>,
    /// Project name (default: the directory's name, or derived from the URL)
    #[arg(long)]
    pub name: Option<String>,
    /// Largest directory upload (file content, before compression), e.g. 64Mi; the server has its own cap
    #[arg(long, value_parser = crate::manifest::parse_memory, default_value = "64Mi")]
    pub max_upload: u64,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Prints above a spinner when there is one, else on stdout.
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn line(&self, line: String) {
        match &self.0 {
            Some(pb) => pb.println(line),
            None => println!("{line}"),
        }
    }
}

/// What `deploy SOURCE` means.
#[derive(Debug, PartialEq, Eq)]
enum Source {
    Directory(PathBuf),
    Repository(String),
}

/// A path that exists is a directory to upload; otherwise a repository if it looks like one.
fn classify(source: &str) -> Result<Source> {
    let path = Path::new(source);
    if std::fs::symlink_metadata(path).is_ok() {
        if !path.is_dir() {
            bail!("`{source}` is a file, not a directory; deploy the directory that holds .eserveless.yaml (default `.`), or a repository URL");
        }
        return Ok(Source::Directory(path.to_path_buf()));
    }
    let url_like = source.contains("://") || (source.contains('@') && source.contains(':'));
    let parts: Vec<&str> = source.split('/').collect();
    let owner_repo = parts.len() == 2
        && !source.starts_with('.')
        && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
    if url_like || owner_repo {
        return Ok(Source::Repository(source.to_string()));
    }
    bail!(
        "no directory `{source}` here, and it is not a repository either; give a directory to upload (default `.`), \
         a git URL (`https://…`, `git@host:owner/repo`) or `owner/repo` for GitHub"
    )
}

/// The checkout's HEAD and whether the directory has uncommitted changes, when `dir` is
/// inside a git checkout (and git is installed).
fn git_state(dir: &Path) -> Option<(String, bool)> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let head = git(&["rev-parse", "--verify", "-q", "HEAD"])?.trim().to_string();
    // Only what is under the directory: that is what is uploaded.
    let dirty = !git(&["status", "--porcelain", "--", "."])?.trim().is_empty();
    Some((head, dirty))
}

impl Deploy {
    pub async fn run(self) -> Result<i32> {
        let c = Client::new(&self.client)?;
        let v: DeployAnswer = match classify(&self.source)? {
            Source::Directory(dir) => {
                if let Some(r) = &self.git_ref {
                    bail!("--ref {r} is for repositories; `{}` is a directory, whose files are uploaded as they are", self.source);
                }
                self.upload(&c, &dir).await?
            }
            Source::Repository(repository) => {
                let owner_repo = !repository.contains(':');
                let req = DeployRequest { repository: repository.clone(), git_ref: self.git_ref.clone(), name: self.name.clone() };
                c.post("/api/projects", &req).await.map_err(|e| {
                    if owner_repo {
                        anyhow::anyhow!(
                            "{e:#}\n(`{repository}` is not a directory here, so it was taken for the GitHub repository \
                             https://github.com/{repository}; to upload a directory, give a path that exists)"
                        )
                    } else {
                        e
                    }
                })?
            }
        };
        if c.format == super::client::Format::Json {
            // One document: the submit answer (with the key, shown once) and the outcome.
            let d = follow(&c, &v.project, v.deployment, false).await?;
            let failed = d.deployment.status == DeploymentStatus::Failed;
            c.print_json(&DeployOutcome { submit: v, deployment: d })?;
            return Ok(if failed { 1 } else { 0 });
        }
        let (project, id) = (&v.project, v.deployment);
        let what = describe_source(v.source, &v.commit, v.dirty, v.digest.as_deref());
        if v.status == SubmitStatus::Unchanged {
            println!("{project}: {what} is already live (deployment {id}); nothing to build");
            print_invoke_urls(&c, project).await?;
            return Ok(0);
        }
        println!("{project}: deployment {id} of {what} queued");
        if let Some(key) = &v.invoke_key {
            println!("{project}: invoke key for its `auth: private` functions (shown once; `eserveless keys rotate {project}` makes a new one):\n  {key}");
        }
        let d = follow(&c, project, id, true).await?;
        for w in &d.deployment.warnings {
            println!("warning: {w}");
        }
        if d.deployment.status == DeploymentStatus::Failed {
            eprintln!("deployment {id} failed: {}", d.deployment.error.as_deref().unwrap_or("-"));
            for f in d.functions.iter().filter(|f| f.build_state == BuildState::Failed) {
                let tail: Vec<&str> = f.build_log.lines().rev().take(20).collect();
                eprintln!("--- build log of {} (last lines) ---", f.name);
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
            return Ok(1);
        }
        println!("deployment {id} is live");
        print_invoke_urls(&c, project).await?;
        Ok(0)
    }

    /// Packs `dir` and uploads it.
    async fn upload(&self, c: &Client, dir: &Path) -> Result<DeployAnswer> {
        let abs = dir.canonicalize().with_context(|| format!("cannot read directory `{}`", dir.display()))?;
        let name = match &self.name {
            Some(n) => n.clone(),
            None => {
                let base = abs.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                ProjectName::from_directory(&base)?.to_string()
            }
        };
        let state = git_state(&abs);
        let max = self.max_upload;
        let packed = tokio::task::spawn_blocking(move || pack::pack(&abs, max)).await.context("packing failed")??;
        let mut path = format!("/api/projects/{name}/uploads");
        if let Some((head, dirty)) = &state {
            path.push_str(&format!("?commit={head}&dirty={dirty}"));
        }
        if c.format == super::client::Format::Text {
            let what = match &state {
                Some((head, dirty)) => describe_source(SourceKind::Upload, head, Some(*dirty), None),
                None => "a directory that is not a git checkout".to_string(),
            };
            println!(
                "{name}: uploading `{}` ({what}): {} files, {} ({} compressed)",
                dir.display(),
                packed.files,
                pack::human(packed.size),
                pack::human(packed.bytes.len() as u64)
            );
        }
        c.post_bytes(&path, "application/gzip", packed.bytes).await
    }
}

/// `deploy -o json`: the API's two answers, `POST /api/projects` (or `/uploads`) and the
/// deployment as it ended.
#[derive(Debug, serde::Serialize)]
struct DeployOutcome {
    submit: DeployAnswer,
    deployment: DeploymentAnswer,
}

/// Polls the deployment until it is ready or failed, printing each function's build state
/// and the deployment's status as they change.
async fn follow(c: &Client, project: &str, id: i64, print: bool) -> Result<DeploymentAnswer> {
    if !print {
        loop {
            let d: DeploymentAnswer = c.get(&format!("/api/projects/{project}/deployments/{id}")).await?;
            if d.deployment.status.is_final() {
                return Ok(d);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let progress = Progress(std::io::stderr().is_terminal().then(|| {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    }));
    let mut seen: std::collections::HashMap<String, BuildState> = Default::default();
    let mut last_status = None;
    // How much of the deployment's log is printed: its build steps appear as they run.
    let mut printed = 0;
    let started = Instant::now();
    let mut slow_note = false;
    let d = loop {
        let d: DeploymentAnswer = c.get(&format!("/api/projects/{project}/deployments/{id}")).await?;
        let log = &d.deployment.log;
        if let Some(new) = log.get(printed..).filter(|_| log.len() > printed) {
            // Whole lines only: a line still being written is printed next time.
            let complete = new.rfind('\n').map_or(0, |i| i + 1);
            for line in new[..complete].lines() {
                progress.line(format!("  | {line}"));
            }
            printed += complete;
        }
        for f in &d.functions {
            if seen.get(&f.name) != Some(&f.build_state) {
                progress.line(format!("  {:<24} {}", f.name, f.build_state.as_str()));
                seen.insert(f.name.clone(), f.build_state);
            }
        }
        if last_status != Some(d.deployment.status) {
            progress.line(format!("deployment {id}: {}", d.deployment.status.as_str()));
            last_status = Some(d.deployment.status);
        }
        if let Some(pb) = &progress.0 {
            pb.set_message(format!("{} ({}s)", d.deployment.status.as_str(), started.elapsed().as_secs()));
        } else if !slow_note && started.elapsed() > Duration::from_secs(60) {
            println!("this is taking a while (builds can take minutes the first time)…");
            slow_note = true;
        }
        if d.deployment.status.is_final() {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if let Some(pb) = progress.0 {
        pb.finish_and_clear();
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_that_exists_is_always_a_directory() {
        let d = tempfile::tempdir().expect("dir");
        let inner = d.path().join("ux/mistakes");
        std::fs::create_dir_all(&inner).expect("mkdir");
        // `ux/mistakes` looks like owner/repo; as a path that exists it is a directory.
        let cwd_relative = inner.to_str().expect("utf8");
        assert_eq!(classify(cwd_relative).expect("dir"), Source::Directory(inner.clone()));
        assert_eq!(classify(".").expect("dot"), Source::Directory(PathBuf::from(".")));
        for repo in ["owner/repo", "https://github.com/a/b", "git@github.com:a/b.git", "file:///srv/git/app"] {
            assert_eq!(classify(repo).expect(repo), Source::Repository(repo.to_string()), "{repo}");
        }
        for missing in ["./no-such-dir", "no-such-dir", "a/b/c", "../x/y"] {
            let e = classify(missing).expect_err(missing).to_string();
            assert!(e.contains(&format!("no directory `{missing}`")), "{e}");
        }
        std::fs::write(d.path().join("file.txt"), "x").expect("write");
        let f = d.path().join("file.txt");
        let e = classify(f.to_str().expect("utf8")).expect_err("a file").to_string();
        assert!(e.contains("is a file, not a directory"), "{e}");
    }
}
