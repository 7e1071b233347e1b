//! X-Forwarded-For, Forwarded and gateway identity headers from trusted and untrusted peers:
//! never a panic, and an untrusted peer's client IP is always the peer itself (normalised).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

thread_local! {
    static ID: cvgate::policy::identity::Identifier = common::identifier();
}

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    peer: [u8; 16],
    v4: bool,
    headers: Vec<(u8, &'a [u8])>,
}

const NAMES: [&str; 7] = [
    "x-forwarded-for",
    "forwarded",
    "x-real-ip",
    "x-employer-account",
    "x-employer-kvk",
    "x-assurance-level",
    "authorization",
];

fuzz_target!(|input: Input<'_>| {
    let peer: std::net::IpAddr = if input.v4 {
        // Mostly loopback (trusted), sometimes not.
        let b = input.peer;
        std::net::Ipv4Addr::new(if b[0] % 2 == 0 { 127 } else { b[0] }, b[1], b[2], b[3]).into()
    } else {
        std::net::Ipv6Addr::from(input.peer).into()
    };
    let mut h = http::HeaderMap::new();
    for (n, v) in input.headers.iter().take(32) {
        if let Ok(v) = http::HeaderValue::from_bytes(v) {
            h.append(NAMES[usize::from(*n) % NAMES.len()], v);
        }
    }
    ID.with(|id| {
        let ip = id.client_ip(&h, peer);
        // cvgate reads an IPv4-mapped IPv6 peer (::ffff:a.b.c.d) as the IPv4 address.
        if !id.policy().is_trusted_proxy(peer.to_canonical()) {
            assert_eq!(ip, peer.to_canonical(), "an untrusted peer chose its client IP");
        }
        let _ = id.identify(&mut h, peer);
    });
});
