//! Reading SQLite WAL files directly: header, frames, salts and cumulative checksums.
//!
//! The format is SQLite's (<https://www.sqlite.org/fileformat2.html#walformat>): a 32-byte
//! header, then frames of a 24-byte header plus one page. A frame is part of the log only if
//! its salts equal the header's and its cumulative checksum matches; the log's committed
//! content ends at the last valid commit frame (a frame whose "database size" field is
//! non-zero). Everything after that is an unfinished or abandoned transaction, or leftovers
//! from before the log was restarted.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

pub const WAL_HEADER_SIZE: u64 = 32;
pub const FRAME_HEADER_SIZE: u64 = 24;
const MAGIC_LE: u32 = 0x377f_0682;
const MAGIC_BE: u32 = 0x377f_0683;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("read wal: {0}")]
    Io(#[from] io::Error),
    #[error("wal header has bad magic {0:#010x}")]
    BadMagic(u32),
    #[error("wal header checksum mismatch")]
    HeaderChecksum,
    #[error("wal header has unsupported page size {0}")]
    PageSize(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalHeader {
    pub big_endian_checksums: bool,
    pub page_size: u32,
    pub checkpoint_seq: u32,
    pub salt1: u32,
    pub salt2: u32,
    /// The cumulative checksum after the header; the first frame continues from it.
    pub checksum: (u32, u32),
}

impl WalHeader {
    /// Parses a header; `Ok(None)` when the file is shorter than a header (empty or truncated
    /// WAL, which SQLite treats as an empty log).
    pub fn read(file: &File) -> Result<Option<WalHeader>, WalError> {
        let mut b = [0u8; WAL_HEADER_SIZE as usize];
        match file.read_exact_at(&mut b, 0) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        Self::parse(&b).map(Some)
    }

    pub fn parse(b: &[u8; WAL_HEADER_SIZE as usize]) -> Result<WalHeader, WalError> {
        let magic = be32(&b[0..4]);
        let big_endian_checksums = match magic {
            MAGIC_LE => false,
            MAGIC_BE => true,
            other => return Err(WalError::BadMagic(other)),
        };
        let page_size = be32(&b[8..12]);
        let page_size = if page_size == 1 { 65536 } else { page_size };
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(WalError::PageSize(page_size));
        }
        let checksum = wal_checksum(big_endian_checksums, (0, 0), &b[0..24]);
        if checksum != (be32(&b[24..28]), be32(&b[28..32])) {
            return Err(WalError::HeaderChecksum);
        }
        Ok(WalHeader {
            big_endian_checksums,
            page_size,
            checkpoint_seq: be32(&b[12..16]),
            salt1: be32(&b[16..20]),
            salt2: be32(&b[20..24]),
            checksum,
        })
    }

    pub fn frame_size(&self) -> u64 {
        FRAME_HEADER_SIZE + u64::from(self.page_size)
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// SQLite's WAL checksum: over 32-bit words taken two at a time, in the byte order the
/// header's magic names.
pub fn wal_checksum(big_endian: bool, init: (u32, u32), data: &[u8]) -> (u32, u32) {
    let (mut s0, mut s1) = init;
    for pair in data.chunks_exact(8) {
        let (x0, x1) = if big_endian {
            (be32(&pair[0..4]), be32(&pair[4..8]))
        } else {
            (
                u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]),
                u32::from_le_bytes([pair[4], pair[5], pair[6], pair[7]]),
            )
        };
        s0 = s0.wrapping_add(x0).wrapping_add(s1);
        s1 = s1.wrapping_add(x1).wrapping_add(s0);
    }
    (s0, s1)
}

/// Where reading resumes: the offset of the next frame and the cumulative checksum that frame
/// must continue from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WalCursor {
    pub salt1: u32,
    pub salt2: u32,
    pub offset: u64,
    pub checksum: (u32, u32),
}

impl WalCursor {
    pub fn start(header: &WalHeader) -> WalCursor {
        WalCursor { salt1: header.salt1, salt2: header.salt2, offset: WAL_HEADER_SIZE, checksum: header.checksum }
    }
}

/// The committed frames found between a cursor and the log's last valid commit frame.
#[derive(Debug, Default)]
pub struct CommittedRange {
    /// Newest frame offset of every page written in the range (page data at offset + 24).
    pub pages: BTreeMap<u32, u64>,
    /// Database size in pages after the last commit.
    pub commit: u32,
    /// Number of commits (SQLite transactions) in the range.
    pub transactions: u64,
    /// Where the next read resumes.
    pub end: Option<WalCursor>,
    /// Bytes of WAL consumed.
    pub bytes: u64,
}

impl CommittedRange {
    pub fn is_empty(&self) -> bool {
        self.transactions == 0
    }
}

/// Reads frames from `cursor` to the last valid commit frame, validating salts and the
/// cumulative checksum. Stops early (at a commit boundary) once `max_bytes` have been read so
/// that one sync's memory and upload stay bounded. Frames of a transaction that has not
/// committed yet are left for the next read.
pub fn read_committed(
    file: &File,
    header: &WalHeader,
    cursor: WalCursor,
    max_bytes: u64,
) -> Result<CommittedRange, WalError> {
    let frame_size = header.frame_size();
    let file_len = file.metadata()?.len();
    let mut out = CommittedRange::default();
    let mut pending: Vec<(u32, u64)> = Vec::new();
    let mut checksum = cursor.checksum;
    let mut offset = cursor.offset;
    let mut frame = vec![0u8; frame_size as usize];
    // Checked: a cursor comes from the notes on disk, not only from this reader.
    while offset.checked_add(frame_size).is_some_and(|end| end <= file_len) {
        match file.read_exact_at(&mut frame, offset) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
        let salt1 = be32(&frame[8..12]);
        let salt2 = be32(&frame[12..16]);
        if salt1 != cursor.salt1 || salt2 != cursor.salt2 {
            break;
        }
        let c = wal_checksum(header.big_endian_checksums, checksum, &frame[0..8]);
        let c = wal_checksum(header.big_endian_checksums, c, &frame[FRAME_HEADER_SIZE as usize..]);
        if c != (be32(&frame[16..20]), be32(&frame[20..24])) {
            break;
        }
        checksum = c;
        let pgno = be32(&frame[0..4]);
        let commit = be32(&frame[4..8]);
        pending.push((pgno, offset));
        offset += frame_size;
        if commit != 0 {
            for (p, o) in pending.drain(..) {
                out.pages.insert(p, o);
            }
            out.commit = commit;
            out.transactions += 1;
            out.end = Some(WalCursor { salt1, salt2, offset, checksum });
            out.bytes = offset - cursor.offset;
            if out.bytes >= max_bytes {
                break;
            }
        }
    }
    Ok(out)
}

/// Bytes of committed frames after `cursor`, judged by frame headers only (salts and commit
/// markers, no checksums, no page reads): cheap enough for a lag metric on every wake-up. It can
/// overcount a torn tail; `read_committed` stays the authority on what gets shipped.
pub fn committed_bytes_estimate(file: &File, header: &WalHeader, cursor: WalCursor) -> Result<u64, WalError> {
    let frame_size = header.frame_size();
    let file_len = file.metadata()?.len();
    let (mut offset, mut committed) = (cursor.offset, cursor.offset);
    let mut fh = [0u8; FRAME_HEADER_SIZE as usize];
    // Checked: a cursor comes from the notes on disk, not only from this reader.
    while offset.checked_add(frame_size).is_some_and(|end| end <= file_len) {
        file.read_exact_at(&mut fh, offset)?;
        if be32(&fh[8..12]) != cursor.salt1 || be32(&fh[12..16]) != cursor.salt2 {
            break;
        }
        offset += frame_size;
        if be32(&fh[4..8]) != 0 {
            committed = offset;
        }
    }
    Ok(committed - cursor.offset)
}

/// Checks that the frame ending at `cursor.offset` is still the one the cursor was taken
/// after: same salts and the same cumulative checksum. False when the log was restarted or
/// rewritten since.
pub fn cursor_is_current(file: &File, header: &WalHeader, cursor: &WalCursor) -> Result<bool, WalError> {
    if header.salt1 != cursor.salt1 || header.salt2 != cursor.salt2 {
        return Ok(false);
    }
    if cursor.offset == WAL_HEADER_SIZE {
        return Ok(cursor.checksum == header.checksum);
    }
    let frame_size = header.frame_size();
    if cursor.offset < WAL_HEADER_SIZE + frame_size || file.metadata()?.len() < cursor.offset {
        return Ok(false);
    }
    let mut fh = [0u8; FRAME_HEADER_SIZE as usize];
    file.read_exact_at(&mut fh, cursor.offset - frame_size)?;
    Ok(be32(&fh[8..12]) == cursor.salt1
        && be32(&fh[12..16]) == cursor.salt2
        && (be32(&fh[16..20]), be32(&fh[20..24])) == cursor.checksum)
}

/// Reads the page stored in the frame at `frame_offset`.
pub fn read_frame_page(file: &File, frame_offset: u64, buf: &mut [u8]) -> Result<(), WalError> {
    file.read_exact_at(buf, frame_offset + FRAME_HEADER_SIZE)?;
    Ok(())
}

/// The parts of the wal-index header (the `-shm` file) that say where the log ends and how far
/// checkpoints have copied it. The wal-index is in the machine's byte order; SQLite keeps two
/// copies of its header and a reader trusts them only when they agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalIndex {
    /// The last valid frame of the log (0 for an empty log).
    pub max_frame: u32,
    pub salt1: u32,
    pub salt2: u32,
    /// Frames already copied into the database file by checkpoints.
    pub backfilled: u32,
}

/// Byte of the `-shm` file that SQLite locks to checkpoint: its lock bytes start at 120, the
/// write lock first, then the checkpoint lock.
const CHECKPOINT_LOCK_BYTE: i64 = 121;

/// Takes (`lock`) or lets go of SQLite's checkpoint lock with an open-file-description lock on
/// `shm` (which must be open for writing). Such a lock belongs to the descriptor, not the
/// process: it conflicts with SQLite's POSIX locks in this process too, and SQLite unlocking
/// its own does not release it. Returns false when someone else holds the lock now.
pub fn lock_checkpoints(shm: &File, lock: bool) -> std::io::Result<bool> {
    use nix::errno::Errno;
    use nix::fcntl::{fcntl, FcntlArg};
    use std::os::fd::AsRawFd;
    let l_type = if lock { libc::F_WRLCK } else { libc::F_UNLCK };
    let range = libc::flock {
        l_type: l_type as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: CHECKPOINT_LOCK_BYTE,
        l_len: 1,
        l_pid: 0,
    };
    match fcntl(shm.as_raw_fd(), FcntlArg::F_OFD_SETLK(&range)) {
        Ok(_) => Ok(true),
        Err(Errno::EAGAIN | Errno::EACCES) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Reads the wal-index header from the open `-shm` file; `Ok(None)` when it is not initialised
/// or its two header copies kept disagreeing (a writer was updating it each time).
///
/// The caller keeps `file` open for as long as it holds SQLite connections: closing any
/// descriptor of the `-shm` file drops every POSIX lock the process holds on it, and with
/// them the read marks of its SQLite connections.
pub fn read_wal_index(file: &File) -> Result<Option<WalIndex>, WalError> {
    let mut b = [0u8; 100];
    for _ in 0..64 {
        if file.read_at(&mut b, 0)? < b.len() {
            return Ok(None);
        }
        if b[..48] == b[48..96] {
            if b[12] == 0 {
                return Ok(None);
            }
            let u = |at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().expect("four bytes"));
            return Ok(Some(WalIndex { max_frame: u(16), salt1: u(32), salt2: u(36), backfilled: u(96) }));
        }
        std::thread::yield_now();
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal_path(dir: &std::path::Path) -> std::path::PathBuf {
        dir.join("t.db-wal")
    }

    fn open_db(dir: &std::path::Path) -> rusqlite::Connection {
        let c = rusqlite::Connection::open(dir.join("t.db")).expect("open");
        c.pragma_update(None, "journal_mode", "WAL").expect("wal");
        c.pragma_update(None, "wal_autocheckpoint", 0).expect("autockpt");
        c
    }

    #[test]
    fn reads_every_commit_sqlite_wrote() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = open_db(dir.path());
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES(1); INSERT INTO t VALUES(2);").expect("write");
        let f = File::open(wal_path(dir.path())).expect("wal");
        let h = WalHeader::read(&f).expect("hdr").expect("non-empty");
        let r = read_committed(&f, &h, WalCursor::start(&h), u64::MAX).expect("read");
        assert_eq!(r.transactions, 3);
        assert_eq!(r.commit, 2);
        let end = r.end.expect("end");
        assert_eq!(end.offset, f.metadata().expect("meta").len());
        assert!(cursor_is_current(&f, &h, &end).expect("current"));
        // Nothing more to read from the end.
        assert!(read_committed(&f, &h, end, u64::MAX).expect("read").is_empty());
        // The header-only estimate agrees with the validated read.
        assert_eq!(committed_bytes_estimate(&f, &h, WalCursor::start(&h)).expect("estimate"), r.bytes);
        assert_eq!(committed_bytes_estimate(&f, &h, end).expect("estimate"), 0);
    }

    #[test]
    fn an_uncommitted_tail_and_a_corrupt_frame_end_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = open_db(dir.path());
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES(1);").expect("write");
        let f = File::open(wal_path(dir.path())).expect("wal");
        let h = WalHeader::read(&f).expect("hdr").expect("non-empty");
        let full = read_committed(&f, &h, WalCursor::start(&h), u64::MAX).expect("read");
        assert_eq!(full.transactions, 2);
        // Flip one byte in the last frame's page: the last commit is no longer valid.
        let len = f.metadata().expect("meta").len();
        let w = std::fs::OpenOptions::new().write(true).open(wal_path(dir.path())).expect("open");
        w.write_all_at(&[0xff], len - 10).expect("corrupt");
        let cut = read_committed(&f, &h, WalCursor::start(&h), u64::MAX).expect("read");
        assert_eq!(cut.transactions, 1);
    }

    #[test]
    fn a_restarted_log_invalidates_the_cursor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = open_db(dir.path());
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES(1);").expect("write");
        let f = File::open(wal_path(dir.path())).expect("wal");
        let h = WalHeader::read(&f).expect("hdr").expect("non-empty");
        let end = read_committed(&f, &h, WalCursor::start(&h), u64::MAX).expect("read").end.expect("end");
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).expect("ckpt");
        c.execute_batch("INSERT INTO t VALUES(2);").expect("write");
        let h2 = WalHeader::read(&f).expect("hdr").expect("non-empty");
        assert_eq!(h2.salt1, h.salt1.wrapping_add(1));
        assert_eq!(h2.checkpoint_seq, h.checkpoint_seq.wrapping_add(1));
        assert!(!cursor_is_current(&f, &h2, &end).expect("check"));
    }

    #[test]
    fn max_bytes_stops_at_a_commit_boundary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = open_db(dir.path());
        c.execute_batch("CREATE TABLE t(x);").expect("write");
        for i in 0..10 {
            c.execute("INSERT INTO t VALUES(?1)", [i]).expect("insert");
        }
        let f = File::open(wal_path(dir.path())).expect("wal");
        let h = WalHeader::read(&f).expect("hdr").expect("non-empty");
        let first = read_committed(&f, &h, WalCursor::start(&h), 1).expect("read");
        assert_eq!(first.transactions, 1);
        let rest = read_committed(&f, &h, first.end.expect("end"), u64::MAX).expect("read");
        assert_eq!(rest.transactions, 10);
    }
}
