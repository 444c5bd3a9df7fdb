//! Who may do what: users, API token hashes, sealed project secrets and invoke key hashes.
//! Nothing here ever holds a token, key or secret in the clear.

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{now, opt_ts, ts, Result, Store};

#[derive(Debug, Clone, Serialize)]
pub struct UserRow {
    pub id: i64,
    pub name: String,
    pub admin: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenRow {
    pub id: i64,
    pub user: String,
    pub name: String,
    #[serde(skip)]
    pub hash: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A secret's name and its sealed (encrypted) value.
#[derive(Debug, Clone)]
pub struct SecretRow {
    pub name: String,
    pub sealed: Vec<u8>,
    pub updated_at: DateTime<Utc>,
}

fn user_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRow> {
    Ok(UserRow { id: r.get(0)?, name: r.get(1)?, admin: r.get(2)?, created_at: ts(r.get(3)?)? })
}

fn token_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok(TokenRow {
        id: r.get(0)?,
        user: r.get(1)?,
        name: r.get(2)?,
        hash: r.get(3)?,
        created_at: ts(r.get(4)?)?,
        last_used_at: opt_ts(r.get(5)?)?,
        revoked_at: opt_ts(r.get(6)?)?,
    })
}

const TOKEN_COLUMNS: &str = "t.id, u.name, t.name, t.hash, t.created_at, t.last_used_at, t.revoked_at";
const TOKEN_FROM: &str = "FROM tokens t JOIN users u ON u.id = t.user_id";

impl Store {
    pub fn user_count(&self) -> Result<i64> {
        Ok(self.conn().query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?)
    }

    /// Creates a user; `None` when the name is taken.
    pub fn create_user(&self, name: &str, admin: bool) -> Result<Option<UserRow>> {
        let conn = self.conn();
        let n = conn.execute(
            "INSERT INTO users (name, admin, created_at) VALUES (?1, ?2, ?3) ON CONFLICT(name) DO NOTHING",
            params![name, admin, now()],
        )?;
        if n == 0 {
            return Ok(None);
        }
        Ok(conn
            .query_row("SELECT id, name, admin, created_at FROM users WHERE id = ?1", [conn.last_insert_rowid()], user_from)
            .optional()?)
    }

    pub fn user(&self, name: &str) -> Result<Option<UserRow>> {
        Ok(self
            .conn()
            .query_row("SELECT id, name, admin, created_at FROM users WHERE name = ?1", [name], user_from)
            .optional()?)
    }

    pub fn users(&self) -> Result<Vec<UserRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id, name, admin, created_at FROM users ORDER BY id")?;
        let rows = stmt.query_map([], user_from)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Deletes a user and its tokens. Callers check first that it owns no projects.
    pub fn delete_user(&self, name: &str) -> Result<bool> {
        Ok(self.conn().execute("DELETE FROM users WHERE name = ?1", [name])? > 0)
    }

    /// Names of the projects `owner` owns (`None` owner rows belong to the first admin).
    pub fn projects_owned_by(&self, owner: &str) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name FROM projects WHERE owner = ?1 ORDER BY name")?;
        let rows = stmt.query_map([owner], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Stores a new token's hash for a user; returns the token id.
    pub fn create_token(&self, user_id: i64, name: &str, hash: &[u8]) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO tokens (user_id, name, hash, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![user_id, name, hash, now()],
        )?;
        Ok(conn.last_insert_rowid())
    }

    pub fn token(&self, id: i64) -> Result<Option<TokenRow>> {
        Ok(self
            .conn()
            .query_row(&format!("SELECT {TOKEN_COLUMNS} {TOKEN_FROM} WHERE t.id = ?1"), [id], token_from)
            .optional()?)
    }

    /// The active token `id` with its user, for authentication.
    pub fn active_token(&self, id: i64) -> Result<Option<(TokenRow, UserRow)>> {
        Ok(self
            .conn()
            .query_row(
                &format!(
                    "SELECT {TOKEN_COLUMNS}, u.id, u.admin, u.created_at {TOKEN_FROM} WHERE t.id = ?1 AND t.revoked_at IS NULL"
                ),
                [id],
                |r| {
                    let t = token_from(r)?;
                    let u = UserRow { id: r.get(7)?, name: t.user.clone(), admin: r.get(8)?, created_at: ts(r.get(9)?)? };
                    Ok((t, u))
                },
            )
            .optional()?)
    }

    /// Tokens of one user, or of everyone with `None`.
    pub fn tokens(&self, user: Option<&str>) -> Result<Vec<TokenRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {TOKEN_COLUMNS} {TOKEN_FROM} WHERE ?1 IS NULL OR u.name = ?1 ORDER BY t.id"))?;
        let rows = stmt.query_map([user], token_from)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Revokes a token; false when it did not exist or was already revoked.
    pub fn revoke_token(&self, id: i64) -> Result<bool> {
        Ok(self
            .conn()
            .execute("UPDATE tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL", params![id, now()])?
            > 0)
    }

    /// Records use, at most once a minute per token so the hot path rarely writes.
    pub fn touch_token(&self, id: i64) -> Result<()> {
        let cutoff = (Utc::now() - chrono::Duration::seconds(60)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        self.conn().execute(
            "UPDATE tokens SET last_used_at = ?2 WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?3)",
            params![id, now(), cutoff],
        )?;
        Ok(())
    }

    pub fn set_invoke_key_hash(&self, project: &str, hash: &[u8]) -> Result<bool> {
        Ok(self.conn().execute("UPDATE projects SET invoke_key_hash = ?2 WHERE name = ?1", params![project, hash])? > 0)
    }

    pub fn invoke_key_hash(&self, project: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn()
            .query_row("SELECT invoke_key_hash FROM projects WHERE name = ?1", [project], |r| r.get(0))
            .optional()?
            .flatten())
    }

    pub fn put_secret(&self, project: &str, name: &str, sealed: &[u8]) -> Result<()> {
        self.conn().execute(
            "INSERT INTO secrets (project, name, sealed, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(project, name) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at",
            params![project, name, sealed, now()],
        )?;
        Ok(())
    }

    pub fn delete_secret(&self, project: &str, name: &str) -> Result<bool> {
        Ok(self.conn().execute("DELETE FROM secrets WHERE project = ?1 AND name = ?2", [project, name])? > 0)
    }

    pub fn secrets(&self, project: &str) -> Result<Vec<SecretRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name, sealed, updated_at FROM secrets WHERE project = ?1 ORDER BY name")?;
        let rows = stmt.query_map([project], |r| Ok(SecretRow { name: r.get(0)?, sealed: r.get(1)?, updated_at: ts(r.get(2)?)? }))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_tokens_and_revocation() {
        let s = Store::in_memory().expect("store");
        assert_eq!(s.user_count().expect("count"), 0);
        let admin = s.create_user("admin", true).expect("create").expect("new");
        assert!(s.create_user("admin", false).expect("create").is_none(), "names are unique");
        let bob = s.create_user("bob", false).expect("create").expect("new");
        let t1 = s.create_token(bob.id, "laptop", &[1; 32]).expect("token");
        let t2 = s.create_token(admin.id, "ci", &[2; 32]).expect("token");
        let (t, u) = s.active_token(t1).expect("get").expect("active");
        assert_eq!((t.name.as_str(), u.name.as_str(), u.admin), ("laptop", "bob", false));
        assert_eq!(t.hash, vec![1; 32]);
        assert_eq!(s.tokens(Some("bob")).expect("ls").len(), 1);
        assert_eq!(s.tokens(None).expect("ls").len(), 2);
        assert!(s.revoke_token(t1).expect("revoke"));
        assert!(!s.revoke_token(t1).expect("revoke twice"));
        assert!(s.active_token(t1).expect("get").is_none(), "revoked tokens are not active");
        assert!(s.active_token(t2).expect("get").is_some());
        s.upsert_project("p", "r", None, "bob").expect("project");
        assert_eq!(s.projects_owned_by("bob").expect("owned"), vec!["p".to_string()]);
        assert!(s.delete_user("admin").expect("rm"));
        assert!(s.active_token(t2).expect("get").is_none(), "a removed user's tokens go with it");
    }

    #[test]
    fn secrets_and_invoke_keys_belong_to_projects() {
        let s = Store::in_memory().expect("store");
        s.upsert_project("p", "r", None, "admin").expect("project");
        s.put_secret("p", "B", b"sealed-b").expect("put");
        s.put_secret("p", "A", b"sealed-a").expect("put");
        s.put_secret("p", "A", b"sealed-a2").expect("overwrite");
        let names: Vec<_> = s.secrets("p").expect("ls").into_iter().map(|r| (r.name, r.sealed)).collect();
        assert_eq!(names, vec![("A".to_string(), b"sealed-a2".to_vec()), ("B".to_string(), b"sealed-b".to_vec())]);
        assert!(s.delete_secret("p", "B").expect("rm"));
        assert!(!s.delete_secret("p", "B").expect("rm again"));
        assert!(s.invoke_key_hash("p").expect("key").is_none());
        assert!(s.set_invoke_key_hash("p", &[7; 32]).expect("set"));
        assert_eq!(s.invoke_key_hash("p").expect("key"), Some(vec![7; 32]));
        assert!(s.delete_project("p").expect("delete"));
        assert!(s.secrets("p").expect("ls").is_empty(), "secrets go with their project");
    }
}
