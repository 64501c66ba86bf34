//! Where the agent pins maps and links on bpffs.
//!
//! The layout is versioned: aya reuses a pinned map by name without checking
//! that its layout still matches, so an incompatible change of any map must
//! bump [`PIN_LAYOUT_VERSION`] and thereby start from fresh maps.
use std::path::{Path, PathBuf};

/// Bump when a pinned map's key, value, size or flags change incompatibly
/// (10: the Maglev array became mmap-able; 11: backends carry their node,
/// service counters count forwarded packets).
pub const PIN_LAYOUT_VERSION: u32 = 12;

/// Paths under one bpffs directory, e.g. `/sys/fs/bpf/porter/v12/...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    /// `bpffs` is the mounted bpf filesystem (usually `/sys/fs/bpf`).
    pub fn new(bpffs: &Path) -> Self {
        Self {
            root: bpffs.join("porter"),
        }
    }

    /// Everything Porter pins, across layout versions; `cleanup` removes it.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of the current layout version.
    pub fn versioned(&self) -> PathBuf {
        self.root.join(format!("v{PIN_LAYOUT_VERSION}"))
    }

    /// Maps are pinned here by their names.
    pub fn maps_dir(&self) -> PathBuf {
        self.versioned().join("maps")
    }

    /// Links (program attachments) are pinned here.
    pub fn links_dir(&self) -> PathBuf {
        self.versioned().join("links")
    }

    /// The pinned XDP link of one interface.
    pub fn xdp_link(&self, interface: &str) -> PathBuf {
        self.links_dir().join(format!("xdp-{interface}"))
    }

    /// The pinned map called `name`.
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    /// The directories of older layout versions, newest first.
    pub fn older_versions(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut older: Vec<(u32, PathBuf)> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name();
                let version: u32 = name.to_str()?.strip_prefix('v')?.parse().ok()?;
                (version < PIN_LAYOUT_VERSION).then(|| (version, entry.path()))
            })
            .collect();
        older.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
        older.into_iter().map(|(_, path)| path).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_versioned_under_porter() {
        let layout = PinLayout::new(Path::new("/sys/fs/bpf"));
        assert_eq!(
            layout.xdp_link("eth0"),
            Path::new("/sys/fs/bpf/porter/v12/links/xdp-eth0")
        );
        assert_eq!(
            layout.map("PORTER_STATS"),
            Path::new("/sys/fs/bpf/porter/v12/maps/PORTER_STATS")
        );
        assert!(layout.maps_dir().starts_with(layout.root()));
    }

    #[test]
    fn older_versions_are_found_newest_first() -> std::io::Result<()> {
        let bpffs = std::env::temp_dir().join(format!("porter-pins-{}", std::process::id()));
        let layout = PinLayout::new(&bpffs);
        for dir in ["v1", "v8", "v2", "v99", "vx", "other"] {
            std::fs::create_dir_all(layout.root().join(dir))?;
        }
        std::fs::create_dir_all(layout.versioned())?;
        let found = layout.older_versions();
        std::fs::remove_dir_all(&bpffs)?;
        let names: Vec<_> = found.iter().filter_map(|p| p.file_name()).collect();
        assert_eq!(names, ["v8", "v2", "v1"]);
        Ok(())
    }
}
