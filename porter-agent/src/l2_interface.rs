//! The interfaces Layer 2 answers go out of: their index and MAC address,
//! read from the kernel of the current network namespace.
use std::{
    ffi::{CStr, CString},
    fmt, io,
    net::{IpAddr, SocketAddr, UdpSocket},
};

/// An interface that answers ARP/NDP for led EIPs, with the MAC it claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct L2Interface {
    pub ifindex: u32,
    pub mac: [u8; 6],
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read interface {name}: {source} (does it exist in this network namespace?)")]
pub struct InterfaceError {
    pub name: String,
    pub source: io::Error,
}

impl L2Interface {
    /// Looks `name` up in the current network namespace.
    pub fn lookup(name: &str) -> Result<Self, InterfaceError> {
        let error = |source| InterfaceError {
            name: name.to_owned(),
            source,
        };
        let c_name =
            CString::new(name).map_err(|_| error(io::Error::from(io::ErrorKind::InvalidInput)))?;
        // SAFETY: a valid NUL-terminated string; no other memory is touched.
        let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        if ifindex == 0 {
            return Err(error(io::Error::last_os_error()));
        }
        Ok(Self {
            ifindex,
            mac: hardware_address(name).map_err(error)?,
        })
    }
}

/// The name of interface `ifindex` in the current network namespace.
pub fn name_of(ifindex: u32) -> Option<String> {
    let mut buffer = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(ifindex, buffer.as_mut_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(buffer.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

impl fmt::Display for L2Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.mac;
        write!(
            f,
            "ifindex {} ({:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x})",
            self.ifindex, m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

fn hardware_address(name: &str) -> io::Result<[u8; 6]> {
    // SAFETY: an all-zero ifreq is valid; the name is copied in bounded below.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= request.ifr_name.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (slot, &byte) in request.ifr_name.iter_mut().zip(bytes) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR writes into the ifreq we own.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut request) };
    let result = if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: the kernel filled the hwaddr member of the union.
        let data = unsafe { request.ifr_ifru.ifru_hwaddr.sa_data };
        let mut mac = [0u8; 6];
        for (byte, &raw) in mac.iter_mut().zip(data.iter()) {
            *byte = raw as u8;
        }
        Ok(mac)
    };
    // SAFETY: closing the socket we opened.
    unsafe { libc::close(fd) };
    result
}

/// The interface an `Eip.spec.interface` names: a NIC name as it is, or for
/// `can_reach:<ip>` the interface holding the local address the kernel
/// would send to `<ip>` from (the route lookup of a connected UDP socket,
/// which sends nothing).
pub fn resolve_choice(choice: &str) -> Result<String, InterfaceError> {
    let Some(target) = choice.strip_prefix("can_reach:") else {
        return Ok(choice.to_owned());
    };
    let error = |source| InterfaceError {
        name: choice.to_owned(),
        source,
    };
    let target: IpAddr = target.trim().parse().map_err(|_| {
        error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an IP address",
        ))
    })?;
    let bind: SocketAddr = match target {
        IpAddr::V4(_) => "0.0.0.0:0"
            .parse()
            .map_err(|_| error(io::ErrorKind::InvalidInput.into()))?,
        IpAddr::V6(_) => "[::]:0"
            .parse()
            .map_err(|_| error(io::ErrorKind::InvalidInput.into()))?,
    };
    let socket = UdpSocket::bind(bind).map_err(error)?;
    socket.connect((target, 9)).map_err(error)?;
    let local = socket.local_addr().map_err(error)?.ip();
    interface_with_address(local)
        .map_err(error)?
        .ok_or_else(|| {
            error(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no interface holds {local}"),
            ))
        })
}

/// The name of the interface that holds `address`.
fn interface_with_address(address: IpAddr) -> io::Result<Option<String>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates the list and stores its head in `list`.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = None;
    let mut entry = list;
    while !entry.is_null() && found.is_none() {
        // SAFETY: a node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*entry };
        if !ifa.ifa_addr.is_null() && ip_of(ifa.ifa_addr) == Some(address) {
            // SAFETY: ifa_name is a NUL-terminated string owned by the list.
            found = Some(
                unsafe { CStr::from_ptr(ifa.ifa_name) }
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        entry = ifa.ifa_next;
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

fn ip_of(addr: *const libc::sockaddr) -> Option<IpAddr> {
    // SAFETY: the caller checked `addr` is non-null; sa_family says which
    // struct it really is, and only that one is read.
    unsafe {
        match i32::from((*addr).sa_family) {
            libc::AF_INET => {
                let v4 = &*(addr as *const libc::sockaddr_in);
                Some(IpAddr::from(u32::from_be(v4.sin_addr.s_addr).to_be_bytes()))
            }
            libc::AF_INET6 => {
                let v6 = &*(addr as *const libc::sockaddr_in6);
                Some(IpAddr::from(v6.sin6_addr.s6_addr))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_exists_and_a_missing_interface_says_which() {
        let lo = L2Interface::lookup("lo").expect("every namespace has lo");
        assert_eq!(lo.ifindex, 1);
        let err = L2Interface::lookup("porter-nope0").expect_err("no such interface");
        assert!(err.to_string().contains("porter-nope0"), "{err}");
    }

    #[test]
    fn an_interface_choice_is_a_name_or_the_interface_that_reaches_an_address() {
        assert_eq!(resolve_choice("eth1").expect("a name"), "eth1");
        assert_eq!(
            resolve_choice("can_reach:127.0.0.1").expect("loopback"),
            "lo"
        );
        let err = resolve_choice("can_reach:nonsense").expect_err("not an IP");
        assert!(err.to_string().contains("can_reach:nonsense"), "{err}");
    }
}
