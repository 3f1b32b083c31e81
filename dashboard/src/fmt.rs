//! Small formatting helpers shared by the pages.

use crate::Millis;

/// `2026-12-04 21:05:03 UTC` (empty for 0).
pub fn time(ms: Millis) -> String {
    if ms <= 0 {
        return String::new();
    }
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
}

/// RFC 3339 in UTC with whole seconds, as `walfleet restore --timestamp` takes it.
pub fn rfc3339(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(String::new, |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// `42 s`, `3 min`, `5 h`, `2 d` (for ages and lease expiry).
pub fn span(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// `12 s ago` (empty for 0).
pub fn ago(at: Millis, now: Millis) -> String {
    if at <= 0 {
        return String::new();
    }
    format!("{} ago", span(now - at))
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// US dollars with enough digits for small amounts.
pub fn usd(v: f64) -> String {
    if v < 0.01 {
        format!("${v:.4}")
    } else {
        format!("${v:.2}")
    }
}

pub fn lag(seconds: f64) -> String {
    if seconds < 10.0 {
        format!("{seconds:.2} s")
    } else {
        format!("{seconds:.0} s")
    }
}

/// Percent-encodes a query value (names are `[a-z0-9_-]`; free text may be anything).
pub fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(span(59_000), "59 s");
        assert_eq!(span(600_000), "10 min");
        assert_eq!(span(3 * 86_400_000), "3 d");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(rfc3339(1_764_882_303_000), "2025-12-04T21:05:03Z");
        assert_eq!(q("a b/c"), "a%20b%2Fc");
        assert_eq!(time(0), "");
    }
}
