//! Privileged tests run for real as root (CI is root). Built by another
//! user, they are ignored with the reason (`cfg(privileged)`, set by the
//! crate's build script), and the shared-lab suites report them skipped.

/// True when the current process may create network namespaces and load BPF.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
