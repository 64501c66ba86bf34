//! Which interfaces the agent attaches to: the ones named on the command
//! line, else the one that holds the node's InternalIP (the uplink the
//! router sends EIP traffic to, since the EIP's next hop is that address).
use std::{ffi::CStr, io, net::IpAddr};

use porter_api::source::Snapshot;

/// The node's `InternalIP`s, as the Node object in `snapshot` lists them.
pub fn node_internal_ips(snapshot: &Snapshot, node: &str) -> Vec<IpAddr> {
    snapshot
        .nodes
        .iter()
        .filter(|n| n.metadata.name.as_deref() == Some(node))
        .filter_map(|n| n.status.as_ref()?.addresses.as_ref())
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.trim().parse().ok())
        .collect()
}

/// The local interfaces that hold one of `ips`, sorted, without duplicates.
pub fn holding(ips: &[IpAddr]) -> io::Result<Vec<String>> {
    let mut names: Vec<String> = local_addresses()?
        .into_iter()
        .filter(|local| ips.contains(&local.ip))
        .map(|local| local.name)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// The addresses of the interfaces named in `names`.
pub fn addresses_on<'a>(names: impl IntoIterator<Item = &'a str>) -> io::Result<Vec<IpAddr>> {
    let names: Vec<&str> = names.into_iter().collect();
    Ok(local_addresses()?
        .into_iter()
        .filter(|local| names.contains(&local.name.as_str()))
        .map(|local| local.ip)
        .collect())
}

/// Whether an interface of that name exists in this network namespace.
pub fn exists(name: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

/// An address of an interface.
struct LocalAddress {
    name: String,
    ip: IpAddr,
}

/// Every address of this network namespace.
fn local_addresses() -> io::Result<Vec<LocalAddress>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() || entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(entry.ifa_name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: a non-null sockaddr owned by the list (checked inside).
        if let Some(ip) = unsafe { sockaddr_ip(entry.ifa_addr) } {
            out.push(LocalAddress { name, ip });
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The address in `addr`, for IPv4 and IPv6.
///
/// # Safety
/// `addr` is null or points at a sockaddr whose family says which struct
/// it is; only that struct is read.
unsafe fn sockaddr_ip(addr: *const libc::sockaddr) -> Option<IpAddr> {
    if addr.is_null() {
        return None;
    }
    // SAFETY: see the function's contract.
    unsafe {
        match i32::from((*addr).sa_family) {
            libc::AF_INET => {
                let sin = &*(addr as *const libc::sockaddr_in);
                Some(IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()))
            }
            libc::AF_INET6 => {
                let sin6 = &*(addr as *const libc::sockaddr_in6);
                Some(IpAddr::from(sin6.sin6_addr.s6_addr))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn internal_ips_of_this_node_only() {
        let node: k8s_openapi::api::core::v1::Node = serde_yaml::from_str(
            "metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 172.31.0.1}, {type: ExternalIP, address: 203.0.113.1}, {type: Hostname, address: n1}]}",
        )
        .expect("node");
        let other: k8s_openapi::api::core::v1::Node = serde_yaml::from_str(
            "metadata: {name: n2}
status: {addresses: [{type: InternalIP, address: 172.31.0.9}]}",
        )
        .expect("node");
        let snapshot = Snapshot {
            nodes: vec![Arc::new(node), Arc::new(other)],
            ..Default::default()
        };
        assert_eq!(
            node_internal_ips(&snapshot, "n1"),
            vec!["172.31.0.1".parse::<IpAddr>().expect("ip")]
        );
        assert!(node_internal_ips(&snapshot, "n3").is_empty());
    }

    #[test]
    fn addresses_on_names_only_the_interfaces_asked_for() {
        let lo = addresses_on(["lo"]).expect("getifaddrs");
        assert!(lo.contains(&IpAddr::from([127, 0, 0, 1])), "{lo:?}");
        assert!(
            addresses_on(["no-such-interface"])
                .expect("getifaddrs")
                .is_empty()
        );
    }

    #[test]
    fn loopback_holds_127_0_0_1() {
        let lo = holding(&["127.0.0.1".parse().expect("ip")]).expect("getifaddrs");
        assert_eq!(lo, ["lo"]);
        assert!(exists("lo"));
        assert!(!exists("no-such-if0"));
    }
}
