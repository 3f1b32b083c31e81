//! Retention: which objects of a replica can go while every point of the last `keep` stays
//! restorable. Pure planning over listings, shared by the agent (which deletes, after the
//! controller validated its generation: fencing rule 4) and `walfleet retention --dry-run`
//! (which shows the same list).
//!
//! Within the writer's current generation, the newest level-9 snapshot written before the
//! window (`now - keep`) becomes the earliest restore point: every file it covers entirely goes.
//! Without such a snapshot nothing in the generation goes. An older generation goes as a whole
//! once nothing in it is younger than the window, and only if nothing in it is off the current
//! lineage: it is an ancestor of the current generation (through the manifests' parents) holding
//! nothing past the point its successor continued from, or it holds nothing of its own (its
//! files do not reach its base). Each generation starts with a copy of its base, so the current
//! one restores without them. Everything else stays restorable and is never deleted by
//! retention: forks (newer or older than the current generation), the generation a rollback
//! left (it goes on past the rollback's point), and any generation whose lineage is unknown.

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use proto::model::{Generation, Txid};

use crate::layout::{self, LtxObject, SNAPSHOT_LEVEL};
use crate::manifest::{Manifest, ManifestError};
use crate::object_store::{ObjectStore, ObjectStoreError};

/// One object of a generation's listing.
#[derive(Clone, Debug)]
pub struct Object {
    pub key: String,
    pub size: u64,
    pub modified: Option<SystemTime>,
    /// Level and TXID range when the object is an LTX file.
    pub ltx: Option<(u8, Txid, Txid)>,
}

/// Where a generation came from, per its manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// It started a lineage (no parent).
    New,
    /// It continued `generation` from `txid` (its base reaches exactly that point).
    From { generation: Generation, txid: Txid },
    /// No manifest, or one this store cannot read (say, encrypted without the key): nothing in
    /// it is ever deleted as an older generation.
    Unknown,
}

/// One generation's objects and origin.
#[derive(Clone, Debug)]
pub struct Listed {
    pub generation: Generation,
    pub origin: Origin,
    pub objects: Vec<Object>,
}

/// What a retention pass deletes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub keys: Vec<String>,
    pub bytes: u64,
    /// The earliest restorable point after the deletes (the kept snapshot), if it moved.
    pub earliest: Option<Txid>,
}

/// Plans the deletes. `generations` holds every generation's objects; `current` is the writer's.
pub fn plan(generations: &[Listed], current: Generation, keep: Duration, now: SystemTime) -> Plan {
    let cutoff = now.checked_sub(keep).unwrap_or(SystemTime::UNIX_EPOCH);
    let before_cutoff = |o: &Object| o.modified.is_some_and(|m| m < cutoff);
    let lineage = lineage(generations, current);
    let mut out = Plan::default();
    for l in generations {
        let objects = &l.objects;
        if l.generation < current {
            if !objects.is_empty() && objects.iter().all(before_cutoff) && superseded(l, &lineage) {
                for o in objects {
                    out.keys.push(o.key.clone());
                    out.bytes += o.size;
                }
            }
            continue;
        }
        if l.generation != current {
            continue;
        }
        let snapshot = objects
            .iter()
            .filter(|o| before_cutoff(o))
            .filter_map(|o| match o.ltx {
                Some((SNAPSHOT_LEVEL, Txid(1), max)) => Some((max, o.key.as_str())),
                _ => None,
            })
            .max();
        let Some((base, base_key)) = snapshot else { continue };
        for o in objects {
            let Some((_, _, max)) = o.ltx else { continue };
            if max <= base && o.key != base_key {
                out.keys.push(o.key.clone());
                out.bytes += o.size;
            }
        }
        out.earliest = Some(base);
    }
    out.keys.sort();
    out
}

/// The current generation's ancestors, each with the point its successor continued from.
fn lineage(generations: &[Listed], current: Generation) -> Vec<(Generation, Txid)> {
    let find = |g: Generation| generations.iter().find(|l| l.generation == g);
    let mut out = Vec::new();
    let mut at = find(current);
    while let Some(l) = at {
        match l.origin {
            // Parents are older; anything else is not a lineage to follow.
            Origin::From { generation, txid } if generation < l.generation => {
                out.push((generation, txid));
                at = find(generation);
            }
            _ => break,
        }
    }
    out
}

/// Whether an older generation holds nothing the current lineage does not: an ancestor that
/// ends where its successor continued, or one whose files never reached its own base.
fn superseded(l: &Listed, lineage: &[(Generation, Txid)]) -> bool {
    let files: Vec<LtxObject> = l
        .objects
        .iter()
        .filter_map(|o| o.ltx.map(|(level, min, max)| LtxObject { key: o.key.clone(), level, min, max, size: o.size }))
        .collect();
    let newest = files.iter().map(|f| f.max).max();
    if let Some((_, continued)) = lineage.iter().find(|(g, _)| *g == l.generation) {
        return newest.is_none_or(|n| n <= *continued);
    }
    let base = match l.origin {
        Origin::From { txid, .. } => txid,
        Origin::New => Txid::ZERO,
        Origin::Unknown => return false,
    };
    crate::restore::plan::latest(&files).is_none_or(|t| t < base)
}

/// Lists every generation under the replica root with its origin, for [`plan`].
pub async fn list(store: &ObjectStore) -> Result<Vec<Listed>> {
    let top = store.list("", Some("/")).await.context("list replica root")?;
    let mut out = Vec::new();
    for g in layout::generations(&top) {
        let base = layout::generation_prefix(g);
        let listing = store.list(&base, None).await.with_context(|| format!("list {base}"))?;
        let ltx = layout::ltx_objects(&store.backend(), &base, &listing);
        let objects = listing
            .objects
            .iter()
            .map(|o| Object {
                key: o.key.clone(),
                size: o.size,
                modified: o.last_modified,
                ltx: ltx.iter().find(|f| f.key == o.key).map(|f| (f.level, f.min, f.max)),
            })
            .collect();
        let origin = match Manifest::load(store, g).await {
            Ok(Some(m)) => match m.parent {
                Some(p) => Origin::From { generation: p.generation, txid: p.position.txid },
                None => Origin::New,
            },
            Ok(None) | Err(ManifestError::Damaged { .. }) | Err(ManifestError::Store(ObjectStoreError::Crypt(_))) => {
                Origin::Unknown
            }
            Err(e) => return Err(e).with_context(|| format!("read manifest of generation {g}")),
        };
        out.push(Listed { generation: g, origin, objects });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn at(mins_ago: u64, now: SystemTime) -> Option<SystemTime> {
        Some(now - MIN * mins_ago as u32)
    }

    fn ltx(key: &str, level: u8, min: u64, max: u64, mins_ago: u64, now: SystemTime) -> Object {
        Object { key: key.into(), size: 10, modified: at(mins_ago, now), ltx: Some((level, Txid(min), Txid(max))) }
    }

    fn manifest(key: &str, mins_ago: u64, now: SystemTime) -> Object {
        Object { key: key.into(), size: 1, modified: at(mins_ago, now), ltx: None }
    }

    fn listed(g: u64, origin: Origin, objects: Vec<Object>) -> Listed {
        Listed { generation: Generation(g), origin, objects }
    }

    fn from(g: u64, txid: u64) -> Origin {
        Origin::From { generation: Generation(g), txid: Txid(txid) }
    }

    #[test]
    fn keeps_the_window_and_the_snapshot_that_starts_it() {
        let now = SystemTime::now();
        let g = Generation(3);
        let objects = vec![
            manifest("g3/manifest.json", 100, now),
            ltx("g3/l0/1-1", 0, 1, 1, 100, now),
            ltx("g3/l0/2-5", 0, 2, 5, 90, now),
            ltx("g3/l9/1-5", 9, 1, 5, 80, now),
            ltx("g3/l0/6-9", 0, 6, 9, 70, now),
            ltx("g3/l9/1-9", 9, 1, 9, 65, now),
            ltx("g3/l0/10-12", 0, 10, 12, 50, now),
            ltx("g3/l1/6-12", 1, 6, 12, 50, now),
            // Inside the window (keep 60 min): the snapshot at 12 is too young to be the base.
            ltx("g3/l9/1-12", 9, 1, 12, 30, now),
            ltx("g3/l0/13-13", 0, 13, 13, 10, now),
        ];
        let p = plan(&[listed(3, Origin::New, objects)], g, MIN * 60, now);
        assert_eq!(p.earliest, Some(Txid(9)));
        assert_eq!(p.keys, vec!["g3/l0/1-1", "g3/l0/2-5", "g3/l0/6-9", "g3/l9/1-5"]);
        // The manifest, the base snapshot, files past it (even old ones) and the window stay.
        assert_eq!(p.bytes, 40);
    }

    #[test]
    fn nothing_goes_without_a_snapshot_before_the_window() {
        let now = SystemTime::now();
        let g = Generation(1);
        let objects = vec![ltx("a", 0, 1, 1, 500, now), ltx("b", 0, 2, 2, 400, now), ltx("s", 9, 1, 2, 5, now)];
        assert_eq!(plan(&[listed(g.0, Origin::New, objects)], g, MIN * 60, now), Plan::default());
    }

    #[test]
    fn older_ancestors_go_whole_once_outside_the_window_and_forks_never() {
        let now = SystemTime::now();
        let old = listed(1, Origin::New, vec![manifest("1/m", 300, now), ltx("1/a", 0, 1, 4, 200, now)]);
        let recent = listed(2, from(1, 4), vec![manifest("2/m", 100, now), ltx("2/a", 0, 1, 6, 30, now)]);
        let current = listed(3, from(2, 6), vec![manifest("3/m", 20, now), ltx("3/a", 0, 1, 6, 20, now)]);
        let fork = listed(4, from(3, 2), vec![manifest("4/m", 500, now), ltx("4/a", 0, 1, 2, 500, now)]);
        let p = plan(&[old, recent, current, fork], Generation(3), MIN * 60, now);
        assert_eq!(p.keys, vec!["1/a", "1/m"]);
        assert_eq!(p.earliest, None);
    }

    /// Generations 2 (a fork of 1 under the alert policy) and 4 (rolled back from: 5 continues
    /// 4 at an earlier point than its end) stay however old they are; 1 and 3 end exactly where
    /// their successors continued and go; 6 has no readable manifest and stays.
    #[test]
    fn forks_and_rolled_back_from_generations_stay() {
        let now = SystemTime::now();
        let gens = vec![
            listed(1, Origin::New, vec![manifest("1/m", 900, now), ltx("1/a", 0, 1, 4, 900, now)]),
            listed(2, from(1, 3), vec![manifest("2/m", 800, now), ltx("2/a", 0, 1, 5, 800, now)]),
            listed(3, from(1, 4), vec![manifest("3/m", 700, now), ltx("3/a", 0, 1, 8, 700, now)]),
            listed(4, from(3, 8), vec![manifest("4/m", 600, now), ltx("4/a", 0, 1, 12, 600, now)]),
            listed(6, Origin::Unknown, vec![manifest("6/m", 500, now), ltx("6/a", 0, 1, 1, 500, now)]),
            listed(7, from(4, 10), vec![manifest("7/m", 400, now), ltx("7/a", 0, 1, 14, 10, now)]),
        ];
        let p = plan(&gens, Generation(7), MIN * 60, now);
        assert_eq!(p.keys, vec!["1/a", "1/m", "3/a", "3/m"]);
    }

    /// A writer killed while copying its base left a generation that reaches no point of its
    /// own: nothing restorable is in it, so it goes once old, lineage or not.
    #[test]
    fn a_generation_holding_nothing_of_its_own_goes_once_old() {
        let now = SystemTime::now();
        let gens = vec![
            listed(1, Origin::New, vec![manifest("1/m", 900, now), ltx("1/a", 0, 1, 9, 900, now)]),
            listed(2, from(1, 9), vec![manifest("2/m", 800, now), ltx("2/a", 0, 1, 4, 800, now)]),
            listed(3, from(1, 9), vec![manifest("3/m", 20, now), ltx("3/a", 0, 1, 9, 20, now)]),
        ];
        let p = plan(&gens, Generation(3), MIN * 60, now);
        assert_eq!(p.keys, vec!["1/a", "1/m", "2/a", "2/m"]);
    }
}
