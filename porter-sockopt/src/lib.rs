//! Socket options that neither std nor socket2 sets (TCP MD5 signatures,
//! GTSM's minimum TTL, TTL reception on UDP): the one `setsockopt(2)` call
//! porter-bgp and porter-bfd make them with. Its own crate because the two
//! share nothing else.
use std::{io, os::fd::AsRawFd};

/// Sets option `name` at `level` on `socket` to `value`, passed with its
/// size. `value` is what the kernel expects for that option: a
/// `libc::c_int` for most, a struct for a few (`TCP_MD5SIG`).
pub fn set<T>(
    socket: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: the kernel reads size_of::<T>() bytes from `value`, a live
    // reference to exactly that many.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(value).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
