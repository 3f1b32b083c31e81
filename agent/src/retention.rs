//! Retention: which objects of a replica can go while every point of the last `keep` stays
//! restorable. Pure planning over listings, shared by the agent (which deletes, after the
//! controller validated its generation: fencing rule 4) and `walfleet retention --dry-run`
//! (which shows the same list).
//!
//! Within the writer's current generation, the newest level-9 snapshot written before the
//! window (`now - keep`) becomes the earliest restore point: every file it covers entirely goes.
//! Without such a snapshot nothing in the generation goes. An older generation goes as a whole
//! once nothing in it is younger than the window: each generation starts with a copy of its
//! base, so the current one restores without it. Generations newer than the current one
//! (another writer's fork) are never touched.

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use proto::model::{Generation, Txid};

use crate::layout::{self, SNAPSHOT_LEVEL};
use crate::object_store::ObjectStore;

/// One object of a generation's listing.
#[derive(Clone, Debug)]
pub struct Object {
    pub key: String,
    pub size: u64,
    pub modified: Option<SystemTime>,
    /// Level and TXID range when the object is an LTX file.
    pub ltx: Option<(u8, Txid, Txid)>,
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
pub fn plan(generations: &[(Generation, Vec<Object>)], current: Generation, keep: Duration, now: SystemTime) -> Plan {
    let cutoff = now.checked_sub(keep).unwrap_or(SystemTime::UNIX_EPOCH);
    let before_cutoff = |o: &Object| o.modified.is_some_and(|m| m < cutoff);
    let mut out = Plan::default();
    for (g, objects) in generations {
        if *g < current {
            if !objects.is_empty() && objects.iter().all(before_cutoff) {
                for o in objects {
                    out.keys.push(o.key.clone());
                    out.bytes += o.size;
                }
            }
            continue;
        }
        if *g != current {
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

/// Lists every generation under the replica root, for [`plan`].
pub async fn list(store: &ObjectStore) -> Result<Vec<(Generation, Vec<Object>)>> {
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
        out.push((g, objects));
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
        let p = plan(&[(g, objects)], g, MIN * 60, now);
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
        assert_eq!(plan(&[(g, objects)], g, MIN * 60, now), Plan::default());
    }

    #[test]
    fn older_generations_go_whole_once_outside_the_window_and_forks_never() {
        let now = SystemTime::now();
        let old = (Generation(1), vec![manifest("1/m", 300, now), ltx("1/a", 0, 1, 4, 200, now)]);
        let recent = (Generation(2), vec![manifest("2/m", 100, now), ltx("2/a", 0, 1, 6, 30, now)]);
        let current = (Generation(3), vec![manifest("3/m", 20, now), ltx("3/a", 0, 1, 6, 20, now)]);
        let fork = (Generation(4), vec![manifest("4/m", 500, now), ltx("4/a", 0, 1, 2, 500, now)]);
        let p = plan(&[old, recent, current, fork], Generation(3), MIN * 60, now);
        assert_eq!(p.keys, vec!["1/a", "1/m"]);
        assert_eq!(p.earliest, None);
    }
}
