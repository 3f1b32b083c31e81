//! The database view: status and writer, the generation lineage as a picture, the restorable
//! window on a time axis with the drills on it, the exact `walfleet restore` commands for a
//! point picked on the axis, the restore audit trail and the database's events.

use maud::{html, Markup};
use proto::v1::{DatabaseInfo, Event, GenerationInfo};

use crate::fleet::Writers;
use crate::layout::{action, badge, document, Page, Session};
use crate::{events, fmt, Millis};

/// The point the restore commands name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pick {
    #[default]
    Latest,
    /// The newest transaction at or before this time.
    At(Millis),
    Txid(u64),
}

impl Pick {
    fn flag(self) -> String {
        match self {
            Pick::Latest => String::new(),
            Pick::At(ms) => format!(" --timestamp {}", fmt::rfc3339(ms)),
            Pick::Txid(n) => format!(" --txid {n}"),
        }
    }

    fn describe(self) -> String {
        match self {
            Pick::Latest => "the latest point".into(),
            Pick::At(ms) => format!("the newest transaction at or before {}", fmt::time(ms)),
            Pick::Txid(n) => format!("transaction {n}"),
        }
    }
}

/// Everything the page shows about one database.
pub struct DbView<'a> {
    pub db: &'a DatabaseInfo,
    /// Oldest first.
    pub generations: &'a [GenerationInfo],
    /// This database's events, oldest first.
    pub events: &'a [Event],
    pub writers: &'a Writers,
    /// Point-in-time history kept (0: everything).
    pub retention_ms: u64,
    /// The drill schedule in force (0: only on demand).
    pub drill_every_ms: u64,
    pub pick: Pick,
    pub now: Millis,
}

/// Kinds of the restore audit trail.
const AUDIT: [&str; 8] = [
    "restore_planned",
    "restore_started",
    "restore_finished",
    "restore_failed",
    "rollback_requested",
    "rollback",
    "cloned",
    "retention_set",
];

/// The transaction a generation reaches as far as the controller knows.
fn reach(g: &GenerationInfo, db: &DatabaseInfo) -> u64 {
    let start = g.parent.as_ref().map_or(0, |p| p.txid);
    if g.sealed_txid > 0 {
        return g.sealed_txid;
    }
    let mut end = start;
    if let Some(h) = db.head.as_ref().filter(|h| h.generation == g.generation) {
        end = end.max(h.txid);
    }
    if g.generation == db.generation {
        end = end.max(db.durable_txid);
    }
    end
}

/// The lineage picture: one lane per generation, on a transaction axis, each joined to the
/// point of its parent it starts from.
pub fn lineage(db: &DatabaseInfo, gens: &[GenerationInfo], now: Millis) -> Markup {
    const W: f64 = 1000.0;
    const LEFT: f64 = 110.0;
    const RIGHT: f64 = 20.0;
    const ROW: f64 = 46.0;
    if gens.is_empty() {
        return html! { p.muted.empty { "No generation yet: no agent has acquired this database." } };
    }
    let max = gens.iter().map(|g| reach(g, db)).max().unwrap_or(0).max(1) as f64;
    let x = |t: u64| LEFT + (t as f64 / max) * (W - LEFT - RIGHT);
    let row_of = |gen: u64| gens.iter().position(|g| g.generation == gen);
    let height = ROW * gens.len() as f64 + 24.0;
    let live_lease = db.lease_expires_at_unix_ms > now && !db.holder_instance_id.is_empty();
    html! {
        svg.lineage viewBox={ "0 0 " (W) " " (height) } role="img" aria-label="generation lineage" preserveAspectRatio="xMinYMin meet" {
            @for (i, g) in gens.iter().enumerate() {
                @let y = 10.0 + ROW * i as f64;
                @let start = g.parent.as_ref().map_or(0, |p| p.txid);
                @let end = reach(g, db);
                @let current = g.generation == db.generation && !db.holder_instance_id.is_empty();
                @let class = if !g.leased { "fork" } else if current && live_lease { "live" } else if g.sealed_txid > 0 { "sealed" } else { "open" };
                @if let Some(p) = &g.parent {
                    @if let Some(pi) = row_of(p.generation) {
                        @let py = 10.0 + ROW * pi as f64 + 7.0;
                        path.link d={ "M" (x(p.txid)) " " (py) " V " (y + 7.0) " H " (x(start)) } {}
                        circle.forkpt cx=(x(p.txid)) cy=(py) r="4" {}
                    }
                }
                text.gen x="4" y=(y + 12.0) { "gen " (g.generation) }
                rect class={ "bar " (class) } x=(x(start)) y=(y) width=((x(end) - x(start)).max(6.0)) height="14" rx="3" data-generation=(g.generation) {
                    title { "generation " (g.generation) ": transactions " (start) "–" (end) }
                }
                text.detail x=(x(start)) y=(y + 30.0) {
                    @if let Some(p) = &g.parent { "from gen " (p.generation) " @ tx " (p.txid) " · " } @else { "new lineage · " }
                    @match class {
                        "fork" => { "FORK: duplicate instance, not leased · " }
                        "live" => { "live, tx " (end) " durable · " }
                        "sealed" => { "sealed at tx " (g.sealed_txid) " · " }
                        _ => { "not sealed (writer gone) · " }
                    }
                    (g.instance_id) @if !g.host.is_empty() { " on " (g.host) } " · " (fmt::time(g.created_at_unix_ms))
                }
            }
        }
        p.legend.small {
            span.key.live {} "live writer " span.key.sealed {} "sealed " span.key.open {} "not sealed " span.key.fork {} "fork from a duplicate instance"
        }
    }
}

/// A drill event: (time, ok, transaction it restored when the message names one).
fn drills(events: &[Event]) -> Vec<(Millis, bool, Option<u64>)> {
    events
        .iter()
        .filter(|e| e.kind == "drill_passed" || e.kind == "drill_failed")
        .map(|e| {
            let txid = e
                .message
                .split("restored transaction ")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok());
            (e.at_unix_ms, e.kind == "drill_passed", txid)
        })
        .collect()
}

/// The restorable window on a time axis, with drills and generation starts on it. Clicking
/// the axis picks a time; clicking a drill picks the transaction it restored.
pub fn window(v: &DbView) -> Markup {
    const W: f64 = 1000.0;
    const L: f64 = 40.0;
    const R: f64 = 40.0;
    let db = v.db;
    let scan = db.scan.as_ref().filter(|s| s.latest_txid > 0);
    let first_gen = v.generations.first().map_or(0, |g| g.created_at_unix_ms);
    let w0 = scan.map_or(first_gen, |s| s.earliest_unix_ms);
    let w1 = scan.map_or(0, |s| s.latest_unix_ms).max(db.last_upload_unix_ms);
    if w0 <= 0 || w1 <= 0 {
        return html! { p.muted.empty { "Nothing restorable is known yet (no upload reported, no scan)." } };
    }
    let ds = drills(v.events);
    let mut a0 = w0.min(w1);
    let mut a1 = w1.max(w0);
    for (at, _, _) in &ds {
        a0 = a0.min(*at);
        a1 = a1.max(*at);
    }
    if let Pick::At(ms) = v.pick {
        a0 = a0.min(ms);
        a1 = a1.max(ms);
    }
    let pad = ((a1 - a0) / 20).max(1000);
    let (a0, a1) = (a0 - pad, a1 + pad);
    let x = |t: Millis| L + (t - a0) as f64 / (a1 - a0) as f64 * (W - L - R);
    let ticks: Vec<Millis> = (0..5).map(|i| a0 + (a1 - a0) * i / 4).collect();
    html! {
        svg.axis viewBox={ "0 0 " (W) " 96" } data-t0=(a0) data-t1=(a1) data-left=(L) data-right=(R) role="img" aria-label="restorable window; click to pick a point" {
            rect.hit x=(L) y="0" width=(W - L - R) height="70" {}
            line.axisline x1=(L) y1="44" x2=(W - R) y2="44" {}
            rect.window x=(x(w0)) y="36" width=((x(w1) - x(w0)).max(3.0)) height="16" rx="3" {
                title { "restorable: " (fmt::time(w0)) " → " (fmt::time(w1)) }
            }
            @for g in v.generations {
                @if g.created_at_unix_ms >= a0 && g.created_at_unix_ms <= a1 {
                    line.genmark x1=(x(g.created_at_unix_ms)) y1="30" x2=(x(g.created_at_unix_ms)) y2="58" {}
                    text.genlabel x=(x(g.created_at_unix_ms)) y="26" { "g" (g.generation) }
                }
            }
            @for (at, ok, txid) in &ds {
                circle class={ "drill " @if *ok { "good" } @else { "bad" } } cx=(x(*at)) cy="62" r="6" data-txid=[txid] {
                    title { "drill " @if *ok { "passed" } @else { "FAILED" } " " (fmt::time(*at)) @if let Some(t) = txid { " · transaction " (t) } }
                }
            }
            @if let Pick::At(ms) = v.pick {
                line.pick x1=(x(ms)) y1="4" x2=(x(ms)) y2="70" {}
            }
            @for t in &ticks {
                text.tick x=(x(*t)) y="90" { (fmt::time(*t).get(11..19).unwrap_or("")) }
            }
        }
        p.small.muted {
            "Restorable from " b { (fmt::time(w0)) } " to " b { (fmt::time(w1)) }
            @if let Some(s) = scan { " (generation " (s.earliest_generation) " tx " (s.earliest_txid) " → generation " (s.latest_generation) " tx " (s.latest_txid) ", scanned " (fmt::ago(s.at_unix_ms, v.now)) ")" }
            ". Click the axis to pick a time, a drill to pick the transaction it restored."
        }
    }
}

/// The exact commands for a restore of the picked point.
pub fn commands(db: &DatabaseInfo, pick: Pick) -> Markup {
    let t = format!("{}/{}", db.project, db.name);
    let flag = pick.flag();
    let cmds = [
        ("Into a file", format!("walfleet restore {t}{flag} --output ./{}-restored.db", db.name)),
        ("As a clone (a new lineage)", format!("walfleet restore {t}{flag} --into {}/{}-clone", db.project, db.name)),
        ("Roll the running app back", format!("walfleet restore {t}{flag} --live")),
    ];
    html! {
        div.commands data-pick=(match pick { Pick::Latest => "latest".to_string(), Pick::At(ms) => ms.to_string(), Pick::Txid(n) => format!("tx{n}") }) {
            p { "Restore " b { (pick.describe()) } ":"
                @if pick != Pick::Latest { " " a href={ "/db/" (db.project) "/" (db.name) } { "(back to the latest)" } } }
            @for (label, cmd) in cmds {
                div.cmd { span.small.muted { (label) } pre { code { (cmd) } } }
            }
            p.small.muted { "Run on a machine with " code { "WALFLEET_CONTROLLER" } " and " code { "WALFLEET_ADMIN_TOKEN" } " set and read access to the bucket; the controller records each restore in the audit trail below." }
        }
    }
}

fn summary(v: &DbView) -> Markup {
    let db = v.db;
    let (host, platform) = v.writers.get(&db.holder_instance_id).cloned().unwrap_or_default();
    html! {
        dl.facts {
            div { dt { "Status" } dd { (badge(&db.status)) @if !db.status_reason.is_empty() { " " span.muted { (db.status_reason) } } } }
            div { dt { "Current writer" } dd {
                @if db.holder_instance_id.is_empty() { span.muted { "none" } } @else {
                    code { (db.holder_instance_id) } " " (host) @if !platform.is_empty() { " · " (platform) }
                    " · gen " (db.generation) " · lease "
                    @if db.lease_expires_at_unix_ms > v.now { "expires in " (fmt::span(db.lease_expires_at_unix_ms - v.now)) } @else { "expired" }
                }
            } }
            div { dt { "Local / durable TXID" } dd { (db.local_txid) " / " (db.durable_txid) " · lag " (fmt::lag(db.lag_seconds)) } }
            div { dt { "Last upload" } dd { (fmt::ago(db.last_upload_unix_ms, v.now)) } }
            div { dt { "Stored" } dd { @match &db.scan { Some(s) => { (s.objects) " objects · " (fmt::bytes(s.bytes)) } None => { span.muted { "not scanned yet" } } } } }
            div { dt { "Est. monthly cost" } dd { (fmt::usd(db.monthly_storage_cost + db.monthly_request_cost)) } }
            div { dt { "Last drill" } dd {
                @match &db.last_drill {
                    Some(d) if d.ok => { span.good { "passed" } " " (fmt::ago(d.at_unix_ms, v.now)) " · " span.muted { (d.message) } }
                    Some(d) => { span.bad { "FAILED" } " " (fmt::ago(d.at_unix_ms, v.now)) " · " (d.message) }
                    None => { span.muted { "never" } }
                }
            } }
            div { dt { "Policy · retention · drills" } dd {
                (db.policy) " · "
                @if v.retention_ms == 0 { "keep everything" } @else { "keep " (fmt::span(v.retention_ms as i64)) }
                " · "
                @if v.drill_every_ms == 0 { "drills on demand" } @else { "drill every " (fmt::span(v.drill_every_ms as i64)) }
            } }
            div { dt { "Replica" } dd { code { (db.replica_url) } } }
        }
    }
}

fn actions(v: &DbView, session: &Session) -> Markup {
    let base = format!("/db/{}/{}", v.db.project, v.db.name);
    html! {
        section.actions {
            h2 { "Actions" }
            div.action-row {
                (action(session, &format!("{base}/drill"), "Run a drill now", html! {}))
                (action(session, &format!("{base}/policy"), "Set policy", html! {
                    select name="policy" aria-label="policy" {
                        @for p in ["handoff", "wait", "alert"] { option value=(p) selected[v.db.policy == p] { (p) } }
                    }
                }))
                (action(session, &format!("{base}/retention"), "Set retention", html! {
                    input type="text" name="keep" size="6" placeholder="7d" aria-label="keep" value=(if v.retention_ms > 0 { fmt::span(v.retention_ms as i64).replace(' ', "") } else { String::new() });
                }))
                (action(session, &format!("{base}/drill-schedule"), "Set drill schedule", html! {
                    input type="text" name="every" size="6" placeholder="24h" aria-label="every";
                }))
                (action(session, &format!("{base}/clone"), "Start a clone", html! {
                    input type="text" name="into" size="16" placeholder="project/database" aria-label="clone into" required;
                    input type="text" name="point" size="12" placeholder="txid or time" aria-label="point";
                }))
            }
            p.small.muted { "Each action is recorded like the CLI's: drills, retention and clones appear in the events below." }
        }
    }
}

fn live(v: &DbView) -> Markup {
    let mine: Vec<&Event> = v.events.iter().collect();
    let audit: Vec<&Event> = v.events.iter().filter(|e| AUDIT.contains(&e.kind.as_str())).collect();
    html! {
        (summary(v))
        section { h2 { "Lineage" } (lineage(v.db, v.generations, v.now)) }
        section { h2 { "Restorable window" } (window(v)) (commands(v.db, v.pick)) }
        section { h2 { "Restore audit trail" } (events::table(&audit, v.now, false)) }
        section { h2 { "Events" } (events::table(&mine, v.now, false)) }
    }
}

pub fn render(session: &Session, v: &DbView, live_only: bool) -> String {
    let body = live(v);
    if live_only {
        return body.into_string();
    }
    let title = format!("{}/{}", v.db.project, v.db.name);
    let controls = actions(v, session);
    let crumbs = html! { p.crumbs { a href="/" { "Fleet" } " › " a href={ "/?project=" (fmt::q(&v.db.project)) } { (v.db.project) } " › " (v.db.name) } (controls) };
    document(&Page { title: &title, nav: "", session }, crumbs, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::v1::Position;

    #[test]
    fn commands_name_the_point() {
        let db = DatabaseInfo { project: "shop".into(), name: "app".into(), ..Default::default() };
        let s = commands(&db, Pick::Txid(42)).into_string();
        assert!(s.contains("walfleet restore shop/app --txid 42 --output ./app-restored.db"), "{s}");
        assert!(s.contains("walfleet restore shop/app --txid 42 --into shop/app-clone"));
        assert!(s.contains("walfleet restore shop/app --txid 42 --live"));
        let s = commands(&db, Pick::At(1_764_882_303_000)).into_string();
        assert!(s.contains("--timestamp 2025-12-04T21:05:03Z --output"), "{s}");
        let s = commands(&db, Pick::Latest).into_string();
        assert!(s.contains("walfleet restore shop/app --output"), "{s}");
    }

    #[test]
    fn lineage_marks_forks_and_parents() {
        let db = DatabaseInfo {
            generation: 3,
            holder_instance_id: "b".into(),
            lease_expires_at_unix_ms: 10,
            durable_txid: 90,
            ..Default::default()
        };
        let g = |n, parent: Option<(u64, u64)>, sealed, leased| GenerationInfo {
            generation: n,
            parent: parent.map(|(generation, txid)| Position { generation, txid }),
            sealed_txid: sealed,
            leased,
            instance_id: format!("i{n}"),
            ..Default::default()
        };
        let gens = [g(1, None, 50, true), g(2, Some((1, 50)), 0, false), g(3, Some((1, 50)), 0, true)];
        let s = lineage(&db, &gens, 1).into_string();
        assert!(s.contains("bar sealed"), "{s}");
        assert!(s.contains("bar fork") && s.contains("FORK: duplicate instance"), "{s}");
        assert!(s.contains("bar live") && s.contains("from gen 1 @ tx 50"), "{s}");
        assert_eq!(s.matches("class=\"forkpt\"").count(), 2);
    }

    #[test]
    fn drill_events_carry_their_transaction() {
        let e = Event {
            kind: "drill_passed".into(),
            at_unix_ms: 5,
            message: "restore drill passed in 3 ms: restored transaction 17; integrity ok".into(),
            ..Default::default()
        };
        assert_eq!(drills(&[e]), vec![(5, true, Some(17))]);
    }
}
