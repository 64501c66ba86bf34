//! Pool address ranges as u128 intervals, so that any IPv6 pool (a /64 has
//! 2^64 addresses) is sized and walked without overflow.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::ip_family::IpFamily;

/// An inclusive interval of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    pub family: IpFamily,
    pub start: u128,
    pub end: u128,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("`{0}` is not an IP, a CIDR or a range `a-b`")]
    Syntax(String),
    #[error("range `{0}` mixes IPv4 and IPv6")]
    MixedFamilies(String),
    #[error("range `{0}` ends before it starts")]
    Reversed(String),
}

pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4).into(),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(family: IpFamily, value: u128) -> IpAddr {
    match family {
        // Values of a V4 range never exceed u32::MAX: they come from to_u128 of a V4 address.
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::from(value as u32)),
        IpFamily::V6 => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

impl IpRange {
    /// Parses an `Eip.spec.address`: `10.0.0.1`, `10.0.0.0/24` or `10.0.0.1-10.0.0.9`.
    pub fn parse(text: &str) -> Result<Self, RangeError> {
        let text = text.trim();
        let syntax = || RangeError::Syntax(text.to_string());
        if let Some((a, b)) = text.split_once('-') {
            let a: IpAddr = a.trim().parse().map_err(|_| syntax())?;
            let b: IpAddr = b.trim().parse().map_err(|_| syntax())?;
            if IpFamily::of(a) != IpFamily::of(b) {
                return Err(RangeError::MixedFamilies(text.to_string()));
            }
            let (start, end) = (to_u128(a), to_u128(b));
            if end < start {
                return Err(RangeError::Reversed(text.to_string()));
            }
            return Ok(Self {
                family: IpFamily::of(a),
                start,
                end,
            });
        }
        if text.contains('/') {
            let net: IpNet = text.parse().map_err(|_| syntax())?;
            return Ok(Self {
                family: IpFamily::of(net.addr()),
                start: to_u128(net.network()),
                end: to_u128(net.broadcast()),
            });
        }
        let ip: IpAddr = text.parse().map_err(|_| syntax())?;
        Ok(Self::single(ip))
    }

    /// Parses an `Eip.spec.address` into the addresses the pool hands out,
    /// and the edge addresses of a CIDR it leaves out (see
    /// `EipSpec::include_network_and_broadcast`): IPv4's network and
    /// broadcast addresses, IPv6's Subnet-Router anycast address (RFC 4291
    /// 2.6.1). A CIDR of fewer than 4 addresses (/31, /32, /127, /128) has
    /// none (RFC 3021, RFC 6164); a range or a single IP is taken as written.
    pub fn parse_pool(text: &str, include_edges: bool) -> Result<(Self, Vec<IpAddr>), RangeError> {
        let range = Self::parse(text)?;
        if include_edges || !text.contains('/') || range.size() < 4 {
            return Ok((range, Vec::new()));
        }
        Ok(match range.family {
            IpFamily::V4 => (
                Self {
                    start: range.start + 1,
                    end: range.end - 1,
                    ..range
                },
                vec![range.first(), range.last()],
            ),
            IpFamily::V6 => (
                Self {
                    start: range.start + 1,
                    ..range
                },
                vec![range.first()],
            ),
        })
    }

    pub fn single(ip: IpAddr) -> Self {
        Self {
            family: IpFamily::of(ip),
            start: to_u128(ip),
            end: to_u128(ip),
        }
    }

    /// Number of addresses; `::/0` (2^128) saturates at u128::MAX.
    pub fn size(&self) -> u128 {
        (self.end - self.start).saturating_add(1)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        IpFamily::of(ip) == self.family && (self.start..=self.end).contains(&to_u128(ip))
    }

    pub fn overlaps(&self, other: &IpRange) -> bool {
        self.family == other.family && self.start <= other.end && other.start <= self.end
    }

    /// The addresses in both, if any.
    pub fn intersection(&self, other: &IpRange) -> Option<IpRange> {
        self.overlaps(other).then(|| IpRange {
            family: self.family,
            start: self.start.max(other.start),
            end: self.end.min(other.end),
        })
    }

    /// Reads back a range from its first and last address, as an `Eip`'s
    /// status shows it.
    pub fn between(first: IpAddr, last: IpAddr) -> Option<IpRange> {
        let (start, end) = (to_u128(first), to_u128(last));
        (IpFamily::of(first) == IpFamily::of(last) && start <= end).then(|| IpRange {
            family: IpFamily::of(first),
            start,
            end,
        })
    }

    pub fn first(&self) -> IpAddr {
        from_u128(self.family, self.start)
    }

    pub fn last(&self) -> IpAddr {
        from_u128(self.family, self.end)
    }

    /// The address at `offset` from the start, if inside the range.
    pub fn nth(&self, offset: u128) -> Option<IpAddr> {
        let value = self.start.checked_add(offset)?;
        (value <= self.end).then(|| from_u128(self.family, value))
    }

    pub fn offset_of(&self, ip: IpAddr) -> Option<u128> {
        self.contains(ip).then(|| to_u128(ip) - self.start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_pool_syntax_and_sizes_it() {
        let cases: &[(&str, IpFamily, &str, &str, u128)] = &[
            (
                "192.168.0.100",
                IpFamily::V4,
                "192.168.0.100",
                "192.168.0.100",
                1,
            ),
            ("10.0.0.0/24", IpFamily::V4, "10.0.0.0", "10.0.0.255", 256),
            ("10.0.0.7/24", IpFamily::V4, "10.0.0.0", "10.0.0.255", 256),
            (
                "10.0.0.10-10.0.0.20",
                IpFamily::V4,
                "10.0.0.10",
                "10.0.0.20",
                11,
            ),
            (
                " 10.0.0.1 - 10.0.0.1 ",
                IpFamily::V4,
                "10.0.0.1",
                "10.0.0.1",
                1,
            ),
            (
                "0.0.0.0/0",
                IpFamily::V4,
                "0.0.0.0",
                "255.255.255.255",
                1 << 32,
            ),
            ("2001:db8::1", IpFamily::V6, "2001:db8::1", "2001:db8::1", 1),
            (
                "2001:db8::/64",
                IpFamily::V6,
                "2001:db8::",
                "2001:db8::ffff:ffff:ffff:ffff",
                1 << 64,
            ),
            (
                "2001:db8::/32",
                IpFamily::V6,
                "2001:db8::",
                "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
                1 << 96,
            ),
            (
                "::/0",
                IpFamily::V6,
                "::",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                u128::MAX,
            ),
            (
                "2001:db8::a-2001:db8::f",
                IpFamily::V6,
                "2001:db8::a",
                "2001:db8::f",
                6,
            ),
        ];
        for (text, family, first, last, size) in cases {
            let r = IpRange::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(r.family, *family, "{text}");
            assert_eq!(r.first().to_string(), *first, "{text}");
            assert_eq!(r.last().to_string(), *last, "{text}");
            assert_eq!(r.size(), *size, "{text}");
        }
    }

    #[test]
    fn a_cidr_pool_leaves_out_its_edges_unless_told() {
        let cases: &[(&str, bool, &str, &str, &[&str])] = &[
            (
                "10.0.0.0/24",
                false,
                "10.0.0.1",
                "10.0.0.254",
                &["10.0.0.0", "10.0.0.255"],
            ),
            ("10.0.0.0/24", true, "10.0.0.0", "10.0.0.255", &[]),
            (
                "10.0.0.7/30",
                false,
                "10.0.0.5",
                "10.0.0.6",
                &["10.0.0.4", "10.0.0.7"],
            ),
            ("10.0.0.0/31", false, "10.0.0.0", "10.0.0.1", &[]),
            ("10.0.0.9/32", false, "10.0.0.9", "10.0.0.9", &[]),
            ("10.0.0.0-10.0.0.255", false, "10.0.0.0", "10.0.0.255", &[]),
            ("10.0.0.0", false, "10.0.0.0", "10.0.0.0", &[]),
            (
                "2001:db8::/64",
                false,
                "2001:db8::1",
                "2001:db8::ffff:ffff:ffff:ffff",
                &["2001:db8::"],
            ),
            ("2001:db8::/127", false, "2001:db8::", "2001:db8::1", &[]),
            (
                "2001:db8::/64",
                true,
                "2001:db8::",
                "2001:db8::ffff:ffff:ffff:ffff",
                &[],
            ),
        ];
        for (text, include, first, last, edges) in cases {
            let (r, left_out) = IpRange::parse_pool(text, *include).expect("valid");
            assert_eq!(r.first().to_string(), *first, "{text} {include}");
            assert_eq!(r.last().to_string(), *last, "{text} {include}");
            let left_out: Vec<String> = left_out.iter().map(IpAddr::to_string).collect();
            assert_eq!(left_out, *edges, "{text} {include}");
        }
    }

    #[test]
    fn rejects_malformed_pools_with_a_reason() {
        let cases: &[(&str, RangeError)] = &[
            ("", RangeError::Syntax("".into())),
            ("10.0.0", RangeError::Syntax("10.0.0".into())),
            ("10.0.0.0/33", RangeError::Syntax("10.0.0.0/33".into())),
            (
                "10.0.0.9-10.0.0.1",
                RangeError::Reversed("10.0.0.9-10.0.0.1".into()),
            ),
            (
                "10.0.0.1-2001:db8::1",
                RangeError::MixedFamilies("10.0.0.1-2001:db8::1".into()),
            ),
            ("10.0.0.1-x", RangeError::Syntax("10.0.0.1-x".into())),
        ];
        for (text, want) in cases {
            assert_eq!(IpRange::parse(text).as_ref(), Err(want), "{text}");
        }
    }

    #[test]
    fn overlap_needs_same_family_and_shared_addresses() {
        let r = |s| IpRange::parse(s).expect("valid");
        assert!(r("10.0.0.0/24").overlaps(&r("10.0.0.255-10.0.1.5")));
        assert!(!r("10.0.0.0/24").overlaps(&r("10.0.1.0/24")));
        // ::a00:0 is numerically 10.0.0.0 but another family.
        assert!(!r("10.0.0.0/24").overlaps(&r("::a00:0/120")));
        assert!(r("2001:db8::/64").overlaps(&r("2001:db8::ffff:ffff:ffff:ffff")));
    }

    #[test]
    fn intersection_keeps_the_shared_addresses_only() {
        let r = |s| IpRange::parse(s).expect("valid");
        assert_eq!(
            r("10.0.0.100-10.0.0.200").intersection(&r("10.0.0.150-10.0.0.250")),
            Some(r("10.0.0.150-10.0.0.200"))
        );
        assert_eq!(r("10.0.0.0/24").intersection(&r("10.0.1.0/24")), None);
        assert_eq!(r("10.0.0.0/24").intersection(&r("::a00:0/120")), None);
    }

    #[test]
    fn between_reads_a_published_first_and_last_address() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(
            IpRange::between(ip("10.0.0.100"), ip("10.0.0.200")),
            Some(IpRange::parse("10.0.0.100-10.0.0.200").expect("valid"))
        );
        assert_eq!(IpRange::between(ip("10.0.0.2"), ip("10.0.0.1")), None);
        assert_eq!(IpRange::between(ip("10.0.0.1"), ip("::1")), None);
    }

    #[test]
    fn nth_walks_a_v6_64_at_its_far_end() {
        let r = IpRange::parse("2001:db8::/64").expect("valid");
        let last = r.nth((1u128 << 64) - 1).expect("inside");
        assert_eq!(last.to_string(), "2001:db8::ffff:ffff:ffff:ffff");
        assert_eq!(r.nth(1u128 << 64), None);
        assert_eq!(r.offset_of(last), Some((1u128 << 64) - 1));
    }
}
