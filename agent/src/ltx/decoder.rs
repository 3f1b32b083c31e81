//! Streaming LTX reader.

use std::io::{self, BufReader, Read};

use super::checksum::{hasher, DatabaseChecksum};
use super::encoder::put_uvarint;
use super::header::{check_page_order, check_snapshot_complete};
use super::{Header, LtxError, Trailer, CHECKSUM_FLAG, HEADER_SIZE, PAGE_FLAG_SIZE, PAGE_HEADER_SIZE, TRAILER_SIZE};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Pages,
    /// The end marker was read; the index and trailer remain.
    Index,
    /// A read failed part way through a frame; the stream position is unknown.
    Failed,
}

/// Reads an LTX file from any byte stream, one page at a time.
///
/// Everything read is checked: the header rules, page order, compressed
/// sizes, the page index against the pages actually read, the file checksum
/// and, for snapshots that track checksums, the post-apply checksum. Memory is
/// one compressed page plus a small read buffer, whatever the file size.
pub struct Decoder<R: Read> {
    r: BufReader<R>,
    header: Header,
    lock_pgno: u32,
    state: State,
    hash: super::checksum::Hasher,
    read: u64,
    prev_pgno: u32,
    /// Present when this is a snapshot whose post-apply checksum we verify.
    db_checksum: Option<DatabaseChecksum>,
    /// Hash and length of the page index the pages read so far imply.
    expected_index: super::checksum::Hasher,
    expected_index_len: u64,
    compressed: Vec<u8>,
}

impl<R: Read> Decoder<R> {
    /// Reads and validates the header.
    pub fn new(r: R) -> Result<Self, LtxError> {
        let mut r = BufReader::new(r);
        let mut bytes = [0u8; HEADER_SIZE];
        read_exact(&mut r, &mut bytes)?;
        let header = Header::from_bytes(&bytes)?;
        header.validate()?;
        let mut hash = hasher();
        hash.update(&bytes);
        let max_compressed = lz4_flex::block::get_maximum_output_size(header.page_size as usize);
        Ok(Decoder {
            r,
            header,
            lock_pgno: header.lock_pgno(),
            state: State::Pages,
            hash,
            read: HEADER_SIZE as u64,
            prev_pgno: 0,
            db_checksum: (header.is_snapshot() && !header.no_checksum()).then(DatabaseChecksum::default),
            expected_index: hasher(),
            expected_index_len: 0,
            compressed: vec![0; max_compressed],
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Bytes consumed from the stream so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// Reads the next page into `buf` (exactly one page long) and returns its
    /// page number, or `Ok(None)` once the end of the page block is reached.
    pub fn next_page(&mut self, buf: &mut [u8]) -> Result<Option<u32>, LtxError> {
        match self.state {
            State::Pages => {}
            State::Index => return Ok(None),
            State::Failed => {
                return Err(LtxError::InvalidState("decoder failed on an earlier page and cannot continue"))
            }
        }
        if buf.len() != self.header.page_size as usize {
            return Err(LtxError::PageBufferSize { actual: buf.len(), expected: self.header.page_size });
        }
        self.state = State::Failed;
        let page = self.read_page(buf)?;
        self.state = if page.is_some() { State::Pages } else { State::Index };
        Ok(page)
    }

    fn read_page(&mut self, buf: &mut [u8]) -> Result<Option<u32>, LtxError> {
        let offset = self.read;
        let mut page_header = [0u8; PAGE_HEADER_SIZE];
        self.read_hashed(&mut page_header)?;
        let pgno = u32::from_be_bytes([page_header[0], page_header[1], page_header[2], page_header[3]]);
        let flags = u16::from_be_bytes([page_header[4], page_header[5]]);
        if pgno == 0 && flags == 0 {
            if self.header.is_snapshot() {
                check_snapshot_complete(self.lock_pgno, self.header.commit, self.prev_pgno)?;
            }
            return Ok(None);
        }
        if pgno != 0 && flags == 0 {
            return Err(LtxError::LegacyPageFormat { pgno });
        }
        if pgno == 0 || flags != PAGE_FLAG_SIZE {
            return Err(LtxError::InvalidPageHeader { pgno, flags });
        }
        check_page_order(self.header.is_snapshot(), self.lock_pgno, self.header.commit, self.prev_pgno, pgno)?;

        let mut size = [0u8; 4];
        self.read_hashed(&mut size)?;
        let size = u32::from_be_bytes(size);
        let max = self.compressed.len();
        let compressed =
            self.compressed.get_mut(..size as usize).ok_or(LtxError::CompressedSizeTooLarge { pgno, size, max })?;
        read_exact(&mut self.r, compressed)?;
        self.read += u64::from(size);
        let n = lz4_flex::block::decompress_into(compressed, buf)
            .map_err(|e| LtxError::Decompress(format!("page {pgno}: {e}")))?;
        if n != buf.len() {
            return Err(LtxError::Decompress(format!(
                "page {pgno}: decompressed to {n} bytes, expected the page size of {}",
                buf.len()
            )));
        }
        // The file checksum covers the uncompressed page, not the lz4 bytes.
        self.hash.update(buf);

        let mut entry = Vec::with_capacity(30);
        put_uvarint(&mut entry, u64::from(pgno));
        put_uvarint(&mut entry, offset);
        put_uvarint(&mut entry, self.read - offset);
        self.expected_index.update(&entry);
        self.expected_index_len += entry.len() as u64;

        if let Some(sum) = &mut self.db_checksum {
            sum.xor_page(pgno, buf);
        }
        self.prev_pgno = pgno;
        Ok(Some(pgno))
    }

    /// Reads the page index and trailer and verifies the file: the index
    /// matches the pages read, nothing follows the trailer, the file checksum
    /// matches, and a snapshot's post-apply checksum equals its pages' checksum.
    /// Call after [`Decoder::next_page`] returned `Ok(None)`.
    pub fn finish(mut self) -> Result<Trailer, LtxError> {
        if self.state != State::Index {
            return Err(LtxError::InvalidState("finish called before the end of the page block"));
        }

        // Page index: (pgno, offset, size) varint triples in pgno order, a zero
        // pgno, then the index length. Re-encode what we read and compare it to
        // what the pages imply, so memory stays constant.
        let index_start = self.read;
        let mut actual_index = hasher();
        let mut actual_index_len = 0u64;
        let mut prev = 0u64;
        loop {
            let pgno = self.read_uvarint()?;
            if pgno == 0 {
                break;
            }
            let offset = self.read_uvarint()?;
            let size = self.read_uvarint()?;
            if pgno <= prev || pgno > u64::from(u32::MAX) {
                return Err(LtxError::InvalidPageIndex(format!("page {pgno} listed after page {prev}")));
            }
            prev = pgno;
            let mut entry = Vec::with_capacity(30);
            for v in [pgno, offset, size] {
                put_uvarint(&mut entry, v);
            }
            actual_index.update(&entry);
            actual_index_len += entry.len() as u64;
        }
        let index_len = self.read - index_start;
        let mut declared = [0u8; 8];
        self.read_hashed(&mut declared)?;
        let declared = u64::from_be_bytes(declared);
        if declared != index_len {
            return Err(LtxError::InvalidPageIndex(format!(
                "declared length {declared} but the index is {index_len} bytes"
            )));
        }
        let index_matches =
            actual_index_len == self.expected_index_len && actual_index.finalize() == self.expected_index.finalize();

        let mut trailer_bytes = [0u8; TRAILER_SIZE];
        read_exact(&mut self.r, &mut trailer_bytes)?;
        self.read += TRAILER_SIZE as u64;
        self.hash.update(&trailer_bytes[..8]);
        let trailer = Trailer::from_bytes(&trailer_bytes)?;
        if !at_eof(&mut self.r)? {
            return Err(LtxError::TrailingData);
        }

        let actual = CHECKSUM_FLAG | self.hash.finalize();
        if actual != trailer.file_checksum {
            return Err(LtxError::FileChecksumMismatch { expected: trailer.file_checksum, actual });
        }
        if !index_matches {
            return Err(LtxError::InvalidPageIndex("entries do not match the pages in the file".into()));
        }
        trailer.validate(&self.header)?;
        if let Some(sum) = self.db_checksum {
            if sum.value() != trailer.post_apply_checksum {
                return Err(LtxError::PostApplyChecksumMismatch {
                    expected: trailer.post_apply_checksum,
                    actual: sum.value(),
                });
            }
        }
        Ok(trailer)
    }

    fn read_hashed(&mut self, buf: &mut [u8]) -> Result<(), LtxError> {
        read_exact(&mut self.r, buf)?;
        self.hash.update(buf);
        self.read += buf.len() as u64;
        Ok(())
    }

    /// Reads a Go `binary.ReadUvarint` varint (at most 10 bytes, no overflow).
    fn read_uvarint(&mut self) -> Result<u64, LtxError> {
        let mut value = 0u64;
        for i in 0..10 {
            let mut byte = [0u8; 1];
            self.read_hashed(&mut byte)?;
            let b = byte[0];
            if b < 0x80 {
                if i == 9 && b > 1 {
                    break;
                }
                return Ok(value | u64::from(b) << (7 * i));
            }
            value |= u64::from(b & 0x7f) << (7 * i);
        }
        Err(LtxError::InvalidPageIndex("varint overflows 64 bits".into()))
    }
}

/// Decodes and verifies a whole in-memory LTX file.
#[allow(clippy::type_complexity)]
pub fn decode_all(bytes: &[u8]) -> Result<(Header, Vec<(u32, Vec<u8>)>, Trailer), LtxError> {
    let mut dec = Decoder::new(bytes)?;
    let header = *dec.header();
    let mut pages = Vec::new();
    let mut buf = vec![0u8; header.page_size as usize];
    while let Some(pgno) = dec.next_page(&mut buf)? {
        pages.push((pgno, buf.clone()));
    }
    let trailer = dec.finish()?;
    Ok((header, pages, trailer))
}

fn read_exact(r: &mut impl Read, buf: &mut [u8]) -> Result<(), LtxError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => LtxError::Truncated,
        _ => LtxError::Io(e),
    })
}

fn at_eof(r: &mut impl Read) -> Result<bool, LtxError> {
    let mut byte = [0u8; 1];
    loop {
        match r.read(&mut byte) {
            Ok(n) => return Ok(n == 0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(LtxError::Io(e)),
        }
    }
}
