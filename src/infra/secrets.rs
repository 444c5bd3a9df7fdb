//! Project secrets: sealed with AES-256-GCM under a key kept in `<data_dir>/secrets.key`
//! (mode 0600, made on first use). Each value gets a fresh 96-bit nonce, and the project and
//! name are bound in as associated data, so a sealed value copied to another row fails to open.
//!
//! Values are opened only to build a container's environment; they never reach an image, a
//! build log, an API answer or a log line.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::Context;

/// File in the data directory holding the 32-byte key.
pub const KEY_FILE: &str = "secrets.key";
/// Longest secret value.
pub const MAX_VALUE_BYTES: usize = 32 * 1024;
/// Most secrets per project.
pub const MAX_PER_PROJECT: usize = 100;
const NONCE_LEN: usize = 12;

pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

fn aad(project: &str, name: &str) -> Vec<u8> {
    [project.as_bytes(), b"\0", name.as_bytes()].concat()
}

impl SecretBox {
    /// Loads the key from the data directory, creating it on first use.
    pub fn open_dir(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(KEY_FILE);
        let key = match std::fs::read(&path) {
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
                let mut k = vec![0u8; 32];
                getrandom::fill(&mut k).expect("the OS random source works");
                crate::infra::datadir::write_private(&path, &k).with_context(|| format!("cannot write {}", path.display()))?;
                k
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read the secrets key {}", path.display())),
        };
        anyhow::ensure!(
            key.len() == 32,
            "the secrets key {} holds {} bytes, not 32; restore it from a backup (secrets sealed with another key cannot be opened)",
            path.display(),
            key.len()
        );
        Ok(SecretBox { cipher: Aes256Gcm::new_from_slice(&key).expect("32-byte key") })
    }

    pub fn seal(&self, project: &str, name: &str, value: &str) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the OS random source works");
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: value.as_bytes(), aad: &aad(project, name) })
            .expect("AES-GCM sealing does not fail for values this small");
        [nonce.as_slice(), &sealed].concat()
    }

    pub fn open(&self, project: &str, name: &str, sealed: &[u8]) -> anyhow::Result<String> {
        anyhow::ensure!(sealed.len() > NONCE_LEN, "secret `{name}` of project `{project}` is truncated");
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad: &aad(project, name) })
            .map_err(|_| anyhow::anyhow!("secret `{name}` of project `{project}` does not open with this server's key; set it again"))?;
        String::from_utf8(plain).map_err(|_| anyhow::anyhow!("secret `{name}` of project `{project}` is not UTF-8"))
    }
}

/// A secret name or value that cannot be stored; the API answers it with [`SecretError::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error(
        "secret name `{}` is not an environment variable name; use letters, digits and `_`, not starting with a digit (at most 128)",
        .0.escape_debug()
    )]
    InvalidName(String),
    #[error("secret name `{0}` is reserved by the platform; choose another name")]
    ReservedName(String),
    #[error("secret `{name}` is {len} bytes; the limit is {}", MAX_VALUE_BYTES)]
    TooLong { name: String, len: usize },
    #[error("secret `{0}` contains a NUL character, which an environment variable cannot hold")]
    NulInValue(String),
}

impl SecretError {
    /// The stable `error.code` of the API answer.
    pub fn code(&self) -> &'static str {
        "invalid_secret"
    }
}

/// Names the platform sets itself (besides `ESERVELESS_*`), so a secret may not replace them.
const RESERVED_NAMES: &[&str] = &["PORT", "HOME", "PATH", "NODE_ENV", "NODE_OPTIONS", "LD_PRELOAD", "LD_LIBRARY_PATH"];

/// Checks a secret's name: an environment variable name that the platform does not set itself.
pub fn validate_name(name: &str) -> Result<(), SecretError> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(SecretError::InvalidName(name.to_string()));
    }
    let upper = name.to_ascii_uppercase();
    if upper.starts_with("ESERVELESS_") || RESERVED_NAMES.contains(&upper.as_str()) {
        return Err(SecretError::ReservedName(name.to_string()));
    }
    Ok(())
}

pub fn validate_value(name: &str, value: &str) -> Result<(), SecretError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(SecretError::TooLong { name: name.to_string(), len: value.len() });
    }
    if value.contains('\0') {
        return Err(SecretError::NulInValue(name.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let dir = tempfile::tempdir().expect("dir");
        let b = SecretBox::open_dir(dir.path()).expect("box");
        let sealed = b.seal("p", "DB_PASSWORD", "hunter2");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"), "the value is not in the sealed bytes");
        assert_ne!(b.seal("p", "DB_PASSWORD", "hunter2"), sealed, "fresh nonce each time");
        assert_eq!(b.open("p", "DB_PASSWORD", &sealed).expect("open"), "hunter2");
        assert!(b.open("q", "DB_PASSWORD", &sealed).is_err(), "bound to its project");
        assert!(b.open("p", "OTHER", &sealed).is_err(), "bound to its name");
        let mut bad = sealed.clone();
        *bad.last_mut().expect("byte") ^= 1;
        assert!(b.open("p", "DB_PASSWORD", &bad).is_err(), "tampering is detected");

        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(dir.path().join(KEY_FILE)).expect("key file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let again = SecretBox::open_dir(dir.path()).expect("reopen");
        assert_eq!(again.open("p", "DB_PASSWORD", &sealed).expect("same key"), "hunter2");
        std::fs::write(dir.path().join(KEY_FILE), b"short").expect("w");
        let e = SecretBox::open_dir(dir.path()).expect_err("bad key");
        assert!(e.to_string().contains("not 32"), "{e}");
    }

    #[test]
    fn names_and_values() {
        assert!(validate_name("API_KEY").is_ok());
        assert!(validate_name("_x1").is_ok());
        for bad in ["", "1X", "A-B", "A B", "A=B", "$(id)", "a\nb"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        for reserved in ["PORT", "home", "ESERVELESS_FUNCTION", "NODE_OPTIONS"] {
            assert!(validate_name(reserved).expect_err(reserved).to_string().contains("reserved"), "{reserved}");
        }
        assert!(validate_value("X", "a\0b").is_err());
        assert!(validate_value("X", &"a".repeat(MAX_VALUE_BYTES + 1)).is_err());
        assert!(validate_value("X", "fine").is_ok());
    }

    #[test]
    fn errors_keep_their_messages() {
        let cases = [
            (
                validate_name("1X"),
                "secret name `1X` is not an environment variable name; use letters, digits and `_`, not starting with a digit (at most 128)",
            ),
            (validate_name("a\nb"), "secret name `a\\nb` is not an environment variable name; use letters, digits and `_`, not starting with a digit (at most 128)"),
            (validate_name("Path"), "secret name `Path` is reserved by the platform; choose another name"),
            (validate_value("X", &"a".repeat(MAX_VALUE_BYTES + 1)), "secret `X` is 32769 bytes; the limit is 32768"),
            (validate_value("X", "a\0b"), "secret `X` contains a NUL character, which an environment variable cannot hold"),
        ];
        for (got, want) in cases {
            let e = got.expect_err(want);
            assert_eq!((e.code(), e.to_string().as_str()), ("invalid_secret", want));
        }
        assert!(matches!(validate_name("ESERVELESS_X"), Err(SecretError::ReservedName(_))));
        assert!(matches!(validate_value("X", "\0"), Err(SecretError::NulInValue(_))));
    }
}
