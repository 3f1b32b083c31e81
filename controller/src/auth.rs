//! Tokens: per-project agent tokens and admin tokens. A token is shown once when created; only
//! its SHA-256 is stored (tokens are 192 random bits, so a plain hash is enough: there is
//! nothing to guess). An agent token reaches only its own project.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::model::ProjectName;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError, TokenKind, TokenRow};

/// Successful lookups are remembered this long; a revoke through this controller takes effect
/// at once, through another controller sharing the store within this time.
const CACHE_FOR: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing token: send `authorization: Bearer <token>`")]
    Missing,
    #[error("unknown token")]
    Unknown,
    #[error("token {0} was revoked")]
    Revoked(String),
    #[error("token {id} is an {kind} token; this call needs an {needed} token")]
    WrongKind { id: String, kind: &'static str, needed: &'static str },
    #[error("token {id} belongs to project {owner}; it cannot reach project {project}")]
    WrongProject { id: String, owner: String, project: ProjectName },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who is calling, once the token checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Admin { token_id: String },
    Agent { token_id: String, project: ProjectName },
}

/// A new token's secret and its stored row.
pub struct NewToken {
    pub secret: String,
    pub row: TokenRow,
}

pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// `wf<kind>_<id>_<secret>`: the id is public (listings, revoke), the whole string is the secret.
pub fn generate(kind: TokenKind, project: Option<ProjectName>, now: i64) -> NewToken {
    let mut id = [0u8; 6];
    let mut secret = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut id);
    rand::thread_rng().fill_bytes(&mut secret);
    let id = hex::encode(id);
    let token = format!("wf{}_{}_{}", kind.as_str(), id, hex::encode(secret));
    from_secret(token, id, kind, project, now)
}

/// Adopts a given secret (the first admin token from the environment).
pub fn from_secret(secret: String, id: String, kind: TokenKind, project: Option<ProjectName>, now: i64) -> NewToken {
    let row = TokenRow { id, kind, project, hash: hash(&secret), created_at: now, revoked_at: None };
    NewToken { secret, row }
}

pub struct Auth {
    store: Arc<dyn Store>,
    cache: Mutex<HashMap<String, (TokenRow, Instant)>>,
}

impl Auth {
    pub fn new(store: Arc<dyn Store>) -> Auth {
        Auth { store, cache: Mutex::default() }
    }

    async fn lookup(&self, secret: &str) -> Result<TokenRow, AuthError> {
        let h = hash(secret);
        if let Some((row, at)) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&h) {
            if at.elapsed() < CACHE_FOR {
                return Ok(row.clone());
            }
        }
        let row = self.store.find_token_by_hash(&h).await?.ok_or(AuthError::Unknown)?;
        if row.revoked_at.is_some() {
            return Err(AuthError::Revoked(row.id));
        }
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(h, (row.clone(), Instant::now()));
        Ok(row)
    }

    /// Forgets cached lookups (after a revoke).
    pub fn forget(&self) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub async fn admin(&self, secret: Option<&str>) -> Result<Caller, AuthError> {
        let row = self.lookup(secret.ok_or(AuthError::Missing)?).await?;
        match row.kind {
            TokenKind::Admin => Ok(Caller::Admin { token_id: row.id }),
            TokenKind::Agent => Err(AuthError::WrongKind { id: row.id, kind: "agent", needed: "admin" }),
        }
    }

    /// An agent token of `project` (an admin token may act for any project).
    pub async fn agent(&self, secret: Option<&str>, project: &ProjectName) -> Result<Caller, AuthError> {
        let row = self.lookup(secret.ok_or(AuthError::Missing)?).await?;
        match (row.kind, row.project) {
            (TokenKind::Admin, _) => Ok(Caller::Admin { token_id: row.id }),
            (TokenKind::Agent, Some(p)) if &p == project => Ok(Caller::Agent { token_id: row.id, project: p }),
            (TokenKind::Agent, owner) => Err(AuthError::WrongProject {
                id: row.id,
                owner: owner.map(|p| p.to_string()).unwrap_or_default(),
                project: project.clone(),
            }),
        }
    }
}

/// The bearer token of a request's metadata, if any.
pub fn bearer(meta: &tonic::metadata::MetadataMap) -> Option<&str> {
    let v = meta.get("authorization")?.to_str().ok()?;
    v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")).map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = generate(TokenKind::Agent, "p".parse().ok(), 1);
        let b = generate(TokenKind::Agent, "p".parse().ok(), 1);
        assert_ne!(a.secret, b.secret);
        assert!(a.secret.starts_with(&format!("wfagent_{}_", a.row.id)));
        assert_eq!(a.row.hash, hash(&a.secret));
        assert!(!a.row.hash.contains(&a.secret));
        assert_eq!(a.row.hash.len(), 64);
    }
}
