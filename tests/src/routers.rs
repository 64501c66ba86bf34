//! Real BGP daemons (BIRD 2, FRR, GoBGP) started inside a lab namespace as
//! children of the lab, so they die with it. Used by the BGP interop tests,
//! the end-to-end suite, the demo and `cargo xtask bench bgp`.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use porter_bgp::{PathTable, PeerConfig, PeerStatus, SessionState, Speaker, SpeakerConfig};

use crate::{
    lab::{Lab, wait_for},
    netns_runtime::NetnsRuntime,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Daemon {
    Bird,
    Frr,
    Gobgp,
}

/// One neighbour of the router: the Porter speaker (or another speaker).
#[derive(Clone, Debug)]
pub struct Neighbor {
    pub address: IpAddr,
    pub remote_as: u32,
    pub md5_password: Option<String>,
    /// The neighbour's BGP port when it is not 179 (Porter's passive listener uses 17900).
    pub port: Option<u16>,
    /// eBGP multihop: the neighbour is this many hops away.
    pub multihop: Option<u8>,
    /// BFD with the neighbour (300 ms × 3), configured as docs/bfd.md asks
    /// for the controller replicas' sessions. BIRD: `bfd graceful`, a BFD
    /// failure is a graceful restart (the replica's paths stay for the
    /// short restart time, then only as long-lived stale). FRR: `neighbor X
    /// bfd`, a BFD failure takes the session down (FRR 8.4 has no graceful
    /// mode, and with `check-control-plane-failure` it would ignore the
    /// failure of a neighbour whose C bit is clear). BIRD and FRR only.
    pub bfd: bool,
}

impl Neighbor {
    pub fn new(address: IpAddr, remote_as: u32) -> Self {
        Self {
            address,
            remote_as,
            md5_password: None,
            port: None,
            multihop: None,
            bfd: false,
        }
    }
}

/// How to configure the router.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    pub daemon: Daemon,
    pub router_id: String,
    pub local_address: IpAddr,
    pub local_as: u32,
    pub neighbors: Vec<Neighbor>,
    /// Act as graceful-restart helper (keep a restarting neighbour's routes).
    pub graceful_restart: bool,
    /// Only wait for neighbours to connect.
    pub passive: bool,
}

/// A router daemon running in `ns`. The lab stops it.
pub struct Router {
    pub config: RouterConfig,
    pub ns: String,
    dir: PathBuf,
    name: String,
}

impl Router {
    /// Writes the config and starts the daemon inside `ns`.
    pub fn start(lab: &mut Lab, ns: &str, config: RouterConfig) -> Result<Router> {
        let name = format!("{:?}", config.daemon).to_lowercase();
        Self::start_named(lab, ns, &name, config)
    }

    /// Like [`Router::start`], under `name`, so that a lab can run two
    /// routers of the same daemon (a leaf and a spine).
    pub fn start_named(
        lab: &mut Lab,
        ns: &str,
        name: &str,
        config: RouterConfig,
    ) -> Result<Router> {
        let name = name.to_owned();
        let dir = lab.run_dir().join(&name);
        std::fs::create_dir_all(&dir)?;
        let router = Router {
            config,
            ns: ns.to_owned(),
            dir,
            name,
        };
        router.spawn(lab)?;
        Ok(router)
    }

    fn spawn(&self, lab: &mut Lab) -> Result<()> {
        let dir = &self.dir;
        match self.config.daemon {
            Daemon::Bird => {
                std::fs::write(dir.join("bird.conf"), self.bird_conf())?;
                spawn_bird(lab, &self.ns, &self.name, dir)?;
            }
            Daemon::Frr => {
                std::fs::write(dir.join("frr.conf"), self.frr_conf())?;
                spawn_frr(lab, &self.ns, &self.name, dir, self.frr_daemons())?;
            }
            Daemon::Gobgp => {
                std::fs::write(dir.join("gobgp.toml"), self.gobgp_conf())?;
                let mut command = lab.command(&self.ns, "gobgpd");
                command.arg("-f").arg(dir.join("gobgp.toml")).args([
                    "-t",
                    "toml",
                    "--api-hosts",
                    "127.0.0.1:50051",
                ]);
                lab.spawn(&self.name, command)?;
            }
        }
        Ok(())
    }

    /// FRR's daemons for this config, in start order: bfdd only for BFD.
    fn frr_daemons(&self) -> &'static [&'static str] {
        if self.config.neighbors.iter().any(|n| n.bfd) {
            &["zebra", "bfdd", "bgpd"]
        } else {
            &["zebra", "bgpd"]
        }
    }

    /// Stops the daemon the way an operator restart would, and starts it again.
    pub fn restart(&self, lab: &mut Lab) -> Result<()> {
        match self.config.daemon {
            Daemon::Frr => {
                for daemon in self.frr_daemons().iter().rev() {
                    lab.stop(&format!("{}-{daemon}", self.name), Duration::from_secs(5))?;
                }
                let _ = std::fs::remove_file(self.dir.join("zserv.api"));
            }
            _ => lab.stop(&self.name, Duration::from_secs(5))?,
        }
        self.spawn(lab)
    }

    fn bird_conf(&self) -> String {
        let c = &self.config;
        let mut conf = format!(
            // `direct` puts the connected networks in BIRD's tables, so that
            // next hops of multihop sessions resolve (recursively) to them;
            // only BGP routes go to the kernel.
            "router id {};\nprotocol device {{}}\nprotocol direct {{ ipv4; ipv6; }}\n\
             protocol kernel {{ ipv4 {{ export where source = RTS_BGP; import none; }}; merge paths on; }}\n\
             protocol kernel {{ ipv6 {{ export where source = RTS_BGP; import none; }}; merge paths on; }}\n",
            c.router_id
        );
        if c.neighbors.iter().any(|n| n.bfd) {
            conf.push_str("protocol bfd { interface \"*\" { interval 300 ms; multiplier 3; }; }\n");
        }
        for (index, neighbor) in c.neighbors.iter().enumerate() {
            let _ = write!(
                conf,
                "protocol bgp n{index} {{\n  local {} as {};\n  neighbor {} port {} as {};\n",
                c.local_address,
                c.local_as,
                neighbor.address,
                neighbor.port.unwrap_or(179),
                neighbor.remote_as
            );
            if let Some(password) = &neighbor.md5_password {
                let _ = writeln!(conf, "  password \"{password}\";");
            }
            if let Some(hops) = neighbor.multihop {
                let _ = writeln!(conf, "  multihop {hops};");
            }
            if neighbor.bfd {
                conf.push_str("  bfd graceful;\n");
            }
            if c.graceful_restart {
                conf.push_str("  graceful restart on;\n");
            }
            if c.passive {
                conf.push_str("  passive on;\n");
            }
            conf.push_str(
                "  connect retry time 1;\n  error wait time 1, 5;\n\
                 ipv4 { import all; export none; add paths rx; };\n\
                 ipv6 { import all; export none; add paths rx; };\n}\n",
            );
        }
        conf
    }

    fn frr_conf(&self) -> String {
        let c = &self.config;
        let mut conf = format!(
            "frr defaults traditional\nrouter bgp {}\n bgp router-id {}\n no bgp ebgp-requires-policy\n\
             bgp bestpath as-path multipath-relax\n",
            c.local_as, c.router_id
        );
        if c.graceful_restart {
            // Long-lived graceful restart helper too (RFC 9494), as BIRD is
            // by default: FRR's is off until a stale time is set.
            conf.push_str(
                " bgp graceful-restart\n bgp long-lived-graceful-restart stale-time 3600\n",
            );
        }
        for neighbor in &c.neighbors {
            let _ = writeln!(
                conf,
                " neighbor {} remote-as {}\n neighbor {} timers connect 1",
                neighbor.address, neighbor.remote_as, neighbor.address
            );
            if let Some(password) = &neighbor.md5_password {
                let _ = writeln!(conf, " neighbor {} password {password}", neighbor.address);
            }
            if let Some(port) = neighbor.port {
                let _ = writeln!(conf, " neighbor {} port {port}", neighbor.address);
            }
            if let Some(hops) = neighbor.multihop {
                let _ = writeln!(conf, " neighbor {} ebgp-multihop {hops}", neighbor.address);
            }
            if neighbor.bfd {
                let _ = writeln!(conf, " neighbor {} bfd", neighbor.address);
            }
            if c.passive {
                let _ = writeln!(conf, " neighbor {} passive", neighbor.address);
            }
        }
        for family in ["ipv4", "ipv6"] {
            let _ = writeln!(conf, " address-family {family} unicast\n  maximum-paths 16");
            for neighbor in &c.neighbors {
                let _ = writeln!(conf, "  neighbor {} activate", neighbor.address);
            }
            conf.push_str(" exit-address-family\n");
        }
        conf
    }

    fn gobgp_conf(&self) -> String {
        let c = &self.config;
        let mut conf = format!(
            "[global.config]\n  as = {}\n  router-id = \"{}\"\n  port = 179\n",
            c.local_as, c.router_id
        );
        for neighbor in &c.neighbors {
            let _ = write!(
                conf,
                "[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{}\"\n    peer-as = {}\n",
                neighbor.address, neighbor.remote_as
            );
            if let Some(password) = &neighbor.md5_password {
                let _ = writeln!(conf, "    auth-password = \"{password}\"");
            }
            let _ = writeln!(
                conf,
                "  [neighbors.transport.config]\n    passive-mode = {}\n    remote-port = {}",
                c.passive,
                neighbor.port.unwrap_or(179)
            );
            if let Some(hops) = neighbor.multihop {
                let _ = writeln!(
                    conf,
                    "  [neighbors.ebgp-multihop.config]\n    enabled = true\n    multihop-ttl = {hops}"
                );
            }
            conf.push_str("  [neighbors.timers.config]\n    connect-retry = 1\n");
            if c.graceful_restart {
                conf.push_str(
                    "  [neighbors.graceful-restart.config]\n    enabled = true\n    helper-only = true\n",
                );
            }
            for family in ["ipv4-unicast", "ipv6-unicast"] {
                let _ = write!(
                    conf,
                    "  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"{family}\"\n\
                     \x20   [neighbors.afi-safis.add-paths.config]\n      receive = true\n"
                );
                if c.graceful_restart {
                    conf.push_str("    [neighbors.afi-safis.mp-graceful-restart.config]\n      enabled = true\n");
                }
            }
        }
        conf
    }

    /// True when the daemon reports the session with `neighbor` Established.
    pub fn established(&self, lab: &Lab, neighbor: IpAddr) -> Result<bool> {
        Ok(match self.config.daemon {
            Daemon::Bird => {
                let index = self.neighbor_index(neighbor)?;
                let out = self.birdc(lab, &["show", "protocols", &format!("n{index}")])?;
                out.contains("Established")
            }
            Daemon::Frr => {
                let out = self.vtysh(lab, &format!("show bgp neighbors {neighbor}"))?;
                out.contains("BGP state = Established")
            }
            Daemon::Gobgp => {
                let out = self.gobgp(lab, &["neighbor", &neighbor.to_string()])?;
                out.to_lowercase().contains("bgp state = established")
            }
        })
    }

    /// The BGP identifier `neighbor` sent in its OPEN, as the daemon shows it
    /// (None before a session came up).
    pub fn neighbor_router_id(&self, lab: &Lab, neighbor: IpAddr) -> Result<Option<Ipv4Addr>> {
        let (out, label) = match self.config.daemon {
            Daemon::Bird => {
                let index = self.neighbor_index(neighbor)?;
                let protocol = format!("n{index}");
                let out = self.birdc(lab, &["show", "protocols", "all", &protocol])?;
                (out, "Neighbor ID:")
            }
            Daemon::Frr => (
                self.vtysh(lab, &format!("show bgp neighbors {neighbor}"))?,
                "remote router ID",
            ),
            Daemon::Gobgp => (
                self.gobgp(lab, &["neighbor", &neighbor.to_string()])?,
                "remote router ID",
            ),
        };
        Ok(out.lines().find_map(|line| {
            let (_, after) = line.split_once(label)?;
            after
                .trim_start()
                .split(|c: char| c == ',' || c.is_whitespace())
                .next()?
                .parse()
                .ok()
        }))
    }

    /// How long the router's BFD session with `neighbor` waits before it
    /// declares the neighbour down (BIRD, FRR), once the session is Up;
    /// None before. Right after Up it can still be the slow start's (the
    /// neighbour sends at 1 s until its poll sequence lowers that).
    pub fn bfd_detection_time(&self, lab: &Lab, neighbor: IpAddr) -> Result<Option<Duration>> {
        Ok(match self.config.daemon {
            Daemon::Bird => {
                // `IP address  Interface  State  Since  Interval  Timeout`,
                // the last two in seconds.
                let neighbor = neighbor.to_string();
                let out = self.birdc(lab, &["show", "bfd", "sessions"])?;
                out.lines()
                    .map(|line| line.split_whitespace().collect::<Vec<_>>())
                    .find(|fields| fields.first() == Some(&neighbor.as_str()))
                    .filter(|fields| fields.contains(&"Up"))
                    .and_then(|fields| fields.last()?.parse::<f64>().ok())
                    .map(Duration::from_secs_f64)
            }
            Daemon::Frr => {
                let out = self.vtysh(lab, &format!("show bfd peer {neighbor} json"))?;
                let peer: serde_json::Value = serde_json::from_str(&out)
                    .with_context(|| format!("FRR's BFD peer {neighbor}: {out}"))?;
                let ms = |key: &str| peer.get(key).and_then(serde_json::Value::as_u64);
                // RFC 5880 6.8.4: the remote's multiplier times the slower of
                // what we ask to receive and what it sends at.
                match (
                    peer.get("status").and_then(serde_json::Value::as_str),
                    ms("remote-detect-multiplier"),
                    ms("receive-interval"),
                    ms("remote-transmit-interval"),
                ) {
                    (Some("up"), Some(multiplier), Some(rx), Some(tx)) => {
                        Some(Duration::from_millis(multiplier * rx.max(tx)))
                    }
                    _ => None,
                }
            }
            Daemon::Gobgp => bail!("GoBGP runs no BFD"),
        })
    }

    /// The daemon's own view of its sessions and its log, for failure messages.
    pub fn describe(&self, lab: &Lab) -> String {
        let view = match self.config.daemon {
            Daemon::Bird => self.birdc(lab, &["show", "protocols", "all"]),
            Daemon::Frr => self.vtysh(lab, "show bgp neighbors"),
            Daemon::Gobgp => self.gobgp(lab, &["neighbor"]),
        };
        let logs: String = std::fs::read_dir(lab.run_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "log"))
            .map(|entry| {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                format!(
                    "--- {}\n{}\n",
                    entry.path().display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect();
        format!(
            "{}\n{logs}",
            view.unwrap_or_else(|error| format!("{error:#}"))
        )
    }

    fn neighbor_index(&self, neighbor: IpAddr) -> Result<usize> {
        self.config
            .neighbors
            .iter()
            .position(|n| n.address == neighbor)
            .with_context(|| format!("{neighbor} is not a configured neighbour"))
    }

    /// FRR: starts one more daemon of this router (e.g. `bfdd`, which
    /// bgpd reaches through zebra for `neighbor X bfd`).
    pub fn spawn_frr_daemon(&self, lab: &mut Lab, daemon: &str) -> Result<()> {
        spawn_frr(lab, &self.ns, &self.name, &self.dir, &[daemon])
    }

    pub fn birdc(&self, lab: &Lab, args: &[&str]) -> Result<String> {
        let socket = self.dir.join("bird.ctl");
        let mut all = vec!["birdc", "-s", socket.to_str().unwrap_or_default()];
        all.extend_from_slice(args);
        lab.exec(&self.ns, &all)
    }

    pub fn vtysh(&self, lab: &Lab, command: &str) -> Result<String> {
        let dir = self.dir.to_str().unwrap_or_default();
        lab.exec(&self.ns, &["vtysh", "--vty_socket", dir, "-c", command])
    }

    pub fn gobgp(&self, lab: &Lab, args: &[&str]) -> Result<String> {
        let mut all = vec!["gobgp", "-u", "127.0.0.1", "-p", "50051"];
        all.extend_from_slice(args);
        lab.exec(&self.ns, &all)
    }

    /// The next hops the router uses for `prefix`: from the kernel's FIB for
    /// BIRD and FRR (they install routes), from the RIB for GoBGP (which
    /// installs nothing without zebra).
    pub fn next_hops(&self, lab: &Lab, prefix: &str) -> Result<BTreeSet<IpAddr>> {
        let text = match self.config.daemon {
            Daemon::Bird | Daemon::Frr => {
                let family = if prefix.contains(':') { "-6" } else { "-4" };
                lab.ip(&self.ns, &[family, "route", "show", prefix])?
            }
            Daemon::Gobgp => {
                let family = if prefix.contains(':') { "ipv6" } else { "ipv4" };
                let out = self.gobgp(lab, &["global", "rib", "-a", family, prefix])?;
                // Columns: status, network, next hop, ...; keep the next hops.
                return Ok(out
                    .lines()
                    .filter(|line| line.contains(prefix))
                    .filter_map(|line| {
                        line.split_whitespace()
                            .find_map(|word| word.parse::<IpAddr>().ok())
                    })
                    .collect());
            }
        };
        // `via X` in `ip route` output, for single and multipath routes.
        let words: Vec<&str> = text.split_whitespace().collect();
        Ok(words
            .windows(2)
            .filter(|pair| pair[0] == "via")
            .filter_map(|pair| pair[1].parse().ok())
            .collect())
    }
}

/// Starts BIRD in `ns` with `<dir>/bird.conf`, its control socket in `dir`.
pub fn spawn_bird(lab: &mut Lab, ns: &str, name: &str, dir: &Path) -> Result<()> {
    let mut command = lab.command(ns, "bird");
    command
        .arg("-f")
        .arg("-c")
        .arg(dir.join("bird.conf"))
        .arg("-s")
        .arg(dir.join("bird.ctl"))
        .arg("-P")
        .arg(dir.join("bird.pid"));
    lab.spawn(name, command)?;
    Ok(())
}

/// Starts FRR's `daemons` (zebra first) in `ns` with `<dir>/frr.conf`,
/// their vty sockets in `dir`, as log names `<name>-<daemon>`.
pub fn spawn_frr(lab: &mut Lab, ns: &str, name: &str, dir: &Path, daemons: &[&str]) -> Result<()> {
    // FRR drops privileges to user frr, which must read its files.
    let _ = Command::new("chown")
        .args(["-R", "frr:frr"])
        .arg(dir)
        .status();
    let _ = Command::new("chmod")
        .args(["755"])
        .arg(dir.parent().unwrap_or(dir))
        .status();
    for daemon in daemons {
        let mut command = lab.command(ns, format!("/usr/lib/frr/{daemon}"));
        command
            .arg("-N")
            .arg(name)
            .arg("-f")
            .arg(dir.join("frr.conf"))
            .arg("-i")
            .arg(dir.join(format!("{daemon}.pid")))
            .arg("--vty_socket")
            .arg(dir)
            .arg("-z")
            .arg(dir.join("zserv.api"));
        match *daemon {
            // No other bgpd instance may share the port; -p keeps 179
            // (each lab has its own namespace).
            "bgpd" => {
                command.args(["-p", "179"]);
            }
            // bfdd's control socket defaults to one path for the machine.
            "bfdd" => {
                command.arg("--bfdctl").arg(dir.join("bfdd.sock"));
            }
            _ => {}
        }
        lab.spawn(&format!("{name}-{daemon}"), command)?;
        if *daemon == "zebra" {
            let api = dir.join("zserv.api");
            wait_for("zebra's API socket", Duration::from_secs(10), || {
                Ok(api.exists().then_some(()))
            })?;
        }
    }
    Ok(())
}

/// The router and speaker addresses of [`BgpLab`].
pub const ROUTER_V4: &str = "172.30.0.1";
pub const SPEAKER_V4: &str = "172.30.0.10";
pub const ROUTER_V6: &str = "fd00:30::1";
pub const SPEAKER_V6: &str = "fd00:30::10";

/// Two namespaces on one link: `r` (router daemon) and `ctl` (the speaker),
/// with IPv4 172.30.0.0/24 and IPv6 fd00:30::/64; node next hops
/// 172.30.0.11.. and fd00:30::11.. are on that link.
pub struct BgpLab {
    pub lab: Lab,
    pub router_ns: String,
    pub speaker_ns: String,
}

impl BgpLab {
    pub fn new(tag: &str) -> Result<Self> {
        let mut lab = Lab::new(tag)?;
        let router_ns = lab.netns("r")?;
        let speaker_ns = lab.netns("ctl")?;
        lab.veth((&router_ns, "eth0"), (&speaker_ns, "eth0"))?;
        lab.addr(&router_ns, "eth0", &format!("{ROUTER_V4}/24"))?;
        lab.addr(&speaker_ns, "eth0", &format!("{SPEAKER_V4}/24"))?;
        // nodad: the addresses are usable at once instead of after DAD.
        lab.ip(
            &router_ns,
            &[
                "addr",
                "add",
                &format!("{ROUTER_V6}/64"),
                "dev",
                "eth0",
                "nodad",
            ],
        )?;
        lab.ip(
            &speaker_ns,
            &[
                "addr",
                "add",
                &format!("{SPEAKER_V6}/64"),
                "dev",
                "eth0",
                "nodad",
            ],
        )?;
        Ok(Self {
            lab,
            router_ns,
            speaker_ns,
        })
    }

    /// Starts `daemon` in the router namespace, AS 65001, peering with the
    /// speaker (AS 65000); `passive`: only wait for the speaker to connect.
    pub fn start_router(
        &mut self,
        daemon: Daemon,
        md5_password: Option<&str>,
        graceful_restart: bool,
        passive: bool,
    ) -> Result<Router> {
        let ns = self.router_ns.clone();
        Router::start(
            &mut self.lab,
            &ns,
            RouterConfig {
                daemon,
                router_id: ROUTER_V4.into(),
                local_address: ROUTER_V4.parse()?,
                local_as: 65001,
                neighbors: vec![Neighbor {
                    md5_password: md5_password.map(str::to_owned),
                    ..Neighbor::new(SPEAKER_V4.parse()?, 65000)
                }],
                graceful_restart,
                passive,
            },
        )
    }
}

/// Policy checks: what the router holds for a prefix and how it installs it.
impl Router {
    /// FRR: applies `lines` inside `router bgp <local AS>` (and, for lines
    /// that need it, `address-family ...` lines given by the caller), e.g.
    /// `bgp bestpath bandwidth skip-missing`.
    pub fn frr_configure(&self, lab: &Lab, lines: &[&str]) -> Result<String> {
        let dir = self.dir.to_str().unwrap_or_default();
        let router = format!("router bgp {}", self.config.local_as);
        let mut args = vec![
            "vtysh",
            "--vty_socket",
            dir,
            "-c",
            "configure terminal",
            "-c",
            &router,
        ];
        for line in lines {
            args.extend_from_slice(&["-c", line]);
        }
        lab.exec(&self.ns, &args)
    }

    /// FRR: `show bgp <afi> unicast <prefix> json`, parsed.
    pub fn frr_route_json(&self, lab: &Lab, prefix: &str) -> Result<serde_json::Value> {
        let family = if prefix.contains(':') { "ipv6" } else { "ipv4" };
        let text = self.vtysh(lab, &format!("show bgp {family} unicast {prefix} json"))?;
        serde_json::from_str(&text).with_context(|| format!("vtysh printed no JSON: {text}"))
    }

    /// BIRD: `show route all <prefix>`, the text that lists each path's
    /// attributes (`BGP.community: ...`, `BGP.local_pref: ...`).
    pub fn bird_route_all(&self, lab: &Lab, prefix: &str) -> Result<String> {
        self.birdc(lab, &["show", "route", prefix, "all"])
    }

    /// The kernel's next hops for `prefix` with their weights (1 when `ip`
    /// prints none): FRR installs weighted ECMP from link bandwidth this way.
    pub fn route_weights(&self, lab: &Lab, prefix: &str) -> Result<BTreeMap<IpAddr, u32>> {
        Ok(self
            .kernel_next_hops(lab, prefix)?
            .into_iter()
            .map(|hop| (hop.via, hop.weight))
            .collect())
    }

    /// The kernel's next hops for `prefix`, with their devices: FRR
    /// installs an IPv6 route learnt from a directly connected eBGP peer via
    /// the peer's link-local address, so the device is what says which
    /// neighbour a next hop leads to.
    pub fn kernel_next_hops(&self, lab: &Lab, prefix: &str) -> Result<Vec<KernelNextHop>> {
        let family = if prefix.contains(':') { "-6" } else { "-4" };
        let text = lab.ip(&self.ns, &[family, "route", "show", prefix])?;
        Ok(parse_next_hops(&text))
    }
}

/// One next hop of a kernel route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelNextHop {
    pub via: IpAddr,
    pub dev: String,
    /// 1 when `ip` prints none.
    pub weight: u32,
}

/// `via X dev D ... weight N` of `ip route show` output, one per next hop,
/// for single and multipath routes.
fn parse_next_hops(text: &str) -> Vec<KernelNextHop> {
    let mut hops: Vec<KernelNextHop> = Vec::new();
    let words: Vec<&str> = text.split_whitespace().collect();
    for pair in words.windows(2) {
        match (pair[0], hops.last_mut()) {
            ("via", _) => {
                if let Ok(via) = pair[1].parse() {
                    hops.push(KernelNextHop {
                        via,
                        dev: String::new(),
                        weight: 1,
                    });
                }
            }
            ("dev", Some(hop)) => hop.dev = pair[1].to_owned(),
            ("weight", Some(hop)) => {
                if let Ok(weight) = pair[1].parse() {
                    hop.weight = weight;
                }
            }
            _ => {}
        }
    }
    hops
}

/// Porter's speaker running in a lab namespace (its own runtime thread there).
pub struct LabSpeaker {
    runtime: NetnsRuntime,
    speaker: Speaker,
}

impl LabSpeaker {
    pub fn start(ns: &str, config: SpeakerConfig) -> Result<Self> {
        let runtime = NetnsRuntime::new(ns)?;
        let speaker = runtime.run(async move { Speaker::start(config).await })??;
        Ok(Self { runtime, speaker })
    }

    pub fn upsert_peer(&self, peer: PeerConfig) -> Result<()> {
        let speaker = self.speaker.clone();
        self.runtime
            .run(async move { speaker.upsert_peer(peer).await })
    }

    pub fn set_paths(&self, paths: PathTable) -> Result<()> {
        let speaker = self.speaker.clone();
        self.runtime
            .run(async move { speaker.set_paths(paths).await })
    }

    pub fn status(&self) -> Result<Vec<PeerStatus>> {
        let speaker = self.speaker.clone();
        self.runtime.run(async move { speaker.peer_status().await })
    }

    /// Waits until both sides report the session with `router` Established.
    pub fn wait_established(&self, lab: &Lab, router: &Router, timeout: Duration) -> Result<()> {
        let speaker_address = router
            .config
            .neighbors
            .first()
            .map(|neighbor| neighbor.address)
            .context("the router has no neighbour")?;
        wait_for("the session to reach Established", timeout, || {
            let ours = self
                .status()?
                .iter()
                .any(|status| status.state == SessionState::Established);
            Ok((ours && router.established(lab, speaker_address)?).then_some(()))
        })
        .with_context(|| {
            format!(
                "speaker: {:?}\nrouter: {}",
                self.status(),
                router.describe(lab)
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_hops_are_read_with_their_devices_and_weights() {
        let text = "192.0.2.20 nhid 31 proto bgp metric 20 \n\
                    \tnexthop via 172.30.0.11 dev eth0 weight 25 \n\
                    \tnexthop via 172.30.0.12 dev eth0 weight 75 \n";
        let parsed = parse_next_hops(text);
        let hops: Vec<(IpAddr, &str, u32)> = parsed
            .iter()
            .map(|hop| (hop.via, hop.dev.as_str(), hop.weight))
            .collect();
        assert_eq!(
            hops,
            vec![
                ("172.30.0.11".parse().expect("ip"), "eth0", 25),
                ("172.30.0.12".parse().expect("ip"), "eth0", 75)
            ]
        );
        let plain =
            parse_next_hops("fd00:40:: via fe80::1 dev v-l1 proto bgp metric 20 pref medium");
        assert_eq!(
            plain,
            vec![KernelNextHop {
                via: "fe80::1".parse().expect("ip"),
                dev: "v-l1".to_owned(),
                weight: 1
            }]
        );
    }
}
