//! The interfaces Layer 2 answers go out of: their index and MAC address,
//! read from the kernel of the current network namespace.
use std::{ffi::CString, fmt, io};

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
}
