//! The harness of the lab suites that share one lab between cases
//! (`e2e`, `failover`): building the lab is the slow part, so each case
//! runs on the lab the previous ones left, and prints its measured time.
//!
//! `cargo test -p porter-tests --test <suite> [-- NAME...]` runs the cases
//! whose name contains one of the NAMEs (all by default); `-- --list`
//! lists them.
use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::privilege;

/// One case: what it measured (a convergence or failover time).
pub type Case<C> = fn(&mut C) -> Result<Duration>;

/// The error of a case that cannot run here, and why (reported as
/// skipped, not failed).
#[derive(Debug)]
pub struct Skipped(pub String);

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Skipped {}

/// A suite: its cases, how to build the shared lab, and how to describe
/// the lab when a case fails.
pub struct Suite<C: 'static> {
    pub name: &'static str,
    pub cases: &'static [(&'static str, Case<C>)],
    pub setup: fn() -> Result<C>,
    pub describe: fn(&C) -> String,
}

impl<C> Suite<C> {
    /// Runs the cases the command line selects, as cargo's harness would.
    pub fn main(&self) -> ExitCode {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.iter().any(|a| a == "--list") {
            for (name, _) in self.cases {
                println!("{name}: test");
            }
            return ExitCode::SUCCESS;
        }
        let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
        let selected: Vec<&(&str, Case<C>)> = self
            .cases
            .iter()
            .filter(|(name, _)| {
                filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
            })
            .collect();
        if selected.is_empty() {
            return ExitCode::SUCCESS;
        }
        if !privilege::is_root() {
            println!(
                "{}: 0 passed, 0 failed, {} skipped: needs root (network namespaces and BPF); \
                 run `cargo xtask test` as root",
                self.name,
                selected.len()
            );
            return ExitCode::SUCCESS;
        }
        let started = Instant::now();
        let mut ctx = match (self.setup)() {
            Ok(ctx) => ctx,
            Err(error) => {
                println!("FAIL setting up the lab: {error:#}");
                return ExitCode::FAILURE;
            }
        };
        println!("lab ready in {:?}", started.elapsed());
        let mut failed = Vec::new();
        let mut skipped = 0;
        let total = selected.len();
        for (name, case) in selected {
            let case_started = Instant::now();
            match case(&mut ctx) {
                Ok(convergence) => println!(
                    "ok   {name}: converged in {convergence:?} (case {:?})",
                    case_started.elapsed()
                ),
                Err(error) if error.is::<Skipped>() => {
                    println!("skip {name}: {error}");
                    skipped += 1;
                }
                Err(error) => {
                    println!("FAIL {name}: {error:#}");
                    println!("---- the lab at the failure:\n{}", (self.describe)(&ctx));
                    failed.push(*name);
                }
            }
        }
        println!("{} cases took {:?}", self.name, started.elapsed());
        // The plain summary CI readers look for, as cargo's harness would print it.
        let skipped_note = match skipped {
            0 => String::new(),
            n => format!(", {n} skipped"),
        };
        println!(
            "{}: {} passed, {} failed{skipped_note}",
            self.name,
            total - failed.len() - skipped,
            failed.len()
        );
        if failed.is_empty() {
            ExitCode::SUCCESS
        } else {
            println!("failed: {failed:?}");
            ExitCode::FAILURE
        }
    }
}
