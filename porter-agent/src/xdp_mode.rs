//! Asks the kernel (rtnetlink `RTM_GETLINK`, attribute `IFLA_XDP`) in which
//! mode XDP runs on an interface. An agent that took over an earlier
//! agent's pinned link did not choose the mode, and the BPF link info does
//! not carry it.
use std::io;

const RTM_GETLINK: u16 = 18;
const RTM_NEWLINK: u16 = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSGHDR_LEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;

/// `driver`, `generic`, `offload` or `multi`; `None` when nothing is attached.
pub fn query(interface: &str) -> io::Result<Option<String>> {
    let name = std::ffi::CString::new(interface)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name with NUL"))?;
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    let reply = request(index)?;
    Ok(parse_reply(&reply)?.map(str::to_owned))
}

fn request(index: u32) -> io::Result<Vec<u8>> {
    // SAFETY: plain socket creation; the fd is closed by OwnedFd.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let mut message = Vec::with_capacity(NLMSGHDR_LEN + IFINFOMSG_LEN);
    message.extend_from_slice(&((NLMSGHDR_LEN + IFINFOMSG_LEN) as u32).to_ne_bytes());
    message.extend_from_slice(&RTM_GETLINK.to_ne_bytes());
    message.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    message.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    message.push(libc::AF_UNSPEC as u8);
    message.push(0);
    message.extend_from_slice(&0u16.to_ne_bytes());
    message.extend_from_slice(&(index as i32).to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    // SAFETY: sends `message.len()` bytes from a live buffer.
    if unsafe { libc::send(raw, message.as_ptr().cast(), message.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buffer = vec![0u8; 64 * 1024];
    // SAFETY: receives into a live buffer of the given length.
    let n = unsafe { libc::recv(raw, buffer.as_mut_ptr().cast(), buffer.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buffer.truncate(n as usize);
    Ok(buffer)
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// The attributes `(type, payload)` packed in `bytes`.
fn attributes(bytes: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while let (Some(len), Some(kind)) = (u16_at(bytes, at), u16_at(bytes, at + 2)) {
        let len = usize::from(len);
        let Some(payload) = bytes.get(at + 4..at + len.max(4)) else {
            break;
        };
        out.push((kind & NLA_TYPE_MASK, payload));
        if len < 4 {
            break;
        }
        at += (len + 3) & !3;
    }
    out
}

fn parse_reply(reply: &[u8]) -> io::Result<Option<&'static str>> {
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, "malformed rtnetlink reply");
    let kind = u16_at(reply, 4).ok_or_else(malformed)?;
    if kind == NLMSG_ERROR {
        let code = u32_at(reply, NLMSGHDR_LEN).ok_or_else(malformed)? as i32;
        return Err(io::Error::from_raw_os_error(-code));
    }
    if kind != RTM_NEWLINK {
        return Err(malformed());
    }
    let len = (u32_at(reply, 0).ok_or_else(malformed)? as usize).min(reply.len());
    let attrs = reply
        .get(NLMSGHDR_LEN + IFINFOMSG_LEN..len)
        .ok_or_else(malformed)?;
    let attached = attributes(attrs)
        .into_iter()
        .filter(|(kind, _)| *kind == IFLA_XDP)
        .flat_map(|(_, nested)| attributes(nested))
        .find_map(|(kind, payload)| (kind == IFLA_XDP_ATTACHED).then(|| payload.first().copied()))
        .flatten();
    Ok(match attached {
        Some(1) => Some("driver"),
        Some(2) => Some("generic"),
        Some(3) => Some("offload"),
        Some(4) => Some("multi"),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(payload);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out
    }

    fn reply(attrs: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((NLMSGHDR_LEN + IFINFOMSG_LEN + attrs.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(&[0; IFINFOMSG_LEN]);
        out.extend_from_slice(attrs);
        out
    }

    #[test]
    fn reads_the_attached_mode_from_nested_attributes() {
        let ifname = attr(3, b"eth0\0");
        for (value, want) in [(1u8, Some("driver")), (2, Some("generic")), (0, None)] {
            let xdp = attr(IFLA_XDP | 0x8000, &attr(IFLA_XDP_ATTACHED, &[value]));
            let bytes = reply(&[ifname.clone(), xdp].concat());
            assert_eq!(parse_reply(&bytes).expect("parses"), want);
        }
        assert_eq!(parse_reply(&reply(&ifname)).expect("parses"), None);
        assert!(
            parse_reply(&[1, 2, 3]).is_err(),
            "truncated input is an error, not a panic"
        );
    }

    #[test]
    fn loopback_has_no_xdp() {
        assert_eq!(query("lo").expect("rtnetlink answers"), None);
    }
}
