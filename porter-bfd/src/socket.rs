//! UDP sockets for BFD: receive sockets on the well-known ports that report
//! each packet's TTL or hop limit (RFC 5881 section 5 needs it), and one
//! transmit socket per session, sending with TTL 255 from a source port in
//! 49152-65535.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
};

use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type};
use tokio::{io::Interest, net::UdpSocket};

/// RFC 5881 section 4: the destination port of single-hop Control packets.
pub const SINGLE_HOP_PORT: u16 = 3784;
/// RFC 5883 section 5: the destination port of multihop Control packets.
pub const MULTIHOP_PORT: u16 = 4784;
/// Sent on every packet; required on received single-hop packets (GTSM, RFC 5082).
pub const TTL: u8 = 255;
const SOURCE_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;
/// An int socket option switched on.
const ON: libc::c_int = 1;

fn udp(family: IpAddr) -> io::Result<Socket> {
    let domain = match family {
        IpAddr::V4(_) => Domain::IPV4,
        IpAddr::V6(_) => Domain::IPV6,
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// A socket on `port` of every address of `family`'s kind, reporting TTLs.
pub fn receiver(ipv6: bool, port: u16) -> io::Result<UdpSocket> {
    let any = if ipv6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    let socket = udp(any)?;
    if ipv6 {
        // The IPv4 socket takes IPv4; no mapped addresses here.
        socket.set_only_v6(true)?;
        porter_sockopt::set(&socket, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, &ON)?;
    } else {
        porter_sockopt::set(&socket, libc::IPPROTO_IP, libc::IP_RECVTTL, &ON)?;
    }
    socket.bind(&SockAddr::from(SocketAddr::new(any, port)))?;
    UdpSocket::from_std(socket.into())
}

/// A session's transmit socket: TTL 255, bound to `local` (or any address
/// of the remote's family) and to a free port of 49152-65535 starting at
/// one derived from `hint`, connected to the peer's BFD port.
pub fn sender(remote: SocketAddr, local: Option<IpAddr>, hint: u32) -> io::Result<UdpSocket> {
    let socket = udp(remote.ip())?;
    match remote {
        SocketAddr::V4(_) => socket.set_ttl_v4(u32::from(TTL))?,
        SocketAddr::V6(_) => socket.set_unicast_hops_v6(u32::from(TTL))?,
    }
    let local = local.unwrap_or(match remote {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    let span = u32::from(SOURCE_PORTS.end() - SOURCE_PORTS.start()) + 1;
    let mut last = io::Error::new(io::ErrorKind::AddrInUse, "no free BFD source port");
    for attempt in 0..64 {
        let port = *SOURCE_PORTS.start() as u32 + (hint.wrapping_add(attempt * 257) % span);
        // The range above keeps the value within u16.
        let port = u16::try_from(port).unwrap_or(*SOURCE_PORTS.start());
        match socket.bind(&SockAddr::from(SocketAddr::new(local, port))) {
            Ok(()) => {
                socket.connect(&SockAddr::from(remote))?;
                return UdpSocket::from_std(socket.into());
            }
            Err(error) if error.kind() == io::ErrorKind::AddrInUse => last = error,
            Err(error) => return Err(error),
        }
    }
    Err(last)
}

/// One received datagram with its TTL or hop limit, when the kernel gave it.
pub struct Datagram {
    pub len: usize,
    pub source: SocketAddr,
    pub ttl: Option<u8>,
}

/// Receives one datagram into `buf` with its TTL (IP_TTL or IPV6_HOPLIMIT
/// control message).
pub async fn receive(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Datagram> {
    socket
        .async_io(Interest::READABLE, || receive_now(socket, buf))
        .await
}

fn receive_now(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Datagram> {
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 8];
    let mut name = SockAddrStorage::zeroed();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: zeroed msghdr is valid; every pointer below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw mut name).cast();
    msg.msg_namelen = name.size_of();
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: msg points at live buffers of the sizes it states.
    let len = unsafe { libc::recvmsg(socket.as_raw_fd(), &raw mut msg, 0) };
    let len = usize::try_from(len).map_err(|_| io::Error::last_os_error())?;
    // SAFETY: recvmsg filled msg_namelen bytes of a sockaddr_storage.
    let source = unsafe { SockAddr::new(name, msg.msg_namelen) }
        .as_socket()
        .ok_or_else(|| io::Error::other("datagram without an IP source"))?;
    let mut ttl = None;
    // SAFETY: the CMSG_* walk stays within msg_controllen as set by the kernel.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            let header = &*cmsg;
            let is_ttl = (header.cmsg_level == libc::IPPROTO_IP
                && header.cmsg_type == libc::IP_TTL)
                || (header.cmsg_level == libc::IPPROTO_IPV6
                    && header.cmsg_type == libc::IPV6_HOPLIMIT);
            if is_ttl {
                let value = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                ttl = u8::try_from(value).ok();
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    Ok(Datagram { len, source, ttl })
}
