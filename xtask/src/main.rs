//! `cargo xtask <task>`: the project's build, test and demo entry points.
mod args;
#[cfg(feature = "lab")]
mod bench;
mod cmd;
#[cfg(feature = "lab")]
mod demo;
mod ebpf;
mod fuzz;
mod gen_crds;
mod images;
#[cfg(not(feature = "lab"))]
mod relaunch;
mod setup;
mod test;
mod toolchain;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Porter's developer tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the eBPF build needs (nightly, rust-src, bpf-linker), build
    /// the eBPF object, and print its path.
    BuildEbpf(ebpf::BuildArgs),
    /// setup, fmt, the eBPF build, clippy, the images (root), then every test (privileged
    /// ones when root).
    Test(test::TestArgs),
    /// Build everything and show Porter working in a network-namespace lab (needs root).
    Demo(args::DemoArgs),
    /// Run a benchmark suite; prints JSON lines with a same-run baseline (needs root).
    Bench(args::BenchArgs),
    /// Install the Debian packages, bpffs mount and eBPF toolchain that `test` and
    /// `demo` need (both run this first).
    Setup,
    /// Build porter-agent's and porter-controller's images with buildah from
    /// deploy/docker/, on bases made from Debian packages; print names and sizes (needs root).
    Images,
    /// Regenerate deploy/crds/*.yaml from porter-api's CRD types.
    GenCrds,
    /// Coverage-guided fuzzing of the parsers (cargo-fuzz, nightly), N seconds per target.
    Fuzz(fuzz::FuzzArgs),
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::BuildEbpf(args) => {
            let object = ebpf::build(&args)?;
            println!("{}", object.display());
            Ok(())
        }
        Task::Test(args) => test::run(&args),
        #[cfg(feature = "lab")]
        Task::Demo(args) => demo::run(&args),
        #[cfg(feature = "lab")]
        Task::Bench(args) => bench::run(&args),
        #[cfg(not(feature = "lab"))]
        Task::Demo(_) | Task::Bench(_) => relaunch::with_lab_feature(),
        Task::Setup => setup::ensure_all(),
        Task::Images => images::run(),
        Task::GenCrds => gen_crds::run(),
        Task::Fuzz(args) => fuzz::run(&args),
    }
}
