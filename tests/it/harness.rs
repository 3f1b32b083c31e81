//! The harness itself: the S3 server, the proxy, the apps, the database digests, and the
//! external tools are what every other test builds on, so they are checked first.

use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tests::sqlite::{content_hash, integrity_ok, open_wal, page_checksum};
use tests::{litestream, wait_until, App, Metrics, Proxy, S3Server};

const T: Duration = Duration::from_secs(30);

/// Sends a raw HTTP request through `addr` and returns the status line.
fn raw_http(addr: std::net::SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    Ok(resp.lines().next().unwrap_or_default().to_owned())
}

#[test]
fn s3_server_stops_and_restarts_on_same_port_with_its_data() -> Result<()> {
    let mut s3 = S3Server::new()?;
    assert!(s3.endpoint().starts_with("http://127.0.0.1:"));
    assert_eq!(s3.url("proj/db"), "s3://test/proj/db");
    let env = s3.env();
    assert!(env.contains(&("AWS_ENDPOINT_URL".into(), s3.endpoint())));
    assert!(!env.iter().any(|(k, _)| k == "AWS_CA_BUNDLE"));

    // Unsigned requests are refused: SigV4 is enforced.
    assert!(raw_http(s3.addr(), "/test")?.contains(" 403 "), "unsigned request must get 403");

    let obj = s3.object_path("proj/db/marker");
    std::fs::create_dir_all(obj.parent().context("parent")?)?;
    std::fs::write(&obj, b"kept")?;
    assert_eq!(s3.keys("proj/"), vec!["proj/db/marker".to_string()]);

    let port = s3.port();
    s3.stop()?;
    assert!(!s3.is_running());
    assert!(TcpStream::connect(s3.addr()).is_err(), "stopped server still accepts");
    s3.start()?;
    assert_eq!(s3.port(), port);
    assert!(raw_http(s3.addr(), "/test")?.contains(" 403 "));
    assert_eq!(std::fs::read(&obj)?, b"kept");
    Ok(())
}

#[test]
fn proxy_counts_nothing_while_idle_and_bytes_once_used() -> Result<()> {
    let s3 = S3Server::new()?;
    let proxy = Proxy::new(s3.addr())?;
    let idle_deadline = std::time::Instant::now() + Duration::from_secs(1);
    while std::time::Instant::now() < idle_deadline {
        assert_eq!(proxy.bytes_up(), 0, "bytes while nobody talks");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(proxy.stats().connections, 0);

    let status = raw_http(proxy.addr(), "/test")?;
    assert!(status.contains(" 403 "), "through the proxy: {status}");
    let st = proxy.stats();
    assert!(st.bytes_up > 0 && st.bytes_down > 0, "{st:?}");
    assert_eq!(st.connections, 1);
    Ok(())
}

#[test]
fn proxy_faults_drop_blackhole_and_heal() -> Result<()> {
    let s3 = S3Server::new()?;
    let proxy = Proxy::new(s3.addr())?;

    proxy.set_drop_fraction(1.0);
    assert!(raw_http(proxy.addr(), "/test").map(|s| s.is_empty()).unwrap_or(true));
    assert_eq!(proxy.stats().dropped, 1);

    proxy.heal();
    proxy.set_blackhole(true);
    let mut s = TcpStream::connect(proxy.addr())?;
    s.set_read_timeout(Some(Duration::from_millis(300)))?;
    s.write_all(b"GET /test HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut buf = [0u8; 16];
    let got = s.read(&mut buf);
    assert!(got.is_err(), "black hole answered: {got:?}");
    proxy.cut_all();
    wait_until(T, "cut connection reads EOF", || matches!(s.read(&mut buf), Ok(0)));

    proxy.heal();
    proxy.set_delay(Duration::from_millis(20));
    assert!(raw_http(proxy.addr(), "/test")?.contains(" 403 "));
    Ok(())
}

#[test]
fn content_hash_follows_content_not_layout() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("a.db");
    let conn = open_wal(&db)?;
    conn.execute_batch(
        "CREATE TABLE items(id INTEGER PRIMARY KEY, k TEXT, v BLOB, ts REAL);
         CREATE TABLE kv(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
         INSERT INTO kv VALUES ('b', 2), ('a', 1.5);",
    )?;
    for i in 0..200 {
        conn.execute(
            "INSERT INTO items(k, v, ts) VALUES (?1, ?2, ?3)",
            rusqlite::params![format!("k{i}"), vec![i as u8; 3000], i as f64 / 3.0],
        )?;
    }
    let h1 = content_hash(&db)?;
    assert!(h1.starts_with("2t/202r/"), "{h1}");
    assert_eq!(content_hash(&db)?, h1, "stable");

    conn.execute_batch("DELETE FROM items WHERE id > 100; VACUUM;")?;
    let h2 = content_hash(&db)?;
    assert_ne!(h2, h1);
    // Same rows re-inserted after a VACUUM: a different file, the same content.
    for i in 100..200 {
        conn.execute(
            "INSERT INTO items(k, v, ts) VALUES (?1, ?2, ?3)",
            rusqlite::params![format!("k{i}"), vec![i as u8; 3000], i as f64 / 3.0],
        )?;
    }
    assert_eq!(content_hash(&db)?, h1);
    conn.execute("UPDATE kv SET v = 2.5 WHERE k = 'a'", [])?;
    assert_ne!(content_hash(&db)?, h1);
    assert!(integrity_ok(&db)?);
    Ok(())
}

#[test]
fn page_checksum_changes_with_any_page() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("a.db");
    let conn = open_wal(&db)?;
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (randomblob(10000));")?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let c1 = page_checksum(&db)?;
    assert_ne!(c1 & tests::sqlite::CHECKSUM_FLAG, 0);
    assert_eq!(page_checksum(&db)?, c1);
    conn.execute("UPDATE t SET x = randomblob(10000)", [])?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    assert_ne!(page_checksum(&db)?, c1);

    // The CRC is Go's crc64.ISO (what superfly/ltx uses): its catalogue check value.
    let go_iso = crc::Crc::<u64>::new(&crc::CRC_64_GO_ISO);
    assert_eq!(go_iso.checksum(b"123456789"), 0xb909_56c7_75a4_1001);

    // By hand for a 2-page file: XOR of flagged per-page CRCs, then flagged.
    let raw = dir.path().join("raw.db");
    let mut bytes = std::fs::read(&db)?;
    bytes[28..32].copy_from_slice(&2u32.to_be_bytes());
    bytes.copy_within(24..28, 92);
    let ps = u16::from_be_bytes([bytes[16], bytes[17]]) as usize;
    bytes.truncate(2 * ps);
    std::fs::write(&raw, &bytes)?;
    let want = tests::sqlite::CHECKSUM_FLAG
        | (tests::sqlite::page_checksum_one(1, &bytes[..ps]) ^ tests::sqlite::page_checksum_one(2, &bytes[ps..]));
    assert_eq!(page_checksum(&raw)?, want);
    Ok(())
}

#[test]
fn litestream_is_0_5_17() -> Result<()> {
    assert_eq!(litestream::version()?, "0.5.17");
    Ok(())
}

/// litestream (the format's reference) replicates a real app's database to s3s-fs and
/// restores it with the same content; LTX files are where the harness expects them.
#[test]
fn litestream_round_trip_matches_our_digests() -> Result<()> {
    let s3 = S3Server::new()?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("src.db");
    let mut app = App::writer(&db, &["--count", "50", "--rate", "0", "--value-size", "2000"])?;
    assert!(app.finish(T)?.success());
    assert_eq!(app.committed_ids(), (1..=50).collect::<Vec<i64>>());

    let url = litestream::s3_url(&s3, "ls/src");
    let mut rep = litestream::replicate(&s3.env(), &db, &url)?;
    wait_until(T, "litestream to upload an LTX file", || s3.keys("ls/src/").iter().any(|k| k.ends_with(".ltx")));
    rep.stop(T)?;

    let out = dir.path().join("restored.db");
    let o = litestream::restore(&s3.env(), &url, &out, &[])?;
    tests::process::expect_success("litestream restore", &o);
    assert_eq!(content_hash(&out)?, content_hash(&db)?);
    assert!(integrity_ok(&out)?);

    // Every LTX file litestream wrote: if it carries a post-apply checksum (the trailer's
    // first 8 bytes, big endian), the restored file's page checksum must equal the newest
    // one; litestream 0.5.17 sets the NoChecksum header flag (bit 1) and writes 0 instead.
    let mut ltx_keys: Vec<(u64, String)> = s3
        .keys("ls/src/")
        .into_iter()
        .filter(|k| k.ends_with(".ltx"))
        .map(|k| {
            let name = k.rsplit('/').next().unwrap_or_default();
            let max = name.trim_end_matches(".ltx").rsplit('-').next().unwrap_or_default();
            (u64::from_str_radix(max, 16).unwrap_or(0), k)
        })
        .collect();
    ltx_keys.sort();
    let (_, newest) = ltx_keys.last().context("an ltx file")?;
    let ltx = std::fs::read(s3.object_path(newest))?;
    assert_eq!(&ltx[..4], b"LTX1", "{newest}");
    let flags = u32::from_be_bytes(ltx[4..8].try_into()?);
    let post_apply = u64::from_be_bytes(ltx[ltx.len() - 16..ltx.len() - 8].try_into()?);
    if flags & 2 == 0 {
        assert_eq!(page_checksum(&out)?, post_apply, "newest ltx: {newest}");
    } else {
        assert_eq!(post_apply, 0, "NoChecksum file with a checksum: {newest}");
    }
    Ok(())
}

#[test]
fn writer_app_exits_cleanly_on_sigterm_after_its_commit() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("w.db");
    let mut app = App::writer(&db, &["--rate", "200"])?;
    app.wait_lines(5, T)?;
    let st = app.stop(T)?;
    assert!(st.success(), "writer exit: {st}");
    let last = app.last_committed().context("committed ids")?;
    let conn = tests::sqlite::open_ro(&db)?;
    let (n, max): (i64, i64) =
        conn.query_row("SELECT count(*), max(id) FROM items", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    assert_eq!((n, max), (last, last), "every printed id committed, nothing more");
    Ok(())
}

#[test]
fn workload_is_deterministic_per_seed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let a = dir.path().join("a.db");
    let b = dir.path().join("b.db");
    let mut app = App::workload(&a, 11, &["--steps", "60", "--interval", "0"])?;
    assert!(app.finish(T)?.success());
    let steps = app.steps();
    assert_eq!(steps.len(), 60);
    assert_eq!(steps[59]["step"], 60);
    tests::apps::workload_replay(&b, 11, 60)?;
    assert_eq!(content_hash(&a)?, content_hash(&b)?);
    assert!(integrity_ok(&a)?);
    let d = dir.path().join("d.db");
    tests::apps::workload_replay(&d, 12, 60)?;
    assert_ne!(content_hash(&a)?, content_hash(&d)?);
    Ok(())
}

#[test]
fn metrics_parser_tolerates_labels_and_selects_by_subset() {
    let m = Metrics::parse(
        "# HELP walfleet_local_txid local\n# TYPE walfleet_local_txid gauge\n\
         walfleet_local_txid{db=\"app\"} 42\n\
         walfleet_lag_seconds{db=\"app\",x=\"a b}\"} 0.5 1700000000\n\
         walfleet_object_store_requests_total{kind=\"put\"} 3\n\
         walfleet_object_store_requests_total{kind=\"get\"} 4\n\
         walfleet_uploads_total 7\n\
         walfleet_weird NaN\n",
    );
    assert_eq!(m.get("walfleet_local_txid{db=\"app\"}"), Some(&42.0));
    assert_eq!(m.select("walfleet_local_txid"), Some(42.0));
    assert_eq!(m.select("walfleet_local_txid{db=\"app\"}"), Some(42.0));
    assert_eq!(m.select("walfleet_local_txid{db=\"other\"}"), None);
    assert_eq!(m.select("walfleet_lag_seconds{x=\"a b}\", db=\"app\"}"), Some(0.5));
    assert_eq!(m.sum("walfleet_object_store_requests_total"), 7.0);
    assert_eq!(m.sum("walfleet_object_store_requests_total{kind=\"put\"}"), 3.0);
    assert_eq!(m.sum("walfleet_upload_errors_total"), 0.0);
    assert_eq!(m.select("walfleet_uploads_total"), Some(7.0));
    assert!(m.select("walfleet_weird").is_some_and(f64::is_nan));
}

/// walfleet-agent is found next to the test executable (built by scripts/test.sh) and runs.
#[test]
fn agent_binary_is_found_and_runs() -> Result<()> {
    let bin = tests::bins::agent()?;
    assert!(bin.starts_with(tests::bins::target_dir()?), "{}", bin.display());
    let out = tests::agent::run(&["--help"], &[])?;
    let help = tests::process::expect_success("walfleet-agent --help", &out);
    assert!(help.contains("replicate") && help.contains("restore"), "{help}");
    Ok(())
}
