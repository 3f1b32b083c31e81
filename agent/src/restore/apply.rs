//! Applying a plan: fetch LTX files in parallel, write their pages into a temporary file in
//! order, verify every file checksum and the database checksum after each contiguous step,
//! then (in the caller) `integrity_check` beside the fsync, and rename into place.
//!
//! Memory is bounded independently of database size: small files are prefetched (at most
//! `PREFETCH` of them, each at most `PREFETCH_MAX_BYTES`), large ones are streamed page by
//! page when their turn comes, and the running checksum costs 8 bytes a page.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use proto::model::Txid;

use crate::layout::LtxObject;
use crate::ltx::{self, Decoder};
use crate::object_store::ObjectStore;
use crate::pages::PageSums;

const PREFETCH: usize = 4;
const PREFETCH_MAX_BYTES: u64 = 8 << 20;
/// A large file is read as ranges of this size, `RANGES_IN_FLIGHT` at a time: one stream from
/// a store is often slower than the restore can apply, several in parallel are not.
const RANGE: u64 = 2 << 20;
const RANGES_IN_FLIGHT: usize = 8;
/// Consecutive pages are written to the output in runs of up to this many bytes.
const WRITE_BATCH: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct Applied {
    pub txid: Txid,
    pub checksum: u64,
    pub page_size: u32,
    pub pages: u32,
    pub files: usize,
    pub bytes: u64,
}

enum Body {
    Fetched(Bytes),
    Stream,
}

/// Writes the database described by `plan` into `tmp` (created, must not exist). The caller
/// fsyncs it.
pub async fn apply(store: Arc<ObjectStore>, plan: Vec<LtxObject>, tmp: &Path) -> Result<Applied> {
    let out = OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .open(tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    let out = Arc::new(out);
    let fetches = futures::stream::iter(plan.iter().cloned().map(|obj| {
        let store = store.clone();
        async move {
            if obj.size <= PREFETCH_MAX_BYTES {
                let b = store
                    .get(&obj.key)
                    .await
                    .with_context(|| format!("fetch {} from {}", obj.key, store.describe()))?;
                Ok::<_, anyhow::Error>((obj, Body::Fetched(b)))
            } else {
                Ok((obj, Body::Stream))
            }
        }
    }))
    .buffered(PREFETCH);
    futures::pin_mut!(fetches);

    let mut state: Option<(PageSums, u32)> = None; // (sums, commit)
    let mut reached = Txid::ZERO;
    let mut checksummed = true;
    let mut bytes = 0u64;
    let mut files = 0usize;
    while let Some(item) = fetches.next().await {
        let (obj, body) = item?;
        bytes += obj.size;
        files += 1;
        let reader: Box<dyn Read + Send> = match body {
            Body::Fetched(b) => Box::new(std::io::Cursor::new(b)),
            Body::Stream => Box::new(Ranged::fetch(store.clone(), obj.key.clone(), obj.size)),
        };
        let out = out.clone();
        let key = obj.key.clone();
        let prev = state.take();
        let (sums, commit, header, trailer) =
            tokio::task::spawn_blocking(move || apply_one(&out, reader, prev, reached))
                .await
                .context("apply task")?
                .with_context(|| format!("object {key} in {}", store.describe()))?;
        if header.min_txid != obj.min.0 || header.max_txid != obj.max.0 {
            bail!(
                "object {} holds transactions {}-{} but its name says {}-{}",
                obj.key,
                header.min_txid,
                header.max_txid,
                obj.min,
                obj.max
            );
        }
        let no_checksum = header.flags & ltx::HEADER_FLAG_NO_CHECKSUM != 0;
        checksummed &= !no_checksum;
        if checksummed && sums.checksum() != trailer.post_apply_checksum {
            bail!(
                "database checksum after {} is {:016x} but the file says {:016x}: the replica is damaged",
                obj.key,
                sums.checksum(),
                trailer.post_apply_checksum
            );
        }
        reached = Txid(header.max_txid);
        state = Some((sums, commit));
    }
    let Some((sums, commit)) = state else { bail!("restore plan is empty") };
    let page_size = page_size_of(&out)?;
    out.set_len(u64::from(commit) * u64::from(page_size)).context("truncate restored database")?;
    Ok(Applied { txid: reached, checksum: sums.checksum(), page_size, pages: commit, files, bytes })
}

fn write_run(out: &File, pages: &[u8], first: u32, page_size: usize) -> std::io::Result<()> {
    if pages.is_empty() {
        return Ok(());
    }
    out.write_all_at(pages, u64::from(first - 1) * page_size as u64)
}

fn page_size_of(f: &File) -> Result<u32> {
    let mut h = [0u8; 2];
    f.read_exact_at(&mut h, 16).context("read restored page size")?;
    let v = u16::from_be_bytes(h);
    Ok(if v == 1 { 65536 } else { u32::from(v) })
}

type Step = (PageSums, u32, ltx::Header, ltx::Trailer);

fn apply_one(out: &File, reader: Box<dyn Read + Send>, prev: Option<(PageSums, u32)>, reached: Txid) -> Result<Step> {
    // Both readers hand out bytes already in memory: a BufReader would only copy them again.
    let mut dec = Decoder::new(reader)?;
    let h = *dec.header();
    let mut sums = match prev {
        None => {
            if h.min_txid != 1 {
                bail!("the first file of a restore must start at transaction 1, this one starts at {}", h.min_txid);
            }
            PageSums::new(h.page_size)
        }
        Some((sums, _)) => {
            if h.min_txid > reached.0 + 1 {
                bail!("transactions {}..{} are missing", reached.0 + 1, h.min_txid - 1);
            }
            if h.min_txid == reached.0 + 1
                && h.flags & ltx::HEADER_FLAG_NO_CHECKSUM == 0
                && h.pre_apply_checksum != sums.checksum()
            {
                bail!(
                    "file expects database checksum {:016x} before it but the restore has {:016x}",
                    h.pre_apply_checksum,
                    sums.checksum()
                );
            }
            sums
        }
    };
    // Pages are decoded straight into a batch; a run of consecutive page numbers (a snapshot is
    // one run) is written with one call instead of one per page.
    let ps = h.page_size as usize;
    let mut batch = vec![0u8; ps * (WRITE_BATCH / ps).max(1)];
    let (mut first, mut count) = (0u32, 0usize);
    loop {
        let slot = count * ps;
        let Some(pgno) = dec.next_page(&mut batch[slot..slot + ps])? else { break };
        sums.set(pgno, ltx::checksum_page(pgno, &batch[slot..slot + ps]));
        if count > 0 && pgno != first + count as u32 {
            write_run(out, &batch[..slot], first, ps)?;
            batch.copy_within(slot..slot + ps, 0);
            (first, count) = (pgno, 0);
        } else if count == 0 {
            first = pgno;
        }
        count += 1;
        if count * ps == batch.len() {
            write_run(out, &batch, first, ps)?;
            count = 0;
        }
    }
    write_run(out, &batch[..count * ps], first, ps)?;
    let trailer = dec.finish()?;
    sums.truncate(h.commit);
    Ok((sums, h.commit, h, trailer))
}

/// A large object read as consecutive ranges fetched in parallel, in order, with at most
/// `RANGES_IN_FLIGHT` ranges fetched ahead of the reader (the bound on its memory).
struct Ranged {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes>>,
    current: Bytes,
}

impl Ranged {
    /// Starts fetching `key`, whose stored size is `size` (an encrypted object's content is
    /// shorter: the first short range ends it).
    fn fetch(store: Arc<ObjectStore>, key: String, size: u64) -> Ranged {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            let ranges = futures::stream::iter(0..size.div_ceil(RANGE))
                .map(|i| {
                    let (store, key) = (store.clone(), key.clone());
                    async move {
                        store
                            .get_range(&key, i * RANGE, RANGE)
                            .await
                            .with_context(|| format!("fetch {key} from {}", store.describe()))
                    }
                })
                .buffered(RANGES_IN_FLIGHT);
            futures::pin_mut!(ranges);
            while let Some(range) = ranges.next().await {
                let last = range.as_ref().map_or(true, |b| (b.len() as u64) < RANGE);
                // The reader is gone (it failed): stop fetching.
                if tx.send(range).await.is_err() || last {
                    return;
                }
            }
        });
        Ranged { rx, current: Bytes::new() }
    }
}

impl Read for Ranged {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(std::io::Error::other(format!("{e:#}"))),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        bytes::Buf::advance(&mut self.current, n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object_store::{FileStore, PutOptions};

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
    }

    /// Reads `key` through `Ranged` on a blocking thread, as the restore does.
    async fn read_ranged(store: Arc<ObjectStore>, key: &str, size: u64) -> std::io::Result<Vec<u8>> {
        let mut reader = Ranged::fetch(store, key.to_string(), size);
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            reader.read_to_end(&mut out).map(|_| out)
        })
        .await
        .expect("reader task")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ranged_reads_whole_objects_plain_and_encrypted() {
        let dir = tempfile::tempdir().expect("tmp");
        let plain = Arc::new(ObjectStore::File(FileStore::new(dir.path().join("plain"))));
        let key: crate::object_store::EncryptionKey = "11".repeat(32).parse().expect("key");
        let sealed = Arc::new(ObjectStore::Encrypted(
            Box::new(ObjectStore::File(FileStore::new(dir.path().join("sealed")))),
            key,
        ));
        // A multiple of the range size, one byte over, and one short of it.
        for len in [3 * RANGE, 3 * RANGE + 1, 2 * RANGE - 1] {
            let data = pattern(len as usize);
            for store in [&plain, &sealed] {
                store.put("o", Bytes::from(data.clone()), &PutOptions::default()).await.expect("put");
                let stored = store.head("o").await.expect("head").expect("stored").size;
                let got = read_ranged(store.clone(), "o", stored).await.expect("read");
                assert!(got == data, "{len} bytes through {} read back differently", store.describe());
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missing_object_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Arc::new(ObjectStore::File(FileStore::new(dir.path().to_path_buf())));
        let err = read_ranged(store, "gone/0001.ltx", 3 * RANGE).await.expect_err("missing object");
        assert!(err.to_string().contains("gone/0001.ltx"), "{err}");
    }
}
