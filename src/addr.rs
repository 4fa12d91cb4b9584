//! An address as text, formatted once per request: the client address goes
//! into the log line, the journal's arrival and the shop's
//! `X-Forwarded-For`, the peer into the log line.
//!
//! Why not `to_string()` at each: an IPv4 address through `core::fmt` cost
//! about 1,300 instructions under callgrind (four `u8` Displays, each
//! padded, between `write!` calls), four times a forwarded notification,
//! plus an allocation for three of them. This writes IPv4 digits by hand
//! into an inline buffer, once; anything else (IPv6, rare on a payment
//! platform's path) is std's own `Display`, written into the same buffer.
//! The text is std's `Display` byte for byte either way (the tests below
//! compare them).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The longest text std writes for a `SocketAddr` is 58 bytes
/// (`[ffff:…:ffff%4294967295]:65535`: 1 + 39 + 1 + 10 + 2 + 5); 64 leaves
/// room for the 45-byte `x:x:x:x:x:x:d.d.d.d` form of an IPv6 address too,
/// which std does not write.
const CAPACITY: usize = 64;

/// An IP or socket address as std's `Display` writes it, held inline.
#[derive(Clone, Copy)]
pub struct AddrText {
    len: u8,
    buf: [u8; CAPACITY],
}

impl AddrText {
    /// `ip` as `ip.to_string()` writes it.
    pub fn ip(ip: IpAddr) -> AddrText {
        let mut text = AddrText::empty();
        match ip {
            IpAddr::V4(v4) => text.push_v4(v4),
            IpAddr::V6(v6) => text.push_display(&v6),
        }
        text
    }

    /// `addr` as `addr.to_string()` writes it.
    pub fn socket(addr: SocketAddr) -> AddrText {
        let mut text = AddrText::empty();
        match addr {
            SocketAddr::V4(v4) => {
                text.push_v4(*v4.ip());
                text.push(b':');
                text.push_decimal(u32::from(v4.port()));
            }
            SocketAddr::V6(v6) => text.push_display(&v6),
        }
        text
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever pushed (digits, dots, colons, brackets, hex
        // and `%` from std's IPv6 text), whole characters at a time.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or_default()
    }

    fn empty() -> AddrText {
        AddrText {
            len: 0,
            buf: [0; CAPACITY],
        }
    }

    /// Appends one byte; a byte past the capacity is dropped (std's texts
    /// fit, see [`CAPACITY`]).
    fn push(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(usize::from(self.len)) {
            *slot = b;
            self.len += 1;
        }
    }

    /// `n` in decimal, no leading zeros (`0` for zero).
    fn push_decimal(&mut self, n: u32) {
        let mut digits = [0u8; 10];
        let mut i = digits.len();
        let mut n = n;
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        digits[i..].iter().for_each(|&d| self.push(d));
    }

    /// `a.b.c.d`.
    fn push_v4(&mut self, ip: Ipv4Addr) {
        let [a, b, c, d] = ip.octets();
        self.push_octet(a);
        self.push(b'.');
        self.push_octet(b);
        self.push(b'.');
        self.push_octet(c);
        self.push(b'.');
        self.push_octet(d);
    }

    fn push_octet(&mut self, n: u8) {
        if n >= 100 {
            self.push(b'0' + n / 100);
        }
        if n >= 10 {
            self.push(b'0' + n / 10 % 10);
        }
        self.push(b'0' + n % 10);
    }

    /// std's `Display` of `value`, into the buffer.
    fn push_display(&mut self, value: &dyn fmt::Display) {
        struct Sink<'a>(&'a mut AddrText);
        impl fmt::Write for Sink<'_> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                if usize::from(self.0.len) + s.len() > CAPACITY {
                    return Err(fmt::Error);
                }
                s.bytes().for_each(|b| self.0.push(b));
                Ok(())
            }
        }
        // An error leaves what fitted: none of std's texts is that long.
        let _ = fmt::write(&mut Sink(self), format_args!("{value}"));
    }
}

impl fmt::Display for AddrText {
    /// As std's address `Display`s: padded to a width or cut to a
    /// precision when the format asks.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl fmt::Debug for AddrText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv6Addr, SocketAddrV4, SocketAddrV6};

    fn ips() -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.0.1",
            "127.0.0.1",
            "1.2.3.4",
            "9.10.99.100",
            "100.199.200.255",
            "110.75.1.1",
            "::",
            "::1",
            "::ffff:1.2.3.4",
            "::ffff:0.0.0.0",
            "::ffff:255.255.255.255",
            "::1.2.3.4",
            "64:ff9b::1.2.3.4",
            "2001:db8::1",
            "2001:db8:0:0:1:0:0:1",
            "fe80::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "1:0:1:0:1:0:1:0",
            "0:0:1::",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        // Every octet value in every position, and a spread of others.
        for n in 0..=255u8 {
            ips.push(IpAddr::V4(Ipv4Addr::new(n, 0, n, 255 - n)));
            ips.push(IpAddr::V4(Ipv4Addr::new(255 - n, n, 7, n)));
        }
        let mut x = 0x9e37_79b9_u32;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            ips.push(IpAddr::V4(Ipv4Addr::from(x)));
            let y = u128::from(x).wrapping_mul(0x2545_f491_4f6c_dd1d_u128) << (x % 64);
            ips.push(IpAddr::V6(Ipv6Addr::from(y)));
            ips.push(IpAddr::V6(Ipv4Addr::from(x).to_ipv6_mapped()));
        }
        ips
    }

    /// Byte for byte what `to_string()` writes, for IPv4, IPv6 and the
    /// IPv4-mapped form, at the edges and over a spread of addresses.
    #[test]
    fn an_ip_is_what_std_writes() {
        for ip in ips() {
            assert_eq!(AddrText::ip(ip).as_str(), ip.to_string());
            assert_eq!(AddrText::ip(ip).to_string(), ip.to_string());
        }
    }

    /// The same for socket addresses, ports 0 and 65535 included, IPv6
    /// ones bracketed, with a scope id and flow info.
    #[test]
    fn a_socket_address_is_what_std_writes() {
        let ports = [0u16, 1, 9, 10, 80, 443, 4242, 9999, 10000, 65535];
        let mut n = 0u32;
        for ip in ips() {
            n = n.wrapping_add(1);
            let port = ports[n as usize % ports.len()];
            let addrs = match ip {
                IpAddr::V4(v4) => vec![SocketAddr::V4(SocketAddrV4::new(v4, port))],
                IpAddr::V6(v6) => vec![
                    SocketAddr::V6(SocketAddrV6::new(v6, port, 0, 0)),
                    SocketAddr::V6(SocketAddrV6::new(v6, port, n, n)),
                    SocketAddr::V6(SocketAddrV6::new(v6, port, 0, u32::MAX)),
                ],
            };
            for addr in addrs {
                assert_eq!(AddrText::socket(addr).as_str(), addr.to_string());
            }
        }
        // The longest text std writes fits.
        let longest = SocketAddr::V6(SocketAddrV6::new(
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
            65535,
            u32::MAX,
            u32::MAX,
        ));
        assert_eq!(longest.to_string().len(), 58);
        assert_eq!(AddrText::socket(longest).as_str(), longest.to_string());
    }

    /// A width or precision in the format does what it does to std's.
    #[test]
    fn a_format_spec_pads_as_std_does() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let sa: SocketAddr = "10.0.0.1:65535".parse().unwrap();
        let text = AddrText::ip(ip);
        let stext = AddrText::socket(sa);
        assert_eq!(
            format!("{text:>20}|{text:<20}|{text:^20}|{text:.4}"),
            format!("{ip:>20}|{ip:<20}|{ip:^20}|{ip:.4}")
        );
        assert_eq!(
            format!("{stext:>30}|{stext:.3}"),
            format!("{sa:>30}|{sa:.3}")
        );
        assert_eq!(format!("{text:?}"), format!("{:?}", ip.to_string()));
    }
}
