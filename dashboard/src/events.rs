//! The events view: the fleet's incidents and audit trail, newest first, filterable.

use maud::{html, Markup};
use proto::v1::Event;

use crate::fmt;
use crate::layout::{document, Page, Session};
use crate::Millis;

/// Kinds that need a person's attention.
pub const INCIDENTS: [&str; 9] = [
    "duplicate_instance",
    "forked",
    "fenced",
    "stalled",
    "report_missing",
    "drift",
    "drill_failed",
    "delete_refused",
    "restore_failed",
];

/// Kinds a filter can name (the incidents, then the rest walfleet records).
pub const KINDS: [&str; 23] = [
    "duplicate_instance",
    "forked",
    "fenced",
    "stalled",
    "report_missing",
    "drift",
    "drill_failed",
    "delete_refused",
    "restore_failed",
    "handoff_requested",
    "handoff_completed",
    "lease_expired",
    "released",
    "stall_cleared",
    "report_resumed",
    "drill_passed",
    "retention_set",
    "restore_planned",
    "restore_started",
    "restore_finished",
    "rollback_requested",
    "rollback",
    "cloned",
];

#[derive(Clone, Debug, Default)]
pub struct EventsQuery {
    pub project: String,
    pub database: String,
    /// "", "incidents" or one kind.
    pub kind: String,
}

impl EventsQuery {
    /// Whether `e` passes the kind filter (project and database are filtered by the store).
    pub fn admits(&self, e: &Event) -> bool {
        match self.kind.as_str() {
            "" => true,
            "incidents" => INCIDENTS.contains(&e.kind.as_str()),
            k => e.kind == k,
        }
    }
}

pub fn is_incident(kind: &str) -> bool {
    INCIDENTS.contains(&kind)
}

/// Rows of events, newest first (shared with the database view).
pub fn table(events: &[&Event], now: Millis, with_db: bool) -> Markup {
    html! {
        @if events.is_empty() {
            p.muted.empty { "No events." }
        } @else {
            table.grid.events {
                thead { tr {
                    th { "When" }
                    @if with_db { th { "Database" } }
                    th { "Kind" } th { "Instance" } th { "Other instance" } th { "What happened" }
                } }
                tbody {
                    @for e in events.iter().rev() {
                        tr data-kind=(e.kind) data-id=(e.id) class=[is_incident(&e.kind).then_some("incident")] {
                            td.nowrap title=(fmt::time(e.at_unix_ms)) { (fmt::time(e.at_unix_ms)) br; span.muted { (fmt::ago(e.at_unix_ms, now)) } }
                            @if with_db {
                                td { @if e.database.is_empty() { (e.project) } @else { a href={ "/db/" (e.project) "/" (e.database) } { (e.project) "/" (e.database) } } }
                            }
                            td { span class={ "kind" @if is_incident(&e.kind) { " bad" } } { (e.kind) } }
                            td { code { (e.instance_id) } }
                            td { code { (e.other_instance_id) } }
                            td.msg { (e.message) }
                        }
                    }
                }
            }
        }
    }
}

/// The events page (`events` oldest first, as the store hands them back).
pub fn render(
    session: &Session,
    q: &EventsQuery,
    projects: &[String],
    events: &[Event],
    now: Millis,
    live_only: bool,
) -> String {
    let shown: Vec<&Event> = events.iter().filter(|e| q.admits(e)).collect();
    let body = html! {
        (table(&shown, now, true))
        p.muted.small { (shown.len()) " events · newest first · updated " (fmt::time(now)) }
    };
    if live_only {
        return body.into_string();
    }
    let controls = html! {
        form.filters method="get" action="/events" data-autosubmit {
            label { "Project " select name="project" {
                option value="" { "all projects" }
                @for p in projects { option value=(p) selected[&q.project == p] { (p) } }
            } }
            label { "Database " input type="text" name="database" value=(q.database) placeholder="any" size="14"; }
            label { "Kind " select name="kind" {
                option value="" { "all events" }
                option value="incidents" selected[q.kind == "incidents"] { "incidents only" }
                @for k in KINDS { option value=(k) selected[q.kind == k] { (k) } }
            } }
            noscript { button type="submit" { "Filter" } }
        }
    };
    document(&Page { title: "Events", nav: "events", session }, controls, body)
}
