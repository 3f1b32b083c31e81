//! Compaction: merge consecutive LTX files into one that holds, for every page touched, its
//! state after the last input. A streaming k-way merge by page number: memory is one page
//! per input, whatever the files' sizes.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::ltx::{self, Decoder, Encoder, Header};

struct Input {
    dec: Decoder<BufReader<File>>,
    pgno: Option<u32>,
    buf: Vec<u8>,
}

impl Input {
    fn advance(&mut self) -> Result<()> {
        self.pgno = self.dec.next_page(&mut self.buf)?;
        Ok(())
    }
}

/// Merges `inputs` (in transaction order, contiguous) into `out`; returns the output header
/// and its size in bytes.
pub fn merge(inputs: &[&Path], out: &Path) -> Result<(Header, u64)> {
    if inputs.is_empty() {
        bail!("nothing to compact");
    }
    let mut ins = Vec::with_capacity(inputs.len());
    for p in inputs {
        let f = File::open(p).with_context(|| format!("open {}", p.display()))?;
        let dec = Decoder::new(BufReader::new(f)).with_context(|| format!("read {}", p.display()))?;
        let buf = vec![0u8; dec.header().page_size as usize];
        ins.push(Input { dec, pgno: None, buf });
    }
    for w in ins.windows(2) {
        let (a, b) = (w[0].dec.header(), w[1].dec.header());
        if b.min_txid > a.max_txid + 1 || b.max_txid <= a.max_txid || a.page_size != b.page_size {
            bail!("inputs are not contiguous: {}-{} then {}-{}", a.min_txid, a.max_txid, b.min_txid, b.max_txid);
        }
    }
    let (first, last) = (*ins[0].dec.header(), *ins[ins.len() - 1].dec.header());
    let header = Header {
        flags: ltx::HEADER_FLAG_NO_CHECKSUM,
        page_size: first.page_size,
        commit: last.commit,
        min_txid: first.min_txid,
        max_txid: last.max_txid,
        timestamp_ms: last.timestamp_ms,
        ..Header::default()
    };
    let file = File::create(out).with_context(|| format!("create {}", out.display()))?;
    let mut enc = Encoder::new(BufWriter::new(file), header)?;
    for i in ins.iter_mut() {
        i.advance()?;
    }
    while let Some(pgno) = ins.iter().filter_map(|i| i.pgno).min() {
        // The newest input holding this page wins; every input at this page moves on.
        let newest = ins.iter().rposition(|i| i.pgno == Some(pgno)).context("merge cursor")?;
        if pgno <= header.commit {
            enc.encode_page(pgno, &ins[newest].buf)?;
        }
        for i in ins.iter_mut().filter(|i| i.pgno == Some(pgno)) {
            i.advance()?;
        }
    }
    for i in ins {
        i.dec.finish()?;
    }
    let (w, _) = enc.finish(0)?;
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    Ok((header, f.metadata()?.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, min: u64, max: u64, commit: u32, pages: &[(u32, u8)]) {
        let h = Header {
            flags: ltx::HEADER_FLAG_NO_CHECKSUM,
            page_size: 512,
            commit,
            min_txid: min,
            max_txid: max,
            timestamp_ms: max as i64,
            ..Header::default()
        };
        let mut enc = Encoder::new(BufWriter::new(File::create(path).expect("create")), h).expect("enc");
        for (p, v) in pages {
            enc.encode_page(*p, &[*v; 512]).expect("page");
        }
        enc.finish(0).expect("finish");
    }

    #[test]
    fn newest_page_wins_and_pages_past_the_final_size_are_dropped() {
        let d = tempfile::tempdir().expect("tmp");
        let (a, b, c, out) = (d.path().join("a"), d.path().join("b"), d.path().join("c"), d.path().join("o"));
        write(&a, 1, 1, 3, &[(1, 1), (2, 1), (3, 1)]);
        write(&b, 2, 2, 4, &[(2, 2), (4, 2)]);
        write(&c, 3, 3, 3, &[(1, 3)]);
        let (h, _) = merge(&[&a, &b, &c], &out).expect("merge");
        assert_eq!((h.min_txid, h.max_txid, h.commit), (1, 3, 3));
        let (_, pages, _) = ltx::decode_all(&std::fs::read(&out).expect("read")).expect("decode");
        let got: Vec<(u32, u8)> = pages.iter().map(|(p, d)| (*p, d[0])).collect();
        assert_eq!(got, vec![(1, 3), (2, 2), (3, 1)]);
    }

    #[test]
    fn gaps_are_refused() {
        let d = tempfile::tempdir().expect("tmp");
        let (a, b, out) = (d.path().join("a"), d.path().join("b"), d.path().join("o"));
        write(&a, 1, 1, 1, &[(1, 1)]);
        write(&b, 3, 3, 1, &[(1, 2)]);
        assert!(merge(&[&a, &b], &out).is_err());
    }
}
