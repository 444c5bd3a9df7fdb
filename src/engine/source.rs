//! Sources: repository URL policy, resolving a ref to a commit, and checking out that commit
//! into a fresh directory, with hooks disabled, submodules off and time and size limits.
//!
//! git runs as a binary with an argv list; no shell is ever involved.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::names::GitRef;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SourceError {
    #[error("{0}")]
    BadUrl(String),
    #[error("repository `{url}` could not be read: {detail}; check that it exists and is reachable")]
    Unreachable { url: String, detail: String },
    #[error("ref `{reference}` was not found in `{url}`; give an existing branch, tag or commit")]
    NoSuchRef { url: String, reference: String },
    #[error("git took longer than {0:?} for `{1}`; the repository may be too large or unreachable")]
    Timeout(Duration, String),
    #[error("the checkout is larger than {0} MiB; remove large files from the repository")]
    TooLarge(u64),
    #[error("git failed: {0}")]
    Git(String),
}

/// A repository URL that passed the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoUrl {
    url: String,
    local: bool,
}

impl RepoUrl {
    pub fn as_str(&self) -> &str {
        &self.url
    }
    #[cfg(test)]
    pub fn is_local(&self) -> bool {
        self.local
    }
}

/// Limits for git operations.
#[derive(Debug, Clone)]
pub struct SourcePolicy {
    pub allow_local: bool,
    /// Accept http(s) repositories whose host resolves to loopback, private or link-local addresses.
    pub allow_private: bool,
    pub clone_timeout: Duration,
    pub max_checkout_mib: u64,
    /// Fetch submodules (one level, over https/http/ssh only, each URL checked like the
    /// repository's own). Off by default.
    pub allow_submodules: bool,
}

impl Default for SourcePolicy {
    fn default() -> Self {
        SourcePolicy {
            allow_local: false,
            allow_private: false,
            clone_timeout: Duration::from_secs(120),
            max_checkout_mib: 512,
            allow_submodules: false,
        }
    }
}

fn bad(url: &str, why: &str) -> SourceError {
    SourceError::BadUrl(format!("invalid repository `{}`: {why}", url.escape_debug()))
}

/// Normalizes and checks a repository reference against the policy.
pub fn parse_repository(input: &str, policy: &SourcePolicy) -> Result<RepoUrl, SourceError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(bad(input, "it is empty; give a git URL such as `https://github.com/owner/repo` or `owner/repo`"));
    }
    if s.starts_with('-') {
        return Err(bad(input, "it must not start with `-`"));
    }
    if s.len() > 2048 {
        return Err(bad(input, "it is longer than 2048 characters"));
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace() || "`$;|&<>\\'\"".contains(c)) {
        return Err(bad(input, "it contains whitespace, a control character or one of `$;|&<>\\'\"`"));
    }
    let local_hint = "local repositories are accepted only when the server runs with `--allow-local-repos`";
    if let Some((scheme, rest)) = s.split_once("://") {
        let scheme = scheme.to_ascii_lowercase();
        match scheme.as_str() {
            "https" | "http" | "ssh" | "git+ssh" => {
                let host = rest.split(['/', '?', '#']).next().unwrap_or("");
                if host.is_empty() || rest.len() <= host.len() + 1 {
                    return Err(bad(input, "it needs a host and a path, e.g. `https://github.com/owner/repo`"));
                }
                Ok(RepoUrl { url: s.to_string(), local: false })
            }
            "file" => {
                if !policy.allow_local {
                    return Err(bad(input, local_hint));
                }
                if !rest.starts_with('/') {
                    return Err(bad(input, "a file URL needs an absolute path, e.g. `file:///srv/git/app`"));
                }
                Ok(RepoUrl { url: s.to_string(), local: true })
            }
            other => Err(bad(
                input,
                &format!("scheme `{other}` is not allowed; use https, http, ssh or `git@host:owner/repo`"),
            )),
        }
    } else if s.starts_with('/') {
        if !policy.allow_local {
            return Err(bad(input, local_hint));
        }
        Ok(RepoUrl { url: format!("file://{s}"), local: true })
    } else if let Some((user_host, path)) = s.split_once(':') {
        // scp-like ssh: git@github.com:owner/repo.git
        if user_host.is_empty() || path.is_empty() || user_host.contains('/') {
            return Err(bad(input, "use `git@host:owner/repo`, an https URL, or `owner/repo`"));
        }
        Ok(RepoUrl { url: s.to_string(), local: false })
    } else {
        let parts: Vec<&str> = s.split('/').collect();
        let ok_part = |p: &str| {
            !p.is_empty() && p != "." && p != ".." && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if parts.len() == 2 && parts.iter().all(|p| ok_part(p)) {
            Ok(RepoUrl { url: format!("https://github.com/{s}"), local: false })
        } else {
            Err(bad(input, "give a git URL (`https://…`, `ssh://…`, `git@host:owner/repo`) or `owner/repo` for GitHub"))
        }
    }
}

/// True for addresses a repository URL must not reach unless the operator allows it:
/// loopback, private, link-local (cloud metadata sits there), shared, unspecified, multicast.
pub fn is_internal(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() || (seg[0] & 0xfe00) == 0xfc00 || (seg[0] & 0xffc0) == 0xfe80
        }
    }
}

/// For http(s) URLs: resolves the host, refuses internal addresses unless allowed, and returns
/// the git options that pin the checked address and forbid redirects (so neither DNS nor a
/// redirect can move the clone somewhere else afterwards).
pub async fn http_guard(url: &RepoUrl, policy: &SourcePolicy) -> Result<Vec<String>, SourceError> {
    let Some((scheme, rest)) = url.as_str().split_once("://") else { return Ok(Vec::new()) };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" => 443,
        "http" => 80,
        _ => return Ok(Vec::new()),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
    let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
        let (h, after) = inner.split_once(']').unwrap_or((inner, ""));
        (h.to_string(), after.strip_prefix(':').and_then(|p| p.parse().ok()).unwrap_or(default_port))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().unwrap_or(default_port)),
            None => (hostport.to_string(), default_port),
        }
    };
    let mut options = vec!["-c".to_string(), "http.followRedirects=false".to_string()];
    let addrs: Vec<std::net::SocketAddr> = match tokio::time::timeout(Duration::from_secs(10), tokio::net::lookup_host((host.as_str(), port))).await {
        Ok(Ok(a)) => a.collect(),
        Ok(Err(e)) => {
            return Err(SourceError::Unreachable { url: url.as_str().to_string(), detail: format!("cannot resolve `{host}`: {e}") })
        }
        Err(_) => {
            return Err(SourceError::Unreachable { url: url.as_str().to_string(), detail: format!("resolving `{host}` timed out") })
        }
    };
    if !policy.allow_private {
        if let Some(bad) = addrs.iter().find(|a| is_internal(a.ip())) {
            return Err(SourceError::BadUrl(format!(
                "invalid repository `{}`: `{host}` resolves to {}, an internal address (loopback, private, link-local or metadata); \
                 the server accepts such repositories only with `--allow-private-repos`",
                url.as_str(),
                bad.ip()
            )));
        }
    }
    if let Some(first) = addrs.first() {
        let ip = match first.ip() {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        };
        options.extend(["-c".to_string(), format!("http.curloptResolve={host}:{port}:{ip}")]);
    }
    Ok(options)
}

fn git(policy: &SourcePolicy, home: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
        .env("HOME", home)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=/dev/null")
        .env("GIT_ALLOW_PROTOCOL", if policy.allow_local { "https:http:ssh:git+ssh:file" } else { "https:http:ssh:git+ssh" })
        .args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "protocol.ext.allow=never",
            "-c",
            "protocol.file.allow=user",
            "-c",
            "submodule.recurse=false",
            "-c",
            "core.fsmonitor=false",
            "-c",
            "advice.detachedHead=false",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn run_git(mut cmd: Command, what: &str, timeout: Duration) -> Result<String, SourceError> {
    let out = match tokio::time::timeout(timeout, cmd.output()).await {
        Err(_) => return Err(SourceError::Timeout(timeout, what.to_string())),
        Ok(Err(e)) => return Err(SourceError::Git(format!("cannot run git: {e}; is git installed?"))),
        Ok(Ok(o)) => o,
    };
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(SourceError::Git(git_message(&String::from_utf8_lossy(&out.stderr))))
    }
}

/// git's whole error output as one line: each `fatal:`/`error:` message a sentence of its
/// own, the lines that continue one (git wraps its advice) joined to it; at most 1000 bytes.
fn git_message(stderr: &str) -> String {
    let mut out = String::new();
    for line in stderr.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (new_sentence, text) = match ["fatal: ", "error: ", "remote: ", "warning: "].iter().find_map(|p| line.strip_prefix(p)) {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        if !out.is_empty() {
            out.push_str(if new_sentence && !out.ends_with('.') { "; " } else { " " });
        }
        out.push_str(text);
    }
    if out.len() > 1000 {
        let mut cut = 1000;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    if out.is_empty() {
        "unknown error (git printed nothing)".to_string()
    } else {
        out
    }
}

/// Resolves `reference` (or the default branch) to a commit sha without cloning.
pub async fn resolve_commit(url: &RepoUrl, reference: Option<&GitRef>, policy: &SourcePolicy) -> Result<String, SourceError> {
    // The address policy holds whatever the ref: checked before anything else.
    let guard = http_guard(url, policy).await?;
    if url.local {
        // git's own words for a missing path are about remote access rights.
        let path = Path::new(url.as_str().trim_start_matches("file://"));
        if std::fs::symlink_metadata(path).is_err() {
            return Err(SourceError::Unreachable {
                url: url.as_str().to_string(),
                detail: format!("`{}` does not exist on the server's file system", path.display()),
            });
        }
    }
    if let Some(r) = reference {
        if r.is_full_sha() {
            // ls-remote lists refs, not commits: a full sha is taken as given and checked at fetch.
            return Ok(r.as_str().to_ascii_lowercase());
        }
    }
    let home = tempfile::tempdir().map_err(|e| SourceError::Git(e.to_string()))?;
    let mut cmd = git(policy, home.path());
    cmd.args(&guard).args(["ls-remote", "--", url.as_str()]);
    let wanted = reference.map(|r| r.as_str().to_string());
    match &wanted {
        None => {
            cmd.arg("HEAD");
        }
        Some(r) => {
            cmd.args([r.clone(), format!("refs/heads/{r}"), format!("refs/tags/{r}"), format!("refs/tags/{r}^{{}}")]);
        }
    }
    let out = run_git(cmd, url.as_str(), policy.clone_timeout).await.map_err(|e| match e {
        SourceError::Git(detail) => SourceError::Unreachable { url: url.as_str().to_string(), detail },
        other => other,
    })?;
    let mut refs: Vec<(&str, &str)> = out
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(sha, name)| (sha.trim(), name.trim()))
        .collect();
    // Prefer the peeled tag (the commit) over the tag object.
    refs.sort_by_key(|(_, name)| if name.ends_with("^{}") { 0 } else if name.starts_with("refs/heads/") { 1 } else { 2 });
    match refs.first() {
        Some((sha, _)) if sha.len() >= 40 => Ok(sha.to_string()),
        _ => match &wanted {
            Some(r) => {
                // Maybe an abbreviated commit: fetched and checked later.
                if r.len() >= 7 && r.chars().all(|c| c.is_ascii_hexdigit()) {
                    Ok(r.to_ascii_lowercase())
                } else {
                    Err(SourceError::NoSuchRef { url: url.as_str().to_string(), reference: r.clone() })
                }
            }
            None => Err(SourceError::Unreachable {
                url: url.as_str().to_string(),
                detail: "it has no commits (no HEAD)".into(),
            }),
        },
    }
}

fn dir_size(path: &Path) -> u64 {
    walkdir::WalkDir::new(path)
        .follow_links(false)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Checks `commit` of `url` out into `dest/src`; returns the checkout directory and the full sha.
pub async fn checkout(
    url: &RepoUrl,
    commit: &str,
    reference: Option<&GitRef>,
    dest: &Path,
    policy: &SourcePolicy,
) -> Result<(PathBuf, String), SourceError> {
    let guard = http_guard(url, policy).await?;
    let home = dest.join("home");
    let src = dest.join("src");
    std::fs::create_dir_all(&home).map_err(|e| SourceError::Git(e.to_string()))?;
    let step = |args: Vec<String>| {
        let mut cmd = git(policy, &home);
        cmd.args(&guard).arg("-C").arg(&src).args(args);
        cmd
    };
    let mut init = git(policy, &home);
    init.args(["init", "--quiet", "--"]).arg(&src);
    run_git(init, "init", policy.clone_timeout).await?;

    let deadline = tokio::time::Instant::now() + policy.clone_timeout;
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
    let fetch = |what: String, depth: bool| {
        let mut args = vec!["fetch".to_string(), "--quiet".into(), "--no-tags".into(), "--no-recurse-submodules".into()];
        if depth {
            args.push("--depth=1".into());
        }
        args.extend(["--".into(), url.as_str().to_string(), what]);
        step(args)
    };
    // Fetch the commit directly, then by its ref name, then everything.
    let mut fetched = run_git(fetch(commit.to_string(), true), url.as_str(), left()).await;
    if fetched.is_err() {
        if let Some(r) = reference {
            fetched = run_git(fetch(r.as_str().to_string(), true), url.as_str(), left()).await;
        }
    }
    if fetched.is_err() {
        fetched = run_git(fetch("+refs/heads/*:refs/remotes/origin/*".into(), false), url.as_str(), left()).await;
    }
    if let Err(e) = fetched {
        return Err(match e {
            SourceError::Git(detail) => SourceError::Unreachable { url: url.as_str().to_string(), detail },
            other => other,
        });
    }
    let target = if commit.len() == 40 { commit.to_string() } else { "FETCH_HEAD".to_string() };
    let has_commit = run_git(step(vec!["cat-file".into(), "-e".into(), format!("{commit}^{{commit}}")]), "cat-file", left()).await;
    let target = if has_commit.is_ok() { commit.to_string() } else { target };
    run_git(step(vec!["checkout".into(), "--quiet".into(), "--detach".into(), target.clone(), "--".into()]), "checkout", left())
        .await
        .map_err(|_| SourceError::NoSuchRef {
            url: url.as_str().to_string(),
            reference: reference.map(|r| r.to_string()).unwrap_or_else(|| commit.to_string()),
        })?;
    let sha = run_git(step(vec!["rev-parse".into(), "HEAD".into()]), "rev-parse", left()).await?.trim().to_string();
    if commit.len() >= 7 && !sha.starts_with(&commit.to_ascii_lowercase()) && reference.is_some_and(|r| r.as_str() == commit) {
        return Err(SourceError::NoSuchRef { url: url.as_str().to_string(), reference: commit.to_string() });
    }
    if policy.allow_submodules && src.join(".gitmodules").is_file() {
        fetch_submodules(&src, &home, policy, left()).await?;
    }
    let size = dir_size(&src);
    if size > policy.max_checkout_mib * 1024 * 1024 {
        return Err(SourceError::TooLarge(policy.max_checkout_mib));
    }
    // The build context never sees .git.
    let _ = std::fs::remove_dir_all(src.join(".git"));
    Ok((src, sha))
}

/// Fetches the checkout's submodules (one level). Every URL must be an absolute http(s) or ssh
/// URL that passes the same policy as a repository: never `file://`, `ext::` or a relative
/// path, never an internal address; protocols are limited for the submodule step itself too.
async fn fetch_submodules(src: &Path, home: &Path, policy: &SourcePolicy, timeout: Duration) -> Result<(), SourceError> {
    let mut list = git(policy, home);
    list.arg("-C").arg(src).args(["config", "--file", ".gitmodules", "--get-regexp", r"^submodule\..*\.url$"]);
    let out = run_git(list, "read .gitmodules", timeout).await.unwrap_or_default();
    let remote_only = SourcePolicy { allow_local: false, ..policy.clone() };
    let mut options = Vec::new();
    for line in out.lines() {
        let (key, url) = line.split_once(' ').unwrap_or((line, ""));
        let name = key.trim_start_matches("submodule.").trim_end_matches(".url");
        let refuse = |why: String| SourceError::BadUrl(format!("submodule `{name}`: {why}; submodules must use https or ssh URLs of public hosts"));
        if !(url.starts_with("https://") || url.starts_with("http://") || url.starts_with("ssh://") || url.contains('@') && !url.contains("://")) {
            return Err(refuse(format!("URL `{}` is not an https or ssh URL", url.escape_debug())));
        }
        let parsed = parse_repository(url, &remote_only).map_err(|e| refuse(e.to_string()))?;
        options.extend(http_guard(&parsed, policy).await.map_err(|e| refuse(e.to_string()))?);
    }
    let mut update = git(policy, home);
    update
        .env("GIT_ALLOW_PROTOCOL", "https:http:ssh:git+ssh")
        .args(["-c", "protocol.file.allow=never", "-c", "protocol.ext.allow=never"])
        .args(&options)
        .arg("-C")
        .arg(src)
        .args(["submodule", "--quiet", "update", "--init", "--depth", "1", "--no-recommend-shallow"]);
    run_git(update, "submodule update", timeout).await.map_err(|e| match e {
        SourceError::Git(detail) => SourceError::Git(format!("fetching submodules failed: {detail}")),
        other => other,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict() -> SourcePolicy {
        SourcePolicy::default()
    }
    fn local() -> SourcePolicy {
        SourcePolicy { allow_local: true, ..SourcePolicy::default() }
    }

    #[test]
    fn repository_forms() {
        let p = strict();
        assert_eq!(parse_repository("owner/repo", &p).expect("short").as_str(), "https://github.com/owner/repo");
        assert!(parse_repository("https://github.com/a/b", &p).is_ok());
        assert!(parse_repository("ssh://git@host/a/b.git", &p).is_ok());
        assert!(parse_repository("git@github.com:a/b.git", &p).is_ok());
        let refused = ["", "-uhttps://x/y", "https://x/y;id", "https://x/$(id)", "a\nb", "ftp://x/y", "ext::sh -c id", "file:///tmp/x", "/tmp/x", "a/b/c", "../x"];
        for r in refused {
            assert!(parse_repository(r, &p).is_err(), "{r:?} should be refused");
        }
        let e = parse_repository("/srv/repo", &p).expect_err("local refused");
        assert_eq!(
            e.to_string(),
            "invalid repository `/srv/repo`: local repositories are accepted only when the server runs with `--allow-local-repos`"
        );
        assert_eq!(parse_repository("/srv/repo", &local()).expect("local").as_str(), "file:///srv/repo");
        assert!(parse_repository("file:///srv/repo", &local()).expect("file").is_local());
    }

    #[test]
    fn internal_addresses() {
        for ip in ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "::1", "fd00::1", "fe80::1", "::ffff:127.0.0.1"] {
            assert!(is_internal(ip.parse().expect(ip)), "{ip} is internal");
        }
        for ip in ["140.82.112.3", "8.8.8.8", "2606:4700::1111", "203.0.113.80"] {
            assert!(!is_internal(ip.parse().expect(ip)), "{ip} is public");
        }
    }

    #[tokio::test]
    async fn urls_aimed_at_internal_addresses_are_refused() {
        let p = strict();
        for u in ["http://127.0.0.1/a/b", "https://169.254.169.254/latest/meta-data", "http://10.0.0.5:8080/x/y", "http://localhost/a/b", "https://[::1]/a/b", "http://user@192.168.0.1/a/b"] {
            let url = parse_repository(u, &p).expect(u);
            let e = resolve_commit(&url, None, &p).await.expect_err(u);
            assert!(matches!(e, SourceError::BadUrl(_)), "{u}: {e}");
            let sha = GitRef::parse(&"a".repeat(40)).expect("sha");
            let e = resolve_commit(&url, Some(&sha), &p).await.expect_err(u);
            assert!(matches!(e, SourceError::BadUrl(_)), "{u} with a full sha: {e}");
            assert!(e.to_string().contains("--allow-private-repos"), "{e}");
        }
        // Allowed by the operator: the policy no longer refuses (the clone itself then fails: nothing listens there).
        let open = SourcePolicy { allow_private: true, clone_timeout: Duration::from_secs(5), ..SourcePolicy::default() };
        let url = parse_repository("http://127.0.0.1:9/a/b", &open).expect("url");
        let e = resolve_commit(&url, None, &open).await.expect_err("nothing listens");
        assert!(matches!(e, SourceError::Unreachable { .. }), "{e}");
    }

    async fn make_repo() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().expect("dir");
        let run = |args: &[&str]| {
            let st = std::process::Command::new("git")
                .args(["-c", "user.email=t@t", "-c", "user.name=t", "-c", "init.defaultBranch=main"])
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("git runs");
            assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
            String::from_utf8_lossy(&st.stdout).trim().to_string()
        };
        run(&["init", "-q"]);
        std::fs::write(dir.path().join("a.txt"), "one").expect("w");
        std::fs::create_dir_all(dir.path().join(".git/hooks")).expect("hooks");
        std::fs::write(dir.path().join(".git/hooks/post-checkout"), "#!/bin/sh\ntouch /tmp/eserveless-hook-ran\n").expect("hook");
        run(&["add", "."]);
        run(&["commit", "-qm", "one"]);
        run(&["tag", "v1"]);
        std::fs::write(dir.path().join("a.txt"), "two").expect("w");
        run(&["commit", "-qam", "two"]);
        let head = run(&["rev-parse", "HEAD"]);
        (dir, head)
    }

    #[tokio::test]
    async fn resolves_and_checks_out_local_repos() {
        let (repo, head) = make_repo().await;
        let p = local();
        let url = parse_repository(repo.path().to_str().expect("utf8"), &p).expect("url");
        assert_eq!(resolve_commit(&url, None, &p).await.expect("head"), head);
        let v1 = GitRef::parse("v1").expect("ref");
        let v1_sha = resolve_commit(&url, Some(&v1), &p).await.expect("tag");
        assert_ne!(v1_sha, head);
        let missing = GitRef::parse("nope").expect("ref");
        assert!(matches!(resolve_commit(&url, Some(&missing), &p).await, Err(SourceError::NoSuchRef { .. })));

        let dest = tempfile::tempdir().expect("dest");
        let (src, sha) = checkout(&url, &v1_sha, Some(&v1), dest.path(), &p).await.expect("checkout");
        assert_eq!(sha, v1_sha);
        assert_eq!(std::fs::read_to_string(src.join("a.txt")).expect("read"), "one");
        assert!(!src.join(".git").exists());

        let dest2 = tempfile::tempdir().expect("dest");
        let (src2, sha2) = checkout(&url, &head, None, dest2.path(), &p).await.expect("checkout head");
        assert_eq!(sha2, head);
        assert_eq!(std::fs::read_to_string(src2.join("a.txt")).expect("read"), "two");
    }

    #[tokio::test]
    async fn unreachable_repository_is_named() {
        let p = local();
        let url = parse_repository("/nonexistent/repo", &p).expect("url");
        let e = resolve_commit(&url, None, &p).await.expect_err("missing");
        let text = e.to_string();
        assert_eq!(
            text,
            "repository `file:///nonexistent/repo` could not be read: `/nonexistent/repo` does not exist on the server's file system; \
             check that it exists and is reachable"
        );
        // A directory that is not a repository: git's whole message, not its last line.
        let empty = tempfile::tempdir().expect("dir");
        let url = parse_repository(empty.path().to_str().expect("utf8"), &p).expect("url");
        let text = resolve_commit(&url, None, &p).await.expect_err("not a repository").to_string();
        assert!(text.contains("does not appear to be a git repository") && text.contains("and the repository exists"), "{text}");
        assert!(text.contains(&empty.path().display().to_string()), "{text}");
    }

    #[test]
    fn git_messages_are_kept_whole() {
        let stderr = "fatal: '/x' does not appear to be a git repository\nfatal: Could not read from remote repository.\n\nPlease make sure you have the correct access rights\nand the repository exists.\n";
        assert_eq!(
            git_message(stderr),
            "'/x' does not appear to be a git repository; Could not read from remote repository. Please make sure you have the correct access rights and the repository exists."
        );
        assert_eq!(git_message(""), "unknown error (git printed nothing)");
        assert!(git_message(&"fatal: x\n".repeat(500)).len() <= 1004);
    }

    #[tokio::test]
    async fn submodules_are_off_and_when_on_refuse_file_and_internal_urls() {
        let (inner, _) = make_repo().await;
        for (sub_url, wanted) in [
            (format!("file://{}", inner.path().display()), "is not an https or ssh URL"),
            ("../sibling".to_string(), "is not an https or ssh URL"),
            ("https://127.0.0.1/x/y".to_string(), "internal address"),
        ] {
            let outer = tempfile::tempdir().expect("dir");
            let run = |args: &[&str]| {
                let st = std::process::Command::new("git")
                    .args(["-c", "user.email=t@t", "-c", "user.name=t", "-c", "init.defaultBranch=main", "-c", "protocol.file.allow=always"])
                    .args(args)
                    .current_dir(outer.path())
                    .output()
                    .expect("git runs");
                assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
            };
            run(&["init", "-q"]);
            std::fs::write(outer.path().join("f.txt"), "x").expect("w");
            run(&["submodule", "add", "-q", &format!("file://{}", inner.path().display()), "vendor/inner"]);
            // Point .gitmodules at the URL under test (what a hostile repository controls).
            run(&["config", "--file", ".gitmodules", "submodule.vendor/inner.url", &sub_url]);
            run(&["add", "-A"]);
            run(&["commit", "-qm", "with submodule"]);

            let off = local();
            let url = parse_repository(outer.path().to_str().expect("utf8"), &off).expect("url");
            let head = resolve_commit(&url, None, &off).await.expect("head");
            let dest = tempfile::tempdir().expect("dest");
            let (src, _) = checkout(&url, &head, None, dest.path(), &off).await.expect("submodules off: checkout works");
            assert!(
                std::fs::read_dir(src.join("vendor/inner")).map(|mut d| d.next().is_none()).unwrap_or(true),
                "submodules are not fetched unless the operator allows them"
            );

            let on = SourcePolicy { allow_submodules: true, ..local() };
            let dest = tempfile::tempdir().expect("dest");
            let e = checkout(&url, &head, None, dest.path(), &on).await.expect_err(&sub_url);
            let text = e.to_string();
            assert!(text.contains("submodule `vendor/inner`") && text.contains(wanted), "{sub_url}: {text}");
        }
    }
}
