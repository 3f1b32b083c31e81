//! The SQLite side of replication: pin the WAL with a read transaction, turn newly committed
//! frames into LTX files, checkpoint on our own terms, and notice when continuity was lost.
//!
//! Everything here is blocking and runs on a blocking thread.
//!
//! Continuity rules (why a restarted WAL is or is not a loss):
//! - While our read transaction holds a read mark, SQLite cannot restart the WAL, so every
//!   frame stays readable until we have captured it.
//! - We hold SQLite's checkpoint lock (an open-file-description lock on the `-shm` file), so
//!   the app's own checkpoints give up at once; only ours copy the log into the database.
//! - Our final checkpoint runs under the write lock (`BEGIN IMMEDIATE`, tried again without
//!   sleeping: a busy app frees it only between transactions), after capturing everything,
//!   and we re-pin before releasing it. If that checkpoint backfilled the whole
//!   log, the next writer restarts the WAL once: salt-1 grows by one (SQLite takes it from
//!   the shared wal-index, so each restart adds exactly one). That restart is expected and
//!   nothing is lost.
//! - Any other change (other salts, a shorter file, a rewritten frame at our cursor) means
//!   frames may have been checkpointed behind our back: we write the whole database as the
//!   next transaction and say why.
//!
//! Files are written exactly as Litestream 0.5 writes them: flagged "no checksum", with zero
//! pre- and post-apply checksums (Litestream's own restore refuses files that carry them).
//! Each file is still covered by its CRC-64; the database checksum is kept here, page by
//! page, and recorded in the local state, the manifest seal and the metrics instead.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use proto::model::Txid;
use rusqlite::Connection;

use crate::ltx::{self, Encoder, Header};
use crate::pages::PageSums;
use crate::wal::{self, WalCursor, WalHeader};

/// Most WAL bytes turned into one LTX file; larger backlogs take several.
pub const MAX_CAPTURE_BYTES: u64 = 64 << 20;

/// Most uncaptured WAL bytes a checkpoint captures while it holds the app's write lock.
pub const CHECKPOINT_TAIL_BYTES: u64 = 16 << 20;

/// How long a checkpoint keeps trying for a lock the app may hold for a moment: the write lock,
/// or the checkpoint lock back after our own checkpoint. A writer that never pauses releases
/// the write lock between two transactions for microseconds only, and SQLite's busy handler
/// sleeps for milliseconds between its tries: it would never see those moments.
const LOCK_RETRY: Duration = Duration::from_millis(20);

/// How long after a checkpoint the pin waits for the app's next write to move into the new log.
const PIN_SETTLE: Duration = Duration::from_millis(50);

/// The agent's own connections wait this long for a lock through SQLite's busy handler.
const BUSY_TIMEOUT: Duration = Duration::from_millis(100);

/// One reading of the log: the file, its committed range and the database size it gives.
struct LogState {
    wal: Option<(File, WalHeader)>,
    range: Option<wal::CommittedRange>,
    commit: u32,
}

/// One captured transaction, staged on local disk until uploaded.
#[derive(Clone, Debug)]
pub struct Captured {
    pub txid: Txid,
    pub path: PathBuf,
    pub size: u64,
    pub timestamp_ms: i64,
    pub post_checksum: u64,
    pub commits: u64,
    pub full: bool,
    /// True when the capture stopped at the size bound with more committed WAL behind it.
    pub more: bool,
}

/// What the WAL and database look like right now, read without changing anything.
pub struct Scan {
    pub page_size: u32,
    pub commit: u32,
    pub checksum: u64,
    pub cursor: Option<WalCursor>,
}

/// Receives every page of a full read, in order.
type PageSink<'a> = dyn FnMut(u32, &[u8]) -> Result<()> + 'a;

pub struct Capture {
    /// Opened once and kept: closing any descriptor of the database file would drop every
    /// POSIX lock this process holds on it, SQLite's included.
    db_file: File,
    wal_path: PathBuf,
    staging: PathBuf,
    shm_path: PathBuf,
    pin: Connection,
    /// Takes the next pin while `pin` still holds the log, then the two swap.
    spare: Connection,
    writer: Connection,
    pinned: bool,
    /// The `-shm` file, opened once and kept, for the same reason as `db_file`.
    shm: Option<File>,
    /// Whether we hold SQLite's checkpoint lock, so the app's own checkpoints give up at once.
    holds_checkpoints: bool,
    /// The log (salts) and the highest frame the pin's read mark can be at, read from the
    /// wal-index just after the pin was taken.
    pin_mark: Option<(u32, u32, u32)>,
    page_size: u32,
    pub txid: Txid,
    pub cursor: Option<WalCursor>,
    sums: PageSums,
    /// Which restart of the log would not be a loss.
    expected_restart: Expect,
    /// WAL bytes captured since our last checkpoint.
    pub since_checkpoint: u64,
    /// A transaction a checkpoint captured under the write lock, until the caller takes it
    /// (it is kept even when the checkpoint itself fails afterwards).
    tail: Option<Captured>,
}

fn open(db: &Path) -> Result<Connection> {
    let c = Connection::open(db).with_context(|| format!("open database {}", db.display()))?;
    c.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).context("set wal mode")?;
    if !mode.eq_ignore_ascii_case("wal") {
        bail!("database {} is in journal mode {mode}; walfleet needs WAL mode", db.display());
    }
    c.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(c)
}

impl Capture {
    pub fn open(db_path: &Path, staging: &Path) -> Result<Capture> {
        std::fs::create_dir_all(staging).with_context(|| format!("create {}", staging.display()))?;
        let pin = open(db_path)?;
        let spare = open(db_path)?;
        let writer = open(db_path)?;
        let db_file = File::open(db_path).with_context(|| format!("open {}", db_path.display()))?;
        let page_size: u32 = pin.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let sibling = |suffix: &str| {
            let mut p = db_path.as_os_str().to_owned();
            p.push(suffix);
            PathBuf::from(p)
        };
        let mut c = Capture {
            db_file,
            wal_path: sibling("-wal"),
            shm_path: sibling("-shm"),
            staging: staging.to_path_buf(),
            pin,
            spare,
            writer,
            pinned: false,
            pin_mark: None,
            shm: None,
            holds_checkpoints: false,
            page_size,
            txid: Txid::ZERO,
            cursor: None,
            sums: PageSums::new(page_size),
            expected_restart: Expect::Nothing,
            since_checkpoint: 0,
            tail: None,
        };
        c.repin()?;
        c.hold_checkpoints()?;
        Ok(c)
    }

    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    pub fn checksum(&self) -> u64 {
        self.sums.checksum()
    }

    fn repin(&mut self) -> Result<()> {
        if self.pinned {
            self.pin.execute_batch("COMMIT").context("end read transaction")?;
            self.pinned = false;
        }
        begin_read(&self.pin)?;
        self.pinned = true;
        self.pin_mark = self.wal_index()?.map(|i| (i.salt1, i.salt2, i.max_frame));
        Ok(())
    }

    fn wal_index(&mut self) -> Result<Option<wal::WalIndex>> {
        if self.shm.is_none() {
            // Writable: a write lock needs a descriptor open for writing.
            match std::fs::OpenOptions::new().read(true).write(true).open(&self.shm_path) {
                Ok(f) => self.shm = Some(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e).with_context(|| format!("open {}", self.shm_path.display())),
            }
        }
        let Some(f) = &self.shm else { return Ok(None) };
        wal::read_wal_index(f).with_context(|| format!("read {}", self.shm_path.display()))
    }

    /// Moves the pin to the end of the log, ahead of what is captured, so the app's own
    /// checkpoints can copy the log up to there (a pin left behind makes every one of the app's
    /// auto-checkpoints re-sort the whole uncopied tail: per-commit work that grows with it).
    ///
    /// Frames past the capture cursor stay readable only while some pin keeps the log from
    /// restarting. A read transaction does that unless SQLite gives it read-mark 0, which it
    /// does only when checkpoints have copied the whole log. Checkpoints never copy past the
    /// old pin's mark (or at all, if the old pin has mark 0), so once the log has grown past
    /// the old mark, a pin taken while the old one is still held cannot get mark 0. Otherwise
    /// the pin stays where it is. Returns whether it moved.
    pub fn advance_pin(&mut self) -> Result<bool> {
        self.hold_checkpoints()?;
        let (Some((salt1, salt2, mark)), Some(now)) = (self.pin_mark, self.wal_index()?) else {
            return Ok(false);
        };
        let grown = if (now.salt1, now.salt2) == (salt1, salt2) { now.max_frame > mark } else { now.max_frame > 0 };
        if !grown || !self.pinned {
            return Ok(false);
        }
        begin_read(&self.spare)?;
        let mark = self.wal_index()?.map(|i| (i.salt1, i.salt2, i.max_frame));
        std::mem::swap(&mut self.pin, &mut self.spare);
        self.pin_mark = mark;
        self.spare.execute_batch("COMMIT").context("end read transaction")?;
        Ok(true)
    }

    fn wal(&self) -> Result<Option<(File, WalHeader)>> {
        let f = match File::open(&self.wal_path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("open {}", self.wal_path.display())),
        };
        Ok(WalHeader::read(&f).context("read wal header")?.map(|h| (f, h)))
    }

    /// Reads the whole current state (database file overlaid with every committed WAL frame)
    /// into the page checksums, and puts the cursor at the end of the log. Calls `page` for
    /// every page in order when given (to write a full LTX file).
    fn scan_into(&mut self, page: Option<&mut PageSink<'_>>) -> Result<Scan> {
        let state = self.committed_state()?;
        let read = self.scan_state(state, page)?;
        Ok(self.commit_read(read))
    }

    /// Takes a full read as the new state: its page checksums, cursor and expected restart.
    fn commit_read(&mut self, read: FullRead) -> Scan {
        self.sums = read.sums;
        self.cursor = read.scan.cursor;
        self.expected_restart = read.expected_restart;
        read.scan
    }

    /// The log and its committed range as of now. Frames already committed never change while
    /// the pin holds the log, so one reading of it describes one consistent database.
    fn committed_state(&self) -> Result<LogState> {
        let wal = self.wal()?;
        let range = match &wal {
            Some((f, h)) if h.page_size == self.page_size => {
                Some(wal::read_committed(f, h, WalCursor::start(h), u64::MAX).context("read wal")?)
            }
            _ => None,
        };
        let commit = match &range {
            Some(r) if !r.is_empty() => r.commit,
            _ => db_header_page_count(&self.db_file, self.page_size)?,
        };
        Ok(LogState { wal, range, commit })
    }

    /// Reads every page of the database as `state` describes it. Changes nothing in `self`:
    /// the caller takes the result with `commit_read` once everything that depends on it worked.
    fn scan_state(&self, state: LogState, mut page: Option<&mut PageSink<'_>>) -> Result<FullRead> {
        let LogState { wal, range, commit } = state;
        let db = &self.db_file;
        let mut sums = PageSums::new(self.page_size);
        let mut buf = vec![0u8; self.page_size as usize];
        let empty = BTreeMap::new();
        let frames = range.as_ref().map(|r| &r.pages).unwrap_or(&empty);
        for pgno in 1..=commit {
            if pgno == sums.lock_pgno() {
                continue;
            }
            match (frames.get(&pgno), &wal) {
                (Some(off), Some((f, _))) => wal::read_frame_page(f, *off, &mut buf)?,
                _ => read_db_page(db, pgno, &mut buf)?,
            }
            sums.set(pgno, ltx::checksum_page(pgno, &buf));
            if let Some(p) = page.as_mut() {
                p(pgno, &buf)?;
            }
        }
        let cursor = match (&range, &wal) {
            (Some(r), Some((_, h))) => Some(r.end.unwrap_or_else(|| WalCursor::start(h))),
            _ => None,
        };
        // We hold the pin and have read the log to its end, so a single restart of it from
        // here on loses nothing (see the module docs).
        let expected_restart = match (&wal, cursor) {
            (Some((_, h)), Some(_)) => Expect::Restart { salt1: h.salt1 },
            _ => Expect::Any,
        };
        let scan = Scan { page_size: self.page_size, commit, checksum: sums.checksum(), cursor };
        Ok(FullRead { scan, sums, expected_restart })
    }

    /// Reads the current state without producing a file: used at start to compare the local
    /// database with the replica's position.
    pub fn scan(&mut self) -> Result<Scan> {
        self.scan_into(None)
    }

    /// Writes the whole database as transaction `txid` (a snapshot when `txid` is 1).
    pub fn capture_full(&mut self, txid: Txid) -> Result<Captured> {
        let state = self.committed_state()?;
        let c = self.write_full(state, txid, txid)?;
        self.txid = txid;
        self.since_checkpoint = 0;
        Ok(c)
    }

    /// A level-9 snapshot: the whole database as of `txid` (transactions 1 through `txid`),
    /// which must be the newest captured transaction. None when commits arrived that are not
    /// captured yet: the database is past `txid`, so the snapshot waits for a quieter moment.
    pub fn snapshot(&mut self, txid: Txid) -> Result<Option<Captured>> {
        let state = self.committed_state()?;
        let end = match (&state.range, &state.wal) {
            (Some(r), Some((_, h))) => Some(r.end.unwrap_or_else(|| WalCursor::start(h))),
            _ => None,
        };
        if end != self.cursor || txid != self.txid {
            return Ok(None);
        }
        self.write_full(state, Txid(1), txid).map(Some)
    }

    /// Writes every page of the database as `state` describes it into one LTX file spanning
    /// `min..=max`.
    fn write_full(&mut self, state: LogState, min: Txid, max: Txid) -> Result<Captured> {
        let txid = max;
        let path = self.staging.join(format!("{min}-{max}.ltx.tmp"));
        let file = File::create(&path).with_context(|| format!("create {}", path.display()))?;
        let ts = now_ms();
        // One reading of the log fixes the database this file holds: its size goes into the
        // header before any page is written, and commits that land meanwhile are the next
        // transaction's.
        let header = Header {
            flags: ltx::HEADER_FLAG_NO_CHECKSUM,
            page_size: self.page_size,
            commit: state.commit.max(1),
            min_txid: min.0,
            max_txid: max.0,
            timestamp_ms: ts,
            pre_apply_checksum: 0,
            ..Header::default()
        };
        let mut enc = Encoder::new(BufWriter::new(file), header).context("start ltx file")?;
        let mut err: Option<anyhow::Error> = None;
        let scan = {
            let mut write = |pgno: u32, data: &[u8]| -> Result<()> {
                if pgno > header.commit {
                    bail!("database grew while it was being read");
                }
                enc.encode_page(pgno, data).map_err(anyhow::Error::from)
            };
            match self.scan_state(state, Some(&mut write)) {
                Ok(s) => Some(s),
                Err(e) => {
                    err = Some(e);
                    None
                }
            }
        };
        let read = match (scan, err) {
            (Some(s), None) => s,
            (_, Some(e)) => {
                let _ = std::fs::remove_file(&path);
                return Err(e).context("write full database");
            }
            (None, None) => bail!("write full database"),
        };
        if read.scan.commit != header.commit {
            let _ = std::fs::remove_file(&path);
            bail!("database size changed while it was being read ({} → {} pages)", header.commit, read.scan.commit);
        }
        let final_path = self.staging.join(format!("{min}-{max}.ltx"));
        let size = match finish_file(enc, &path, &final_path) {
            Ok(size) => size,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        // Only now does the file exist: the page checksums and the cursor move with it.
        let scan = self.commit_read(read);
        Ok(Captured {
            txid,
            path: final_path,
            size,
            timestamp_ms: ts,
            post_checksum: scan.checksum,
            commits: 1,
            full: true,
            more: false,
        })
    }

    /// Turns newly committed WAL frames into the next transaction. `Ok(None)` when there is
    /// nothing new. Returns `Err(Lost(reason))` through `Outcome` when continuity was lost.
    pub fn capture(&mut self) -> Result<Outcome> {
        if !self.pinned {
            // An earlier checkpoint failed between letting the pin go and taking it again.
            self.repin()?;
        }
        let Some(cursor) = self.cursor else {
            // No log was known: whatever is in the WAL now is new.
            return match self.wal()? {
                None => Ok(Outcome::Idle),
                Some((_, h)) => {
                    if self.expected_restart.accepts(&h) {
                        self.cursor = Some(WalCursor::start(&h));
                        self.capture()
                    } else {
                        Ok(Outcome::Lost("a write-ahead log appeared that the agent did not see start".into()))
                    }
                }
            };
        };
        let Some((file, header)) = self.wal()? else {
            return if self.expected_restart != Expect::Nothing {
                Ok(Outcome::Idle)
            } else {
                Ok(Outcome::Lost("the write-ahead log was truncated by another process".into()))
            };
        };
        let cursor = if header.salt1 == cursor.salt1 && header.salt2 == cursor.salt2 {
            if !wal::cursor_is_current(&file, &header, &cursor)? {
                return Ok(Outcome::Lost("the write-ahead log was rewritten behind the agent's position".into()));
            }
            // Pinned, and continuous up to here: one restart from this log would lose nothing.
            self.expected_restart = Expect::Restart { salt1: header.salt1 };
            cursor
        } else if self.expected_restart.accepts(&header) {
            WalCursor::start(&header)
        } else {
            return Ok(Outcome::Lost(format!(
                "the write-ahead log was restarted by another process (salt-1 {:#010x}, expected {})",
                header.salt1,
                self.expected_restart.describe()
            )));
        };
        let range = wal::read_committed(&file, &header, cursor, MAX_CAPTURE_BYTES).context("read wal")?;
        if range.is_empty() {
            if Some(cursor) != self.cursor {
                self.cursor = Some(cursor);
                self.expected_restart = Expect::Restart { salt1: header.salt1 };
            }
            return Ok(Outcome::Idle);
        }
        let end = range.end.context("committed range without an end")?;
        let txid = self.txid.next();
        let ts = now_ms();
        let header_ltx = Header {
            flags: ltx::HEADER_FLAG_NO_CHECKSUM,
            page_size: self.page_size,
            commit: range.commit,
            min_txid: txid.0,
            max_txid: txid.0,
            timestamp_ms: ts,
            pre_apply_checksum: 0,
            wal_offset: cursor.offset as i64,
            wal_size: range.bytes as i64,
            wal_salt1: cursor.salt1,
            wal_salt2: cursor.salt2,
            node_id: 0,
        };
        if txid.0 == 1 {
            // A first transaction must hold every page; the scan path does that.
            return Ok(Outcome::Lost("first transaction of a new database".into()));
        }
        let tmp = self.staging.join(format!("{txid}.ltx.tmp"));
        let path = self.staging.join(format!("{txid}.ltx"));
        // The page checksums change only once the file is in place: a capture that fails
        // (a full disk) leaves every field as it was, and the next one starts over from the
        // same cursor.
        let mut changed = Vec::with_capacity(range.pages.len());
        let written = File::create(&tmp).with_context(|| format!("create {}", tmp.display())).and_then(|out| {
            let mut enc = Encoder::new(BufWriter::new(out), header_ltx).context("start ltx file")?;
            let mut buf = vec![0u8; self.page_size as usize];
            for (&pgno, &off) in range.pages.range(..=range.commit) {
                wal::read_frame_page(&file, off, &mut buf)?;
                enc.encode_page(pgno, &buf)?;
                changed.push((pgno, ltx::checksum_page(pgno, &buf)));
            }
            finish_file(enc, &tmp, &path)
        });
        let size = match written {
            Ok(size) => size,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e).with_context(|| format!("capture transaction {txid}"));
            }
        };
        for (pgno, sum) in changed {
            self.sums.set(pgno, sum);
        }
        self.sums.truncate(range.commit);
        let post = self.sums.checksum();
        self.txid = txid;
        self.cursor = Some(end);
        self.expected_restart = Expect::Restart { salt1: header.salt1 };
        self.since_checkpoint += range.bytes;
        Ok(Outcome::Captured(Captured {
            txid,
            path,
            size,
            timestamp_ms: ts,
            post_checksum: post,
            commits: range.transactions,
            full: false,
            more: range.bytes >= MAX_CAPTURE_BYTES,
        }))
    }

    /// Bytes of committed WAL not yet captured (for the lag metric).
    pub fn pending_wal_bytes(&self) -> u64 {
        let Some(c) = self.cursor else { return 0 };
        match self.wal() {
            Ok(Some((f, h))) => {
                // A restarted log: everything committed in it is pending.
                let from = if h.salt1 == c.salt1 && h.salt2 == c.salt2 { c } else { WalCursor::start(&h) };
                wal::committed_bytes_estimate(&f, &h, from).unwrap_or(0)
            }
            _ => 0,
        }
    }

    /// PASSIVE checkpoint under the write lock, after everything committed was captured.
    /// Commits that arrived since the last capture (at most `CHECKPOINT_TAIL_BYTES` of them)
    /// are captured first, while the write lock holds the log still: under steady writes there
    /// is never a moment with nothing new, and without this the log would only ever grow.
    /// Returns whether the checkpoint ran, and the tail's transaction if one was captured.
    /// Nothing more happens when the write lock does not come free within `LOCK_RETRY`
    /// or the tail is larger: the caller tries again after the next capture.
    pub fn checkpoint(&mut self) -> Result<bool> {
        // Copy what the pin allows first, without the write lock (the app keeps writing
        // meanwhile): under the lock only what arrived since is left to copy.
        self.advance_pin()?;
        self.own_checkpoint(|c| {
            let _: (i64, i64, i64) = c
                .writer
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .context("checkpoint up to the pin")?;
            Ok(())
        })?;
        if !self.take_write_lock()? {
            return Ok(false);
        }
        let result = self.own_checkpoint(|c| c.checkpoint_locked());
        // Read while the write lock still holds the log: whether the pin now has read-mark 0.
        let copied_all = matches!(self.wal_index(), Ok(Some(i)) if i.backfilled == i.max_frame);
        let _ = self.writer.execute_batch("ROLLBACK");
        if matches!(result, Ok(true)) && copied_all {
            self.leave_mark_zero()?;
        }
        result
    }

    /// The transaction the last checkpoint captured, if any: taken after every checkpoint,
    /// whether it succeeded or not, so that a captured transaction is never lost.
    pub fn take_tail(&mut self) -> Option<Captured> {
        self.tail.take()
    }

    /// Takes SQLite's checkpoint lock on the `-shm` file (an open-file-description lock, so it
    /// is ours alone: SQLite's own locks in this process neither share it nor release it). While
    /// we hold it, the app's auto-checkpoints give up at their first step. Without it, each of
    /// them (one after every commit once the log is long) sorts the whole uncopied log before
    /// finding our pin in the way, and may hold the lock when our checkpoint needs it.
    fn hold_checkpoints(&mut self) -> Result<()> {
        if self.holds_checkpoints || self.wal_index()?.is_none() {
            return Ok(());
        }
        let Some(shm) = &self.shm else { return Ok(()) };
        self.holds_checkpoints = wal::lock_checkpoints(shm, true).context("take the checkpoint lock")?;
        Ok(())
    }

    /// Runs one of our checkpoints: lets the checkpoint lock go for it, and takes it back after
    /// (the app may hold it for a moment in between).
    fn own_checkpoint<T>(&mut self, run: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if self.holds_checkpoints {
            if let Some(shm) = &self.shm {
                wal::lock_checkpoints(shm, false).context("let the checkpoint lock go")?;
            }
            self.holds_checkpoints = false;
        }
        let result = run(self);
        let deadline = Instant::now() + LOCK_RETRY;
        loop {
            self.hold_checkpoints()?;
            if self.holds_checkpoints || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        result
    }

    /// After a checkpoint that copied the whole log, the pin reads the database file alone
    /// (read-mark 0), which keeps any checkpoint from copying. The pin moves into the new log as
    /// soon as the app writes to it.
    fn leave_mark_zero(&mut self) -> Result<()> {
        let deadline = Instant::now() + PIN_SETTLE;
        while !self.advance_pin()? && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }

    /// `BEGIN IMMEDIATE` on the writer connection, tried again at once for up to
    /// `LOCK_RETRY` while the app holds the lock. False when it never came free.
    fn take_write_lock(&mut self) -> Result<bool> {
        self.writer.busy_timeout(Duration::ZERO)?;
        let deadline = Instant::now() + LOCK_RETRY;
        let taken = loop {
            match self.writer.execute_batch("BEGIN IMMEDIATE") {
                Ok(()) => break Ok(true),
                Err(e) if is_busy(&e) => {
                    if Instant::now() >= deadline {
                        break Ok(false);
                    }
                    std::hint::spin_loop();
                }
                Err(e) => break Err(e).context("take write lock for checkpoint"),
            }
        };
        self.writer.busy_timeout(BUSY_TIMEOUT)?;
        taken
    }

    fn checkpoint_locked(&mut self) -> Result<bool> {
        let Some(cursor) = self.cursor else { return Ok(false) };
        let Some((file, header)) = self.wal()? else { return Ok(false) };
        if header.salt1 != cursor.salt1 || header.salt2 != cursor.salt2 {
            return Ok(false);
        }
        let pending = wal::committed_bytes_estimate(&file, &header, cursor).context("read wal")?;
        if pending > CHECKPOINT_TAIL_BYTES {
            return Ok(false);
        }
        if pending > 0 {
            // A tail this small is one transaction; continuity problems are left to the next
            // regular capture.
            match self.capture()? {
                Outcome::Captured(c) => self.tail = Some(c),
                Outcome::Idle | Outcome::Lost(_) => return Ok(false),
            }
        }
        let Some(cursor) = self.cursor else { return Ok(false) };
        if !wal::read_committed(&file, &header, cursor, 1)?.is_empty() {
            return Ok(false);
        }
        self.pin.execute_batch("COMMIT").context("end read transaction")?;
        self.pinned = false;
        // An auto-checkpoint of the app's may still be running (if it took the checkpoint lock
        // in a moment we had let it go); it cannot start another while we hold the write lock.
        let deadline = Instant::now() + LOCK_RETRY;
        let res = loop {
            let res: rusqlite::Result<(i64, i64, i64)> =
                self.pin.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)));
            match res {
                Ok((_, -1, _)) if Instant::now() < deadline => std::thread::sleep(Duration::from_micros(50)),
                res => break res,
            }
        };
        let repin = self.repin();
        let (busy, log, done) = res.context("checkpoint")?;
        repin?;
        self.since_checkpoint = 0;
        if busy == 0 && log >= 0 && log == done {
            self.expected_restart = Expect::Restart { salt1: header.salt1 };
        }
        Ok(true)
    }
}

/// Finishes an LTX file being written to `tmp`, makes it durable and renames it to `path`;
/// returns its size.
fn finish_file(enc: Encoder<BufWriter<File>>, tmp: &Path, path: &Path) -> Result<u64> {
    let (w, _) = enc.finish(0).context("finish ltx file")?;
    let f = w.into_inner().map_err(|e| e.into_error()).context("flush ltx file")?;
    f.sync_all().with_context(|| format!("sync {}", tmp.display()))?;
    let size = f.metadata()?.len();
    std::fs::rename(tmp, path).with_context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
    Ok(size)
}

/// A full read of the database, not yet taken as the capture's state.
struct FullRead {
    scan: Scan,
    sums: PageSums,
    expected_restart: Expect,
}

/// A restart of the WAL that loses nothing, because everything before it was captured and
/// backfilled while we held the write lock (or the log was empty when we last read it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Nothing,
    /// The next log header carries salt-1 one past this. (Not the checkpoint sequence too: that
    /// is the restarting connection's own count of restarts, so a process that reopens the
    /// database starts it again from 1.)
    Restart {
        salt1: u32,
    },
    /// The log was empty: whatever header appears starts the log we read.
    Any,
}

impl Expect {
    fn describe(self) -> String {
        match self {
            Expect::Nothing => "no restart".into(),
            Expect::Restart { salt1 } => format!("salt-1 {:#010x}", salt1.wrapping_add(1)),
            Expect::Any => "any log".into(),
        }
    }

    fn accepts(self, h: &WalHeader) -> bool {
        match self {
            Expect::Nothing => false,
            Expect::Restart { salt1 } => h.salt1 == salt1.wrapping_add(1),
            Expect::Any => true,
        }
    }
}

pub enum Outcome {
    Idle,
    Captured(Captured),
    Lost(String),
}

/// Starts a read transaction and reads, so it holds a read mark on the log.
fn begin_read(c: &Connection) -> Result<()> {
    c.execute_batch("BEGIN").context("begin read transaction")?;
    c.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(())).context("pin wal")?;
    Ok(())
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == rusqlite::ErrorCode::DatabaseBusy || f.code == rusqlite::ErrorCode::DatabaseLocked)
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn read_db_page(db: &File, pgno: u32, buf: &mut [u8]) -> Result<()> {
    let off = u64::from(pgno - 1) * buf.len() as u64;
    match db.read_exact_at(buf, off) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            // Pages past the end of the file read as zeros (the WAL holds their content).
            buf.fill(0);
            let mut n = 0;
            while n < buf.len() {
                match db.read_at(&mut buf[n..], off + n as u64)? {
                    0 => break,
                    k => n += k,
                }
            }
            Ok(())
        }
        Err(e) => Err(e).context("read database page"),
    }
}

/// The database size in pages as the file's own header says, falling back to the file size.
fn db_header_page_count(db: &File, page_size: u32) -> Result<u32> {
    let len = db.metadata()?.len();
    let by_size = (len / u64::from(page_size)) as u32;
    let mut h = [0u8; 100];
    if len < 100 {
        return Ok(by_size);
    }
    db.read_exact_at(&mut h, 0)?;
    let in_header = u32::from_be_bytes([h[28], h[29], h[30], h[31]]);
    let change = &h[24..28];
    let valid_for = &h[92..96];
    if in_header > 0 && change == valid_for {
        Ok(in_header)
    } else {
        Ok(by_size)
    }
}

#[cfg(test)]
#[path = "capture_tests.rs"]
mod tests;
