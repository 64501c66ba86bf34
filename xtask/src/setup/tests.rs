//! A fresh machine gets every tool the code runs: each program named in the
//! sources that this machine has under a system directory must come from a
//! package that `DEBIAN_PACKAGES` installs (directly or as a dependency) or
//! that every Debian system has. A tool installed by hand on a developer's
//! machine and then used by a test or a bench fails this test there, long
//! before a fresh CI machine would fail on it.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use super::DEBIAN_PACKAGES;

/// Where Debian packages put programs (and FRR its daemons).
const PROGRAM_DIRS: &[&str] = &["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/lib/frr"];

/// Directories whose Rust sources run tools; build output is skipped.
const SOURCE_DIRS: &[&str] = &["tests", "xtask", "porter-agent", "porter-controller"];

/// Words the sources use that happen to name programs too, but are not run:
/// BIRD's `as`, `ip route`, RBAC verbs, Kubernetes' `node`, and the like;
/// `gcc` is a package of the images' build base (xtask/src/images/bases.rs),
/// and cargo itself needs a C linker here before `setup` can run.
const WORDS_NOT_RUN: &[&str] = &[
    "as", "gcc", "gold", "node", "patch", "red", "route", "write",
];

#[test]
fn every_program_the_code_runs_is_installed_by_setup() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut words = BTreeSet::new();
    for dir in SOURCE_DIRS {
        for file in rust_files(&root.join(dir)) {
            let text = std::fs::read_to_string(&file).expect("reading a source file");
            words.extend(string_literals(&text).map(str::to_owned));
        }
    }
    let installed_by_setup = dependency_closure(DEBIAN_PACKAGES);
    let programs: Vec<(&String, Vec<PathBuf>)> = words
        .iter()
        .filter(|w| !WORDS_NOT_RUN.contains(&w.as_str()))
        .map(|w| (w, program_paths(w)))
        .filter(|(_, paths)| !paths.is_empty())
        .collect();
    let owners = path_owners(programs.iter().flat_map(|(_, paths)| paths));
    let mut missing = Vec::new();
    for (program, paths) in &programs {
        let packages: BTreeSet<&String> = paths
            .iter()
            .filter_map(|p| owners.get(p))
            .flatten()
            .collect();
        let covered = packages
            .iter()
            .any(|p| installed_by_setup.contains(*p) || is_base_package(p));
        if !covered {
            let names: Vec<&str> = packages.iter().map(|p| p.as_str()).collect();
            missing.push(format!("`{program}` (package {})", names.join(" or ")));
        }
    }
    println!(
        "{} programs named in the sources, all from packages setup installs",
        programs.len()
    );
    assert!(
        programs.len() > 10,
        "the scan found too few programs to be working"
    );
    assert!(
        missing.is_empty(),
        "the code runs programs that `cargo xtask setup` does not install; add their \
         packages to DEBIAN_PACKAGES: {}",
        missing.join(", ")
    );
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() && entry.file_name() != "target" {
            files.extend(rust_files(&path));
        } else if kind.is_file() && path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The contents of the string literals of `text` that could name a program.
fn string_literals(text: &str) -> impl Iterator<Item = &str> {
    // Between quotes every other piece is inside a literal; a stray quote in
    // a char literal only shifts which pieces are looked at, and the pieces
    // that could be program names are filtered below anyway.
    text.split('"').skip(1).step_by(2).filter(|s| {
        !s.is_empty()
            && s.len() <= 40
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.+-".contains(c))
    })
}

/// Where program `name` is in the program directories, with the targets of
/// symlinks (alternatives) too; empty when there is no such program.
fn program_paths(name: &str) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for dir in PROGRAM_DIRS {
        let path = Path::new(dir).join(name);
        if path.is_file() {
            if let Ok(canonical) = std::fs::canonicalize(&path) {
                paths.push(canonical);
            }
            paths.push(path);
        }
    }
    paths
}

/// The packages owning each of `paths` that dpkg knows, in one query.
fn path_owners<'a>(
    paths: impl Iterator<Item = &'a PathBuf>,
) -> std::collections::BTreeMap<PathBuf, Vec<String>> {
    let out = Command::new("dpkg-query")
        .arg("-S")
        .args(paths)
        .output()
        .expect("dpkg-query (this check needs a Debian machine)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("diversion"))
        .filter_map(|line| line.split_once(": "))
        .map(|(packages, path)| {
            let packages = packages
                .split(", ")
                .map(|p| p.split(':').next().unwrap_or(p).to_owned())
                .collect();
            (PathBuf::from(path), packages)
        })
        .collect()
}

/// Every package that installing `packages` brings in, without recommends.
fn dependency_closure(packages: &[&str]) -> BTreeSet<String> {
    let out = Command::new("apt-cache")
        .args([
            "depends",
            "--recurse",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
        ])
        .args(packages)
        .output()
        .expect("apt-cache (this check needs a Debian machine)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let line = line.trim();
            let name = line.rsplit_once(": ").map_or(line, |(_, p)| p);
            name.trim_matches(|c| c == '<' || c == '>').to_owned()
        })
        .filter(|name| !name.is_empty())
        .collect()
}

/// Essential or required packages, which every Debian system has.
fn is_base_package(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Essential} ${Priority}", package])
        .output()
        .is_ok_and(|out| {
            let text = String::from_utf8_lossy(&out.stdout);
            text.starts_with("yes") || text.ends_with("required")
        })
}

#[test]
fn the_scan_sees_programs_in_literals() {
    let text = r#"lab.exec(ns, &["ip", "link"]); let x = "not a program!"; "bird""#;
    let found: Vec<&str> = string_literals(text).collect();
    assert_eq!(found, ["ip", "link", "bird"]);
}
