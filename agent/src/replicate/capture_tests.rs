//! A capture that fails (the staging directory cannot be written) changes nothing: the next
//! one ships the same transaction with the right database checksum.

use super::*;

fn write(conn: &Connection, n: i64) {
    conn.execute("INSERT INTO t(v) VALUES (?1)", [format!("row {n} {}", "x".repeat(200))]).expect("insert");
}

/// Puts a non-empty directory where the capture of `txid` renames its file: the file is
/// written in full and the rename fails (the last step, after every page was read).
fn block_rename(staging: &Path, names: &[String]) {
    for n in names {
        std::fs::create_dir_all(staging.join(n).join("x")).expect("directory in the way");
    }
}

fn unblock_rename(staging: &Path, names: &[String]) {
    for n in names {
        std::fs::remove_dir_all(staging.join(n)).expect("remove directory in the way");
    }
}

#[test]
fn a_failed_capture_leaves_the_checksums_and_cursor_as_they_were() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("app.db");
    let staging = dir.path().join("staging");
    let app = Connection::open(&db).expect("open");
    app.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(())).expect("wal");
    app.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)").expect("create");
    write(&app, 0);
    let mut cap = Capture::open(&db, &staging).expect("capture");
    let first = cap.capture_full(Txid(1)).expect("full");
    assert_eq!(first.post_checksum, cap.checksum());

    write(&app, 1);
    let names = [format!("{}.ltx", Txid(2)), format!("{}-{}.ltx", Txid(2), Txid(2))];
    block_rename(&staging, &names);
    assert!(cap.capture().is_err(), "a capture whose file cannot be put in place must fail");
    assert!(cap.capture_full(Txid(2)).is_err(), "a full capture whose file cannot be put in place must fail");
    assert_eq!(cap.txid, Txid(1), "a failed capture must not move the transaction");
    unblock_rename(&staging, &names);

    let Outcome::Captured(c) = cap.capture().expect("capture") else { panic!("nothing captured after the fault") };
    assert_eq!(c.txid, Txid(2));
    // What the database is now, read whole, is what the rolling checksum must say.
    let want = Capture::open(&db, &dir.path().join("staging2")).expect("second capture").scan().expect("scan").checksum;
    assert_eq!(
        format!("{:016x}", c.post_checksum),
        format!("{want:016x}"),
        "post-apply checksum after a failed capture"
    );
}
