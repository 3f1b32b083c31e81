//! A generation's manifest: who wrote it, where it came from, and where it ended.
//!
//! It is written once when the generation is claimed (`If-None-Match: *` where the store
//! honours it) and once more when the writer seals it at its final transaction. It is small
//! and never on the hot path: a steady stream of commits costs one PUT per sync, not two.

use chrono::{DateTime, Utc};
use proto::model::{Generation, Txid};
use serde::{Deserialize, Serialize};

use crate::layout;
use crate::object_store::{ObjectStore, PutCondition, PutOptions};

pub const FORMAT: u32 = 1;

/// The largest manifest read: a real one is well under a kilobyte.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 10;

/// How long a claim on a store that ignores conditional writes waits before reading the
/// manifest back: a second writer that found the generation free at the same moment has put
/// its own manifest by then, and one of the two sees the other's identity.
const CLAIM_SETTLE: std::time::Duration = std::time::Duration::from_millis(1500);

/// The same read-back where the store honours conditional writes: a store may honour them one
/// request at a time without making them atomic (s3s-fs does), so two `If-None-Match` PUTs
/// racing each other can both succeed. A racing PUT was already in flight when ours returned,
/// so a short wait covers it.
const CONDITIONAL_CLAIM_SETTLE: std::time::Duration = std::time::Duration::from_millis(250);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub txid: Txid,
    /// Database checksum after `txid`, as 16 hex digits.
    pub checksum: String,
}

impl Position {
    pub fn new(txid: Txid, checksum: u64) -> Self {
        Position { txid, checksum: format!("{checksum:016x}") }
    }
    pub fn checksum(&self) -> Option<u64> {
        u64::from_str_radix(&self.checksum, 16).ok()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parent {
    pub generation: Generation,
    #[serde(flatten)]
    pub position: Position,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Writer {
    pub instance: String,
    pub host: String,
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub generation: Generation,
    pub parent: Option<Parent>,
    /// The generation's own transactions start after this one; its base (copied from the
    /// parent, or a snapshot) reaches exactly it.
    pub base_txid: Txid,
    pub page_size: u32,
    pub writer: Writer,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub sealed: Option<Position>,
    #[serde(default)]
    pub sealed_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("generation {0} was already claimed by another writer")]
    Claimed(Generation),
    #[error("manifest {key} is damaged: {source}")]
    Damaged { key: String, source: serde_json::Error },
    #[error("manifest {key} is larger than {max} bytes; it is not one walfleet wrote")]
    TooLarge { key: String, max: u64 },
    #[error(transparent)]
    Store(#[from] crate::object_store::ObjectStoreError),
}

impl Manifest {
    /// Creates the manifest; fails with `Claimed` when it already exists (only detectable on
    /// stores that honour conditional writes, hence the extra HEAD on those that do not).
    pub async fn claim(&self, store: &ObjectStore, conditional: bool) -> Result<Option<String>, ManifestError> {
        let key = layout::manifest_key(self.generation);
        let body =
            serde_json::to_vec_pretty(self).map_err(|source| ManifestError::Damaged { key: key.clone(), source })?;
        if !conditional && store.head(&key).await?.is_some() {
            return Err(ManifestError::Claimed(self.generation));
        }
        let opts = PutOptions {
            condition: if conditional { PutCondition::IfNoneMatch } else { PutCondition::None },
            timestamp: None,
        };
        let etag = match store.put(&key, body.into(), &opts).await {
            Ok(etag) => etag,
            Err(crate::object_store::ObjectStoreError::PreconditionFailed { .. }) => {
                return Err(ManifestError::Claimed(self.generation))
            }
            Err(e) => return Err(e.into()),
        };
        // HEAD then PUT is not a claim by itself (two writers can both find the key free), nor
        // is a conditional PUT on a store whose conditions are not atomic. The manifest names
        // its writer's instance; after the other writer's PUT has had time to land, the one
        // whose identity is not there has lost.
        tokio::time::sleep(if conditional { CONDITIONAL_CLAIM_SETTLE } else { CLAIM_SETTLE }).await;
        match Manifest::load(store, self.generation).await? {
            Some(m) if m.writer.instance == self.writer.instance => {}
            _ => return Err(ManifestError::Claimed(self.generation)),
        }
        Ok(etag)
    }

    /// Rewrites the manifest (sealing it), guarded by the etag it was created with where the
    /// store honours conditional writes.
    pub async fn update(&self, store: &ObjectStore, etag: Option<&str>) -> Result<Option<String>, ManifestError> {
        let key = layout::manifest_key(self.generation);
        let body =
            serde_json::to_vec_pretty(self).map_err(|source| ManifestError::Damaged { key: key.clone(), source })?;
        let condition = match etag {
            Some(e) => PutCondition::IfMatch(e.to_string()),
            None => PutCondition::None,
        };
        Ok(store.put(&key, body.into(), &PutOptions { condition, timestamp: None }).await?)
    }

    pub async fn load(store: &ObjectStore, generation: Generation) -> Result<Option<Manifest>, ManifestError> {
        let key = layout::manifest_key(generation);
        // Read with a bound: one byte more than the largest manifest says it is too large.
        let bytes = match store.get_range(&key, 0, MAX_MANIFEST_BYTES + 1).await {
            Ok(b) => b,
            Err(crate::object_store::ObjectStoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge { key, max: MAX_MANIFEST_BYTES });
        }
        serde_json::from_slice(&bytes).map(Some).map_err(|source| ManifestError::Damaged { key, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips_as_json() {
        let m = Manifest {
            format: FORMAT,
            generation: Generation(2),
            parent: Some(Parent { generation: Generation(1), position: Position::new(Txid(9), 0x8000_0000_0000_0001) }),
            base_txid: Txid(9),
            page_size: 4096,
            writer: Writer { instance: "i-1".into(), host: "h".into(), pid: 1, platform: None },
            created_at: Utc::now(),
            sealed: None,
            sealed_at: None,
            reason: None,
        };
        let s = serde_json::to_string(&m).expect("encode");
        assert!(s.contains("\"checksum\":\"8000000000000001\""), "{s}");
        let back: Manifest = serde_json::from_str(&s).expect("decode");
        assert_eq!(back, m);
        assert_eq!(back.parent.as_ref().and_then(|p| p.position.checksum()), Some(0x8000_0000_0000_0001));
    }
}
