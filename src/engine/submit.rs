//! Accepting a deployment: the source (a fetched commit or an uploaded directory) is made
//! ready and its manifest checked before anything is recorded, so a request that cannot
//! deploy creates no project and queues nothing; then one store transaction decides, and the
//! build runs in the background on the source already on disk.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

use crate::engine::auth::Principal;
use crate::engine::build::SourceFacts;
use crate::engine::deploy::{Checkout, Prepared};
use crate::engine::error::{EngineError, Result};
use crate::engine::upload::{self, UploadError, UploadLimits};
use crate::engine::{Platform, SubmitStatus, Submitted};
use crate::infra::store::{EnqueueRequest, Enqueued, SourceKind};
use crate::manifest::{Access, FunctionType, Manifest};
use crate::names::ProjectName;

/// A directory upload, as received (its tar.gz body comes separately).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UploadRequest {
    /// The directory's HEAD commit, when it is a git checkout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Whether that checkout had uncommitted changes.
    #[serde(default)]
    pub dirty: bool,
}

/// Whether the manifest has http functions that need the invoke key.
fn has_private(manifest: &Manifest) -> bool {
    manifest.functions.iter().any(|f| f.kind.function_type() == FunctionType::Http && f.options.auth == Access::Private)
}

impl From<UploadError> for EngineError {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::TooLarge(_) => EngineError::UploadTooLarge { message: e.to_string() },
            UploadError::Io(io) => EngineError::internal("unpacking an upload failed", io),
            other => EngineError::invalid("invalid_upload", other.to_string()),
        }
    }
}

impl Platform {
    /// A failure while the source was written under the data directory is its full disk
    /// when the data directory has no room left: 507, as the store's own writes answer.
    pub(super) fn or_full(&self, e: EngineError) -> EngineError {
        if matches!(e, EngineError::StorageFull { .. }) || crate::infra::datadir::storage_problem(&self.config.data_dir).is_none() {
            return e;
        }
        crate::infra::datadir::note_storage_full();
        EngineError::StorageFull { dir: crate::infra::datadir::storage_dir_display(), source: Box::new(e) }
    }

    /// A fresh directory under the data directory's `work/`, removed when dropped.
    pub(super) fn work_dir(&self, prefix: &str) -> Result<tempfile::TempDir> {
        let root = self.config.data_dir.join("work");
        std::fs::create_dir_all(&root).map_err(|e| EngineError::internal("cannot create the work directory", e))?;
        tempfile::Builder::new().prefix(prefix).tempdir_in(&root).map_err(|e| EngineError::internal("cannot create a work directory", e))
    }

    /// Refuses a project name that belongs to someone `who` may not act for.
    pub(super) fn check_name_free(&self, name: &ProjectName, who: &Principal) -> Result<()> {
        match self.store.project(name.as_str())? {
            Some(p) if !who.owns(p.owner.as_deref()) => Err(EngineError::NameTaken { project: name.to_string() }),
            _ => Ok(()),
        }
    }

    /// Reads the source's facts and its manifest; a manifest that does not parse is refused
    /// here (422, the manifest's own messages), before anything is recorded.
    pub(super) fn prepare(&self, work: tempfile::TempDir, dir: PathBuf, sha: String, described: String) -> Result<Prepared> {
        let facts = SourceFacts::read(&dir).map_err(|e| EngineError::invalid("invalid_source", e.to_string()))?;
        let checkout = Checkout { dir, sha, facts };
        let manifest = self.read_manifest(&checkout).map_err(|m| EngineError::invalid("invalid_manifest", m))?;
        Ok(Prepared { _work: work, checkout, manifest, described })
    }

    /// Records the request (creating the project if needed, issuing the invoke key when the
    /// manifest has private functions and the project has none) and starts its build.
    pub(super) fn enqueue_and_start(self: &Arc<Self>, req: EnqueueRequest<'_>, prepared: Prepared, who: &Principal) -> Result<Submitted> {
        let (invoke_key, key_hash) = crate::engine::auth::new_invoke_key();
        let req = EnqueueRequest { invoke_key_hash: has_private(&prepared.manifest).then_some(key_hash), ..req };
        // Decided in one store transaction: two requests racing for a new project must not
        // both create it or both queue one source. Not under the project lock: that is held
        // by a running build, and answering must not wait for it.
        let decided = self.store.enqueue_deployment(&req, |owner| who.owns(owner))?;
        let submitted = |deployment_id, status, invoke_key| Submitted::of(&req, deployment_id, status, invoke_key);
        let (id, invoke_key) = match decided {
            Enqueued::NameTaken => return Err(EngineError::NameTaken { project: req.project.to_string() }),
            Enqueued::Unchanged(id) => return Ok(submitted(id, SubmitStatus::Unchanged, None)),
            Enqueued::Following(id) => return Ok(submitted(id, SubmitStatus::Queued, None)),
            Enqueued::Queued { id, key_issued, .. } => {
                if key_issued {
                    self.routes.set_invoke_key(req.project, &key_hash);
                }
                (id, key_issued.then_some(invoke_key))
            }
        };
        tracing::info!(project = %req.project, deployment = id, source = %prepared.described, "deployment queued");
        let me = self.clone();
        let project = req.project.to_string();
        let removed = self.removal_token(&project);
        tokio::spawn(async move {
            let lock = me.project_lock(&project);
            let run = async {
                let _one_at_a_time = crate::engine::unless_cancelled(&removed, lock.lock()).await?;
                me.run_deployment(id, &project, prepared, &removed).await
            };
            if let Err(message) = run.await {
                tracing::warn!(project = %project, deployment = id, error = %message, "deployment failed");
                if let Err(e) = me.store.fail_deployment(id, &message) {
                    tracing::error!(error = %e, "could not record a failed deployment");
                }
            }
        });
        Ok(submitted(id, SubmitStatus::Queued, invoke_key))
    }

    /// Deploys an uploaded directory: `body` is its tar.gz, spooled to disk under the
    /// `--max-upload` cap, unpacked as hostile input, its manifest checked, then built like a
    /// commit. The content digest decides "unchanged".
    pub async fn submit_upload<S, E>(self: &Arc<Self>, project: &str, req: UploadRequest, body: S, who: &Principal) -> Result<Submitted>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let name = ProjectName::parse(project).map_err(|e| EngineError::invalid("invalid_name", e.to_string()))?;
        let commit = match req.commit.as_deref().map(str::trim).filter(|c| !c.is_empty()) {
            Some(c) if (7..=64).contains(&c.len()) && c.chars().all(|ch| ch.is_ascii_hexdigit()) => c.to_ascii_lowercase(),
            Some(c) => {
                return Err(EngineError::invalid(
                    "invalid_commit",
                    format!("commit `{}` is not a git commit id (7 to 64 hexadecimal digits)", c.escape_debug()),
                ))
            }
            None => String::new(),
        };
        let dirty = (!commit.is_empty()).then_some(req.dirty);
        self.check_name_free(&name, who)?;
        let work = self.work_dir("upload-").map_err(|e| self.or_full(e))?;
        let archive = work.path().join("upload.tar.gz");
        spool(body, &archive, self.config.max_upload).await.map_err(|e| self.or_full(e))?;
        let dir = work.path().join("src");
        std::fs::create_dir(&dir).map_err(|e| self.or_full(EngineError::internal("cannot create a work directory", e)))?;
        let limits = UploadLimits { max_bytes: self.config.max_upload, ..UploadLimits::default() };
        let (from, to) = (archive.clone(), dir.clone());
        let unpacked = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&from).map_err(UploadError::Io)?;
            upload::unpack(std::io::BufReader::new(f), &to, limits)
        })
        .await
        .map_err(|e| EngineError::internal("unpacking an upload failed", e))?
        .map_err(|e| self.or_full(e.into()))?;
        let _ = std::fs::remove_file(&archive);
        let req = EnqueueRequest {
            project: name.as_str(),
            repository: "upload",
            git_ref: None,
            commit: &commit,
            owner: &who.name,
            source: SourceKind::Upload,
            digest: Some(&unpacked.digest),
            dirty,
            invoke_key_hash: None,
        };
        if let Some(done) = self.shortcut(&req, who)? {
            return Ok(done);
        }
        let described = format!(
            "{}: {} entries, {}",
            crate::infra::store::describe_source(SourceKind::Upload, &commit, dirty, Some(&unpacked.digest)),
            unpacked.entries,
            upload::mib(unpacked.bytes)
        );
        let hex = unpacked.digest.trim_start_matches("sha256:").to_string();
        let prepared = self.prepare(work, dir, hex, described)?;
        self.enqueue_and_start(req, prepared, who)
    }

    /// What the store would answer without queueing (name taken, live already, on its way).
    pub(super) fn shortcut(&self, req: &EnqueueRequest<'_>, who: &Principal) -> Result<Option<Submitted>> {
        let done = self.store.enqueue_shortcut(req, |owner| who.owns(owner))?;
        let submitted = |deployment_id, status| Submitted::of(req, deployment_id, status, None);
        match done {
            None | Some(Enqueued::Queued { .. }) => Ok(None),
            Some(Enqueued::NameTaken) => Err(EngineError::NameTaken { project: req.project.to_string() }),
            Some(Enqueued::Unchanged(id)) => Ok(Some(submitted(id, SubmitStatus::Unchanged))),
            Some(Enqueued::Following(id)) => Ok(Some(submitted(id, SubmitStatus::Queued))),
        }
    }
}

/// Writes the body to `path`, failing with 413's error once it passes `cap` bytes.
async fn spool<S, E>(mut body: S, path: &std::path::Path, cap: u64) -> Result<()>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin,
    E: std::fmt::Display,
{
    let mut file = tokio::fs::File::create(path).await.map_err(|e| EngineError::internal("cannot store an upload", e))?;
    let mut written: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| EngineError::invalid("upload_interrupted", format!("the upload did not arrive whole: {e}")))?;
        written += chunk.len() as u64;
        if written > cap {
            return Err(EngineError::UploadTooLarge {
                message: format!(
                    "the upload is larger than {} (the server's upload cap); leave large files out with .gitignore or .dockerignore, or ask the operator to raise `--max-upload`",
                    upload::mib(cap)
                ),
            });
        }
        file.write_all(&chunk).await.map_err(|e| EngineError::internal("cannot store an upload", e))?;
    }
    file.flush().await.map_err(|e| EngineError::internal("cannot store an upload", e))?;
    Ok(())
}

impl Submitted {
    /// The answer to `req`: the deployment it made or met, and the key it issued, if any.
    fn of(req: &EnqueueRequest<'_>, deployment_id: i64, status: SubmitStatus, invoke_key: Option<String>) -> Submitted {
        Submitted {
            project: req.project.to_string(),
            deployment_id,
            commit: req.commit.to_string(),
            source: req.source,
            dirty: req.dirty,
            digest: req.digest.map(str::to_string),
            status,
            invoke_key,
        }
    }
}
