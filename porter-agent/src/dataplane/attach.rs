//! Loading the eBPF object with pinned maps, and attaching the XDP program
//! (ingress) and the tc reverse-NAT program (uplink egress) to interfaces
//! through pinned links, so that the data plane outlives the agent.
//!
//! A restarted or upgraded agent finds the pinned link and swaps its own
//! program in atomically (`bpf_link_update`), so no packet sees a detached
//! interface, and the pinned maps (conntrack included) carry over.
use std::{fmt, fs, io, path::PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc,
        xdp::XdpLink,
    },
};
use porter_common::program_names;
use tracing::{info, warn};

use super::{Dataplane, DataplaneError};
use crate::{
    PinLayout,
    ebpf_object::{EBPF_OBJECT, XDP_PROGRAM},
    l2_interface::L2Interface,
};

/// Which XDP mode the operator asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModePreference {
    /// Native (driver) mode, falling back to generic where the driver lacks XDP.
    Auto,
    /// Native mode only; fail where the driver cannot do it.
    Driver,
    /// Generic (skb) mode, which every interface supports, at a higher cost per packet.
    Generic,
}

/// How the program ended up on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    Driver,
    Generic,
    /// A pinned link from an earlier agent now runs this agent's program; its
    /// mode is whatever that agent chose.
    ReplacedPinned,
}

impl fmt::Display for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Attachment::Driver => "driver",
            Attachment::Generic => "generic",
            Attachment::ReplacedPinned => "replaced-pinned",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(
        "cannot create pin directory {path}: {source} (is bpffs mounted there? try `mount -t bpf bpf /sys/fs/bpf`)"
    )]
    PinDir { path: PathBuf, source: io::Error },
    #[error("cannot load the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the eBPF object has no program {XDP_PROGRAM}")]
    MissingProgram,
    #[error("program {XDP_PROGRAM}: {0}")]
    Program(#[from] ProgramError),
    #[error("cannot attach XDP to interface {interface} in {mode:?} mode: {source}")]
    Attach {
        interface: String,
        mode: XdpMode,
        source: ProgramError,
    },
    #[error("cannot open pinned link {path}: {source}")]
    OpenPinnedLink { path: PathBuf, source: LinkError },
    #[error("cannot move the pinned link of an older agent to {path}: {source}")]
    AdoptLink { path: PathBuf, source: io::Error },
    #[error("cannot pin the XDP link of {interface} at {path}: {source}")]
    PinLink {
        interface: String,
        path: PathBuf,
        source: aya::pin::PinError,
    },
}

/// Loads the object, reusing maps already pinned under `pins` and pinning new
/// ones; `configure` adjusts the loader (e.g. map sizes) before maps are created.
pub fn load_with(
    pins: &PinLayout,
    configure: impl FnOnce(&mut EbpfLoader<'_>),
) -> Result<Ebpf, AttachError> {
    let maps_dir = pins.maps_dir();
    create_dir(&maps_dir)?;
    create_dir(&pins.links_dir())?;
    let mut loader = EbpfLoader::new();
    // Every map is pinned by name: an existing pin is reused as it is.
    for name in porter_common::map_names::ALL {
        loader.map_pin_path(name, maps_dir.join(name));
    }
    configure(&mut loader);
    let mut ebpf = loader.load(EBPF_OBJECT)?;
    let program = xdp_program(&mut ebpf)?;
    retry_interrupted_load(|| program.load())?;
    Ok(ebpf)
}

/// The verifier abandons a load with EAGAIN when a signal reaches the loading
/// thread while it verifies (a SIGCHLD from a child process, say); the larger
/// the program, the likelier. libbpf retries such loads, and so do we.
pub fn retry_interrupted_load(
    mut load: impl FnMut() -> Result<(), ProgramError>,
) -> Result<(), ProgramError> {
    const ATTEMPTS: u32 = 5;
    let mut attempt = 1;
    loop {
        match load() {
            Err(ProgramError::LoadError { io_error, .. })
                if attempt < ATTEMPTS && io_error.raw_os_error() == Some(libc::EAGAIN) =>
            {
                warn!(attempt, "BPF_PROG_LOAD interrupted (EAGAIN); retrying");
                attempt += 1;
            }
            result => return result,
        }
    }
}

fn create_dir(path: &std::path::Path) -> Result<(), AttachError> {
    fs::create_dir_all(path).map_err(|source| AttachError::PinDir {
        path: path.to_owned(),
        source,
    })
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, AttachError> {
    Ok(ebpf
        .program_mut(XDP_PROGRAM)
        .ok_or(AttachError::MissingProgram)?
        .try_into()?)
}

/// Puts the loaded XDP program on `interface`, through a pinned link.
pub fn attach_xdp(
    ebpf: &mut Ebpf,
    pins: &PinLayout,
    interface: &str,
    preference: XdpModePreference,
) -> Result<Attachment, AttachError> {
    let program = xdp_program(ebpf)?;
    let link_path = pins.xdp_link(interface);
    adopt_older_link(pins, &link_path).map_err(|source| AttachError::AdoptLink {
        path: link_path.clone(),
        source,
    })?;
    if link_path.exists() {
        let pinned =
            PinnedLink::from_pin(&link_path).map_err(|source| AttachError::OpenPinnedLink {
                path: link_path.clone(),
                source,
            })?;
        let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|source| {
            AttachError::OpenPinnedLink {
                path: link_path.clone(),
                source,
            }
        })?;
        program.attach_to_link(link)?;
        info!(interface, "replaced the program on the pinned XDP link");
        remove_abandoned_layouts(pins);
        return Ok(Attachment::ReplacedPinned);
    }

    let (link_id, attachment) = attach_with_fallback(program, interface, preference)?;
    let link: FdLink =
        program
            .take_link(link_id)?
            .try_into()
            .map_err(|source| AttachError::OpenPinnedLink {
                path: link_path.clone(),
                source,
            })?;
    link.pin(&link_path)
        .map_err(|source| AttachError::PinLink {
            interface: interface.to_owned(),
            path: link_path.clone(),
            source,
        })?;
    info!(interface, mode = %attachment, pin = %link_path.display(), "attached XDP");
    Ok(attachment)
}

fn attach_with_fallback(
    program: &mut Xdp,
    interface: &str,
    preference: XdpModePreference,
) -> Result<(aya::programs::xdp::XdpLinkId, Attachment), AttachError> {
    let attach = |program: &mut Xdp, mode: XdpMode| {
        program
            .attach(interface, mode)
            .map_err(|source| AttachError::Attach {
                interface: interface.to_owned(),
                mode,
                source,
            })
    };
    match preference {
        XdpModePreference::Driver => Ok((attach(program, XdpMode::Driver)?, Attachment::Driver)),
        XdpModePreference::Generic => Ok((attach(program, XdpMode::Skb)?, Attachment::Generic)),
        XdpModePreference::Auto => match attach(program, XdpMode::Driver) {
            Ok(id) => Ok((id, Attachment::Driver)),
            Err(err) => {
                warn!(interface, error = %err, "driver-mode XDP failed; falling back to generic mode");
                Ok((attach(program, XdpMode::Skb)?, Attachment::Generic))
            }
        },
    }
}

/// An upgrade across a layout change: moves the link pinned at the same
/// place under an older layout version to `path`, so that attaching swaps
/// the program on it as after a restart, and no packet sees a detached
/// interface. (Conntrack stays behind in the old maps; flows keep their
/// backends wherever the Maglev tables agree, which they do for unchanged
/// backend sets.)
pub fn adopt_older_link(pins: &PinLayout, path: &std::path::Path) -> io::Result<()> {
    let Some(name) = path.file_name() else {
        return Ok(());
    };
    if path.exists() {
        return Ok(());
    }
    for version in pins.older_versions() {
        let old = version.join("links").join(name);
        if old.exists() {
            fs::rename(&old, path)?;
            info!(from = %old.display(), to = %path.display(), "took over the pinned link of an older agent");
            return Ok(());
        }
    }
    Ok(())
}

/// Removes older layout versions none of whose links are left: their maps
/// only served programs that have been replaced.
pub fn remove_abandoned_layouts(pins: &PinLayout) {
    for version in pins.older_versions() {
        let links = version.join("links");
        let empty = fs::read_dir(&links).map_or(true, |mut entries| entries.next().is_none());
        if !empty {
            continue;
        }
        let mut report = CleanupReport::default();
        match remove_tree(&version, &mut report) {
            Ok(()) => {
                pins.unmark(&version);
                info!(layout = %version.display(), "removed the pins of an older agent")
            }
            Err(err) => {
                warn!(layout = %version.display(), error = %err, "cannot remove the pins of an older agent")
            }
        }
    }
}

/// What `cleanup` removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CleanupReport {
    pub removed_pins: Vec<PathBuf>,
}

/// Removes every pin under Porter's bpffs directory, all layout versions.
/// Unpinning the last reference to a link detaches its program.
pub fn cleanup(pins: &PinLayout) -> io::Result<CleanupReport> {
    let mut report = CleanupReport::default();
    let root = pins.root();
    if !root.exists() {
        return Ok(report);
    }
    remove_tree(root, &mut report)?;
    Ok(report)
}

fn remove_tree(dir: &std::path::Path, report: &mut CleanupReport) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            remove_tree(&path, report)?;
        } else {
            fs::remove_file(&path)?;
            report.removed_pins.push(path);
        }
    }
    fs::remove_dir(dir)
}

impl Dataplane {
    /// Attaches the XDP program to `interface` through a pinned link.
    pub fn attach_xdp(
        &mut self,
        interface: &str,
        mode: XdpModePreference,
    ) -> Result<Attachment, DataplaneError> {
        let link = L2Interface::lookup(interface)?;
        let attachment = attach_xdp(&mut self.ebpf, &self.pins, interface, mode)?;
        self.l2_interfaces.insert(interface.to_owned(), link);
        Ok(attachment)
    }

    /// Attaches the reverse-NAT program to the egress of uplink `interface`
    /// through a pinned TCX link, replacing an earlier agent's program in place.
    ///
    /// Why uplink egress: XDP passes translated packets to the kernel, so the
    /// node's netfilter sees both directions of every flow as client <-> pod.
    /// A MASQUERADE rule for the pod subnet (Calico natOutgoing, flannel)
    /// decides on a flow's first packet, which comes from the client, so the
    /// replies keep the pod's address until they leave here, where they
    /// become `VIP:port`. (Had XDP redirected past netfilter, a reply would
    /// look like a new pod-to-outside flow and be masqueraded before reaching
    /// this hook.)
    pub fn attach_tc_egress(&mut self, interface: &str) -> Result<(), DataplaneError> {
        let direction = "egress";
        let path = self
            .pins
            .links_dir()
            .join(format!("tc-{direction}-{interface}"));
        let program = tc_program(&mut self.ebpf)?;
        let tc_err = |source| DataplaneError::Tc {
            interface: interface.to_owned(),
            source,
        };
        adopt_older_link(&self.pins, &path).map_err(|source| AttachError::AdoptLink {
            path: path.clone(),
            source,
        })?;
        if path.exists() {
            let pinned = PinnedLink::from_pin(&path).map_err(|source| DataplaneError::TcLink {
                path: path.clone(),
                source,
            })?;
            let link =
                FdLink::from(pinned)
                    .try_into()
                    .map_err(|source| DataplaneError::TcLink {
                        path: path.clone(),
                        source,
                    })?;
            program.attach_to_link(link).map_err(tc_err)?;
            info!(
                interface,
                direction, "replaced the program on the pinned tc link"
            );
            remove_abandoned_layouts(&self.pins);
            return Ok(());
        }
        // Without TCX, aya falls back to a netlink filter, which needs the
        // qdisc; that attach then succeeds, and the check below says why it
        // is not enough.
        let _ = tc::qdisc_add_clsact(interface);
        let id = program
            .attach(interface, TcAttachType::Egress)
            .map_err(tc_err)?;
        // Only a TCX attachment is a bpf link, which can be pinned.
        let link: FdLink = program
            .take_link(id)
            .map_err(tc_err)?
            .try_into()
            .map_err(|_| DataplaneError::TcxMissing {
                interface: interface.to_owned(),
            })?;
        link.pin(&path).map_err(|source| DataplaneError::TcPin {
            path: path.clone(),
            source,
        })?;
        info!(interface, direction, pin = %path.display(), "attached tc reverse NAT");
        Ok(())
    }
}

/// The reverse-NAT program of the loaded object.
pub(super) fn tc_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, DataplaneError> {
    ebpf.program_mut(program_names::TC_REVNAT)
        .ok_or(AttachError::MissingProgram)?
        .try_into()
        .map_err(|source| DataplaneError::Program {
            name: program_names::TC_REVNAT,
            source,
        })
}
