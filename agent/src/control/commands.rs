//! Commands from the controller. They arrive twice, on the renew answer and on the command
//! stream (whichever is first); both feed `Handoffs`, which acts on the first stop command
//! (a handoff or a live rollback) of a database once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::model::{DatabaseName, Generation, InstanceId, Position, Txid};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::client::Control;

/// The controller asks this instance to stop writing `database` and hand it to `newcomer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handoff {
    pub database: DatabaseName,
    pub newcomer: InstanceId,
    pub newcomer_host: String,
}

/// An admin asked to roll `database` back to `point`: stop the app, seal and release,
/// restore the point, continue in a new generation from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rollback {
    pub database: DatabaseName,
    pub point: Position,
    pub restore_id: i64,
}

/// A command that stops a database's writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Handoff(Handoff),
    Rollback(Rollback),
}

impl Command {
    /// Validates a wire command; anything malformed or unknown is dropped with a warning.
    pub fn from_wire(c: proto::v1::Command) -> Option<Command> {
        match c.kind {
            Some(proto::v1::command::Kind::Handoff(h)) => match (c.database.parse(), h.newcomer_instance_id.parse()) {
                (Ok(database), Ok(newcomer)) => {
                    Some(Command::Handoff(Handoff { database, newcomer, newcomer_host: h.newcomer_host }))
                }
                _ => {
                    warn!(db = %c.database, newcomer = %h.newcomer_instance_id, "ignored a malformed handoff command");
                    None
                }
            },
            Some(proto::v1::command::Kind::Rollback(r)) => {
                match (c.database.parse::<DatabaseName>(), r.point.filter(|p| p.generation > 0 && p.txid > 0)) {
                    (Ok(database), Some(p)) => Some(Command::Rollback(Rollback {
                        database,
                        point: Position { generation: Generation(p.generation), txid: Txid(p.txid) },
                        restore_id: r.restore_id,
                    })),
                    _ => {
                        warn!(db = %c.database, "ignored a malformed rollback command");
                        None
                    }
                }
            }
            None => None,
        }
    }

    fn database(&self) -> &DatabaseName {
        match self {
            Command::Handoff(h) => &h.database,
            Command::Rollback(r) => &r.database,
        }
    }
}

#[derive(Default)]
struct Slot {
    /// Cancelled to stop writing: the app's stop in run mode, the database's own in replicate.
    trigger: Option<CancellationToken>,
    /// The first stop command; later ones are ignored until the database starts again.
    command: Option<Command>,
}

/// Per database: what to stop on a handoff or rollback, and the command once one came.
#[derive(Default)]
pub struct Handoffs {
    slots: Mutex<HashMap<DatabaseName, Slot>>,
}

impl Handoffs {
    /// From now on a handoff of `database` cancels `trigger` (at once, if one already came).
    pub fn watch(&self, database: &DatabaseName, trigger: CancellationToken) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = slots.entry(database.clone()).or_default();
        if slot.command.is_some() {
            trigger.cancel();
        }
        slot.trigger = Some(trigger);
    }

    /// Acts on a stop command the first time one is delivered; repeats are ignored.
    pub fn deliver(&self, c: Command) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = slots.entry(c.database().clone()).or_default();
        if slot.command.is_some() {
            return;
        }
        match &c {
            Command::Handoff(h) => info!(db = %h.database, newcomer = %h.newcomer, newcomer_host = %h.newcomer_host,
                "handoff requested: stopping, sealing the generation and releasing the lease"),
            Command::Rollback(r) => info!(db = %r.database, generation = r.point.generation.0, txid = r.point.txid.0,
                restore = r.restore_id, "rollback requested: stopping the app, sealing the generation, then restoring"),
        }
        if let Some(t) = &slot.trigger {
            t.cancel();
        }
        slot.command = Some(c);
    }

    /// The handoff of `database`, if one came.
    pub fn requested(&self, database: &DatabaseName) -> Option<Handoff> {
        match self.slots.lock().unwrap_or_else(|e| e.into_inner()).get(database).and_then(|s| s.command.clone()) {
            Some(Command::Handoff(h)) => Some(h),
            _ => None,
        }
    }

    /// Rollbacks that came, in no particular order.
    pub fn rollbacks(&self) -> Vec<Rollback> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .values()
            .filter_map(|s| match &s.command {
                Some(Command::Rollback(r)) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Follows this instance's command stream until `stop`, reconnecting with backoff.
pub struct CommandStream {
    pub control: Arc<Control>,
}

impl CommandStream {
    pub async fn run(self, stop: CancellationToken) {
        let c = &self.control;
        let mut backoff = Duration::from_millis(200);
        let mut down = false;
        loop {
            let req =
                proto::v1::CommandsRequest { project: c.project().to_string(), instance_id: c.instance().to_string() };
            let mut client = c.client();
            let opened = tokio::select! {
                _ = stop.cancelled() => return,
                r = tokio::time::timeout(Duration::from_secs(10), client.commands(req)) => r,
            };
            let error = match opened {
                Ok(Ok(resp)) => {
                    if down {
                        info!(controller = %c.url(), "command stream reconnected");
                        down = false;
                    }
                    backoff = Duration::from_millis(200);
                    let mut stream = resp.into_inner();
                    loop {
                        let msg = tokio::select! {
                            _ = stop.cancelled() => return,
                            m = stream.message() => m,
                        };
                        match msg {
                            Ok(Some(cmd)) => {
                                if let Some(cmd) = Command::from_wire(cmd) {
                                    c.handoffs.deliver(cmd);
                                }
                            }
                            Ok(None) => break "the controller closed it".to_string(),
                            Err(s) => break s.message().to_string(),
                        }
                    }
                }
                Ok(Err(s)) => s.message().to_string(),
                Err(_) => "no answer within 10s".to_string(),
            };
            c.count_error();
            if !down {
                warn!(controller = %c.url(), %error, "command stream lost; reconnecting (renews still carry commands)");
                down = true;
            }
            let jitter = Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 4 + 1));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff + jitter) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handoff(db: &str, to: &str) -> Command {
        Command::Handoff(Handoff {
            database: db.parse().expect("db"),
            newcomer: to.parse().expect("id"),
            newcomer_host: "h".into(),
        })
    }

    #[test]
    fn a_handoff_is_acted_on_once_even_before_the_watch() {
        let h = Handoffs::default();
        let db: DatabaseName = "app".parse().expect("db");
        // Arrives before the database is watched: the watch fires at once.
        h.deliver(handoff("app", "aaaa"));
        let t = CancellationToken::new();
        h.watch(&db, t.clone());
        assert!(t.is_cancelled());
        // A repeat (the stream and a renew both carry it) changes nothing.
        h.deliver(handoff("app", "bbbb"));
        assert_eq!(h.requested(&db).map(|x| x.newcomer.to_string()), Some("aaaa".into()));
        let other = CancellationToken::new();
        h.watch(&"other".parse().expect("db"), other.clone());
        assert!(!other.is_cancelled());
        h.deliver(handoff("other", "cccc"));
        assert!(other.is_cancelled());
    }

    #[test]
    fn malformed_commands_are_dropped() {
        let wire = |db: &str, id: &str| proto::v1::Command {
            database: db.into(),
            kind: Some(proto::v1::command::Kind::Handoff(proto::v1::Handoff {
                newcomer_instance_id: id.into(),
                newcomer_host: String::new(),
            })),
        };
        assert!(Command::from_wire(wire("app", "abc")).is_some());
        assert!(Command::from_wire(wire("../app", "abc")).is_none());
        assert!(Command::from_wire(wire("app", "a/b")).is_none());
        assert!(Command::from_wire(proto::v1::Command { database: "app".into(), kind: None }).is_none());
        let rollback = |db: &str, g: u64, t: u64| proto::v1::Command {
            database: db.into(),
            kind: Some(proto::v1::command::Kind::Rollback(proto::v1::Rollback {
                point: Some(proto::v1::Position { generation: g, txid: t }),
                restore_id: 7,
            })),
        };
        assert_eq!(
            Command::from_wire(rollback("app", 3, 9)),
            Some(Command::Rollback(Rollback {
                database: "app".parse().expect("db"),
                point: Position { generation: Generation(3), txid: Txid(9) },
                restore_id: 7
            }))
        );
        assert!(Command::from_wire(rollback("app", 0, 9)).is_none());
        assert!(Command::from_wire(rollback("app", 3, 0)).is_none());
        assert!(Command::from_wire(rollback("a..b/", 3, 9)).is_none());
    }

    #[test]
    fn a_rollback_stops_the_database_and_is_listed_once() {
        let h = Handoffs::default();
        let db: DatabaseName = "app".parse().expect("db");
        let t = CancellationToken::new();
        h.watch(&db, t.clone());
        let r = Rollback {
            database: db.clone(),
            point: Position { generation: Generation(2), txid: Txid(5) },
            restore_id: 1,
        };
        h.deliver(Command::Rollback(r.clone()));
        assert!(t.is_cancelled());
        // A later handoff does not replace it, and a rollback is not a handoff.
        h.deliver(handoff("app", "aaaa"));
        assert_eq!(h.rollbacks(), vec![r]);
        assert!(h.requested(&db).is_none());
    }
}
