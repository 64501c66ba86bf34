//! TCP sockets with the options BGP sessions need: TCP MD5 signatures
//! (RFC 2385), the TTL for eBGP (1 unless multihop), the minimum TTL of
//! GTSM (RFC 5082), and a local address.
use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
};

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Linux `struct tcp_md5sig` (include/uapi/linux/tcp.h).
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: libc::c_int,
    key: [u8; 80],
}

/// Installs (or, with an empty key, removes) the MD5 key for `peer` on `socket`.
/// On a listening socket this makes the kernel accept only segments signed
/// with the key from that peer, and sign its own.
pub fn set_md5(socket: &impl AsRawFd, peer: IpAddr, key: &[u8]) -> io::Result<()> {
    if key.len() > 80 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TCP MD5 passwords are at most 80 octets",
        ));
    }
    // SAFETY: an all-zero tcp_md5sig is a valid (empty) value.
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    let sockaddr = socket2::SockAddr::from(SocketAddr::new(peer, 0));
    // SAFETY: SockAddr holds at most a sockaddr_storage worth of bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(
            sockaddr.as_ptr().cast::<u8>(),
            (&raw mut sig.addr).cast::<u8>(),
            sockaddr.len() as usize,
        );
    }
    sig.keylen = key.len() as u16;
    sig.key[..key.len()].copy_from_slice(key);
    porter_sockopt::set(socket, libc::IPPROTO_TCP, libc::TCP_MD5SIG, &sig)
}

/// Options for one peer's connections.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    pub md5: Option<String>,
    /// Outgoing TTL / hop limit; `None` keeps the system default.
    pub ttl: Option<u8>,
    /// GTSM: the least TTL / hop limit accepted from the peer.
    pub min_ttl: Option<u8>,
    pub local_address: Option<IpAddr>,
}

/// Applies the TTL to a connected socket (ours or accepted).
pub fn set_ttl(stream: &TcpStream, ttl: Option<u8>) -> io::Result<()> {
    let Some(ttl) = ttl else { return Ok(()) };
    let socket = SockRef::from(stream);
    match stream.peer_addr()? {
        SocketAddr::V4(_) => socket.set_ttl_v4(u32::from(ttl)),
        SocketAddr::V6(_) => socket.set_unicast_hops_v6(u32::from(ttl)),
    }
}

/// `IPV6_MINHOPCOUNT` (include/uapi/linux/in6.h), which the libc crate lacks.
const IPV6_MINHOPCOUNT: libc::c_int = 73;

/// GTSM: the kernel drops the peer's segments whose TTL (IPv4) or hop limit
/// (IPv6) is below `min`. IPv4 peers on an IPv6 socket (v4-mapped) are
/// checked against IP_MINTTL, which such a socket takes too.
pub fn set_min_ttl(socket: &impl AsRawFd, peer: IpAddr, min: Option<u8>) -> io::Result<()> {
    let Some(min) = min else { return Ok(()) };
    let (level, option) = match peer.to_canonical() {
        IpAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_MINTTL),
        IpAddr::V6(_) => (libc::IPPROTO_IPV6, IPV6_MINHOPCOUNT),
    };
    porter_sockopt::set(socket, level, option, &libc::c_int::from(min))
}

pub async fn connect(peer: SocketAddr, options: &ConnectOptions) -> io::Result<TcpStream> {
    let domain = Domain::for_address(peer);
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    if let Some(password) = &options.md5 {
        set_md5(&socket, peer.ip(), password.as_bytes())?;
    }
    if let Some(ttl) = options.ttl {
        match peer {
            SocketAddr::V4(_) => socket.set_ttl_v4(u32::from(ttl))?,
            SocketAddr::V6(_) => socket.set_unicast_hops_v6(u32::from(ttl))?,
        }
    }
    set_min_ttl(&socket, peer.ip(), options.min_ttl)?;
    if let Some(local) = options.local_address {
        socket.bind(&SocketAddr::new(local, 0).into())?;
    }
    let socket = TcpSocket::from_std_stream(socket.into());
    socket.connect(peer).await
}

/// A listening socket for passive sessions.
pub fn listen(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if address.is_ipv6() {
        // Also accept IPv4 peers (as v4-mapped addresses) on [::].
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(128)?;
    TcpListener::from_std(socket.into())
}

/// How a peer address must be spelled in a socket option on `listener`:
/// IPv4 peers appear v4-mapped on an IPv6 listener.
pub fn listener_peer_address(listener: &TcpListener, peer: IpAddr) -> io::Result<IpAddr> {
    Ok(match (listener.local_addr()?, peer) {
        (SocketAddr::V6(_), IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
        _ => peer,
    })
}
