//! The fleet view: counts by status across every project, and one row per database.

use std::cmp::Ordering;
use std::collections::HashMap;

use maud::{html, Markup};
use proto::v1::DatabaseInfo;

use crate::fmt;
use crate::layout::{badge, document, Page, Session};
use crate::Millis;

/// The statuses counted at the top, in order.
pub const STATUSES: [&str; 5] = ["healthy", "lagging", "stalled", "offline", "violation"];

/// Filters and sort order (the page's query string).
#[derive(Clone, Debug, Default)]
pub struct FleetQuery {
    pub project: String,
    pub status: String,
    /// A column key of [`COLUMNS`]; empty: project, then database.
    pub sort: String,
    pub desc: bool,
}

/// Sortable columns: (key, heading).
pub const COLUMNS: [(&str, &str); 12] = [
    ("project", "Project"),
    ("database", "Database"),
    ("status", "Status"),
    ("writer", "Current writer"),
    ("txid", "Local / durable TXID"),
    ("lag", "Lag"),
    ("upload", "Last upload"),
    ("window", "Restorable window"),
    ("objects", "Objects"),
    ("bytes", "Bytes"),
    ("cost", "Est. monthly"),
    ("drill", "Last drill"),
];

/// Where the current writer runs: instance id to (host, platform identity).
pub type Writers = HashMap<String, (String, String)>;

fn cost(d: &DatabaseInfo) -> f64 {
    d.monthly_storage_cost + d.monthly_request_cost
}

fn compare(key: &str, a: &DatabaseInfo, b: &DatabaseInfo) -> Ordering {
    let f = |x: f64, y: f64| x.partial_cmp(&y).unwrap_or(Ordering::Equal);
    let scan = |d: &DatabaseInfo, pick: fn(&proto::v1::ScanInfo) -> u64| d.scan.as_ref().map_or(0, pick);
    let by = match key {
        "database" => a.name.cmp(&b.name),
        "status" => a.status.cmp(&b.status),
        "writer" => a.holder_instance_id.cmp(&b.holder_instance_id),
        "txid" => a.local_txid.cmp(&b.local_txid),
        "lag" => f(a.lag_seconds, b.lag_seconds),
        "upload" => a.last_upload_unix_ms.cmp(&b.last_upload_unix_ms),
        "window" => {
            let w = |d: &DatabaseInfo| d.scan.as_ref().map_or(0, |s| s.latest_unix_ms - s.earliest_unix_ms);
            w(a).cmp(&w(b))
        }
        "objects" => scan(a, |s| s.objects).cmp(&scan(b, |s| s.objects)),
        "bytes" => scan(a, |s| s.bytes).cmp(&scan(b, |s| s.bytes)),
        "cost" => f(cost(a), cost(b)),
        "drill" => {
            let k = |d: &DatabaseInfo| d.last_drill.as_ref().map_or((0, 0), |r| (1 + i32::from(r.ok), r.at_unix_ms));
            k(a).cmp(&k(b))
        }
        _ => Ordering::Equal,
    };
    by.then_with(|| a.project.cmp(&b.project)).then_with(|| a.name.cmp(&b.name))
}

/// The rows the query selects, in its order.
pub fn select<'a>(dbs: &'a [DatabaseInfo], q: &FleetQuery) -> Vec<&'a DatabaseInfo> {
    let mut rows: Vec<&DatabaseInfo> = dbs
        .iter()
        .filter(|d| q.project.is_empty() || d.project == q.project)
        .filter(|d| q.status.is_empty() || d.status == q.status)
        .collect();
    rows.sort_by(|a, b| compare(&q.sort, a, b));
    if q.desc {
        rows.reverse();
    }
    rows
}

/// Databases per status (every project, no filter).
pub fn counts(dbs: &[DatabaseInfo]) -> Vec<(&'static str, usize)> {
    let mut out: Vec<(&'static str, usize)> =
        STATUSES.iter().map(|s| (*s, dbs.iter().filter(|d| d.status == *s).count())).collect();
    let other = dbs.iter().filter(|d| !STATUSES.contains(&d.status.as_str())).count();
    if other > 0 {
        out.push(("unknown", other));
    }
    out
}

fn href(q: &FleetQuery, sort: &str, desc: bool) -> String {
    let mut s = format!("/?sort={}", fmt::q(sort));
    if desc {
        s.push_str("&desc=1");
    }
    if !q.project.is_empty() {
        s.push_str(&format!("&project={}", fmt::q(&q.project)));
    }
    if !q.status.is_empty() {
        s.push_str(&format!("&status={}", fmt::q(&q.status)));
    }
    s
}

fn status_href(q: &FleetQuery, status: &str) -> String {
    let mut s = format!("/?status={}", fmt::q(status));
    if !q.project.is_empty() {
        s.push_str(&format!("&project={}", fmt::q(&q.project)));
    }
    s
}

fn row(d: &DatabaseInfo, writers: &Writers, now: Millis) -> Markup {
    let (host, platform) = writers.get(&d.holder_instance_id).cloned().unwrap_or_default();
    let live_lease = !d.holder_instance_id.is_empty() && d.lease_expires_at_unix_ms > now;
    html! {
        tr data-db={ (d.project) "/" (d.name) } data-status=(d.status) {
            td { (d.project) }
            td { a href={ "/db/" (d.project) "/" (d.name) } { (d.name) } }
            td title=(d.status_reason) { (badge(&d.status)) }
            td.writer {
                @if d.holder_instance_id.is_empty() { span.muted { "none" } } @else {
                    code { (d.holder_instance_id) } br;
                    span.muted { (host) @if !platform.is_empty() { " · " (platform) } } br;
                    "gen " (d.generation) " · "
                    @if live_lease { "lease " (fmt::span(d.lease_expires_at_unix_ms - now)) } @else { span.warn { "lease expired" } }
                }
            }
            td.num { (d.local_txid) " / " (d.durable_txid) }
            td.num { (fmt::lag(d.lag_seconds)) }
            td { (fmt::ago(d.last_upload_unix_ms, now)) }
            td {
                @match &d.scan {
                    Some(s) if s.latest_txid > 0 => {
                        span title={ "generation " (s.earliest_generation) " tx " (s.earliest_txid) " → generation " (s.latest_generation) " tx " (s.latest_txid) " (scanned " (fmt::ago(s.at_unix_ms, now)) ")" } {
                            (fmt::time(s.earliest_unix_ms)) br; "→ " (fmt::time(s.latest_unix_ms))
                        }
                        @if !s.drift.is_empty() { br; span.bad title=(s.drift) { "drift" } }
                    }
                    Some(s) if !s.error.is_empty() => { span.bad title=(s.error) { "scan failed" } }
                    _ => { span.muted { "not scanned yet" } }
                }
            }
            td.num { (d.scan.as_ref().map_or(0, |s| s.objects)) }
            td.num { (fmt::bytes(d.scan.as_ref().map_or(0, |s| s.bytes))) }
            td.num title={ "storage " (fmt::usd(d.monthly_storage_cost)) ", requests " (fmt::usd(d.monthly_request_cost)) } { (fmt::usd(cost(d))) }
            td {
                @match &d.last_drill {
                    Some(r) if r.ok => { span.good title=(r.message) { "passed" } " " span.muted { (fmt::ago(r.at_unix_ms, now)) } }
                    Some(r) => { span.bad title=(r.message) { "FAILED" } " " span.muted { (fmt::ago(r.at_unix_ms, now)) } }
                    None => { span.muted { "never" } }
                }
            }
        }
    }
}

fn live(q: &FleetQuery, dbs: &[DatabaseInfo], writers: &Writers, now: Millis) -> Markup {
    let rows = select(dbs, q);
    html! {
        div.counts {
            a.count href="/" class=[(q.status.is_empty()).then_some("current")] { b { (dbs.len()) } " databases" }
            @for (s, n) in counts(dbs) {
                a href=(status_href(q, s)) class={ "count c-" (s) @if q.status == s { " current" } } data-status=(s) { b { (n) } " " (s) }
            }
        }
        @if rows.is_empty() {
            p.muted.empty { @if dbs.is_empty() { "No database yet: start an agent with --controller, --token and --project." } @else { "No database matches the filter." } }
        } @else {
            table.grid.fleet {
                thead { tr {
                    @for (key, label) in COLUMNS {
                        @let current = q.sort == key || (q.sort.is_empty() && key == "project");
                        th { a href=(href(q, key, current && !q.desc)) class=[current.then_some("sorted")] {
                            (label) @if current { @if q.desc { " ▾" } @else { " ▴" } }
                        } }
                    }
                } }
                tbody { @for d in &rows { (row(d, writers, now)) } }
            }
            p.muted.small { (rows.len()) " of " (dbs.len()) " databases · updated " (fmt::time(now)) }
        }
    }
}

/// The fleet page; only its live region when `live_only`.
pub fn render(
    session: &Session,
    q: &FleetQuery,
    dbs: &[DatabaseInfo],
    writers: &Writers,
    now: Millis,
    live_only: bool,
) -> String {
    let body = live(q, dbs, writers, now);
    if live_only {
        return body.into_string();
    }
    let mut projects: Vec<&str> = dbs.iter().map(|d| d.project.as_str()).collect();
    projects.dedup();
    projects.sort_unstable();
    projects.dedup();
    let controls = html! {
        form.filters method="get" action="/" data-autosubmit {
            label { "Project " select name="project" {
                option value="" { "all projects" }
                @for p in &projects { option value=(p) selected[q.project == *p] { (p) } }
            } }
            label { "Status " select name="status" {
                option value="" { "any status" }
                @for s in STATUSES.iter().chain(std::iter::once(&"unknown")) { option value=(s) selected[q.status == *s] { (s) } }
            } }
            @if !q.sort.is_empty() { input type="hidden" name="sort" value=(q.sort); }
            @if q.desc { input type="hidden" name="desc" value="1"; }
            noscript { button type="submit" { "Filter" } }
        }
    };
    document(&Page { title: "Fleet", nav: "fleet", session }, controls, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(project: &str, name: &str, status: &str, lag: f64) -> DatabaseInfo {
        DatabaseInfo {
            project: project.into(),
            name: name.into(),
            status: status.into(),
            lag_seconds: lag,
            ..Default::default()
        }
    }

    #[test]
    fn filters_sorts_and_counts() {
        let dbs =
            vec![db("shop", "b", "healthy", 1.0), db("blog", "a", "stalled", 9.0), db("shop", "a", "healthy", 3.0)];
        let names =
            |q: &FleetQuery| select(&dbs, q).iter().map(|d| format!("{}/{}", d.project, d.name)).collect::<Vec<_>>();
        assert_eq!(names(&FleetQuery::default()), ["blog/a", "shop/a", "shop/b"]);
        let q = FleetQuery { sort: "lag".into(), desc: true, ..Default::default() };
        assert_eq!(names(&q), ["blog/a", "shop/a", "shop/b"]);
        let q = FleetQuery { project: "shop".into(), sort: "lag".into(), ..Default::default() };
        assert_eq!(names(&q), ["shop/b", "shop/a"]);
        let q = FleetQuery { status: "stalled".into(), ..Default::default() };
        assert_eq!(names(&q), ["blog/a"]);
        let c = counts(&dbs);
        assert_eq!(c[0], ("healthy", 2));
        assert_eq!(c[2], ("stalled", 1));
    }

    #[test]
    fn names_are_escaped() {
        let s = Session { csrf: "t".into(), cookie: true };
        let mut d = db("shop", "a", "healthy", 0.0);
        d.status_reason = "<script>x</script>".into();
        let html = render(&s, &FleetQuery::default(), &[d], &Writers::new(), 1, true);
        assert!(!html.contains("<script>x"), "{html}");
        assert!(html.contains("&lt;script&gt;"));
    }
}
