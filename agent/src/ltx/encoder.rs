//! Streaming LTX writer.

use std::io::Write;

use super::checksum::hasher;
use super::header::{check_page_order, check_snapshot_complete};
use super::{Header, LtxError, Trailer, CHECKSUM_FLAG, PAGE_FLAG_SIZE, PAGE_HEADER_SIZE};

/// Writes an LTX file page by page.
///
/// Memory is one compression buffer plus the page index (a few varint bytes
/// per page); the file itself is never buffered. Pages must arrive in the order
/// the format requires (see [`Encoder::encode_page`]).
pub struct Encoder<W: Write> {
    w: W,
    header: Header,
    lock_pgno: u32,
    hash: super::checksum::Hasher,
    written: u64,
    prev_pgno: u32,
    /// Encoded page index entries, in page order (which is pgno order).
    index: Vec<u8>,
    compressed: Vec<u8>,
    /// Set while a write is in flight; stays set if it failed half way.
    broken: bool,
}

impl<W: Write> Encoder<W> {
    /// Validates `header` and writes it.
    pub fn new(w: W, header: Header) -> Result<Self, LtxError> {
        header.validate()?;
        let page_size = header.page_size as usize;
        let mut enc = Encoder {
            w,
            header,
            lock_pgno: header.lock_pgno(),
            hash: hasher(),
            written: 0,
            prev_pgno: 0,
            index: Vec::new(),
            compressed: vec![0; lz4_flex::block::get_maximum_output_size(page_size)],
            broken: true,
        };
        enc.write_hashed(&header.to_bytes())?;
        enc.broken = false;
        Ok(enc)
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Bytes written to the underlying writer so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Compresses and writes one page. `data` must be exactly one page.
    ///
    /// Snapshots (min txid 1) take pages 1, 2, … up to the commit size,
    /// skipping the lock page; other files take any pages in strictly
    /// increasing order. No page may exceed the commit size or be the lock page.
    pub fn encode_page(&mut self, pgno: u32, data: &[u8]) -> Result<(), LtxError> {
        self.check_usable()?;
        if data.len() != self.header.page_size as usize {
            return Err(LtxError::PageBufferSize { actual: data.len(), expected: self.header.page_size });
        }
        check_page_order(self.header.is_snapshot(), self.lock_pgno, self.header.commit, self.prev_pgno, pgno)?;
        let size = lz4_flex::block::compress_into(data, &mut self.compressed)
            .map_err(|e| LtxError::Compress(format!("page {pgno}: {e}")))?;
        let size_field = u32::try_from(size).map_err(|_| LtxError::Compress(format!("page {pgno}: {size} bytes")))?;

        self.broken = true;
        let offset = self.written;
        let mut frame_header = [0u8; PAGE_HEADER_SIZE + 4];
        frame_header[0..4].copy_from_slice(&pgno.to_be_bytes());
        frame_header[4..6].copy_from_slice(&PAGE_FLAG_SIZE.to_be_bytes());
        frame_header[6..10].copy_from_slice(&size_field.to_be_bytes());
        self.write_hashed(&frame_header)?;
        // The file checksum covers the uncompressed page, not the lz4 bytes.
        self.w.write_all(&self.compressed[..size])?;
        self.hash.update(data);
        self.written += size as u64;
        self.broken = false;

        put_uvarint(&mut self.index, u64::from(pgno));
        put_uvarint(&mut self.index, offset);
        put_uvarint(&mut self.index, self.written - offset);
        self.prev_pgno = pgno;
        Ok(())
    }

    /// Writes the end of the page block, the page index and the trailer, then
    /// flushes. `post_apply_checksum` is the database checksum once this file
    /// is applied (0 if the header has the no-checksum flag).
    pub fn finish(mut self, post_apply_checksum: u64) -> Result<(W, Trailer), LtxError> {
        self.check_usable()?;
        if self.header.is_snapshot() {
            check_snapshot_complete(self.lock_pgno, self.header.commit, self.prev_pgno)?;
        }
        // Validate before writing anything; the flag bit stands in for the
        // file checksum, which always carries it.
        Trailer { post_apply_checksum, file_checksum: CHECKSUM_FLAG }.validate(&self.header)?;
        if self.header.commit == 0 && post_apply_checksum != CHECKSUM_FLAG {
            return Err(LtxError::InvalidTrailer(format!(
                "an empty database (commit 0) must have post-apply checksum {CHECKSUM_FLAG:#018x}, \
                 got {post_apply_checksum:#018x}"
            )));
        }

        self.broken = true;
        self.write_hashed(&[0u8; PAGE_HEADER_SIZE])?;
        let mut index = std::mem::take(&mut self.index);
        put_uvarint(&mut index, 0);
        self.write_hashed(&index)?;
        self.write_hashed(&(index.len() as u64).to_be_bytes())?;

        let post = post_apply_checksum.to_be_bytes();
        self.hash.update(&post);
        let trailer = Trailer { post_apply_checksum, file_checksum: CHECKSUM_FLAG | self.hash.finalize() };
        self.w.write_all(&trailer.to_bytes())?;
        self.w.flush()?;
        self.written += super::TRAILER_SIZE as u64;
        Ok((self.w, trailer))
    }

    fn check_usable(&self) -> Result<(), LtxError> {
        if self.broken {
            return Err(LtxError::InvalidState("encoder failed on an earlier write and cannot continue"));
        }
        Ok(())
    }

    fn write_hashed(&mut self, b: &[u8]) -> Result<(), LtxError> {
        self.w.write_all(b)?;
        self.hash.update(b);
        self.written += b.len() as u64;
        Ok(())
    }
}

/// Appends `v` as a Go `binary.AppendUvarint` (LEB128) varint.
pub(super) fn put_uvarint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(min: u64, commit: u32) -> Header {
        Header {
            page_size: 512,
            commit,
            min_txid: min,
            max_txid: min,
            pre_apply_checksum: if min == 1 { 0 } else { CHECKSUM_FLAG | 5 },
            ..Header::default()
        }
    }

    #[test]
    fn uvarint_matches_go_encoding() {
        let mut b = Vec::new();
        for v in [0u64, 1, 127, 128, 300, u64::MAX] {
            put_uvarint(&mut b, v);
        }
        let mut expected = vec![0x00, 0x01, 0x7f, 0x80, 0x01, 0xac, 0x02];
        expected.extend_from_slice(&[0xff; 9]);
        expected.push(0x01);
        assert_eq!(b, expected);
    }

    #[test]
    fn encoder_refuses_invalid_header_without_writing() {
        let mut out = Vec::new();
        let bad = Header { page_size: 1000, ..header(1, 1) };
        assert!(matches!(Encoder::new(&mut out, bad), Err(LtxError::InvalidHeader(_))));
        assert!(out.is_empty());
    }

    #[test]
    fn encoder_refuses_bad_pages() {
        let mut enc = Encoder::new(Vec::new(), header(2, 3)).expect("new encoder");
        assert!(matches!(
            enc.encode_page(1, &[0u8; 100]),
            Err(LtxError::PageBufferSize { actual: 100, expected: 512 })
        ));
        assert!(matches!(enc.encode_page(4, &[0u8; 512]), Err(LtxError::PageOutOfBounds { pgno: 4, commit: 3 })));
        enc.encode_page(2, &[0u8; 512]).expect("page 2");
        assert!(matches!(enc.encode_page(2, &[0u8; 512]), Err(LtxError::PageOrder { .. })));
        assert!(matches!(enc.encode_page(1, &[0u8; 512]), Err(LtxError::PageOrder { .. })));
        enc.encode_page(3, &[0u8; 512]).expect("page 3");
    }

    #[test]
    fn snapshot_must_be_complete_and_start_at_one() {
        let mut enc = Encoder::new(Vec::new(), header(1, 3)).expect("new encoder");
        assert!(matches!(enc.encode_page(2, &[1u8; 512]), Err(LtxError::PageOrder { .. })));
        enc.encode_page(1, &[1u8; 512]).expect("page 1");
        assert!(matches!(enc.encode_page(3, &[1u8; 512]), Err(LtxError::PageOrder { .. })));
        enc.encode_page(2, &[1u8; 512]).expect("page 2");
        assert!(matches!(enc.finish(CHECKSUM_FLAG | 1), Err(LtxError::IncompleteSnapshot { last: 2, expected: 3 })));
    }

    #[test]
    fn finish_validates_post_apply_checksum() {
        let enc = Encoder::new(Vec::new(), header(2, 1)).expect("new encoder");
        assert!(matches!(enc.finish(5), Err(LtxError::InvalidTrailer(_))));
        let enc = Encoder::new(Vec::new(), header(2, 0)).expect("new encoder");
        assert!(matches!(enc.finish(CHECKSUM_FLAG | 5), Err(LtxError::InvalidTrailer(_))));
        let enc = Encoder::new(Vec::new(), header(2, 0)).expect("new encoder");
        let (out, _) = enc.finish(CHECKSUM_FLAG).expect("deletion file");
        // header + end marker + index terminator + index size + trailer
        assert_eq!(out.len(), 100 + 6 + 1 + 8 + 16);
    }
}
