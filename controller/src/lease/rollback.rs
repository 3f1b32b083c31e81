//! Live rollbacks. An admin names a point of a database's history; its current writer (an
//! agent in run mode) is told to stop its app, seal and release, restore that point, and
//! acquire again naming it. Only an acquire that names the point an admin asked for may start
//! a generation from somewhere other than the head; the request lives in the database's
//! `rollback` note, so any controller sharing the store can check it.

use proto::model::{DatabaseName, Generation, InstanceId, Position, ProjectName};
use serde::{Deserialize, Serialize};
use tracing::info;

use super::{now_ms, Command, LeaseError, Leases};
use crate::store::NoteRow;

/// The note kind holding a database's newest rollback.
pub const ROLLBACK: &str = "rollback";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackNote {
    pub restore_id: i64,
    pub generation: u64,
    pub txid: u64,
    /// The instance asked to roll back and the generation it was writing.
    pub holder: String,
    pub holder_generation: u64,
    pub requested_by: String,
    /// "requested" until an acquire names the point, then "done".
    pub state: String,
    #[serde(default)]
    pub new_generation: u64,
    #[serde(default)]
    pub new_instance: String,
}

impl RollbackNote {
    pub fn point(&self) -> Position {
        Position { generation: Generation(self.generation), txid: proto::model::Txid(self.txid) }
    }

    fn command(&self, database: &DatabaseName) -> Command {
        Command::Rollback { database: database.clone(), point: self.point(), restore_id: self.restore_id }
    }
}

impl Leases {
    /// The newest rollback of a database, if any.
    pub async fn rollback_note(
        &self,
        project: &ProjectName,
        database: &DatabaseName,
    ) -> Result<Option<RollbackNote>, LeaseError> {
        let notes = self.store.list_notes(Some(project), Some(ROLLBACK)).await?;
        Ok(notes.iter().filter(|n| &n.database == database).max_by_key(|n| n.at).and_then(|n| {
            serde_json::from_str(&n.body)
                .map_err(|e| tracing::warn!(%project, %database, error = %e, "unreadable rollback note ignored"))
                .ok()
        }))
    }

    async fn put_rollback(
        &self,
        project: &ProjectName,
        database: &DatabaseName,
        note: &RollbackNote,
    ) -> Result<(), LeaseError> {
        Ok(self.store.put_note(&NoteRow::json(project, database, ROLLBACK, now_ms(), note)).await?)
    }

    /// Asks the current writer of `database` to roll back to `point`. Refused without a live
    /// holder, for a sidecar (it cannot stop its app), and for a generation never issued.
    pub async fn request_rollback(
        &self,
        project: &ProjectName,
        database: &DatabaseName,
        point: Position,
        restore_id: i64,
        requested_by: &str,
    ) -> Result<(InstanceId, Generation), LeaseError> {
        let db = self
            .store
            .get_database(project, database)
            .await?
            .ok_or_else(|| LeaseError::NoDatabase { project: project.clone(), database: database.clone() })?;
        let refuse = |why: String| Err(LeaseError::Rollback(format!("live rollback of {project}/{database}: {why}")));
        let Some(holder) = db.holder.clone().filter(|_| db.expires_at > now_ms()) else {
            return refuse(
                "no instance holds its lease, so no app runs to roll back; restore with --output or --into".into(),
            );
        };
        if point.generation.0 == 0 || point.generation > db.last_generation {
            return refuse(format!("generation {} was never issued", point.generation.0));
        }
        let mode = self.store.get_instance(&holder).await?.map(|r| r.info.mode).unwrap_or_default();
        if mode != "run" {
            return refuse(format!(
                "holder {holder} runs as a sidecar ({mode:?} mode) and cannot stop its app; only `walfleet-agent run` \
                 rolls back live"
            ));
        }
        if let Some(n) = self.rollback_note(project, database).await?.filter(|n| n.state == "requested") {
            if n.holder == holder.as_str() {
                return refuse(format!(
                    "rollback #{} to generation {} transaction {} is still in progress",
                    n.restore_id, n.generation, n.txid
                ));
            }
        }
        let note = RollbackNote {
            restore_id,
            generation: point.generation.0,
            txid: point.txid.0,
            holder: holder.to_string(),
            holder_generation: db.holder_generation.0,
            requested_by: requested_by.to_string(),
            state: "requested".into(),
            new_generation: 0,
            new_instance: String::new(),
        };
        self.put_rollback(project, database, &note).await?;
        self.event(
            project,
            database,
            "rollback_requested",
            Some(&holder),
            None,
            format!(
                "admin token {requested_by} asked instance {holder} (generation {}) to roll back to generation {} \
                 transaction {} (restore #{restore_id})",
                db.holder_generation.0, point.generation.0, point.txid.0
            ),
        )
        .await;
        let cmd = note.command(database);
        self.lock_rollbacks().insert((holder.clone(), database.clone()), cmd.clone());
        self.send(&holder, cmd);
        info!(%project, %database, instance = %holder, generation = point.generation.0, txid = point.txid.0,
            "rollback requested");
        Ok((holder, db.holder_generation))
    }

    /// Rollback commands still waiting for `id` (delivered again when its stream reconnects).
    pub(super) async fn pending_rollbacks(
        &self,
        project: &ProjectName,
        id: &InstanceId,
    ) -> Result<Vec<Command>, LeaseError> {
        let notes = self.store.list_notes(Some(project), Some(ROLLBACK)).await?;
        Ok(notes
            .iter()
            .filter_map(|n| serde_json::from_str::<RollbackNote>(&n.body).ok().map(|r| (n.database.clone(), r)))
            .filter(|(_, r)| r.state == "requested" && r.holder == id.as_str())
            .map(|(d, r)| r.command(&d))
            .collect())
    }

    /// An acquire naming `point`: allowed only for the point an admin asked to roll back to.
    pub(super) async fn check_rollback(
        &self,
        project: &ProjectName,
        database: &DatabaseName,
        id: &InstanceId,
        point: Position,
    ) -> Result<RollbackNote, LeaseError> {
        match self.rollback_note(project, database).await? {
            Some(n) if n.state == "requested" && n.point() == point => Ok(n),
            // The same instance asking again (its first answer was lost).
            Some(n) if n.state == "done" && n.point() == point && n.new_instance == id.as_str() => Ok(n),
            _ => Err(LeaseError::Rollback(format!(
                "no rollback of {project}/{database} to generation {} transaction {} was requested; an agent may \
                 start from another point than the head only when an admin asked for it",
                point.generation.0, point.txid.0
            ))),
        }
    }

    /// The rollback's new generation was granted.
    pub(super) async fn rollback_granted(
        &self,
        project: &ProjectName,
        database: &DatabaseName,
        mut note: RollbackNote,
        id: &InstanceId,
        generation: Generation,
    ) -> Result<(), LeaseError> {
        note.state = "done".into();
        note.new_generation = generation.0;
        note.new_instance = id.to_string();
        self.put_rollback(project, database, &note).await?;
        self.agent_event(
            project,
            database,
            "rolled_back",
            Some(id),
            None,
            format!(
                "instance {id} restored generation {} transaction {} and writes generation {} from it; generation {} \
                 (rolled back from) stays restorable (restore #{})",
                note.generation, note.txid, generation.0, note.holder_generation, note.restore_id
            ),
        )
        .await;
        Ok(())
    }
}
