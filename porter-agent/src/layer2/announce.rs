//! Takeover announcements: gratuitous ARP (IPv4) and unsolicited neighbour
//! advertisements (IPv6) that make the segment's hosts and routers replace
//! the old leader's MAC in their caches, sent from userspace through an
//! AF_PACKET socket.
//!
//! They are sent several times at short intervals: one frame can be lost,
//! and Linux ignores a second change of a neighbour entry within its
//! `locktime` (1 s by default), so later copies land where early ones did not.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use porter_common::wire::{ETH_P_ARP, ETH_P_IPV6, IPPROTO_ICMPV6, ND_NEIGHBOR_ADVERT};
use tracing::{debug, warn};

use crate::l2_interface::L2Interface;

/// How many times a takeover is announced, and how far apart.
pub const TAKEOVER_COPIES: u32 = 5;
pub const TAKEOVER_INTERVAL: Duration = Duration::from_millis(250);

const BROADCAST: [u8; 6] = [0xff; 6];
/// ff02::1, all nodes, and its multicast MAC.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
/// Override only: unsolicited, and it replaces cached addresses (RFC 4861 7.2.6).
const NA_OVERRIDE: u8 = 0x20;

/// The frame that announces `eip` at `mac`, with its destination MAC.
pub fn announcement(mac: [u8; 6], eip: IpAddr) -> ([u8; 6], Vec<u8>) {
    match eip {
        IpAddr::V4(ip) => (BROADCAST, gratuitous_arp(mac, ip)),
        IpAddr::V6(ip) => (ALL_NODES_MAC, unsolicited_na(mac, ip)),
    }
}

/// An ARP request for `ip` from `ip` (sender = target), broadcast: the
/// form every stack accepts as an announcement (RFC 5227 2.4).
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut frame = ethernet(BROADCAST, mac, ETH_P_ARP);
    frame.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&ip.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&ip.octets());
    // The Ethernet minimum; a NIC would pad it anyway.
    frame.resize(60, 0);
    frame
}

/// An unsolicited neighbour advertisement of `ip` at `mac` to all nodes.
pub fn unsolicited_na(mac: [u8; 6], ip: Ipv6Addr) -> Vec<u8> {
    let mut icmp = vec![ND_NEIGHBOR_ADVERT, 0, 0, 0, NA_OVERRIDE, 0, 0, 0];
    icmp.extend_from_slice(&ip.octets());
    icmp.extend_from_slice(&[2, 1]);
    icmp.extend_from_slice(&mac);
    let check = icmpv6_checksum(ip, ALL_NODES, &icmp);
    icmp[2..4].copy_from_slice(&check.to_be_bytes());

    let mut frame = ethernet(ALL_NODES_MAC, mac, ETH_P_IPV6);
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[IPPROTO_ICMPV6, 255]);
    frame.extend_from_slice(&ip.octets());
    frame.extend_from_slice(&ALL_NODES.octets());
    frame.extend_from_slice(&icmp);
    frame
}

fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut frame = Vec::with_capacity(86);
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame
}

fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, message: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let high = pair.first().copied().unwrap_or(0);
            let low = pair.get(1).copied().unwrap_or(0);
            sum += u32::from(u16::from_be_bytes([high, low]));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(message.len() as u32).to_be_bytes());
    add(&[0, 0, 0, IPPROTO_ICMPV6]);
    add(message);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An AF_PACKET socket that sends whole Ethernet frames out of interfaces
/// of the network namespace it was opened in.
pub struct FrameSender {
    socket: OwnedFd,
}

impl FrameSender {
    /// Needs CAP_NET_RAW.
    pub fn open() -> io::Result<Self> {
        // Protocol 0: send only, never receives.
        // SAFETY: plain socket creation; the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        Ok(Self {
            socket: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Sends one announcement of `eip` out of `link`.
    pub fn send(&self, link: &L2Interface, eip: IpAddr) -> io::Result<()> {
        let (dst, frame) = announcement(link.mac, eip);
        // SAFETY: an all-zero sockaddr_ll is valid; fields set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = link.ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&dst);
        // SAFETY: frame and addr outlive the call; lengths are theirs.
        let sent = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Announces each of `eips` on every one of `links`, [`TAKEOVER_COPIES`]
    /// times, [`TAKEOVER_INTERVAL`] apart, as long as `still_led` says the
    /// node still leads it: a copy sent after a handover would pull the
    /// segment back to this node. Returns how many frames went out.
    pub async fn announce_takeover(
        &self,
        links: &[L2Interface],
        eips: &[IpAddr],
        still_led: impl Fn(IpAddr) -> bool,
    ) -> u64 {
        let mut sent = 0;
        for copy in 0..TAKEOVER_COPIES {
            if copy > 0 {
                tokio::time::sleep(TAKEOVER_INTERVAL).await;
            }
            for &eip in eips.iter().filter(|&&eip| still_led(eip)) {
                for link in links {
                    match self.send(link, eip) {
                        Ok(()) => sent += 1,
                        Err(err) => {
                            warn!(%eip, ifindex = link.ifindex, error = %err, "cannot send a takeover announcement")
                        }
                    }
                }
            }
        }
        debug!(eips = eips.len(), sent, "takeover announced");
        sent
    }
}

#[cfg(test)]
mod tests {
    use etherparse::{Icmpv6Type, NetSlice, SlicedPacket, TransportSlice};

    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

    #[test]
    fn gratuitous_arp_names_the_eip_as_sender_and_target() {
        let frame = gratuitous_arp(MAC, Ipv4Addr::new(172, 30, 0, 100));
        let mut expected = vec![0xff; 6];
        expected.extend_from_slice(&MAC);
        expected.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        expected.extend_from_slice(&MAC);
        expected.extend_from_slice(&[172, 30, 0, 100, 0, 0, 0, 0, 0, 0, 172, 30, 0, 100]);
        expected.resize(60, 0);
        assert_eq!(frame, expected);
    }

    #[test]
    fn unsolicited_na_overrides_with_our_mac_and_a_valid_checksum() {
        let eip: Ipv6Addr = "fd00:30::100".parse().expect("address");
        let (dst, frame) = announcement(MAC, IpAddr::V6(eip));
        assert_eq!(dst, ALL_NODES_MAC);
        let sliced = SlicedPacket::from_ethernet(&frame).expect("parses");
        let Some(NetSlice::Ipv6(ip)) = &sliced.net else {
            panic!("not IPv6");
        };
        assert_eq!(ip.header().hop_limit(), 255);
        assert_eq!(ip.header().destination_addr(), ALL_NODES);
        let Some(TransportSlice::Icmpv6(icmp)) = &sliced.transport else {
            panic!("not ICMPv6");
        };
        let Icmpv6Type::NeighborAdvertisement(flags) = icmp.icmp_type() else {
            panic!("not an NA: {:?}", icmp.icmp_type());
        };
        assert!(flags.r#override && !flags.solicited && !flags.router);
        let expected = icmp
            .header()
            .icmp_type
            .calc_checksum(eip.octets(), ALL_NODES.octets(), icmp.payload())
            .expect("checksum");
        assert_eq!(icmp.checksum(), expected);
        let mut option = vec![2, 1];
        option.extend_from_slice(&MAC);
        assert_eq!(
            &icmp.payload()[16..],
            &option[..],
            "target link-layer option"
        );
    }
}
