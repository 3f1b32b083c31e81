//! Comparing SQLite databases: logical content, integrity, and the LTX page checksum.

use anyhow::{bail, Context, Result};
use crc::{Crc, CRC_64_GO_ISO, CRC_64_XZ};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::time::Duration;

/// Opens `db` read-only (works on a live WAL database next to its writer).
pub fn open_ro(db: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .with_context(|| format!("open {} read-only", db.display()))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    Ok(conn)
}

/// Opens (creating) `db` read-write in WAL mode with a 5 s busy timeout, as an app would.
pub fn open_wal(db: &Path) -> Result<Connection> {
    let conn = Connection::open(db).with_context(|| format!("open {}", db.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if mode != "wal" {
        bail!("{}: journal_mode is {mode}, not wal", db.display());
    }
    Ok(conn)
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A stable digest of the logical content: `PRAGMA user_version`/`application_id`, the schema
/// (`sqlite_master` type, name, table and SQL, ordered; root pages excluded, so VACUUM does
/// not change it) and every table's rows in rowid (or primary key) order, rowid included,
/// values with their storage class. Format: `<tables>t/<rows>r/<crc64 hex>`, so a mismatch shows the sizes.
pub fn content_hash(db: &Path) -> Result<String> {
    content_hash_conn(&open_ro(db)?)
}

/// [`content_hash`] over an open connection (e.g. inside a read transaction).
pub fn content_hash_conn(conn: &Connection) -> Result<String> {
    const CRC: Crc<u64> = Crc::<u64>::new(&CRC_64_XZ);
    let mut d = CRC.digest();
    let mut put = |tag: u8, bytes: &[u8]| {
        d.update(&[tag]);
        d.update(&(bytes.len() as u64).to_be_bytes());
        d.update(bytes);
    };
    for pragma in ["user_version", "application_id"] {
        let v: i64 = conn.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))?;
        put(b'p', &v.to_be_bytes());
    }
    let mut tables = Vec::new();
    {
        let mut stmt = conn.prepare(
            "SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_master \
             ORDER BY type, name",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let (ty, name, tbl, sql): (String, String, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            for s in [&ty, &name, &tbl, &sql] {
                put(b's', s.as_bytes());
            }
            if ty == "table" {
                tables.push((name, sql));
            }
        }
    }
    let mut total_rows = 0u64;
    for (name, sql) in &tables {
        put(b't', name.as_bytes());
        let order = if sql.to_ascii_uppercase().contains("WITHOUT ROWID") {
            let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk")?;
            let pk: Vec<String> =
                stmt.query_map([name], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<_>>()?;
            pk.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ")
        } else {
            "rowid".to_owned()
        };
        let select = if sql.to_ascii_uppercase().contains("WITHOUT ROWID") {
            format!("SELECT * FROM {} ORDER BY {order}", quote(name))
        } else {
            format!("SELECT rowid, * FROM {} ORDER BY {order}", quote(name))
        };
        let mut stmt = conn.prepare(&select).with_context(|| format!("read table {name}"))?;
        let ncol = stmt.column_count();
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            total_rows += 1;
            put(b'r', &[]);
            for i in 0..ncol {
                match r.get_ref(i)? {
                    ValueRef::Null => put(b'n', &[]),
                    ValueRef::Integer(v) => put(b'i', &v.to_be_bytes()),
                    ValueRef::Real(v) => put(b'f', &v.to_bits().to_be_bytes()),
                    ValueRef::Text(v) => put(b'x', v),
                    ValueRef::Blob(v) => put(b'b', v),
                }
            }
        }
    }
    Ok(format!("{}t/{total_rows}r/{:016x}", tables.len(), d.finalize()))
}

/// `PRAGMA integrity_check` returns exactly `ok`.
pub fn integrity_ok(db: &Path) -> Result<bool> {
    Ok(integrity_check(db)? == "ok")
}

/// The full `PRAGMA integrity_check` report, lines joined with `\n`.
pub fn integrity_check(db: &Path) -> Result<String> {
    let conn = open_ro(db)?;
    let mut stmt = conn.prepare("PRAGMA integrity_check")?;
    let lines: Vec<String> = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<_>>()?;
    Ok(lines.join("\n"))
}

/// The top bit of every LTX checksum.
pub const CHECKSUM_FLAG: u64 = 1 << 63;

/// LTX's checksum of one page: `FLAG | crc64_go_iso(pgno as u32 BE ++ data)`.
pub fn page_checksum_one(pgno: u32, data: &[u8]) -> u64 {
    const CRC: Crc<u64> = Crc::<u64>::new(&CRC_64_GO_ISO);
    let mut d = CRC.digest();
    d.update(&pgno.to_be_bytes());
    d.update(data);
    CHECKSUM_FLAG | d.finalize()
}

/// The LTX/walfleet whole-database checksum of the main database FILE as it is on disk:
/// XOR of [`page_checksum_one`] over pages 1..=page_count except the lock page
/// (`0x40000000 / page_size + 1`), then `| FLAG`. Frames still in the `-wal` are not seen:
/// use it on restored output or on a database whose WAL has been checkpointed.
pub fn page_checksum(db: &Path) -> Result<u64> {
    let bytes = std::fs::read(db).with_context(|| format!("read {}", db.display()))?;
    if bytes.len() < 100 || !bytes.starts_with(b"SQLite format 3\0") {
        bail!("{} is not a SQLite database ({} bytes)", db.display(), bytes.len());
    }
    let be32 = |off: usize| u32::from_be_bytes([bytes[off], bytes[off + 1], bytes[off + 2], bytes[off + 3]]);
    let page_size = match u16::from_be_bytes([bytes[16], bytes[17]]) {
        1 => 65536usize,
        n => n as usize,
    };
    if !page_size.is_power_of_two() || page_size < 512 {
        bail!("{}: bad page size {page_size}", db.display());
    }
    // The header's page count is valid when "version-valid-for" matches the change counter.
    let header_count = be32(28) as usize;
    let page_count = if header_count > 0 && be32(92) == be32(24) { header_count } else { bytes.len() / page_size };
    if bytes.len() < page_count * page_size {
        bail!("{}: {} bytes is shorter than {page_count} pages of {page_size}", db.display(), bytes.len());
    }
    let lock_page = 0x4000_0000 / page_size + 1;
    let mut sum = 0u64;
    for p in 1..=page_count {
        if p == lock_page {
            continue;
        }
        let data = &bytes[(p - 1) * page_size..p * page_size];
        sum ^= page_checksum_one(p as u32, data);
    }
    Ok(CHECKSUM_FLAG | sum)
}
