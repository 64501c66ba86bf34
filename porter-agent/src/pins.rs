//! Where the agent pins maps and links on bpffs.
//!
//! The layout is versioned: aya reuses a pinned map by name without checking
//! that its layout still matches, so an incompatible change of any map must
//! bump [`PIN_LAYOUT_VERSION`] and thereby start from fresh maps.
//!
//! Which layouts have pins here is marked outside any layout, in a form that
//! never changes (`<bpffs>/porter/layouts/v<N>`, one empty directory per
//! layout, created before that layout's first pin), so that an agent can
//! tell that a newer one's pins are in place, whatever that newer layout
//! looks like, and refuse to run over them (docs/agent.md, "Pin layouts").
use std::path::{Path, PathBuf};

/// Bump when a pinned map's key, value, size or flags change incompatibly
/// (10: the Maglev array became mmap-able; 11: backends carry their node,
/// service counters count forwarded packets; 12: IPv6 conntrack and reverse
/// NAT in maps of their own; 13: the global counters gained `probe_answered`;
/// 14: backends and conntrack entries carry the service installation's
/// epoch, and the settings keep the last one; 15: Maglev slots are 16 bits,
/// four to an element).
pub const PIN_LAYOUT_VERSION: u32 = 15;

/// The marker directory under `porter/`. Never rename it, nor the `v<N>`
/// form of its entries: older and newer agents read it.
const MARKERS: &str = "layouts";

/// Paths under one bpffs directory, e.g. `/sys/fs/bpf/porter/v15/...`.
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

    /// The marker of layout `version`: present while its pins may be.
    pub fn marker(&self, version: u32) -> PathBuf {
        self.root.join(MARKERS).join(format!("v{version}"))
    }

    /// Marks the current layout as having pins here; done before the
    /// first of them is created.
    pub fn mark(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(self.marker(PIN_LAYOUT_VERSION))
    }

    /// Removes the marker of the layout whose directory `layout_dir` was
    /// (once its pins are gone); a missing marker is fine.
    pub fn unmark(&self, layout_dir: &Path) {
        if let Some(version) = layout_dir.file_name().and_then(version_of) {
            let _ = std::fs::remove_dir(self.marker(version));
        }
    }

    /// The layout versions with pins here: marked ones, and the `v<N>`
    /// directories of agents from before the markers.
    pub fn present_versions(&self) -> Vec<u32> {
        [self.root.clone(), self.root.join(MARKERS)]
            .iter()
            .filter_map(|dir| std::fs::read_dir(dir).ok())
            .flat_map(|entries| entries.flatten())
            .filter_map(|entry| version_of(&entry.file_name()))
            .collect()
    }

    /// The newest layout present that is newer than this agent's: a newer
    /// agent's data plane, which this one cannot adopt (a layout changes
    /// only incompatibly).
    pub fn newer_version(&self) -> Option<u32> {
        newest_above(self.present_versions(), PIN_LAYOUT_VERSION)
    }

    /// The directories of older layout versions, newest first.
    pub fn older_versions(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut older: Vec<(u32, PathBuf)> = entries
            .flatten()
            .filter_map(|entry| {
                let version = version_of(&entry.file_name())?;
                (version < PIN_LAYOUT_VERSION).then(|| (version, entry.path()))
            })
            .collect();
        older.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
        older.into_iter().map(|(_, path)| path).collect()
    }
}

/// `v<N>` → N.
fn version_of(name: &std::ffi::OsStr) -> Option<u32> {
    name.to_str()?.strip_prefix('v')?.parse().ok()
}

fn newest_above(versions: impl IntoIterator<Item = u32>, own: u32) -> Option<u32> {
    versions.into_iter().filter(|&v| v > own).max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_versioned_under_porter() {
        let layout = PinLayout::new(Path::new("/sys/fs/bpf"));
        assert_eq!(
            layout.xdp_link("eth0"),
            Path::new("/sys/fs/bpf/porter/v15/links/xdp-eth0")
        );
        assert_eq!(
            layout.map("PORTER_STATS"),
            Path::new("/sys/fs/bpf/porter/v15/maps/PORTER_STATS")
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

    #[test]
    fn only_a_newer_layout_counts_as_newer() {
        assert_eq!(newest_above([3, 12, 11, 14], 11), Some(14));
        assert_eq!(newest_above([11, 10], 11), None);
        assert_eq!(newest_above([], 11), None);
    }

    #[test]
    fn a_newer_layout_is_seen_by_its_marker_or_its_directory() -> std::io::Result<()> {
        let bpffs = std::env::temp_dir().join(format!("porter-marks-{}", std::process::id()));
        let layout = PinLayout::new(&bpffs);
        layout.mark()?;
        std::fs::create_dir_all(layout.versioned())?;
        std::fs::create_dir_all(layout.root().join(format!("v{}", PIN_LAYOUT_VERSION - 1)))?;
        let own_and_older = layout.newer_version();
        // A future layout may look different: only its marker is certain.
        std::fs::create_dir_all(layout.marker(PIN_LAYOUT_VERSION + 2))?;
        let marked = layout.newer_version();
        std::fs::remove_dir(layout.marker(PIN_LAYOUT_VERSION + 2))?;
        // An agent from before the markers left only its directory.
        std::fs::create_dir_all(layout.root().join(format!("v{}", PIN_LAYOUT_VERSION + 1)))?;
        let unmarked = layout.newer_version();
        std::fs::remove_dir_all(&bpffs)?;
        assert_eq!(own_and_older, None);
        assert_eq!(marked, Some(PIN_LAYOUT_VERSION + 2));
        assert_eq!(unmarked, Some(PIN_LAYOUT_VERSION + 1));
        assert_eq!(
            layout.marker(7),
            bpffs.join("porter/layouts/v7"),
            "the marker's place never changes"
        );
        Ok(())
    }
}
