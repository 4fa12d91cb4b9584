//! Source address and allow list: the third step of the flow.
//!
//! The source is the TCP peer, or, when the peer is one of the gateway's
//! `trusted_proxies`, the right-most `X-Forwarded-For` address that is not a
//! trusted proxy itself (every `X-Forwarded-For` line counts, in order).
//! Addresses are normalised first, so an IPv4-mapped IPv6 peer
//! (`::ffff:110.75.1.1`) is matched as the IPv4 address it is.
//!
//! Security: `X-Forwarded-For` is attacker-controlled unless a trusted proxy
//! wrote it; only entries to the right of the first untrusted hop are
//! believed. An entry that is not an address ends the walk with a refusal,
//! never a fallback to a guess. An empty allow list admits nobody.
//!
//! Outcome: [`Outcome::IpDenied`](crate::ack::Outcome::IpDenied) (403).

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

/// CIDRs allowed to deliver notifications to one route. Empty admits nobody.
#[derive(Debug, Clone, Default)]
pub struct AllowList(Box<[IpNet]>);

/// A refusal, carrying the address (or the unusable header value) refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("source address {0} is not in the route's allow list")]
    NotAllowed(IpAddr),
    #[error("X-Forwarded-For entry `{0}` from a trusted proxy is not an IP address")]
    BadForwardedFor(String),
}

impl Denied {
    /// The `reason` label of `callgate_rejections_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Denied::NotAllowed(_) => "ip_denied",
            Denied::BadForwardedFor(_) => "bad_forwarded_for",
        }
    }
}

impl AllowList {
    pub fn new(nets: Vec<IpNet>) -> Self {
        AllowList(nets.into_boxed_slice())
    }

    /// Admits `ip` if any allowed network contains it.
    pub fn check(&self, ip: IpAddr) -> Result<(), Denied> {
        if contains(&self.0, ip) {
            Ok(())
        } else {
            Err(Denied::NotAllowed(ip))
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The allowed networks, in the order they were written.
    pub fn nets(&self) -> &[IpNet] {
        &self.0
    }
}

/// Why a network is too wide to be a platform's address list (`0.0.0.0/0`
/// admits everybody; the platforms publish /16 and narrower), for `check`'s
/// warnings: IPv4 wider than /8, IPv6 wider than /16.
pub fn too_wide(net: &IpNet) -> Option<String> {
    let wide = match net {
        IpNet::V4(n) => n.prefix_len() < 8,
        IpNet::V6(n) => n.prefix_len() < 16,
    };
    if !wide {
        return None;
    }
    Some(if net.prefix_len() == 0 {
        format!("`{net}` admits every address")
    } else {
        format!("`{net}` admits a large part of the internet")
    })
}

fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&ip))
}

/// The address a notification came from (see the module docs).
pub fn client_ip(
    peer: SocketAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Result<IpAddr, Denied> {
    let mut ip = peer.ip().to_canonical();
    if !contains(trusted, ip) {
        return Ok(ip);
    }
    let lines: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    for line in lines.iter().rev() {
        for entry in line.rsplit(|&b| b == b',') {
            let text = String::from_utf8_lossy(entry);
            let entry = text.trim();
            if entry.is_empty() {
                continue;
            }
            let hop = parse_hop(entry)
                .ok_or_else(|| Denied::BadForwardedFor(entry.chars().take(64).collect()))?;
            if !contains(trusted, hop) {
                return Ok(hop);
            }
            ip = hop;
        }
    }
    // Every hop is a trusted proxy: the left-most one is as far as we can see.
    Ok(ip)
}

/// Parses one X-Forwarded-For hop: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`,
/// `[2001:db8::1]:443`, IPv4-mapped forms included.
fn parse_hop(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// Parses a CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a bare address (a /32 or
/// /128). Host bits must be zero. IPv4-mapped IPv6 networks are turned into
/// their IPv4 form, so that they match the IPv4 addresses clients are
/// normalised to.
pub fn parse_net(value: &str) -> Result<IpNet, String> {
    let v = value.trim();
    let net: IpNet = if v.contains('/') {
        v.parse::<IpNet>().map_err(|e| e.to_string())?
    } else {
        let ip: std::net::IpAddr = v
            .parse()
            .map_err(|e: std::net::AddrParseError| e.to_string())?;
        IpNet::from(ip)
    };
    if net.trunc() != net {
        return Err(format!("host bits are set; did you mean {}?", net.trunc()));
    }
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && v6.prefix_len() >= 96
    {
        return ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
            .map(IpNet::V4)
            .map_err(|e| e.to_string());
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| parse_net(s).unwrap()).collect()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn peer(s: &str) -> SocketAddr {
        SocketAddr::new(s.parse().unwrap(), 40000)
    }

    #[test]
    fn untrusted_peer_is_the_source_and_xff_is_ignored() {
        let ip = client_ip(
            peer("203.0.113.9"),
            &xff(&["110.75.1.1"]),
            &nets(&["10.0.0.0/8"]),
        )
        .unwrap();
        assert_eq!(ip, "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn trusted_peer_yields_rightmost_untrusted_hop() {
        let trusted = nets(&["10.0.0.0/8", "192.168.0.0/16"]);
        let h = xff(&["1.1.1.1, 110.75.1.1", "192.168.1.1"]);
        let ip = client_ip(peer("10.0.0.2"), &h, &trusted).unwrap();
        assert_eq!(ip, "110.75.1.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn all_trusted_hops_yield_the_leftmost() {
        let trusted = nets(&["10.0.0.0/8"]);
        let ip = client_ip(peer("10.0.0.2"), &xff(&["10.9.9.9, 10.1.1.1"]), &trusted).unwrap();
        assert_eq!(ip, "10.9.9.9".parse::<IpAddr>().unwrap());
        let ip = client_ip(peer("10.0.0.2"), &HeaderMap::new(), &trusted).unwrap();
        assert_eq!(ip, "10.0.0.2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn ports_brackets_and_mapped_addresses() {
        let trusted = nets(&["127.0.0.1/32"]);
        for (hop, want) in [
            ("110.75.1.1:5555", "110.75.1.1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("[2001:db8::2]", "2001:db8::2"),
            ("::ffff:110.75.1.1", "110.75.1.1"),
        ] {
            let ip = client_ip(peer("127.0.0.1"), &xff(&[hop]), &trusted).unwrap();
            assert_eq!(ip, want.parse::<IpAddr>().unwrap(), "{hop}");
        }
        // A mapped peer is matched as IPv4 against trusted and allow lists.
        let ip = client_ip(peer("::ffff:127.0.0.1"), &xff(&["110.75.1.1"]), &trusted).unwrap();
        assert_eq!(ip, "110.75.1.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn garbage_hop_from_trusted_proxy_is_refused() {
        let trusted = nets(&["127.0.0.1/32"]);
        let err = client_ip(peer("127.0.0.1"), &xff(&["unknown, 110.75.1.1"]), &trusted);
        assert_eq!(err, Ok("110.75.1.1".parse().unwrap()));
        let err = client_ip(peer("127.0.0.1"), &xff(&["110.75.1.1, bogus"]), &trusted);
        assert_eq!(err, Err(Denied::BadForwardedFor("bogus".into())));
    }

    #[test]
    fn allow_list_checks_and_empty_admits_nobody() {
        let list = AllowList::new(nets(&["110.75.0.0/16", "2001:db8::/32"]));
        assert!(list.check("110.75.3.4".parse().unwrap()).is_ok());
        assert!(list.check("2001:db8::5".parse().unwrap()).is_ok());
        assert_eq!(
            list.check("110.76.0.1".parse().unwrap()),
            Err(Denied::NotAllowed("110.76.0.1".parse().unwrap()))
        );
        let empty = AllowList::new(vec![]);
        assert!(empty.check("127.0.0.1".parse().unwrap()).is_err());
        assert!(empty.check("::1".parse().unwrap()).is_err());
    }

    #[test]
    fn cidrs_and_bare_addresses_parse() {
        assert_eq!(parse_net("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("127.0.0.1").unwrap().to_string(), "127.0.0.1/32");
        assert_eq!(parse_net("::1").unwrap().to_string(), "::1/128");
        assert_eq!(
            parse_net("::ffff:10.1.0.0/112").unwrap().to_string(),
            "10.1.0.0/16"
        );
        assert!(parse_net("10.0.0.1/8").unwrap_err().contains("10.0.0.0/8"));
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("example.com").is_err());
    }
}
