//! Commands from the controller. They arrive twice, on the renew answer and on the command
//! stream (whichever is first); both feed `Handoffs`, which acts on a handoff once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::model::{DatabaseName, InstanceId};
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

impl Handoff {
    /// Validates a wire command; anything malformed or unknown is dropped with a warning.
    pub fn from_wire(c: proto::v1::Command) -> Option<Handoff> {
        let Some(proto::v1::command::Kind::Handoff(h)) = c.kind else { return None };
        match (c.database.parse(), h.newcomer_instance_id.parse()) {
            (Ok(database), Ok(newcomer)) => Some(Handoff { database, newcomer, newcomer_host: h.newcomer_host }),
            _ => {
                warn!(db = %c.database, newcomer = %h.newcomer_instance_id, "ignored a malformed handoff command");
                None
            }
        }
    }
}

#[derive(Default)]
struct Slot {
    /// Cancelled to stop writing: the app's stop in run mode, the database's own in replicate.
    trigger: Option<CancellationToken>,
    handoff: Option<Handoff>,
}

/// Per database: what to stop on a handoff, and the handoff once one came.
#[derive(Default)]
pub struct Handoffs {
    slots: Mutex<HashMap<DatabaseName, Slot>>,
}

impl Handoffs {
    /// From now on a handoff of `database` cancels `trigger` (at once, if one already came).
    pub fn watch(&self, database: &DatabaseName, trigger: CancellationToken) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = slots.entry(database.clone()).or_default();
        if slot.handoff.is_some() {
            trigger.cancel();
        }
        slot.trigger = Some(trigger);
    }

    /// Acts on a handoff the first time it is delivered; repeats are ignored.
    pub fn deliver(&self, h: Handoff) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = slots.entry(h.database.clone()).or_default();
        if slot.handoff.is_some() {
            return;
        }
        info!(db = %h.database, newcomer = %h.newcomer, newcomer_host = %h.newcomer_host,
            "handoff requested: stopping, sealing the generation and releasing the lease");
        if let Some(t) = &slot.trigger {
            t.cancel();
        }
        slot.handoff = Some(h);
    }

    /// The handoff of `database`, if one came.
    pub fn requested(&self, database: &DatabaseName) -> Option<Handoff> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).get(database).and_then(|s| s.handoff.clone())
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
                                if let Some(h) = Handoff::from_wire(cmd) {
                                    c.handoffs.deliver(h);
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

    fn handoff(db: &str, to: &str) -> Handoff {
        Handoff { database: db.parse().expect("db"), newcomer: to.parse().expect("id"), newcomer_host: "h".into() }
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
        assert!(Handoff::from_wire(wire("app", "abc")).is_some());
        assert!(Handoff::from_wire(wire("../app", "abc")).is_none());
        assert!(Handoff::from_wire(wire("app", "a/b")).is_none());
        assert!(Handoff::from_wire(proto::v1::Command { database: "app".into(), kind: None }).is_none());
    }
}
