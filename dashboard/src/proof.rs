//! Proof of persistence: per database, the newest drill that restored a point and matched the
//! checksum the agent reported for it, shown as evidence; a database with no passing drill
//! inside its schedule window is flagged.

use maud::html;
use proto::v1::DatabaseInfo;

use crate::layout::{badge, document, Page, Session};
use crate::{fmt, Millis};

/// The evidence of one passing drill.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    pub at: Millis,
    pub generation: u64,
    pub txid: u64,
    /// The restored database's checksum (hex), equal to the agent's report for `txid`.
    pub checksum: String,
    pub duration_ms: u64,
}

pub struct ProofRow<'a> {
    pub db: &'a DatabaseInfo,
    pub evidence: Option<Evidence>,
    /// The drill schedule in force (0: only on demand).
    pub every_ms: u64,
}

/// Why a database is flagged, if it is.
pub fn flag(row: &ProofRow, now: Millis) -> Option<String> {
    match (&row.evidence, row.every_ms) {
        (None, _) => Some("no drill has matched the agent's checksum yet".into()),
        (Some(e), every) if every > 0 && now - e.at > every as i64 => Some(format!(
            "no passing drill in its schedule window (every {}; the last one passed {})",
            fmt::span(every as i64),
            fmt::ago(e.at, now)
        )),
        _ => None,
    }
}

pub fn render(session: &Session, rows: &[ProofRow], now: Millis, live_only: bool) -> String {
    let flagged = rows.iter().filter(|r| flag(r, now).is_some()).count();
    let body = html! {
        div.counts {
            span.count.c-healthy { b { (rows.len() - flagged) } " proven" }
            span class={ "count " @if flagged > 0 { "c-violation" } @else { "c-healthy" } } { b { (flagged) } " flagged" }
        }
        @if rows.is_empty() {
            p.muted.empty { "No database yet." }
        } @else {
            table.grid.proof {
                thead { tr { th { "Database" } th { "Status" } th { "Evidence" } th { "Point" } th { "Checksum (restored = agent's)" } th { "When" } th { "Schedule" } } }
                tbody {
                    @for r in rows {
                        @let why = flag(r, now);
                        tr data-db={ (r.db.project) "/" (r.db.name) } class=[why.is_some().then_some("flagged")] {
                            td { a href={ "/db/" (r.db.project) "/" (r.db.name) } { (r.db.project) "/" (r.db.name) } }
                            td { (badge(&r.db.status)) }
                            @match &r.evidence {
                                Some(e) => {
                                    td { @if let Some(w) = &why { span.bad { "FLAGGED" } " " span.small { (w) } } @else { span.good { "proven" } " " span.small.muted { "restored, integrity ok, checksum matched" } } }
                                    td.num { "gen " (e.generation) " · tx " (e.txid) }
                                    td { code { (e.checksum) } }
                                    td.nowrap { (fmt::time(e.at)) br; span.muted { (fmt::ago(e.at, now)) " · " (e.duration_ms) " ms" } }
                                }
                                None => {
                                    td { span.bad { "FLAGGED" } " " span.small { (why.clone().unwrap_or_default()) } }
                                    td {} td {} td {}
                                }
                            }
                            td { @if r.every_ms == 0 { span.muted { "on demand" } } @else { "every " (fmt::span(r.every_ms as i64)) } }
                        }
                    }
                }
            }
            p.muted.small { "A drill restores the newest reported-durable point into scratch space on the controller, runs integrity_check and compares the database checksum with the one the agent reported for that transaction. Updated " (fmt::time(now)) }
        }
    };
    if live_only {
        return body.into_string();
    }
    document(&Page { title: "Proof of persistence", nav: "proof", session }, html! {}, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_missing_and_stale_proof() {
        let db = DatabaseInfo::default();
        let e = Evidence { at: 1_000, ..Default::default() };
        let row = |evidence, every_ms| ProofRow { db: &db, evidence, every_ms };
        assert!(flag(&row(None, 0), 5_000).is_some());
        assert!(flag(&row(Some(e.clone()), 0), 5_000_000).is_none());
        assert!(flag(&row(Some(e.clone()), 10_000), 5_000).is_none());
        assert!(flag(&row(Some(e), 1_000), 5_000).expect("stale").contains("schedule window"));
    }
}
