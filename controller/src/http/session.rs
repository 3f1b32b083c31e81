//! Dashboard sessions: the admin token is exchanged once, at the login form, for a random
//! session id in an HttpOnly, SameSite=Strict cookie (Secure when the controller serves TLS).
//! The token itself stays in this process's memory, so every request is checked against the
//! token's current state (a revoke ends its sessions within the auth cache's two seconds).
//! Each session has its own CSRF token, which every state-changing form sends back.
//!
//! Sessions live in memory: a controller restart signs everyone out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use rand::RngCore;

pub const COOKIE: &str = "walfleet_session";
/// A session ends this long after sign-in.
pub const TTL: Duration = Duration::from_secs(12 * 3600);
/// At most this many live sessions; the oldest goes first.
const MAX_SESSIONS: usize = 10_000;

#[derive(Clone)]
pub struct Session {
    pub secret: String,
    pub csrf: String,
    created: Instant,
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl Sessions {
    /// A new session for `secret`: (session id, its CSRF token).
    pub fn create(&self, secret: String) -> (String, String) {
        let id = random_hex(32);
        let csrf = random_hex(24);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.created.elapsed() < TTL);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        map.insert(id.clone(), Session { secret, csrf: csrf.clone(), created: Instant::now() });
        (id, csrf)
    }

    pub fn get(&self, id: &str) -> Option<Session> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(id) {
            Some(s) if s.created.elapsed() < TTL => Some(s.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, id: &str) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

/// The session id a request's cookie names.
pub fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(COOKIE).and_then(|rest| rest.strip_prefix('=')))
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value for a new session (or, with an empty id, one that clears it).
pub fn set_cookie(id: &str, secure: bool) -> String {
    let max_age = if id.is_empty() { 0 } else { TTL.as_secs() };
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
}

/// The bearer token of a request, if it sends one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")).map(str::trim)
}

/// Compares two tokens in time independent of where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a browser request comes from this dashboard's own origin: the `Origin` header (or,
/// without it, the `Referer`) must name the host the request was sent to, and
/// `Sec-Fetch-Site`, when present, must not say cross-site. A request with none of these
/// (a script, not a browser) passes: the CSRF token still has to match.
pub fn same_origin(headers: &HeaderMap, secure: bool) -> Result<(), String> {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let expected = format!("{}://{host}", if secure { "https" } else { "http" });
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site != "same-origin" && site != "none" {
            return Err(format!("cross-site request refused (sec-fetch-site: {site})"));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if origin != expected {
            return Err(format!("request from origin {origin:?} refused: this dashboard is {expected}"));
        }
        return Ok(());
    }
    if let Some(referer) = headers.get(header::REFERER) {
        let referer = referer.to_str().unwrap_or("");
        if referer != expected && !referer.starts_with(&format!("{expected}/")) {
            return Err(format!("request from {referer:?} refused: this dashboard is {expected}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; walfleet_session=abc; b=2")]);
        assert_eq!(cookie(&h), Some("abc"));
        assert_eq!(cookie(&headers(&[("cookie", "walfleet_sessionx=1")])), None);
        let c = set_cookie("abc", true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("; Secure"), "{c}");
        assert!(!set_cookie("abc", false).contains("Secure"));
    }

    #[test]
    fn origin_must_match_the_host() {
        let ok = headers(&[("host", "127.0.0.1:7080"), ("origin", "http://127.0.0.1:7080")]);
        assert!(same_origin(&ok, false).is_ok());
        assert!(same_origin(&ok, true).is_err(), "https dashboard, http origin");
        let evil = headers(&[("host", "127.0.0.1:7080"), ("origin", "http://evil.example")]);
        assert!(same_origin(&evil, false).expect_err("evil").contains("evil.example"));
        let cross = headers(&[("host", "h"), ("sec-fetch-site", "cross-site")]);
        assert!(same_origin(&cross, false).is_err());
        let referer = headers(&[("host", "h:1"), ("referer", "http://h:1/db/a/b")]);
        assert!(same_origin(&referer, false).is_ok());
        let bad_referer = headers(&[("host", "h:1"), ("referer", "http://h:1.evil/")]);
        assert!(same_origin(&bad_referer, false).is_err());
    }

    #[test]
    fn sessions_expire_and_go() {
        let s = Sessions::default();
        let (id, csrf) = s.create("secret".into());
        let got = s.get(&id).expect("session");
        assert_eq!(got.secret, "secret");
        assert!(same(&got.csrf, &csrf) && !same(&got.csrf, "x"));
        s.remove(&id);
        assert!(s.get(&id).is_none());
    }
}
