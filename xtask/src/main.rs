//! `cargo xtask <task>`: the project's build, test and demo entry points.
mod bench;
mod cmd;
mod demo;
mod ebpf;
mod fuzz;
mod gen_crds;
mod setup;
mod test;
mod toolchain;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Porter's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the eBPF build needs (nightly, rust-src, bpf-linker), build
    /// the eBPF object, and print its path.
    BuildEbpf(ebpf::BuildArgs),
    /// fmt, the eBPF build, clippy, then every test (privileged ones when root).
    Test(test::TestArgs),
    /// Build everything and show Porter working in a network-namespace lab (needs root).
    Demo(demo::DemoArgs),
    /// Run a benchmark suite; prints JSON lines with a same-run baseline (needs root).
    Bench(bench::BenchArgs),
    /// Install the Debian packages, bpffs mount and eBPF toolchain that `test` and
    /// `demo` need (both run this first).
    Setup,
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
        Task::Demo(args) => demo::run(&args),
        Task::Setup => setup::ensure_all(),
        Task::Bench(args) => bench::run(&args),
        Task::GenCrds => gen_crds::run(),
        Task::Fuzz(args) => fuzz::run(&args),
    }
}
