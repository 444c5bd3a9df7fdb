//! API tokens and invoke keys: made from the OS random source, shown once, stored only as
//! SHA-256 hashes, and compared in constant time.
//!
//! A token reads `esl_<id>_<secret>`: the id finds the row, and the secret's hash is compared
//! with `subtle`, so neither a lookup nor a comparison leaks how much of a guess was right.
//! The secrets carry 256 bits of entropy, so a fast hash is the right one (there is nothing to
//! brute-force as there would be with a password).

use std::path::Path;

use crate::infra::datadir::write_private;

use crate::infra::store::{Store, StoreError};

/// The user behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: i64,
    pub name: String,
    pub admin: bool,
}

impl Principal {
    /// Whether this principal may see and change a project with this owner.
    pub fn owns(&self, owner: Option<&str>) -> bool {
        self.admin || owner == Some(self.name.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("this endpoint needs an API token: send `Authorization: Bearer <token>` (see `eserveless login`)")]
    Missing,
    #[error("the API token is malformed; tokens look like `esl_<id>_<secret>`")]
    Malformed,
    #[error("the API token is unknown or revoked; create a new one with `eserveless tokens create`")]
    Rejected,
    #[error(transparent)]
    Store(#[from] StoreError),
}

const TOKEN_PREFIX: &str = "esl_";
const INVOKE_KEY_PREFIX: &str = "eik_";
/// File in the data directory that receives the first admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

pub use crate::infra::keys::{hash, hash_matches};
use crate::infra::keys::random_secret;

/// Creates a token for a user; returns its id and the token text (the only time it exists).
pub fn issue_token(store: &Store, user_id: i64, name: &str) -> Result<(i64, String), StoreError> {
    let secret = random_secret();
    let id = store.create_token(user_id, name, &hash(&secret))?;
    Ok((id, format!("{TOKEN_PREFIX}{id}_{secret}")))
}

/// Checks an `Authorization` header value.
pub fn authenticate(store: &Store, authorization: Option<&[u8]>) -> Result<Principal, AuthError> {
    let header = authorization.ok_or(AuthError::Missing)?;
    let header = std::str::from_utf8(header).map_err(|_| AuthError::Malformed)?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or(AuthError::Malformed)?
        .trim();
    let (id, secret) = token
        .strip_prefix(TOKEN_PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .ok_or(AuthError::Malformed)?;
    let id: i64 = id.parse().map_err(|_| AuthError::Malformed)?;
    let found = store.active_token(id)?;
    // Hash and compare even when no row matched, so timing says nothing about ids.
    let stored = found.as_ref().map(|(t, _)| t.hash.as_slice()).unwrap_or(&[0u8; 32]);
    let ok = hash_matches(secret, stored);
    match found {
        Some((t, u)) if ok => {
            if let Err(e) = store.touch_token(t.id) {
                tracing::warn!(error = %e, "could not record token use");
            }
            Ok(Principal { user_id: u.id, name: u.name, admin: u.admin })
        }
        _ => Err(AuthError::Rejected),
    }
}

/// A user or token name that cannot be accepted; the API answers it with [`NameError::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "user name `{}` is not valid; use 1-32 lower-case letters, digits, `-` or `_`, starting with a letter",
        .0.escape_debug()
    )]
    User(String),
    #[error("token name `{}` must be 1-64 printable characters", .0.escape_debug())]
    Token(String),
}

impl NameError {
    /// The stable `error.code` of the API answer.
    pub fn code(&self) -> &'static str {
        "invalid_name"
    }
}

/// Checks a user name: 1–32 of `a-z`, `0-9`, `-`, `_`, starting with a letter.
pub fn validate_user_name(name: &str) -> Result<(), NameError> {
    let ok = (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(NameError::User(name.to_string()))
    }
}

/// Checks a token's label: 1–64 printable characters.
pub fn validate_token_name(name: &str) -> Result<(), NameError> {
    if (1..=64).contains(&name.chars().count()) && !name.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(NameError::Token(name.to_string()))
    }
}

/// A new invoke key and its hash.
pub fn new_invoke_key() -> (String, [u8; 32]) {
    let key = format!("{INVOKE_KEY_PREFIX}{}", random_secret());
    let h = hash(&key);
    (key, h)
}

/// On a store without users: creates the `admin` user and its first token, writes the token
/// to `<data_dir>/admin-token` (mode 0600) and returns it, so the caller can print it once.
pub fn bootstrap_admin(store: &Store, data_dir: &Path) -> anyhow::Result<Option<String>> {
    use anyhow::Context;
    if store.user_count()? > 0 {
        return Ok(None);
    }
    let user = store.create_user("admin", true)?.context("the `admin` user exists already")?;
    let (_, token) = issue_token(store, user.id, "bootstrap")?;
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    write_private(&path, token.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(t: &str) -> Vec<u8> {
        format!("Bearer {t}").into_bytes()
    }

    #[test]
    fn tokens_authenticate_until_revoked() {
        let store = Store::in_memory().expect("store");
        let dir = tempfile::tempdir().expect("dir");
        let token = bootstrap_admin(&store, dir.path()).expect("bootstrap").expect("first start makes a token");
        assert!(bootstrap_admin(&store, dir.path()).expect("again").is_none(), "only on the first start");
        let file = dir.path().join(ADMIN_TOKEN_FILE);
        assert_eq!(std::fs::read_to_string(&file).expect("read"), token);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777, 0o600);

        let p = authenticate(&store, Some(&bearer(&token))).expect("valid");
        assert_eq!((p.name.as_str(), p.admin), ("admin", true));
        assert!(matches!(authenticate(&store, None), Err(AuthError::Missing)));
        assert!(matches!(authenticate(&store, Some(b"Basic abc")), Err(AuthError::Malformed)));
        assert!(matches!(authenticate(&store, Some(&bearer("esl_x_y"))), Err(AuthError::Malformed)));
        // Right id, wrong secret; unknown id.
        let (id, secret) = token.trim_start_matches("esl_").split_once('_').expect("shape");
        let wrong = format!("esl_{id}_{}x", &secret[..secret.len() - 1]);
        assert!(matches!(authenticate(&store, Some(&bearer(&wrong))), Err(AuthError::Rejected)));
        assert!(matches!(authenticate(&store, Some(&bearer(&format!("esl_999_{secret}")))), Err(AuthError::Rejected)));

        let bob = store.create_user("bob", false).expect("user").expect("new");
        let (bob_id, bob_token) = issue_token(&store, bob.id, "laptop").expect("issue");
        assert_eq!(authenticate(&store, Some(&bearer(&bob_token))).expect("bob").name, "bob");
        store.revoke_token(bob_id).expect("revoke");
        assert!(matches!(authenticate(&store, Some(&bearer(&bob_token))), Err(AuthError::Rejected)));
    }

    #[test]
    fn only_hashes_are_stored_and_keys_compare() {
        let store = Store::in_memory().expect("store");
        let u = store.create_user("u", false).expect("user").expect("new");
        let (id, token) = issue_token(&store, u.id, "t").expect("issue");
        let row = store.token(id).expect("get").expect("row");
        let (_, secret) = token.trim_start_matches("esl_").split_once('_').expect("shape");
        assert_ne!(row.hash, secret.as_bytes());
        assert_eq!(row.hash, hash(secret).to_vec());
        let (key, h) = new_invoke_key();
        assert!(key.starts_with("eik_") && key.len() > 40, "{key}");
        assert!(hash_matches(&key, &h));
        assert!(!hash_matches(&format!("{key}x"), &h));
        assert!(!hash_matches(&key, &[]), "an empty stored hash matches nothing");
    }

    #[test]
    fn name_errors_keep_their_messages() {
        assert_eq!(validate_user_name("bob-2"), Ok(()));
        let e = validate_user_name("Bob\n").expect_err("upper case and a newline");
        assert_eq!(e, NameError::User("Bob\n".into()));
        assert_eq!(
            e.to_string(),
            "user name `Bob\\n` is not valid; use 1-32 lower-case letters, digits, `-` or `_`, starting with a letter"
        );
        assert!(validate_user_name(&"a".repeat(33)).is_err());
        assert_eq!(validate_token_name("laptop"), Ok(()));
        let e = validate_token_name("").expect_err("empty");
        assert_eq!((e.code(), e.to_string().as_str()), ("invalid_name", "token name `` must be 1-64 printable characters"));
        assert!(matches!(validate_token_name("a\tb"), Err(NameError::Token(_))));
    }
}
