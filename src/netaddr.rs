//! Client addresses: networks in CIDR notation (`http.trusted_proxies`), the client a request came from when it
//! passed through trusted proxies, and the key a client is counted under by per-client limits.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use axum::http::HeaderMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A network: `10.0.0.0/8`, `2001:db8::/32`, or a single address (`192.0.2.7`, the same as `/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it maps.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (address, prefix) = match s.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (s, None),
        };
        let network = canonical(address.trim().parse::<IpAddr>().map_err(|_| format!("`{s}` is not an address"))?);
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be a number from 0 to {max}"))?,
        };
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Whether any of `networks` holds `ip`.
pub fn trusted(networks: &[Cidr], ip: IpAddr) -> bool {
    networks.iter().any(|n| n.contains(ip))
}

/// The address a request came from: the socket's peer, unless the peer is a trusted proxy; then the hops the
/// proxies recorded (`X-Forwarded-For`, else `Forwarded: for=`) are walked from the nearest, and the first that is
/// not itself a trusted proxy is the client. Hops a client wrote itself sit beyond that one, so they are never
/// believed. A hop that is not an address (`unknown`, an obfuscated name) ends the walk at the last address read.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, proxies: &[Cidr]) -> IpAddr {
    let peer = canonical(peer);
    if !trusted(proxies, peer) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarded_hops(headers).iter().rev() {
        let Some(ip) = hop else { break };
        client = canonical(*ip);
        if !trusted(proxies, client) {
            break;
        }
    }
    client
}

/// The hops of `X-Forwarded-For` (every line, in order), or else of `Forwarded`'s `for=` parameters.
fn forwarded_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let lines = |name: &str| headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>();
    let x_forwarded_for = lines("x-forwarded-for");
    if !x_forwarded_for.is_empty() {
        return x_forwarded_for.iter().flat_map(|l| l.split(',')).map(|hop| hop.trim().parse().ok()).collect();
    }
    lines("forwarded")
        .iter()
        .flat_map(|l| l.split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                name.trim().eq_ignore_ascii_case("for").then(|| node_address(value.trim()))
            })
        })
        .collect()
}

/// The address of a `Forwarded` node: `192.0.2.60`, `"192.0.2.60:4711"`, `"[2001:db8::1]:4711"`.
fn node_address(node: &str) -> Option<IpAddr> {
    let node = node.trim_matches('"');
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    node.parse().ok().or_else(|| node.rsplit_once(':')?.0.parse().ok())
}

/// The key a client address is counted under by per-client limits: an IPv4 address as it is, an IPv6 address by
/// its /64 (one host is commonly given a whole /64, so counting addresses would let it count as millions).
pub fn client_key(ip: IpAddr) -> String {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, value.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_hold_their_addresses() {
        let n = nets(&["10.0.0.0/8", "2001:db8::/32", "192.0.2.7", "0.0.0.0/0"]);
        assert!(n[0].contains(ip("10.200.3.4")) && !n[0].contains(ip("11.0.0.1")));
        assert!(n[0].contains(ip("::ffff:10.1.1.1")), "IPv4-mapped");
        assert!(n[1].contains(ip("2001:db8:ffff::1")) && !n[1].contains(ip("2001:db9::1")));
        assert!(n[2].contains(ip("192.0.2.7")) && !n[2].contains(ip("192.0.2.8")));
        assert!(n[3].contains(ip("203.0.113.1")) && !n[3].contains(ip("2001:db8::1")));
        for bad in ["10.0.0.0/33", "2001:db8::/129", "ten", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(n[0].to_string(), "10.0.0.0/8");
    }

    #[test]
    fn the_client_is_the_nearest_hop_that_is_not_a_trusted_proxy() {
        let proxies = nets(&["10.0.0.0/8"]);
        let forwarded = headers(&[("x-forwarded-for", "1.2.3.4, 198.51.100.9, 10.0.0.3")]);
        // Through two trusted proxies: the address the outer proxy saw; what the client wrote (1.2.3.4) is not.
        assert_eq!(client_ip(ip("10.0.0.2"), &forwarded, &proxies), ip("198.51.100.9"));
        // Not from a proxy: the header is the client's own words, ignored.
        assert_eq!(client_ip(ip("203.0.113.5"), &forwarded, &proxies), ip("203.0.113.5"));
        // Without proxies configured nothing is believed.
        assert_eq!(client_ip(ip("10.0.0.2"), &forwarded, &[]), ip("10.0.0.2"));
        // Several header lines are one list.
        let lines = headers(&[("x-forwarded-for", "1.2.3.4"), ("x-forwarded-for", "198.51.100.9")]);
        assert_eq!(client_ip(ip("10.0.0.2"), &lines, &proxies), ip("198.51.100.9"));
        // No header: the proxy itself.
        assert_eq!(client_ip(ip("10.0.0.2"), &HeaderMap::new(), &proxies), ip("10.0.0.2"));
        // A hop that is not an address ends the walk.
        let garbled = headers(&[("x-forwarded-for", "198.51.100.9, unknown")]);
        assert_eq!(client_ip(ip("10.0.0.2"), &garbled, &proxies), ip("10.0.0.2"));
    }

    #[test]
    fn forwarded_is_read_when_x_forwarded_for_is_absent() {
        let proxies = nets(&["10.0.0.0/8"]);
        let h = headers(&[("forwarded", r#"for=192.0.2.43, for="[2001:db8:cafe::17]:4711";proto=https"#)]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &proxies), ip("2001:db8:cafe::17"));
        let h = headers(&[("forwarded", r#"for="198.51.100.1:8080""#)]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &proxies), ip("198.51.100.1"));
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let key = |s: &str| client_key(ip(s));
        assert_eq!(key("203.0.113.7"), "203.0.113.7");
        assert_eq!(key("::ffff:203.0.113.7"), "203.0.113.7");
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        assert_eq!(key("2001:db8:1:2::1"), "2001:db8:1:2::/64");
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    }
}
