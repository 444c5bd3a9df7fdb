//! Validated identifiers that reach Docker, git, SQL or the file system, built at the edge.

use std::fmt;

/// Why a name was refused; the message says how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(pub String);

/// A function's exported identifier, e.g. `API`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionName(String);

impl FunctionName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ok {
            Ok(FunctionName(s.to_string()))
        } else {
            Err(NameError(format!(
                "invalid function name `{}`: use letters, digits and `_`, starting with a letter or `_` \
                 (an exported identifier such as `API`), at most 63 characters",
                s.escape_debug()
            )))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The lower-case form used in Docker object names.
    pub fn docker_part(&self) -> String {
        let mut s = String::new();
        for c in self.0.chars() {
            if c.is_ascii_alphanumeric() {
                s.push(c.to_ascii_lowercase());
            } else if !s.ends_with('-') {
                s.push('-');
            }
        }
        let s = s.trim_matches('-');
        if s.is_empty() { "fn".to_string() } else { s.to_string() }
    }
}

impl fmt::Display for FunctionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A project's name: `[a-z0-9-]`, 1 to 63 characters, no leading or trailing `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProjectName(String);

impl ProjectName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && !s.starts_with('-')
            && !s.ends_with('-')
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(ProjectName(s.to_string()))
        } else {
            Err(NameError(format!(
                "invalid project name `{}`: use lower-case letters, digits and `-` (not first or last), at most 63 characters, e.g. `my-project`",
                s.escape_debug()
            )))
        }
    }

    /// Derives a name from a repository URL: the last two path parts, `owner-repo`.
    pub fn from_repository(url: &str) -> Result<Self, NameError> {
        let trimmed = url.trim().trim_end_matches('/');
        let trimmed = trimmed.strip_suffix(".git").unwrap_or(trimmed);
        // scp-like ssh (`git@host:owner/repo`) uses `:` before the path.
        let path = match trimmed.split_once("://") {
            Some((_, rest)) => rest.split_once('/').map(|(_, p)| p).unwrap_or(""),
            None => trimmed.rsplit_once(':').map(|(_, p)| p).unwrap_or(trimmed),
        };
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let tail = &parts[parts.len().saturating_sub(2)..];
        Self::sanitized(&tail.join("-"), url)
    }

    /// A project name from a directory's name (`My_App` → `my-app`), sanitized as a
    /// repository's is.
    pub fn from_directory(dir_name: &str) -> Result<Self, NameError> {
        Self::sanitized(dir_name, dir_name)
    }

    /// Lower case, every run of other characters one `-`, at most 63 characters (the end kept).
    fn sanitized(text: &str, from: &str) -> Result<Self, NameError> {
        let mut name = String::new();
        for c in text.chars() {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                name.push(c);
            } else if !name.ends_with('-') {
                name.push('-');
            }
        }
        let name = name.trim_matches('-');
        let name = if name.len() > 63 { name[name.len() - 63..].trim_start_matches('-') } else { name };
        ProjectName::parse(name).map_err(|_| {
            NameError(format!(
                "cannot derive a project name from `{}`; pass one explicitly with `--name` (lower-case letters, digits and `-`)",
                from.escape_debug()
            ))
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A git branch, tag or commit name, checked before it reaches git.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitRef(String);

impl GitRef {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let bad = |why: &str| {
            Err(NameError(format!(
                "invalid ref `{}`: {why}; give a branch, tag or commit such as `main`, `v1.2.0` or a commit sha",
                s.escape_debug()
            )))
        };
        if s.is_empty() || s.len() > 255 {
            return bad("it must be 1 to 255 characters");
        }
        if s.starts_with('-') {
            return bad("it must not start with `-`");
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\;$`'\"|&<>(){}".contains(c)) {
            return bad("it contains a character that is not allowed in git refs");
        }
        if s.contains("..") || s.contains("@{") || s.ends_with('/') || s.ends_with(".lock") || s.starts_with('/') {
            return bad("it is not a valid git ref name");
        }
        Ok(GitRef(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// True when this looks like a full commit id.
    pub fn is_full_sha(&self) -> bool {
        self.0.len() == 40 && self.0.chars().all(|c| c.is_ascii_hexdigit())
    }
}

impl fmt::Display for GitRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names_from_urls() {
        let cases = [
            ("https://github.com/Someone/Some_Project", "someone-some-project"),
            ("https://github.com/someone/some-project.git", "someone-some-project"),
            ("git@github.com:owner/repo.git", "owner-repo"),
            ("ssh://git@host:22/owner/repo", "owner-repo"),
            ("file:///tmp/x/fixtures/node-app", "fixtures-node-app"),
            ("/srv/git/app", "git-app"),
            ("https://example.com/only", "only"),
        ];
        for (url, want) in cases {
            assert_eq!(ProjectName::from_repository(url).expect(url).as_str(), want, "{url}");
        }
        assert!(ProjectName::from_repository("https://example.com/").is_err());
        assert!(ProjectName::from_repository("https://example.com/___/").is_err());
        for (dir, want) in [("My_App", "my-app"), ("hello-world", "hello-world"), ("ux mistakes!", "ux-mistakes")] {
            assert_eq!(ProjectName::from_directory(dir).expect(dir).as_str(), want);
        }
        let e = ProjectName::from_directory("___").expect_err("nothing left").to_string();
        assert!(e.contains("`___`") && e.contains("--name"), "{e}");
    }

    #[test]
    fn project_name_rules() {
        assert!(ProjectName::parse("my-app-2").is_ok());
        for bad in ["", "-x", "x-", "My", "a_b", "a/b", "../x", &"a".repeat(64)] {
            assert!(ProjectName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn function_name_rules() {
        assert!(FunctionName::parse("API").is_ok());
        assert!(FunctionName::parse("_x1").is_ok());
        for bad in ["", "1a", "a-b", "../x", "a b", "ä"] {
            assert!(FunctionName::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(FunctionName::parse("My_Fn").expect("valid").docker_part(), "my-fn");
        assert_eq!(FunctionName::parse("_x__").expect("valid").docker_part(), "x");
        assert_eq!(FunctionName::parse("__").expect("valid").docker_part(), "fn");
    }

    #[test]
    fn git_refs() {
        for ok in ["main", "v1.2.0", "feature/x", "0123456789abcdef0123456789abcdef01234567"] {
            assert!(GitRef::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "--upload-pack=evil", "a;b", "$(id)", "a\nb", "a..b", "a b", "x.lock", "`x`"] {
            let e = GitRef::parse(bad).expect_err(bad);
            assert!(e.to_string().contains("invalid ref"), "{e}");
        }
        assert!(GitRef::parse("0123456789abcdef0123456789abcdef01234567").expect("sha").is_full_sha());
    }
}
