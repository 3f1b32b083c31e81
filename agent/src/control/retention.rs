//! Applies the database's retention policy every retention interval: list, plan, ask the
//! controller whether this instance's generation is current (fencing rule 4), then delete.
//! A refused validation deletes nothing; so does an unreachable controller. A fork (a
//! generation issued without the lease) never deletes, so its keeper does not run, and a keeper
//! whose generation was superseded stops: its generation can never be current again.

use std::sync::Arc;
use std::time::SystemTime;

use proto::model::{DatabaseName, Generation};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::client::Control;
use crate::object_store::ObjectStore;
use crate::retention;

pub struct RetentionKeeper {
    pub control: Arc<Control>,
    pub database: DatabaseName,
    pub generation: Generation,
    pub store: Arc<ObjectStore>,
    /// The generation was issued without the lease (alert policy): nothing to do.
    pub forked: bool,
}

/// What a pass found out about this keeper's generation.
enum Pass {
    Done,
    /// Another generation is current: this one never will be again.
    Superseded,
}

impl RetentionKeeper {
    pub async fn run(self, cancel: CancellationToken) {
        let every = self.control.retention_interval;
        if every.is_zero() || self.forked {
            return;
        }
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.pass().await {
                Ok(Pass::Done) => {}
                Ok(Pass::Superseded) => return,
                Err(e) => {
                    warn!(db = %self.database, generation = self.generation.0, error = %format!("{e:#}"), "retention pass failed")
                }
            }
        }
    }

    async fn pass(&self) -> anyhow::Result<Pass> {
        let (current, now_current, keep) = self
            .control
            .validate_delete(&self.database, self.generation)
            .await
            .map_err(|s| anyhow::anyhow!("controller did not validate deletes: {}", s.message()))?;
        if !current {
            warn!(db = %self.database, generation = self.generation.0, current_generation = now_current.0,
                "retention: the controller refused deletes: this instance's generation is not current");
            // A lease that ran out may be renewed while nobody else took it: then try again.
            return Ok(if now_current != self.generation { Pass::Superseded } else { Pass::Done });
        }
        let Some(keep) = keep else { return Ok(Pass::Done) };
        let listing = retention::list(&self.store).await?;
        let plan = retention::plan(&listing, self.generation, keep, SystemTime::now());
        if plan.keys.is_empty() {
            return Ok(Pass::Done);
        }
        // Validated again right before the deletes: the listing may have taken a while.
        let (still, _, _) = self
            .control
            .validate_delete(&self.database, self.generation)
            .await
            .map_err(|s| anyhow::anyhow!("controller did not validate deletes: {}", s.message()))?;
        if !still {
            warn!(db = %self.database, generation = self.generation.0, "retention: lease lost before the deletes; none made");
            return Ok(Pass::Done);
        }
        for chunk in plan.keys.chunks(1000) {
            self.store.delete_many(chunk).await?;
        }
        info!(db = %self.database, generation = self.generation.0, objects = plan.keys.len(), bytes = plan.bytes,
            earliest_txid = plan.earliest.map(|t| t.0), keep = %super::human(keep), "retention: deleted objects outside the window");
        Ok(Pass::Done)
    }
}
