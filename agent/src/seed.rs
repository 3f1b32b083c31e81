//! Seeding a new lineage from a database file: the whole database as transaction 1 of a fresh
//! generation (one level-9 LTX file and a sealed manifest). Used to clone a restored database
//! into another database's replica (`walfleet restore --into`).

use std::fs::File;
use std::io::{BufWriter, Read};
use std::path::Path;

use anyhow::{bail, Context, Result};
use chrono::Utc;
use proto::model::{Generation, Txid};

use crate::layout::{self, SNAPSHOT_LEVEL};
use crate::ltx::{self, Encoder, Header};
use crate::manifest::{self, Manifest, Writer};
use crate::object_store::{ObjectStore, PutOptions};
use crate::pages::PageSums;

/// What a seeded generation holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seeded {
    pub txid: Txid,
    pub checksum: u64,
    pub pages: u32,
    pub page_size: u32,
}

/// Encodes the database file `db` (no WAL beside it) as one snapshot LTX file at `out`.
pub fn encode(db: &Path, out: &Path) -> Result<Seeded> {
    let mut f = File::open(db).with_context(|| format!("open {}", db.display()))?;
    let len = f.metadata()?.len();
    let mut head = [0u8; 100];
    f.read_exact(&mut head).with_context(|| format!("{} is not a SQLite database", db.display()))?;
    if &head[..16] != b"SQLite format 3\0" {
        bail!("{} is not a SQLite database", db.display());
    }
    let page_size = match u16::from_be_bytes([head[16], head[17]]) {
        1 => 65536,
        n => u32::from(n),
    };
    if page_size < 512 || !page_size.is_power_of_two() || len % u64::from(page_size) != 0 {
        bail!("{}: size {len} is not a whole number of {page_size}-byte pages", db.display());
    }
    let pages = (len / u64::from(page_size)) as u32;
    let header = Header {
        flags: ltx::HEADER_FLAG_NO_CHECKSUM,
        page_size,
        commit: pages,
        min_txid: 1,
        max_txid: 1,
        timestamp_ms: Utc::now().timestamp_millis(),
        pre_apply_checksum: 0,
        ..Header::default()
    };
    let file = File::create(out).with_context(|| format!("create {}", out.display()))?;
    let mut enc = Encoder::new(BufWriter::new(file), header).context("start ltx file")?;
    let mut sums = PageSums::new(page_size);
    let mut f = File::open(db)?;
    let mut page = vec![0u8; page_size as usize];
    for pgno in 1..=pages {
        f.read_exact(&mut page).with_context(|| format!("read page {pgno} of {}", db.display()))?;
        if pgno == sums.lock_pgno() {
            continue;
        }
        sums.set(pgno, ltx::checksum_page(pgno, &page));
        enc.encode_page(pgno, &page)?;
    }
    enc.finish(0).context("finish ltx file")?;
    Ok(Seeded { txid: Txid(1), checksum: sums.checksum(), pages, page_size })
}

/// Writes `db` as generation `generation` of the replica in `store`: a manifest claimed first
/// (so an existing generation is never overwritten), the snapshot, then the manifest sealed
/// at transaction 1.
pub async fn seed(store: &ObjectStore, generation: Generation, db: &Path, writer: Writer) -> Result<Seeded> {
    let mut name = db.as_os_str().to_owned();
    name.push(".seed.ltx");
    let file = std::path::PathBuf::from(name);
    let (d, f) = (db.to_path_buf(), file.clone());
    let result = async {
        let seeded = tokio::task::spawn_blocking(move || encode(&d, &f)).await??;
        upload(store, generation, &file, seeded, writer).await
    }
    .await;
    let _ = std::fs::remove_file(&file);
    result
}

async fn upload(
    store: &ObjectStore,
    generation: Generation,
    file: &Path,
    seeded: Seeded,
    writer: Writer,
) -> Result<Seeded> {
    let mut m = Manifest {
        format: manifest::FORMAT,
        generation,
        parent: None,
        base_txid: Txid::ZERO,
        page_size: seeded.page_size,
        writer,
        created_at: Utc::now(),
        sealed: None,
        sealed_at: None,
        reason: Some("clone".into()),
    };
    let conditional =
        store.probe_conditional_writes(&format!(".walfleet-probe-{}", generation.0)).await.unwrap_or(false);
    let etag = m.claim(store, conditional).await.with_context(|| format!("claim generation {}", generation.0))?;
    let key =
        layout::ltx_key(&store.backend(), &layout::generation_prefix(generation), SNAPSHOT_LEVEL, Txid(1), Txid(1));
    store.put_file(&key, file, &PutOptions::if_none_match()).await.with_context(|| format!("upload {key}"))?;
    m.sealed = Some(manifest::Position::new(seeded.txid, seeded.checksum));
    m.sealed_at = Some(Utc::now());
    m.update(store, etag.as_deref()).await.context("seal the manifest")?;
    Ok(seeded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_every_page_of_a_database() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("a.db");
        let c = rusqlite::Connection::open(&db).expect("open");
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t SELECT randomblob(3000) FROM generate_series(1, 50);")
            .or_else(|_| {
                c.execute_batch(
                    "CREATE TABLE IF NOT EXISTS t(x); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n \
                     WHERE i < 50) INSERT INTO t SELECT randomblob(3000) FROM n;",
                )
            })
            .expect("fill");
        drop(c);
        let out = dir.path().join("a.ltx");
        let s = encode(&db, &out).expect("encode");
        assert_eq!(s.pages as u64 * s.page_size as u64, std::fs::metadata(&db).expect("len").len());
        let bytes = std::fs::read(&out).expect("read");
        let h = Header::from_bytes(&bytes).expect("header");
        assert_eq!((h.min_txid, h.max_txid, h.commit), (1, 1, s.pages));
        let garbage = dir.path().join("g.db");
        std::fs::write(
            &garbage,
            b"not a database at all, not even close to 100 bytes long............................",
        )
        .expect("write");
        assert!(encode(&garbage, &dir.path().join("g.ltx")).is_err());
    }
}
