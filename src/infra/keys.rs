//! Random secrets and their hashes: 256 bits from the OS random source, stored only as
//! SHA-256, compared in constant time. Shared by API tokens, invoke keys and the gateway's
//! key check, which must not depend on the engine.

use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// 32 random bytes, URL-safe base64 without padding.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Constant-time equality of a presented secret's hash and a stored hash.
pub fn hash_matches(presented: &str, stored: &[u8]) -> bool {
    bool::from(hash(presented).as_slice().ct_eq(stored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_fresh_and_hashes_compare() {
        let (a, b) = (random_secret(), random_secret());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43, "32 bytes in unpadded base64");
        assert!(hash_matches(&a, &hash(&a)));
        assert!(!hash_matches(&b, &hash(&a)));
        assert!(!hash_matches(&a, &[]), "an absent stored hash matches nothing");
    }
}
