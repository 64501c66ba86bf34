//! The routers this node sends through: every gateway in its routing tables,
//! read from `/proc/net/route` and `/proc/net/ipv6_route` (this network
//! namespace's). A Layer 2 EIP that is one of them is never answered for:
//! answering ARP/NDP for the segment's router would take every host's
//! traffic to it. The controller cannot know these addresses; the agent
//! checks them when it serves.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// `RTF_GATEWAY`: the route goes through a router.
const RTF_GATEWAY: u32 = 0x2;

/// Every gateway of this network namespace's IPv4 and IPv6 routes. A table
/// that cannot be read (IPv6 disabled, say) adds none.
pub fn gateways() -> io::Result<Vec<IpAddr>> {
    let v4 = std::fs::read_to_string("/proc/net/route")?;
    let mut out: Vec<IpAddr> = ipv4_gateways(&v4).into_iter().map(IpAddr::V4).collect();
    if let Ok(v6) = std::fs::read_to_string("/proc/net/ipv6_route") {
        out.extend(ipv6_gateways(&v6).into_iter().map(IpAddr::V6));
    }
    Ok(out)
}

/// The gateways in `/proc/net/route`: after a header line, `Iface
/// Destination Gateway Flags ...`, the addresses as the kernel's native
/// `u32` of the network-order bytes, in hex. Lines that do not read are
/// skipped.
pub fn ipv4_gateways(table: &str) -> Vec<Ipv4Addr> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace().skip(2);
            let gateway = u32::from_str_radix(fields.next()?, 16).ok()?;
            let flags = u32::from_str_radix(fields.next()?, 16).ok()?;
            let gateway = Ipv4Addr::from(gateway.to_ne_bytes());
            (flags & RTF_GATEWAY != 0 && !gateway.is_unspecified()).then_some(gateway)
        })
        .collect()
}

/// The gateways in `/proc/net/ipv6_route`: `dest plen src plen nexthop
/// metric refcnt use flags iface`, addresses as 32 hex digits in network
/// order. Lines that do not read are skipped.
pub fn ipv6_gateways(table: &str) -> Vec<Ipv6Addr> {
    table
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let next_hop = u128::from_str_radix(fields.get(4)?, 16).ok()?;
            let flags = u32::from_str_radix(fields.get(8)?, 16).ok()?;
            let next_hop = Ipv6Addr::from(next_hop);
            (flags & RTF_GATEWAY != 0 && !next_hop.is_unspecified()).then_some(next_hop)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
        eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
        eth1\t0000000A\t FE00000A\t0003\t0\t0\t0\t000000FF\t0\t0\t0\n";
    const IPV6_ROUTE: &str = "\
        fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
        00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth0\n\
        00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";

    #[test]
    fn the_gateways_of_both_tables_and_nothing_else() {
        // The kernel prints the native u32 of the address's bytes; on a
        // big-endian host the hex digits come out the other way round.
        let native = |ip: [u8; 4]| format!("{:08X}", u32::from_ne_bytes(ip));
        let table = ROUTE
            .replace("010200C0", &native([192, 0, 2, 1]))
            .replace("FE00000A", &native([10, 0, 0, 254]));
        assert_eq!(
            ipv4_gateways(&table),
            [Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(10, 0, 0, 254)]
        );
        // The unreachable default on lo has the flag but no next hop.
        assert_eq!(
            ipv6_gateways(IPV6_ROUTE),
            ["fd00::1".parse::<Ipv6Addr>().expect("address")]
        );
    }

    #[test]
    fn any_damage_to_a_table_reads_as_fewer_gateways_never_a_panic() {
        for table in [ROUTE, IPV6_ROUTE] {
            for cut in 0..=table.len() {
                let Some(prefix) = table.get(..cut) else {
                    continue;
                };
                assert!(ipv4_gateways(prefix).len() <= 2);
                assert!(ipv6_gateways(prefix).len() <= 1);
                let mangled: String = table
                    .chars()
                    .enumerate()
                    .map(|(i, c)| if i == cut { 'z' } else { c })
                    .collect();
                assert!(ipv4_gateways(&mangled).len() <= 2);
                assert!(ipv6_gateways(&mangled).len() <= 1);
            }
        }
    }

    #[test]
    fn this_namespace_tables_read() {
        // Whatever the machine's routes, reading them works.
        gateways().expect("/proc/net/route");
    }
}
