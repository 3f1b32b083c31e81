//! Rolling per-page checksums of a database: the LTX database checksum kept current page by
//! page, so each transaction's post-apply checksum costs only the pages it changed.

use crate::ltx;

/// Per-page checksums (8 bytes a page) and their XOR.
pub struct PageSums {
    sums: Vec<u64>,
    total: u64,
    lock_pgno: u32,
}

impl PageSums {
    pub fn new(page_size: u32) -> Self {
        PageSums { sums: Vec::new(), total: 0, lock_pgno: ltx::lock_pgno(page_size) }
    }
    pub fn set(&mut self, pgno: u32, sum: u64) {
        if pgno == self.lock_pgno {
            return;
        }
        let i = (pgno - 1) as usize;
        if self.sums.len() <= i {
            self.sums.resize(i + 1, 0);
        }
        self.total ^= self.sums[i] ^ sum;
        self.sums[i] = sum;
    }
    pub fn truncate(&mut self, commit: u32) {
        while self.sums.len() > commit as usize {
            if let Some(s) = self.sums.pop() {
                self.total ^= s;
            }
        }
    }
    pub fn lock_pgno(&self) -> u32 {
        self.lock_pgno
    }
    pub fn checksum(&self) -> u64 {
        ltx::CHECKSUM_FLAG | self.total
    }
}
