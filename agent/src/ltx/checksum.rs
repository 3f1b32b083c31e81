//! CRC-64 (Go's `hash/crc64` ISO table) and the rolling database checksum.

use crc_fast::{CrcAlgorithm, Digest};

use super::CHECKSUM_FLAG;

/// A streaming CRC-64/GO-ISO hasher (carry-less multiplication where the CPU has it: checksums
/// of every page and every file are a large part of a restore's CPU).
pub(super) type Hasher = Digest;

/// A fresh streaming CRC-64/GO-ISO hasher.
pub(super) fn hasher() -> Hasher {
    Digest::new(CrcAlgorithm::Crc64GoIso)
}

/// CRC-64/GO-ISO of `data`, unflagged (Go's `crc64.Checksum(data, ISO table)`).
pub fn crc64_iso(data: &[u8]) -> u64 {
    crc_fast::checksum(CrcAlgorithm::Crc64GoIso, data)
}

/// The checksum of one database page: CRC-64 of the big-endian page number
/// followed by the page bytes, with [`CHECKSUM_FLAG`] set.
pub fn checksum_page(pgno: u32, data: &[u8]) -> u64 {
    let mut digest = hasher();
    digest.update(&pgno.to_be_bytes());
    digest.update(data);
    CHECKSUM_FLAG | digest.finalize()
}

/// The rolling checksum of a whole database: the flag bit OR the XOR of the
/// checksums of every page except the lock page. XOR makes it incremental:
/// toggling a page's old contents out and its new contents in updates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatabaseChecksum(u64);

impl Default for DatabaseChecksum {
    /// The checksum of an empty database.
    fn default() -> Self {
        DatabaseChecksum(CHECKSUM_FLAG)
    }
}

impl DatabaseChecksum {
    /// Resumes from a known checksum (e.g. a header's pre-apply checksum).
    pub fn from_value(value: u64) -> Self {
        DatabaseChecksum(value | CHECKSUM_FLAG)
    }

    /// XORs a page in (adding it) or out (removing its previous contents).
    pub fn xor_page(&mut self, pgno: u32, data: &[u8]) {
        self.0 = CHECKSUM_FLAG | (self.0 ^ checksum_page(pgno, data));
    }

    pub fn value(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_go_iso_check_value() {
        assert_eq!(crc64_iso(b"123456789"), 0xb909_56c7_75a4_1001);
        let mut d = hasher();
        d.update(b"1234");
        d.update(b"56789");
        assert_eq!(d.finalize(), 0xb909_56c7_75a4_1001);
    }

    #[test]
    fn page_checksum_covers_pgno_and_is_flagged() {
        let page = [7u8; 512];
        let c1 = checksum_page(1, &page);
        assert_ne!(c1 & CHECKSUM_FLAG, 0);
        assert_ne!(c1, checksum_page(2, &page));
        let mut raw = 1u32.to_be_bytes().to_vec();
        raw.extend_from_slice(&page);
        assert_eq!(c1, CHECKSUM_FLAG | crc64_iso(&raw));
    }

    #[test]
    fn database_checksum_xors_pages_in_and_out() {
        let empty = DatabaseChecksum::default();
        assert_eq!(empty.value(), CHECKSUM_FLAG);
        let (a, b) = ([1u8; 512], [2u8; 512]);
        let mut sum = empty;
        sum.xor_page(1, &a);
        sum.xor_page(2, &b);
        let expected = CHECKSUM_FLAG | (checksum_page(1, &a) ^ checksum_page(2, &b));
        assert_eq!(sum.value(), expected);
        sum.xor_page(1, &a);
        sum.xor_page(2, &b);
        assert_eq!(sum, empty);
    }
}
