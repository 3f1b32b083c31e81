//! LTX files (superfly/ltx format v3, as Litestream 0.5 writes them).
//!
//! An LTX file is a 100-byte header, a block of LZ4-compressed pages (each
//! framed by a 6-byte page header and a 4-byte compressed size), a zero page
//! header ending the block, a varint page index, and a 16-byte trailer holding
//! the database checksum after the file is applied and a CRC-64 of the file.
//!
//! Layout (byte compatible with `github.com/superfly/ltx` v0.5.2):
//! - [`header`]: the header and trailer frames, validation and page-order rules.
//! - [`checksum`]: CRC-64/GO-ISO and the rolling database checksum.
//! - [`encoder`]: a streaming writer that never buffers the file.
//! - [`decoder`]: a streaming reader that verifies everything it reads.

mod checksum;
mod decoder;
mod encoder;
mod header;

#[cfg(test)]
mod tests;

pub use checksum::{checksum_page, crc64_iso, DatabaseChecksum};
pub use decoder::{decode_all, Decoder};
pub use encoder::Encoder;
pub use header::{lock_pgno, Header, Trailer};

/// Size of the header frame at the start of every LTX file.
pub const HEADER_SIZE: usize = 100;
/// Size of the trailer frame at the end of every LTX file.
pub const TRAILER_SIZE: usize = 16;
/// Size of the header in front of every page frame (pgno u32, flags u16).
pub const PAGE_HEADER_SIZE: usize = 6;
/// Set on every checksum so a valid checksum is never zero.
pub const CHECKSUM_FLAG: u64 = 1 << 63;
/// Header flag: the file does not track database checksums.
pub const HEADER_FLAG_NO_CHECKSUM: u32 = 1 << 1;
/// Page header flag: a u32 compressed size follows and the data is an LZ4 block.
pub const PAGE_FLAG_SIZE: u16 = 1;
/// The first four bytes of every LTX file.
pub const MAGIC: &[u8; 4] = b"LTX1";
/// The largest SQLite page size.
pub const MAX_PAGE_SIZE: u32 = 65536;

/// Everything that can go wrong reading or writing an LTX file.
#[derive(Debug, thiserror::Error)]
pub enum LtxError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("bad magic {found:02x?}: not an ltx file (expected \"LTX1\")")]
    BadMagic { found: [u8; 4] },
    #[error("invalid ltx header: {0}")]
    InvalidHeader(String),
    #[error("invalid ltx trailer: {0}")]
    InvalidTrailer(String),
    #[error("invalid page header for page {pgno}: flags {flags:#06x}")]
    InvalidPageHeader { pgno: u32, flags: u16 },
    #[error(
        "page {pgno} uses the legacy lz4 frame format (flags 0), which is not supported; \
         re-create the file with ltx v0.5+"
    )]
    LegacyPageFormat { pgno: u32 },
    #[error("page {pgno} out of order after page {prev}: {reason}")]
    PageOrder { prev: u32, pgno: u32, reason: &'static str },
    #[error("page {pgno} is beyond the commit size of {commit} pages")]
    PageOutOfBounds { pgno: u32, commit: u32 },
    #[error("page {pgno} is the sqlite lock page and is never stored in ltx files")]
    LockPage { pgno: u32 },
    #[error("snapshot ends at page {last} but the commit size requires page {expected}")]
    IncompleteSnapshot { last: u32, expected: u32 },
    #[error("page buffer is {actual} bytes, expected the page size of {expected}")]
    PageBufferSize { actual: usize, expected: u32 },
    #[error("page {pgno}: compressed size {size} exceeds the lz4 bound {max} for the page size")]
    CompressedSizeTooLarge { pgno: u32, size: u32, max: usize },
    #[error("compress page: {0}")]
    Compress(String),
    #[error("decompress page: {0}")]
    Decompress(String),
    #[error("invalid page index: {0}")]
    InvalidPageIndex(String),
    #[error("file checksum mismatch: trailer has {expected:#018x}, contents hash to {actual:#018x}")]
    FileChecksumMismatch { expected: u64, actual: u64 },
    #[error("post-apply checksum mismatch: trailer has {expected:#018x}, snapshot pages give {actual:#018x}")]
    PostApplyChecksumMismatch { expected: u64, actual: u64 },
    #[error("truncated ltx file")]
    Truncated,
    #[error("unexpected data after the ltx trailer")]
    TrailingData,
    #[error("ltx {0}")]
    InvalidState(&'static str),
}

/// The object name of an LTX file covering `min_txid..=max_txid`.
pub fn filename(min_txid: u64, max_txid: u64) -> String {
    format!("{min_txid:016x}-{max_txid:016x}.ltx")
}

/// Parses `{min:016x}-{max:016x}.ltx` (lowercase hex only, nothing else).
pub fn parse_filename(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_suffix(".ltx")?;
    let (min, max) = rest.split_once('-')?;
    Some((parse_txid(min)?, parse_txid(max)?))
}

fn parse_txid(s: &str) -> Option<u64> {
    let lower_hex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
    if s.len() != 16 || !s.as_bytes().iter().all(lower_hex) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}
