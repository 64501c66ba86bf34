//! Where the agent pins maps and links on bpffs.
//!
//! The layout is versioned: aya reuses a pinned map by name without checking
//! that its layout still matches, so an incompatible change of any map must
//! bump [`PIN_LAYOUT_VERSION`] and thereby start from fresh maps.
use std::path::{Path, PathBuf};

/// Bump when a pinned map's key, value or size changes incompatibly.
pub const PIN_LAYOUT_VERSION: u32 = 9;

/// Paths under one bpffs directory, e.g. `/sys/fs/bpf/porter/v9/...`.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_versioned_under_porter() {
        let layout = PinLayout::new(Path::new("/sys/fs/bpf"));
        assert_eq!(
            layout.xdp_link("eth0"),
            Path::new("/sys/fs/bpf/porter/v9/links/xdp-eth0")
        );
        assert_eq!(
            layout.map("PORTER_STATS"),
            Path::new("/sys/fs/bpf/porter/v9/maps/PORTER_STATS")
        );
        assert!(layout.maps_dir().starts_with(layout.root()));
    }
}
