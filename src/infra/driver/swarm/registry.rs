//! Getting images built on the manager to every node: a registry, pushed to after each build,
//! and services that name images by digest, so every node runs the same bytes whatever
//! happens to a tag meanwhile.
//!
//! Without `--registry`, the server runs one itself: Debian's `docker-registry` (Docker
//! Distribution) in an image built on the manager from the run image, as a service pinned to
//! the manager (its image exists only there), with a volume for its storage and its port
//! published in host mode on the manager (no routing mesh: the lab's kernel has no IPVS).
//!
//! Nodes pull over plain HTTP, which Docker allows only for registries it is told to trust
//! (`insecure-registries` in each node's `/etc/docker/daemon.json`, loopback excepted); a
//! registry with TLS given by `--registry` needs no such line. A node that does not trust the
//! registry fails its tasks with "server gave HTTP response to HTTPS client", which
//! [`explain_pull_error`] turns into the line to add.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum, EndpointSpec,
    EndpointSpecModeEnum, Mount, MountType, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, TaskSpec,
    TaskSpecContainerSpec, TaskSpecPlacement, TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum,
};
use bollard::query_parameters::{PushImageOptionsBuilder, RemoveImageOptionsBuilder, TagImageOptionsBuilder};
use bollard::Docker;
use futures_util::StreamExt;

use super::super::{build_image_on, image_exists_on, labels, BuildRequest, DriverError, Result};

/// The port the registry listens on inside its container.
const REGISTRY_PORT_IN: i64 = 5000;
/// Longest wait for the registry the server runs to answer after its service is created.
const REGISTRY_START_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest one push may take.
const PUSH_TIMEOUT: Duration = Duration::from_secs(600);
/// The Accept header that makes a registry answer with the digest Docker pushed.
const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// A registry the nodes pull from.
#[derive(Debug, Clone)]
pub struct Registry {
    /// `host:port`, the prefix of image references.
    addr: String,
    http: reqwest::Client,
    /// Whether the server runs it (its name in messages says so).
    own: bool,
}

/// How the server's own registry is set up.
pub struct OwnRegistry<'a> {
    pub owner: &'a str,
    /// The manager's node id (the service is pinned there) and its address in the swarm.
    pub manager_id: &'a str,
    pub manager_addr: &'a str,
    pub port: u16,
    /// A Debian image apt can install `docker-registry` into.
    pub debian_image: &'a str,
    pub build_network: &'a str,
}

impl Registry {
    /// A registry at `addr` (`host:port`) run by someone else.
    pub fn external(addr: &str) -> Registry {
        Registry { addr: addr.to_string(), http: http_client(), own: false }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Says which registry, for messages: the operator's or the server's own.
    pub fn describe(&self) -> String {
        if self.own {
            format!("the registry the server runs at {}", self.addr)
        } else {
            format!("the registry {} (--registry)", self.addr)
        }
    }

    /// Starts the server's own registry unless it runs, and waits until it answers.
    pub async fn ensure_own(docker: &Docker, o: OwnRegistry<'_>) -> Result<Registry> {
        // The tag changes with the image's recipe, so a server with a new recipe builds anew.
        let image = "eserveless/registry:bookworm-2";
        if !image_exists_on(docker, image).await? {
            tracing::info!(image, from = o.debian_image, "building the registry image (Debian's docker-registry)");
            build_image_on(docker, o.build_network, registry_build(o.debian_image, image)?).await.map_err(|e| {
                DriverError::Engine(format!("could not build the registry image from {}: {e}", o.debian_image))
            })?;
        }
        let name = own_registry_name(o.owner);
        let spec = own_registry_spec(&name, image, o.owner, o.manager_id, o.port);
        match docker.inspect_service(&name, None).await {
            Ok(existing) => {
                // Same settings: leave it running (it may be serving a pull right now).
                let same = existing.spec.as_ref().map(ports_and_placement) == Some(ports_and_placement(&spec));
                if !same {
                    let version = existing.version.and_then(|v| v.index).unwrap_or(0);
                    let opts = bollard::query_parameters::UpdateServiceOptionsBuilder::default()
                        .version(i32::try_from(version).unwrap_or(i32::MAX))
                        .build();
                    docker.update_service(&name, spec, opts, None).await?;
                }
            }
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                docker.create_service(spec, None).await?;
            }
            Err(e) => return Err(e.into()),
        }
        let registry = Registry { addr: format!("{}:{}", o.manager_addr, o.port), http: http_client(), own: true };
        let deadline = tokio::time::Instant::now() + REGISTRY_START_TIMEOUT;
        loop {
            match registry.ping().await {
                Ok(()) => return Ok(registry),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(DriverError::Engine(format!(
                        "{e} {REGISTRY_START_TIMEOUT:?} after its service `{name}` was started; see `docker service ps {name}` on the manager"
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// `GET /v2/`: the registry answers (401 counts: it is there, and asks for credentials).
    pub async fn ping(&self) -> Result<()> {
        let url = format!("http://{}/v2/", self.addr);
        match self.http.get(&url).send().await {
            Ok(r) if r.status().is_success() || r.status() == reqwest::StatusCode::UNAUTHORIZED => Ok(()),
            Ok(r) => Err(DriverError::Engine(format!("{} answered {} to {url}", self.describe(), r.status()))),
            Err(e) => Err(DriverError::Engine(format!("{} cannot be reached ({})", self.describe(), error_chain(&e)))),
        }
    }

    /// The reference of `local` (a tag built on the manager) in this registry.
    pub fn reference(&self, local: &str) -> String {
        format!("{}/{local}", self.addr)
    }

    /// Pushes `local` (`repo:tag`, built on the manager) and returns its reference by digest,
    /// `host:port/repo@sha256:…`. Layers the registry has are not sent again.
    pub async fn push(&self, docker: &Docker, local: &str) -> Result<String> {
        let (repo, tag) = split_tag(local);
        let remote_repo = format!("{}/{repo}", self.addr);
        docker
            .tag_image(local, Some(TagImageOptionsBuilder::default().repo(&remote_repo).tag(tag).build()))
            .await?;
        let opts = PushImageOptionsBuilder::default().tag(tag).build();
        // An empty X-Registry-Auth, as the docker CLI sends: without the header the engine asks for basic auth.
        let mut stream = docker.push_image(&remote_repo, Some(opts), Some(bollard::auth::DockerCredentials::default()));
        let mut digest = None;
        let run = async {
            while let Some(item) = stream.next().await {
                let info = match item {
                    Ok(info) => info,
                    Err(bollard::errors::Error::DockerStreamError { error }) => return Err(self.push_failed(local, &error)),
                    Err(e) => return Err(self.push_failed(local, &e.to_string())),
                };
                if let Some(detail) = info.error_detail {
                    return Err(self.push_failed(local, &detail.message.unwrap_or_default()));
                }
                if let Some(d) = info.status.as_deref().and_then(digest_in_status) {
                    digest = Some(d);
                }
            }
            Ok(())
        };
        match tokio::time::timeout(PUSH_TIMEOUT, run).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(self.push_failed(local, &format!("no end after {PUSH_TIMEOUT:?}"))),
        }
        let digest = digest.ok_or_else(|| self.push_failed(local, "the push ended without a digest"))?;
        Ok(format!("{remote_repo}@{digest}"))
    }

    fn push_failed(&self, local: &str, why: &str) -> DriverError {
        DriverError::Engine(format!("could not push {local} to {}: {}", self.describe(), explain_pull_error(&self.addr, why)))
    }

    /// Deletes the tag `local` names from the registry (manifest by digest, which the
    /// registry allows when started with deletion on). A missing tag is fine.
    pub async fn delete(&self, local: &str) -> Result<()> {
        let (repo, tag) = split_tag(local);
        let url = format!("http://{}/v2/{repo}/manifests/{tag}", self.addr);
        let head = self.http.head(&url).header("Accept", MANIFEST_TYPES).send().await.map_err(|e| self.unreachable(&e))?;
        if head.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        let digest = head
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| DriverError::Engine(format!("{} gave no digest for {local} ({})", self.describe(), head.status())))?;
        let url = format!("http://{}/v2/{repo}/manifests/{digest}", self.addr);
        let r = self.http.delete(&url).send().await.map_err(|e| self.unreachable(&e))?;
        if r.status().is_success() || r.status() == reqwest::StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(DriverError::Engine(format!("{} refused to delete {local}: {}", self.describe(), r.status())))
        }
    }

    /// The tags of `repo` the registry holds (none when the repository is unknown).
    pub async fn tags(&self, repo: &str) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Tags {
            tags: Option<Vec<String>>,
        }
        let url = format!("http://{}/v2/{repo}/tags/list", self.addr);
        let r = self.http.get(&url).send().await.map_err(|e| self.unreachable(&e))?;
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        let t: Tags = r.json().await.map_err(|e| self.unreachable(&e))?;
        Ok(t.tags.unwrap_or_default())
    }

    fn unreachable(&self, e: &reqwest::Error) -> DriverError {
        DriverError::Engine(format!("{} cannot be reached ({})", self.describe(), error_chain(e)))
    }
}

/// Removes the local tag a push added (`host:port/repo:tag`); the image stays under its own tag.
pub async fn untag_pushed(docker: &Docker, registry: &Registry, local: &str) {
    let opts = RemoveImageOptionsBuilder::default().noprune(true).build();
    let _ = docker.remove_image(&registry.reference(local), Some(opts), None).await;
}

/// The reference by digest of `local` in `registry`, if the manager's copy was pushed there.
pub async fn pushed_reference(docker: &Docker, registry: &Registry, local: &str) -> Result<Option<String>> {
    let (repo, _) = split_tag(local);
    let prefix = format!("{}/{repo}@", registry.addr());
    match docker.inspect_image(local).await {
        Ok(img) => Ok(img.repo_digests.unwrap_or_default().into_iter().find(|d| d.starts_with(&prefix))),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `repo:tag` → (`repo`, `tag`); `latest` when there is no tag (a `:` in a host part is not one).
pub fn split_tag(image: &str) -> (&str, &str) {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (image, "latest"),
    }
}

/// The digest in a push's last status line: `TAG: digest: sha256:… size: N`.
pub fn digest_in_status(status: &str) -> Option<String> {
    let rest = status.split("digest: ").nth(1)?;
    let d = rest.split_whitespace().next()?;
    (d.starts_with("sha256:") && d.len() == 71).then(|| d.to_string())
}

/// A pull or push error, with the fix when the node does not trust a plain-HTTP registry.
pub fn explain_pull_error(addr: &str, error: &str) -> String {
    if error.contains("HTTP response to HTTPS client") {
        format!(
            "{error}; the node's Docker engine does not trust the plain-HTTP registry {addr}: add {{\"insecure-registries\": [\"{addr}\"]}} to /etc/docker/daemon.json on every node and reload dockerd (kill -HUP), or give --registry a registry with TLS"
        )
    } else {
        error.to_string()
    }
}

/// The service name of the server's own registry.
pub fn own_registry_name(owner: &str) -> String {
    format!("esl-registry-{}", &owner[..owner.len().min(8)])
}

/// The server's own registry: one replica pinned to the manager, port published in host mode,
/// storage on a named volume, deletion on (so `rm` of a project can delete its tags).
pub fn own_registry_spec(name: &str, image: &str, owner: &str, manager_id: &str, port: u16) -> ServiceSpec {
    let labels = HashMap::from([
        (labels::MANAGED.to_string(), "true".to_string()),
        (labels::OWNER.to_string(), owner.to_string()),
        (labels::ROLE.to_string(), "registry".to_string()),
    ]);
    ServiceSpec {
        name: Some(name.to_string()),
        labels: Some(labels.clone()),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
            ..Default::default()
        }),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(image.to_string()),
                labels: Some(labels),
                command: Some(vec!["/usr/bin/docker-registry".into()]),
                args: Some(vec!["serve".into(), "/etc/docker/registry/config.yml".into()]),
                env: Some(vec![
                    format!("REGISTRY_HTTP_ADDR=0.0.0.0:{REGISTRY_PORT_IN}"),
                    "REGISTRY_STORAGE_DELETE_ENABLED=true".into(),
                    "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=/var/lib/docker-registry".into(),
                ]),
                user: Some("docker-registry".into()),
                mounts: Some(vec![Mount {
                    target: Some("/var/lib/docker-registry".into()),
                    source: Some(name.to_string()),
                    typ: Some(MountType::VOLUME),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            placement: Some(TaskSpecPlacement {
                constraints: Some(vec![format!("node.id=={manager_id}")]),
                ..Default::default()
            }),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
                delay: Some(1_000_000_000),
                ..Default::default()
            }),
            ..Default::default()
        }),
        endpoint_spec: Some(EndpointSpec {
            mode: Some(EndpointSpecModeEnum::DNSRR),
            ports: Some(vec![EndpointPortConfig {
                protocol: Some(EndpointPortConfigProtocolEnum::TCP),
                target_port: Some(REGISTRY_PORT_IN),
                published_port: Some(i64::from(port)),
                publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    }
}

/// What decides whether a running registry service must be updated.
fn ports_and_placement(s: &ServiceSpec) -> String {
    let ports = s.endpoint_spec.as_ref().and_then(|e| e.ports.as_ref()).map(|p| format!("{p:?}"));
    let task = s.task_template.as_ref();
    let placement = task.and_then(|t| t.placement.as_ref()).and_then(|p| p.constraints.clone());
    let image = task.and_then(|t| t.container_spec.as_ref()).and_then(|c| c.image.clone());
    format!("{ports:?} {placement:?} {image:?}")
}

/// The registry image: Debian's docker-registry on `debian_image`.
fn registry_build(debian_image: &str, tag: &str) -> Result<BuildRequest> {
    // Debian's config turns on htpasswd auth with no users; ours keeps its storage and
    // deletion settings and serves without auth (see the module's note on who can reach it).
    let dockerfile = format!(
        "FROM {debian_image}\nRUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker-registry && rm -rf /var/lib/apt/lists/*\nCOPY config.yml /etc/docker/registry/config.yml\n"
    );
    let config = "version: 0.1\nlog:\n  fields:\n    service: registry\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/docker-registry\n  delete:\n    enabled: true\nhttp:\n  addr: :5000\n  headers:\n    X-Content-Type-Options: [nosniff]\n";
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    let mut config_header = tar::Header::new_gnu();
    config_header.set_size(config.len() as u64);
    config_header.set_mode(0o644);
    config_header.set_cksum();
    tar.append_data(&mut header, "Dockerfile", dockerfile.as_bytes())
        .and_then(|()| tar.append_data(&mut config_header, "config.yml", config.as_bytes()))
        .and_then(|()| tar.finish())
        .map_err(|e| DriverError::Engine(format!("registry build context: {e}")))?;
    let context_tar = tar.into_inner().map_err(|e| DriverError::Engine(format!("registry build context: {e}")))?;
    Ok(BuildRequest {
        context_tar,
        dockerfile: "Dockerfile".into(),
        tag: tag.to_string(),
        labels: HashMap::from([(labels::MANAGED.to_string(), "true".to_string())]),
        timeout: Duration::from_secs(600),
        target: None,
        publish: true,
        on_line: None,
    })
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_default()
}

/// An error and its causes on one line (reqwest's own message hides the cause).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_digests_are_read_from_what_docker_says() {
        assert_eq!(split_tag("eserveless/shop-api:0123456789ab"), ("eserveless/shop-api", "0123456789ab"));
        assert_eq!(split_tag("10.0.0.5:5000/eserveless/x"), ("10.0.0.5:5000/eserveless/x", "latest"));
        assert_eq!(split_tag("10.0.0.5:5000/eserveless/x:v1"), ("10.0.0.5:5000/eserveless/x", "v1"));
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(digest_in_status(&format!("0123: digest: {d} size: 1570")), Some(d));
        assert_eq!(digest_in_status("Pushed"), None);
        assert_eq!(digest_in_status("x: digest: md5:abc size: 1"), None);
    }

    #[test]
    fn a_node_that_does_not_trust_the_registry_is_told_how_to() {
        let m = explain_pull_error("10.0.0.5:5000", "Get \"https://10.0.0.5:5000/v2/\": http: server gave HTTP response to HTTPS client");
        assert!(m.contains("insecure-registries") && m.contains("\"10.0.0.5:5000\"") && m.contains("daemon.json"), "{m}");
        assert_eq!(explain_pull_error("r:1", "manifest unknown"), "manifest unknown");
    }

    #[test]
    fn the_own_registry_is_pinned_to_the_manager_with_its_port_on_the_host() {
        let s = own_registry_spec("esl-registry-01234567", "eserveless/registry:bookworm", "0123456789", "mgr-id", 5000);
        let json = serde_json::to_value(&s).expect("json");
        assert_eq!(json["TaskTemplate"]["Placement"]["Constraints"][0], "node.id==mgr-id");
        assert_eq!(json["EndpointSpec"]["Ports"][0]["PublishMode"], "host");
        assert_eq!(json["EndpointSpec"]["Ports"][0]["PublishedPort"], 5000);
        assert_eq!(json["EndpointSpec"]["Mode"], "dnsrr");
        assert_eq!(json["TaskTemplate"]["ContainerSpec"]["Mounts"][0]["Source"], "esl-registry-01234567");
        let env = json["TaskTemplate"]["ContainerSpec"]["Env"].as_array().expect("env");
        assert!(env.iter().any(|e| e == "REGISTRY_STORAGE_DELETE_ENABLED=true"), "rm must be able to delete tags");
        assert_eq!(json["Labels"]["eserveless.role"], "registry");
        assert_eq!(own_registry_name("0123456789"), "esl-registry-01234567");
    }
}
