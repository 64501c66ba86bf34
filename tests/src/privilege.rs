//! Privileged tests run for real as root (CI is root) and skip, saying why, otherwise.

/// True when the current process may create network namespaces and load BPF.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Returns false, after printing why, when `test` cannot run here.
/// Use as `if !porter_tests::privilege::can_run("name") { return; }`.
pub fn can_run(test: &str) -> bool {
    if is_root() {
        return true;
    }
    println!(
        "SKIP {test}: needs root (network namespaces and BPF); run `cargo xtask test` as root"
    );
    false
}
