//! Header and trailer frames, and the page-order rules shared by the encoder
//! and the decoder.

use super::{LtxError, CHECKSUM_FLAG, HEADER_FLAG_NO_CHECKSUM, HEADER_SIZE, MAGIC, MAX_PAGE_SIZE, TRAILER_SIZE};

/// The byte offset of SQLite's lock byte range (`PENDING_BYTE`).
const PENDING_BYTE: u32 = 0x4000_0000;

/// The page holding SQLite's lock bytes; it never appears in an LTX file.
pub fn lock_pgno(page_size: u32) -> u32 {
    PENDING_BYTE / page_size.max(1) + 1
}

/// The fixed-size frame at the start of an LTX file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Header {
    pub flags: u32,
    pub page_size: u32,
    /// Database size in pages after the transaction(s) in this file.
    pub commit: u32,
    pub min_txid: u64,
    pub max_txid: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Database checksum before this file is applied (zero for snapshots).
    pub pre_apply_checksum: u64,
    pub wal_offset: i64,
    pub wal_size: i64,
    pub wal_salt1: u32,
    pub wal_salt2: u32,
    pub node_id: u64,
}

impl Header {
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&self.flags.to_be_bytes());
        b[8..12].copy_from_slice(&self.page_size.to_be_bytes());
        b[12..16].copy_from_slice(&self.commit.to_be_bytes());
        b[16..24].copy_from_slice(&self.min_txid.to_be_bytes());
        b[24..32].copy_from_slice(&self.max_txid.to_be_bytes());
        b[32..40].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        b[40..48].copy_from_slice(&self.pre_apply_checksum.to_be_bytes());
        b[48..56].copy_from_slice(&self.wal_offset.to_be_bytes());
        b[56..64].copy_from_slice(&self.wal_size.to_be_bytes());
        b[64..68].copy_from_slice(&self.wal_salt1.to_be_bytes());
        b[68..72].copy_from_slice(&self.wal_salt2.to_be_bytes());
        b[72..80].copy_from_slice(&self.node_id.to_be_bytes());
        b
    }

    /// Parses a header frame. Checks the magic but not the field rules; call
    /// [`Header::validate`] for those.
    pub fn from_bytes(b: &[u8]) -> Result<Header, LtxError> {
        let b: &[u8; HEADER_SIZE] = b.get(..HEADER_SIZE).and_then(|s| s.try_into().ok()).ok_or(LtxError::Truncated)?;
        let magic = [b[0], b[1], b[2], b[3]];
        if &magic != MAGIC {
            return Err(LtxError::BadMagic { found: magic });
        }
        Ok(Header {
            flags: be_u32(b, 4),
            page_size: be_u32(b, 8),
            commit: be_u32(b, 12),
            min_txid: be_u64(b, 16),
            max_txid: be_u64(b, 24),
            timestamp_ms: be_u64(b, 32) as i64,
            pre_apply_checksum: be_u64(b, 40),
            wal_offset: be_u64(b, 48) as i64,
            wal_size: be_u64(b, 56) as i64,
            wal_salt1: be_u32(b, 64),
            wal_salt2: be_u32(b, 68),
            node_id: be_u64(b, 72),
        })
    }

    /// A snapshot holds the whole database: it starts at transaction 1.
    pub fn is_snapshot(&self) -> bool {
        self.min_txid == 1
    }

    /// True when the file does not track database checksums.
    pub fn no_checksum(&self) -> bool {
        self.flags & HEADER_FLAG_NO_CHECKSUM != 0
    }

    /// The lock page for this header's page size.
    pub fn lock_pgno(&self) -> u32 {
        lock_pgno(self.page_size)
    }

    /// Checks the same rules as ltx's `Header.Validate`.
    pub fn validate(&self) -> Result<(), LtxError> {
        let invalid = |msg: String| Err(LtxError::InvalidHeader(msg));
        if self.flags & !HEADER_FLAG_NO_CHECKSUM != 0 {
            return invalid(format!("unknown flags {:#010x}", self.flags));
        }
        if !is_valid_page_size(self.page_size) {
            return invalid(format!("page size {} is not a power of two in 512..=65536", self.page_size));
        }
        if self.min_txid == 0 {
            return invalid("minimum transaction id is zero".into());
        }
        if self.max_txid == 0 {
            return invalid("maximum transaction id is zero".into());
        }
        if self.min_txid > self.max_txid {
            return invalid(format!("transaction ids out of order: min {} > max {}", self.min_txid, self.max_txid));
        }
        if self.wal_offset < 0 {
            return invalid(format!("negative wal offset {}", self.wal_offset));
        }
        if self.wal_size < 0 {
            return invalid(format!("negative wal size {}", self.wal_size));
        }
        if (self.wal_salt1 != 0 || self.wal_salt2 != 0) && self.wal_offset == 0 {
            return invalid("wal salt set without a wal offset".into());
        }
        if self.wal_offset == 0 && self.wal_size != 0 {
            return invalid("wal size set without a wal offset".into());
        }
        if self.is_snapshot() {
            if self.pre_apply_checksum != 0 {
                return invalid("snapshot has a pre-apply checksum".into());
            }
        } else if self.no_checksum() {
            if self.pre_apply_checksum != 0 {
                return invalid("pre-apply checksum set on a file without checksums".into());
            }
        } else if self.pre_apply_checksum == 0 {
            return invalid("non-snapshot file has no pre-apply checksum".into());
        } else if self.pre_apply_checksum & CHECKSUM_FLAG == 0 {
            return invalid(format!(
                "pre-apply checksum {:#018x} lacks the checksum flag bit",
                self.pre_apply_checksum
            ));
        }
        Ok(())
    }
}

/// The fixed-size frame at the end of an LTX file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// Database checksum after this file is applied.
    pub post_apply_checksum: u64,
    /// CRC-64 of the file up to this field, with [`CHECKSUM_FLAG`] set.
    pub file_checksum: u64,
}

impl Trailer {
    pub fn to_bytes(&self) -> [u8; TRAILER_SIZE] {
        let mut b = [0u8; TRAILER_SIZE];
        b[0..8].copy_from_slice(&self.post_apply_checksum.to_be_bytes());
        b[8..16].copy_from_slice(&self.file_checksum.to_be_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Result<Trailer, LtxError> {
        let b: &[u8; TRAILER_SIZE] =
            b.get(..TRAILER_SIZE).and_then(|s| s.try_into().ok()).ok_or(LtxError::Truncated)?;
        Ok(Trailer { post_apply_checksum: be_u64(b, 0), file_checksum: be_u64(b, 8) })
    }

    /// Checks the same rules as ltx's `Trailer.Validate`.
    pub fn validate(&self, header: &Header) -> Result<(), LtxError> {
        let invalid = |msg: &str| Err(LtxError::InvalidTrailer(msg.to_string()));
        if header.no_checksum() {
            if self.post_apply_checksum != 0 {
                return invalid("post-apply checksum set on a file without checksums");
            }
        } else if self.post_apply_checksum == 0 {
            return invalid("post-apply checksum is zero");
        } else if self.post_apply_checksum & CHECKSUM_FLAG == 0 {
            return invalid("post-apply checksum lacks the checksum flag bit");
        }
        if self.file_checksum & CHECKSUM_FLAG == 0 {
            return invalid("file checksum lacks the checksum flag bit");
        }
        Ok(())
    }
}

fn is_valid_page_size(size: u32) -> bool {
    (512..=MAX_PAGE_SIZE).contains(&size) && size.is_power_of_two()
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Where the next page may go, given the previous one (`prev`, 0 before the
/// first page). Snapshots hold every page from 1 to the commit size except the
/// lock page; other files hold any pages in strictly increasing order.
pub(super) fn check_page_order(
    snapshot: bool,
    lock_pgno: u32,
    commit: u32,
    prev: u32,
    pgno: u32,
) -> Result<(), LtxError> {
    if pgno == 0 {
        return Err(LtxError::PageOrder { prev, pgno, reason: "page numbers start at 1" });
    }
    if pgno > commit {
        return Err(LtxError::PageOutOfBounds { pgno, commit });
    }
    if pgno == lock_pgno {
        return Err(LtxError::LockPage { pgno });
    }
    let order = |reason| Err(LtxError::PageOrder { prev, pgno, reason });
    if snapshot {
        if prev == 0 && pgno != 1 {
            return order("a snapshot must start with page 1");
        }
        let expected =
            if prev.checked_add(1) == Some(lock_pgno) { prev.saturating_add(2) } else { prev.saturating_add(1) };
        if prev != 0 && pgno != expected {
            return order("a snapshot must hold every page in sequence except the lock page");
        }
    } else if pgno <= prev {
        return order("pages must be in strictly increasing order");
    }
    Ok(())
}

/// After the last page of a snapshot: it must have reached the commit size.
pub(super) fn check_snapshot_complete(lock_pgno: u32, commit: u32, last: u32) -> Result<(), LtxError> {
    let expected = if commit == lock_pgno { commit.saturating_sub(1) } else { commit };
    if last != expected {
        return Err(LtxError::IncompleteSnapshot { last, expected });
    }
    Ok(())
}
