//! Which controller addresses are local: a bearer token sent over plaintext `http://` stays on
//! the machine only when the host is a loopback address (or `localhost`). Servers use the same
//! rule to refuse a plaintext bind on any other address.

use std::net::{IpAddr, SocketAddr};

/// True for `localhost` (and its subdomains, which resolve to loopback by RFC 6761) and for
/// IPv4/IPv6 loopback literals, including IPv4-mapped ones (`::ffff:127.0.0.1`). `0.0.0.0` and
/// every other address are not local.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let lower = host.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(ip) => is_loopback_ip(ip),
        Err(_) => false,
    }
}

pub fn is_loopback_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// A bind address that other machines can reach (anything but loopback; `0.0.0.0` and `::`
/// reach every interface).
pub fn is_exposed(addr: SocketAddr) -> bool {
    !is_loopback_ip(addr.ip())
}

/// The host of `url` when it is plaintext `http://` to a host that is not local: a token sent
/// there crosses the network in the clear. `None` for `https://` and for local hosts.
pub fn plaintext_remote_host(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://").or_else(|| {
        let (scheme, rest) = url.split_once("://")?;
        scheme.eq_ignore_ascii_case("http").then_some(rest)
    })?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split_once(']').map_or(v6, |(h, _)| h)
    } else {
        host_port.rsplit_once(':').map_or(host_port, |(h, _)| h)
    };
    (!is_loopback_host(host)).then(|| host.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_hosts() {
        for h in
            ["localhost", "LOCALHOST.", "api.localhost", "127.0.0.1", "127.4.5.6", "::1", "[::1]", "::ffff:127.0.0.1"]
        {
            assert!(is_loopback_host(h), "{h} is local");
        }
        for h in ["0.0.0.0", "::", "10.0.0.1", "example.com", "localhost.example.com", "::ffff:10.0.0.1", ""] {
            assert!(!is_loopback_host(h), "{h} is not local");
        }
    }

    #[test]
    fn plaintext_remote_urls() {
        assert_eq!(plaintext_remote_host("http://ctl.example.com:7070"), Some("ctl.example.com".into()));
        assert_eq!(plaintext_remote_host("HTTP://10.1.2.3"), Some("10.1.2.3".into()));
        assert_eq!(plaintext_remote_host("http://[2001:db8::1]:7070/x"), Some("2001:db8::1".into()));
        assert_eq!(plaintext_remote_host("http://0.0.0.0:7070"), Some("0.0.0.0".into()));
        assert_eq!(plaintext_remote_host("http://user@localhost:7070"), None);
        assert_eq!(plaintext_remote_host("http://127.0.0.1:7070"), None);
        assert_eq!(plaintext_remote_host("http://[::1]:7070"), None);
        assert_eq!(plaintext_remote_host("https://ctl.example.com"), None);
    }

    #[test]
    fn exposed_binds() {
        assert!(is_exposed("0.0.0.0:7070".parse().expect("addr")));
        assert!(is_exposed("[::]:7070".parse().expect("addr")));
        assert!(is_exposed("10.0.0.2:7070".parse().expect("addr")));
        assert!(!is_exposed("127.0.0.1:7070".parse().expect("addr")));
        assert!(!is_exposed("[::1]:7070".parse().expect("addr")));
    }
}
