//! Applying a plan: fetch LTX files in parallel, write their pages into a temporary file in
//! order, verify every file checksum and the database checksum after each contiguous step,
//! then (in the caller) `integrity_check` beside the fsync, and rename into place.
//!
//! Memory is bounded independently of database size: small files are prefetched (at most
//! `PREFETCH` of them, each at most `PREFETCH_MAX_BYTES`), large ones are streamed page by
//! page when their turn comes, and the running checksum costs 8 bytes a page.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
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

/// Writes the database described by `plan` into `out`, a new empty file the caller created
/// (and fsyncs afterwards). The database's page size and final length come from the LTX
/// headers; page 1 must agree with them.
pub async fn apply(store: Arc<ObjectStore>, plan: Vec<LtxObject>, out: Arc<File>) -> Result<Applied> {
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

    let mut state: Option<(PageSums, u32, u32)> = None; // (sums, commit, page size)
    let mut last_key = String::new();
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
        state = Some((sums, commit, header.page_size));
        last_key = obj.key;
    }
    let Some((sums, commit, page_size)) = state else { bail!("restore plan is empty") };
    // Every page 1 written was checked against its file's header; this covers the file as a
    // whole (say, a plan whose files never wrote page 1).
    let stored = page_size_of(&out)?;
    if stored != page_size {
        bail!(
            "restored page 1 says the page size is {stored} but the LTX headers up to {last_key} in {} say {page_size}: \
             the replica is damaged",
            store.describe()
        );
    }
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
    Ok(page_size_field(h))
}

/// The page size SQLite's header field (bytes 16-17 of page 1) stands for.
fn page_size_field(h: [u8; 2]) -> u32 {
    let v = u16::from_be_bytes(h);
    if v == 1 {
        65536
    } else {
        u32::from(v)
    }
}

type Step = (PageSums, u32, ltx::Header, ltx::Trailer);

fn apply_one(
    out: &File,
    reader: Box<dyn Read + Send>,
    prev: Option<(PageSums, u32, u32)>,
    reached: Txid,
) -> Result<Step> {
    // Both readers hand out bytes already in memory: a BufReader would only copy them again.
    let mut dec = Decoder::new(reader)?;
    let h = *dec.header();
    if let Some((_, _, size)) = prev.as_ref().filter(|p| p.2 != h.page_size) {
        bail!("its header says the page size is {} but the files before it say {size}", h.page_size);
    }
    let mut sums = match prev {
        None => {
            if h.min_txid != 1 {
                bail!("the first file of a restore must start at transaction 1, this one starts at {}", h.min_txid);
            }
            PageSums::new(h.page_size)
        }
        Some((sums, _, _)) => {
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
        if pgno == 1 {
            let field = page_size_field([batch[slot + 16], batch[slot + 17]]);
            if field != h.page_size {
                bail!("its page 1 says the page size is {field} but its header says {}", h.page_size);
            }
        }
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
    use std::path::Path;

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

    /// A snapshot of `commit` pages of `page_size` bytes whose page 1 header field says
    /// `page1_field`, stored at `key`; returns its plan entry.
    async fn stored_snapshot(
        store: &ObjectStore,
        key: &str,
        page_size: u32,
        commit: u32,
        page1_field: u16,
    ) -> LtxObject {
        let header =
            ltx::Header { page_size, commit, min_txid: 1, max_txid: 1, timestamp_ms: 1, ..ltx::Header::default() };
        let mut enc = ltx::Encoder::new(Vec::new(), header).expect("encoder");
        let mut sums = PageSums::new(page_size);
        for pgno in 1..=commit {
            let mut data = vec![pgno as u8; page_size as usize];
            if pgno == 1 {
                data[..16].copy_from_slice(b"SQLite format 3\0");
                data[16..18].copy_from_slice(&page1_field.to_be_bytes());
            }
            sums.set(pgno, ltx::checksum_page(pgno, &data));
            enc.encode_page(pgno, &data).expect("encode page");
        }
        let (bytes, _) = enc.finish(sums.checksum()).expect("finish");
        let size = bytes.len() as u64;
        store.put(key, Bytes::from(bytes), &PutOptions::default()).await.expect("put");
        LtxObject { key: key.into(), level: 9, min: Txid(1), max: Txid(1), size }
    }

    async fn apply_into(store: Arc<ObjectStore>, plan: Vec<LtxObject>, dir: &Path) -> Result<(Applied, u64)> {
        let path = dir.join("out.db");
        let out = Arc::new(std::fs::File::options().read(true).write(true).create_new(true).open(&path)?);
        let applied = apply(store, plan, out.clone()).await?;
        Ok((applied, out.metadata()?.len()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_length_comes_from_the_ltx_header_and_page_1_must_agree() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Arc::new(ObjectStore::File(FileStore::new(dir.path().join("replica"))));
        let good = stored_snapshot(&store, "good.ltx", 1024, 3, 1024).await;
        let (applied, len) = apply_into(store.clone(), vec![good], dir.path()).await.expect("apply");
        assert_eq!((applied.page_size, applied.pages, len), (1024, 3, 3 * 1024));
        // Page 1 claims 4096-byte pages: the length must not become 3 x 4096, and the error
        // names the object.
        let bad = stored_snapshot(&store, "damaged.ltx", 1024, 3, 4096).await;
        std::fs::remove_file(dir.path().join("out.db")).expect("remove");
        let err = apply_into(store.clone(), vec![bad], dir.path()).await.expect_err("mismatched page size");
        let msg = format!("{err:#}");
        assert!(msg.contains("damaged.ltx") && msg.contains("page size"), "{msg}");
    }

    #[test]
    fn the_page_size_field_reads_one_as_65536() {
        assert_eq!(page_size_field(1u16.to_be_bytes()), 65536);
        assert_eq!(page_size_field(4096u16.to_be_bytes()), 4096);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missing_object_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Arc::new(ObjectStore::File(FileStore::new(dir.path().to_path_buf())));
        let err = read_ranged(store, "gone/0001.ltx", 3 * RANGE).await.expect_err("missing object");
        assert!(err.to_string().contains("gone/0001.ltx"), "{err}");
    }
}
