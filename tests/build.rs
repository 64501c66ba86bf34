//! Sets `cfg(privileged)` when the tests are built by root, so that the
//! privileged tests (network namespaces, BPF) run, and are otherwise
//! reported as ignored, with the reason, in the test summary instead of
//! passing without running anything.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(privileged)");
    // `sudo` changes these, so a build as another user is redone.
    println!("cargo::rerun-if-env-changed=USER");
    println!("cargo::rerun-if-env-changed=SUDO_USER");
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        println!("cargo::rustc-cfg=privileged");
    }
}
