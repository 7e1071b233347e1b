//! The client IP and its quota prefix.
//!
//! The client IP is the TCP peer, unless the peer is a trusted proxy: then the forwarding header
//! (`X-Forwarded-For`, or RFC 7239 `Forwarded`, whichever the config names) is walked from the
//! right — each proxy appends the address it saw — and the first address that is *not* a trusted
//! proxy is the client. If every address is trusted, the leftmost one wins. A spoofed header from
//! an untrusted peer is never read.
//!
//! Contract for bad input: a malformed entry (not an IP, `unknown`, an obfuscated `_id`, garbage)
//! stops the walk and the last good address is used — the trusted proxy nearest to the garbage, or
//! the peer itself. Everything left of an entry we cannot read was written by someone we cannot
//! vouch for, so the conservative answer is the nearest address we can. The walk also stops after
//! [`MAX_HOPS`] entries, so a huge header costs bounded work.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, what a dual-stack socket reports for an IPv4
//! client) are treated as IPv4 everywhere, so quotas and trust lists see one address family.

use std::net::{IpAddr, Ipv6Addr, SocketAddrV4};

use http::header::{HeaderMap, HeaderName, FORWARDED};
use ipnet::IpNet;

/// Entries walked at most, from the right. Real chains are 1–3 hops.
pub const MAX_HOPS: usize = 16;

/// `X-Forwarded-For` (not in `http::header`).
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Which forwarding header the trusted proxies append. Exactly one is read: reading both would
/// let a client smuggle the other one through a proxy that only appends to the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client;proto=https, for="[2001:db8::1]:4711"`.
    Forwarded,
}

/// `::ffff:a.b.c.d` → `a.b.c.d`; everything else unchanged.
pub fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The quota scope of `ip`: its /`v4_len` (IPv4) or /`v6_len` (IPv6) network, host bits zeroed.
/// Lengths beyond the family's width are clamped (32 / 128). DESIGN.md defaults: /24 and /56.
pub fn ip_prefix(ip: IpAddr, v4_len: u8, v6_len: u8) -> IpNet {
    let ip = normalize(ip);
    let len = match ip {
        IpAddr::V4(_) => v4_len.min(32),
        IpAddr::V6(_) => v6_len.min(128),
    };
    IpNet::new(ip, len).expect("length clamped to the family's width").trunc()
}

/// The client address for a request from `peer`. `trusted` says whether an address is a trusted
/// proxy (it is given normalized addresses).
pub fn client_ip(
    headers: &HeaderMap,
    peer: IpAddr,
    which: ForwardedHeader,
    trusted: impl Fn(IpAddr) -> bool,
) -> IpAddr {
    let mut last_good = normalize(peer);
    if !trusted(last_good) {
        return last_good;
    }
    let name = match which {
        ForwardedHeader::XForwardedFor => &X_FORWARDED_FOR,
        ForwardedHeader::Forwarded => &FORWARDED,
    };
    // Several header lines form one list, in order (RFC 9110 §5.3); walk lines and entries
    // from the right.
    let mut walked = 0;
    for line in headers.get_all(name).iter().rev() {
        let Ok(line) = line.to_str() else { return last_good };
        for entry in line.rsplit(',') {
            walked += 1;
            if walked > MAX_HOPS {
                return last_good;
            }
            let parsed = match which {
                ForwardedHeader::XForwardedFor => parse_node(entry),
                ForwardedHeader::Forwarded => forwarded_for(entry).and_then(parse_node),
            };
            let Some(ip) = parsed else { return last_good };
            if !trusted(ip) {
                return ip;
            }
            last_good = ip;
        }
    }
    // Every address was a trusted proxy (or there was no header): the leftmost / the peer.
    last_good
}

/// The `for=` value of one `Forwarded` element (`for=x;proto=https;by=y`), if any. Parameter
/// names are case-insensitive (RFC 7239 §4).
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
    })
}

/// One node: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:4711`,
/// optionally in double quotes. `unknown` and obfuscated identifiers (`_hidden`) are `None`.
fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    let s = match s.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"')?,
        None => s,
    };
    let ip = if let Some(rest) = s.strip_prefix('[') {
        let (host, port) = rest.split_once(']')?;
        if !(port.is_empty() || is_port(port.strip_prefix(':')?)) {
            return None;
        }
        IpAddr::V6(host.parse::<Ipv6Addr>().ok()?)
    } else if let Ok(ip) = s.parse::<IpAddr>() {
        ip
    } else {
        IpAddr::V4(*s.parse::<SocketAddrV4>().ok()?.ip())
    };
    Some(normalize(ip))
}

/// RFC 7239 node-port: a decimal port or an obfuscated `_token`.
fn is_port(p: &str) -> bool {
    p.parse::<u16>().is_ok()
        || (p.starts_with('_')
            && p.len() > 1
            && p[1..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted(ip: IpAddr) -> bool {
        let nets: [IpNet; 2] = ["10.0.0.0/8".parse().unwrap(), "2001:db8:ffff::/48".parse().unwrap()];
        nets.iter().any(|n| n.contains(&ip))
    }

    fn headers(name: &HeaderName, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn xff(values: &[&str], peer: &str) -> IpAddr {
        client_ip(&headers(&X_FORWARDED_FOR, values), ip(peer), ForwardedHeader::XForwardedFor, trusted)
    }

    fn fwd(values: &[&str], peer: &str) -> IpAddr {
        client_ip(&headers(&FORWARDED, values), ip(peer), ForwardedHeader::Forwarded, trusted)
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_xff_says() {
        assert_eq!(xff(&["1.1.1.1"], "203.0.113.9"), ip("203.0.113.9"));
        assert_eq!(xff(&["10.0.0.1, 1.1.1.1"], "203.0.113.9"), ip("203.0.113.9"));
        assert_eq!(fwd(&["for=1.1.1.1"], "203.0.113.9"), ip("203.0.113.9"));
    }

    #[test]
    fn multi_hop_picks_first_untrusted_from_the_right() {
        // client spoofs "6.6.6.6", real client 198.51.100.7, then two trusted hops.
        assert_eq!(xff(&["6.6.6.6, 198.51.100.7, 10.0.0.2"], "10.0.0.1"), ip("198.51.100.7"));
        // Same list split over two header lines.
        assert_eq!(xff(&["6.6.6.6", "198.51.100.7, 10.0.0.2"], "10.0.0.1"), ip("198.51.100.7"));
        // No header at all through a trusted proxy: the proxy itself.
        assert_eq!(xff(&[], "10.0.0.1"), ip("10.0.0.1"));
    }

    #[test]
    fn all_trusted_means_leftmost() {
        assert_eq!(xff(&["10.1.1.1, 10.0.0.2"], "10.0.0.1"), ip("10.1.1.1"));
    }

    #[test]
    fn malformed_entry_stops_at_last_good() {
        assert_eq!(xff(&["198.51.100.7, garbage, 10.0.0.2"], "10.0.0.1"), ip("10.0.0.2"));
        assert_eq!(xff(&["198.51.100.7, "], "10.0.0.1"), ip("10.0.0.1"));
        assert_eq!(fwd(&["for=198.51.100.7, for=unknown"], "10.0.0.1"), ip("10.0.0.1"));
        assert_eq!(fwd(&["for=_hidden, for=10.0.0.3"], "10.0.0.1"), ip("10.0.0.3"));
    }

    #[test]
    fn ports_brackets_and_mapped_addresses() {
        assert_eq!(xff(&["198.51.100.7:5555"], "10.0.0.1"), ip("198.51.100.7"));
        assert_eq!(xff(&["[2001:db8::7]:443"], "10.0.0.1"), ip("2001:db8::7"));
        assert_eq!(xff(&["2001:db8::7"], "10.0.0.1"), ip("2001:db8::7"));
        assert_eq!(xff(&["::ffff:198.51.100.7"], "::ffff:10.0.0.1"), ip("198.51.100.7"));
        // A mapped peer counts as IPv4 for the trust check and the answer.
        assert_eq!(xff(&[], "::ffff:203.0.113.9"), ip("203.0.113.9"));
    }

    #[test]
    fn forwarded_header_rfc7239() {
        assert_eq!(fwd(&[r#"for="[2001:db8::1]:4711""#], "10.0.0.1"), ip("2001:db8::1"));
        assert_eq!(fwd(&["For=198.51.100.7;proto=https;by=10.0.0.1"], "10.0.0.1"), ip("198.51.100.7"));
        assert_eq!(
            fwd(&[r#"for=6.6.6.6, for=198.51.100.7;proto=http, for="[2001:db8:ffff::2]""#], "2001:db8:ffff::1"),
            ip("198.51.100.7")
        );
        assert_eq!(fwd(&[r#"for="_gazonk""#], "10.0.0.1"), ip("10.0.0.1"));
        assert_eq!(fwd(&["proto=https"], "10.0.0.1"), ip("10.0.0.1"), "element without for=");
        // The X-Forwarded-For header is not read when Forwarded is configured.
        let mut h = headers(&X_FORWARDED_FOR, &["198.51.100.7"]);
        h.append(FORWARDED, HeaderValue::from_static("for=192.0.2.1"));
        assert_eq!(client_ip(&h, ip("10.0.0.1"), ForwardedHeader::Forwarded, trusted), ip("192.0.2.1"));
    }

    #[test]
    fn walk_is_bounded() {
        let long = vec!["10.0.0.9"; 40].join(", ");
        let v = format!("198.51.100.7, {long}");
        assert_eq!(xff(&[&v], "10.0.0.1"), ip("10.0.0.9"));
    }

    #[test]
    fn prefixes() {
        assert_eq!(ip_prefix(ip("198.51.100.77"), 24, 56), "198.51.100.0/24".parse::<IpNet>().unwrap());
        assert_eq!(ip_prefix(ip("2001:db8:1:2ff::1"), 24, 56), "2001:db8:1:200::/56".parse::<IpNet>().unwrap());
        assert_eq!(ip_prefix(ip("::ffff:198.51.100.77"), 24, 56), "198.51.100.0/24".parse::<IpNet>().unwrap());
        assert_eq!(ip_prefix(ip("198.51.100.77"), 40, 200), "198.51.100.77/32".parse::<IpNet>().unwrap());
    }
}
