//! Restore: find the history that reaches the requested point, plan the files from one
//! generation's listing (never a bucket-wide LIST), apply them, verify, and move the result
//! into place atomically. The output path is never touched unless everything succeeded.

mod apply;
mod output;
pub mod plan;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use proto::model::{Generation, Txid};

use crate::layout::{self, LtxObject};
use crate::manifest::Manifest;
use crate::object_store::{Backend, ObjectStore};

pub use apply::Applied;
pub use output::rename_noreplace;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Latest,
    Txid(Txid),
    Timestamp(DateTime<Utc>),
    /// Exactly this transaction of this generation (a rollback's chosen point), without
    /// walking the lineage.
    At(Generation, Txid),
}

/// What a replica URL points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A database root holding generations.
    Root(Vec<Generation>),
    /// One generation prefix, or a Litestream replica (LTX levels without generations).
    Single,
}

pub async fn resolve(store: &ObjectStore) -> Result<Option<Source>> {
    let top = store.list("", Some("/")).await.context("list replica root")?;
    let gens = layout::generations(&top);
    if !gens.is_empty() {
        return Ok(Some(Source::Root(gens)));
    }
    let single = top.objects.iter().any(|o| o.key == layout::MANIFEST)
        || top.common_prefixes.iter().any(|p| match store.backend() {
            Backend::S3 => p.len() == 5 && p[..4].bytes().all(|b| b.is_ascii_hexdigit()),
            Backend::File => p == "ltx/",
        });
    Ok(single.then_some(Source::Single))
}

/// The newest point of the lineage: the newest generation whose history is complete (reaches
/// at least its base), its newest transaction and files. A generation that holds nothing of its
/// own yet continues from the point its manifest names (after a rollback, an older point of
/// its parent than the parent's end), so the walk back stops there.
pub async fn newest_history(
    store: &ObjectStore,
    gens: &[Generation],
) -> Result<Option<(Generation, Txid, Vec<LtxObject>)>> {
    let (mut next, mut cap) = (gens.last().copied(), None);
    for _ in 0..=gens.len() {
        let Some(g) = next else { break };
        let manifest = Manifest::load(store, g).await?;
        let files = list_generation(store, &layout::generation_prefix(g)).await?;
        let base = manifest.as_ref().map(|m| m.base_txid).unwrap_or(Txid::ZERO);
        if let Some(latest) = plan::latest(&files) {
            let txid = cap.map_or(latest, |c: Txid| c.min(latest));
            if txid >= base {
                return Ok(Some((g, txid, files)));
            }
        }
        (next, cap) = step_back(manifest.as_ref(), gens, g);
    }
    Ok(None)
}

/// One step back along a lineage: the generation's parent and the point it continued from, or,
/// when its manifest names none, the next older generation on disk (its newest point).
fn step_back(manifest: Option<&Manifest>, gens: &[Generation], g: Generation) -> (Option<Generation>, Option<Txid>) {
    match manifest.and_then(|m| m.parent.as_ref()) {
        Some(p) => (Some(p.generation), Some(p.position.txid)),
        None => (gens.iter().rev().find(|x| **x < g).copied(), None),
    }
}

pub async fn list_generation(store: &ObjectStore, base: &str) -> Result<Vec<LtxObject>> {
    let listing = store
        .list(base, None)
        .await
        .with_context(|| format!("list {}", if base.is_empty() { "replica" } else { base }))?;
    Ok(layout::ltx_objects(&store.backend(), base, &listing))
}

/// The chosen history: a base prefix, its files, and the plan through them.
#[derive(Debug)]
pub struct Chosen {
    pub base: String,
    pub generation: Option<Generation>,
    pub plan: Vec<LtxObject>,
}

impl Chosen {
    pub fn txid(&self) -> Txid {
        self.plan.last().map(|f| f.max).unwrap_or(Txid::ZERO)
    }
}

/// Picks the generation and files that restore `target`.
pub async fn choose(store: &ObjectStore, target: Target) -> Result<Chosen> {
    let Some(source) = resolve(store).await? else {
        bail!("no replica found at {}: it holds neither generations nor LTX files", store.describe());
    };
    let gens = match source {
        Source::Single => {
            let files = list_generation(store, "").await?;
            let plan = plan_for(store, "", &files, target).await?;
            return Ok(Chosen { base: String::new(), generation: None, plan });
        }
        Source::Root(gens) => gens,
    };
    if let Target::At(g, txid) = target {
        if !gens.contains(&g) {
            bail!("generation {g} does not exist under {}", store.describe());
        }
        let base = layout::generation_prefix(g);
        let files = list_generation(store, &base).await?;
        let plan = plan::plan(&base, &files, Some(txid))
            .with_context(|| format!("transaction {} of generation {g} is not restorable", txid.0))?;
        return Ok(Chosen { base, generation: Some(g), plan });
    }
    // Walk back along the lineage of the newest generation that has any history.
    // A parent reached through a generation that holds nothing yet restores, as "latest", the
    // point that generation continued from (a rollback's point, not the parent's end).
    let (mut next, mut cap): (Option<Generation>, Option<Txid>) = (gens.last().copied(), None);
    let mut last_err: Option<anyhow::Error> = None;
    for _ in 0..=gens.len() {
        let Some(g) = next else { break };
        let base = layout::generation_prefix(g);
        let manifest = Manifest::load(store, g).await?;
        let here = cap;
        (next, cap) = step_back(manifest.as_ref(), &gens, g);
        let files = list_generation(store, &base).await?;
        if files.is_empty() {
            continue;
        }
        let base_txid = manifest.as_ref().map(|m| m.base_txid).unwrap_or(Txid::ZERO);
        let want = match (target, here) {
            (Target::Latest, Some(c)) if plan::latest(&files).is_some_and(|l| l > c) => Target::Txid(c),
            _ => target,
        };
        match plan_for(store, &base, &files, want).await {
            // A writer killed while copying its base leaves a generation that ends before
            // its own starting point: it holds nothing its parent does not.
            Ok(plan) if plan.last().map(|f| f.max).unwrap_or(Txid::ZERO) < base_txid => continue,
            Ok(plan) => return Ok(Chosen { base, generation: Some(g), plan }),
            Err(e) => {
                if target == Target::Latest {
                    return Err(e);
                }
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no generation under {} holds any history", store.describe())))
}

async fn plan_for(store: &ObjectStore, base: &str, files: &[LtxObject], target: Target) -> Result<Vec<LtxObject>> {
    let txid = match target {
        Target::Latest => None,
        Target::Txid(t) | Target::At(_, t) => Some(t),
        Target::Timestamp(ts) => Some(txid_at(store, files, ts).await?),
    };
    Ok(plan::plan(base, files, txid)?)
}

/// The newest transaction boundary at or before `ts`, found by binary search over the files'
/// headers (timestamps grow with transaction IDs), one ranged GET per probe.
async fn txid_at(store: &ObjectStore, files: &[LtxObject], ts: DateTime<Utc>) -> Result<Txid> {
    let mut ends: Vec<&LtxObject> = files.iter().collect();
    ends.sort_by_key(|f| (f.max, std::cmp::Reverse(f.level)));
    ends.dedup_by_key(|f| f.max);
    let want = ts.timestamp_millis();
    let (mut lo, mut hi) = (0usize, ends.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        let f = ends[mid];
        let b = store
            .get_range(&f.key, 0, crate::ltx::HEADER_SIZE as u64)
            .await
            .with_context(|| format!("read header of {}", f.key))?;
        let h = crate::ltx::Header::from_bytes(&b).with_context(|| format!("object {} is not an LTX file", f.key))?;
        if h.timestamp_ms <= want {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if lo == 0 {
        bail!("no restore point at or before {}", ts.to_rfc3339());
    }
    Ok(ends[lo - 1].max)
}

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub output: PathBuf,
    pub target: Target,
    pub if_db_not_exists: bool,
    pub if_replica_exists: bool,
    pub integrity_check: bool,
    /// The URL the replica was opened from: recorded beside the restored database so that an
    /// agent replicating it later can prove it descends from the replica.
    pub replica_url: Option<String>,
}

#[derive(Debug)]
pub enum RestoreOutcome {
    Restored { applied: Applied, generation: Option<Generation> },
    SkippedDbExists,
    SkippedNoReplica,
}

pub async fn restore(store: Arc<ObjectStore>, opts: &RestoreOptions) -> Result<RestoreOutcome> {
    // A symlink counts as existing, even a dangling one: it is never replaced either.
    if output::occupied(&opts.output) {
        if opts.if_db_not_exists {
            return Ok(RestoreOutcome::SkippedDbExists);
        }
        bail!("output {} already exists; restore never overwrites a file", opts.output.display());
    }
    if opts.if_replica_exists && resolve(&store).await?.is_none() {
        return Ok(RestoreOutcome::SkippedNoReplica);
    }
    let chosen = choose(&store, opts.target).await?;
    if let Some(dir) = opts.output.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
    }
    // A name of this restore's own: another restore's temporary file (or anything else) beside
    // the output is left alone.
    let tmp = Arc::new(output::TempOutput::create(&opts.output)?);
    let result = async {
        let file = Arc::new(tmp.file.try_clone().context("duplicate the restore's file descriptor")?);
        let applied = apply::apply(store.clone(), chosen.plan, file.clone()).await?;
        // The check only reads the file, so it runs while the file's pages are written back.
        let sync = tokio::task::spawn_blocking(move || file.sync_all().context("fsync restored database"));
        let (t, check) = (tmp.clone(), opts.integrity_check);
        let check = tokio::task::spawn_blocking(move || if check { t.check_by_name(integrity_check) } else { Ok(()) });
        let (synced, checked) = tokio::join!(sync, check);
        checked.context("integrity check task")??;
        synced.context("fsync task")??;
        Ok::<_, anyhow::Error>(applied)
    }
    .await;
    let applied = match result {
        Ok(a) => a,
        Err(e) => {
            tmp.discard();
            return Err(e);
        }
    };
    // Fails, replacing nothing, if anything appeared at the output meanwhile.
    tmp.install(&opts.output)?;
    if let Some(dir) = opts.output.parent() {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        std::fs::File::open(dir).and_then(|d| d.sync_all()).context("fsync output directory")?;
    }
    // The notes that let an agent continue this history: the latest point, or a rollback's.
    let continues = matches!(opts.target, Target::Latest | Target::At(..));
    if let (Some(url), Some(g), true) = (&opts.replica_url, chosen.generation, continues) {
        let st = crate::replicate::state::LocalState {
            replica: url.clone(),
            generation: g,
            txid: applied.txid,
            checksum: format!("{:016x}", applied.checksum),
            cursor: None,
        };
        crate::replicate::state::save(&opts.output, &st).context("record restored position")?;
    }
    Ok(RestoreOutcome::Restored { applied, generation: chosen.generation })
}

/// `PRAGMA integrity_check` on a database file, read-only so nothing next to it changes.
/// (A WAL-mode header makes a read-only open look for a -wal file; `immutable` avoids that.)
pub fn integrity_check(path: &Path) -> Result<()> {
    let c = rusqlite::Connection::open_with_flags(
        output::sqlite_uri(path, "immutable=1"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
            | rusqlite::OpenFlags::SQLITE_OPEN_URI
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("open {} for integrity check", path.display()))?;
    let mut stmt = c.prepare("PRAGMA integrity_check")?;
    let rows: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    if rows != ["ok"] {
        bail!("integrity check of the restored database failed: {}", rows.join("; "));
    }
    Ok(())
}
