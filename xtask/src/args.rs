//! Arguments of the tasks that only a `lab` build of xtask runs (see
//! relaunch.rs): parsed by every build, so `--help` and errors are the same.

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Leave the lab running afterwards and print commands to explore it.
    #[arg(long)]
    pub keep: bool,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Which suite to run.
    #[arg(value_enum)]
    pub suite: Suite,
    /// Seconds per throughput measurement of the `dataplane` suite's lab (each side is
    /// measured 5 times).
    #[arg(long, default_value_t = 2)]
    pub seconds: u64,
    /// `dataplane` only: run the per-packet cases alone, without the labs (seconds, not
    /// minutes; for comparing one hot-path change against another).
    #[arg(long)]
    pub per_packet_only: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Suite {
    /// XDP per-packet cost (BPF_PROG_TEST_RUN) and lab throughput vs iptables DNAT.
    Dataplane,
    /// 10,000 prefixes x 4 next hops into BIRD, against GoBGP loading the same set.
    Bgp,
    /// IPAM and announcements for 10,000 Services over 1,000 nodes.
    Controller,
    /// Agent sync of services x 10 local backends: from empty, one endpoint change, and a
    /// no-change pass (1,000 services at M = 1009; 64 at the default M = 65537).
    Agent,
    /// Layer 2 failover time after a leader crash (median of 10), and handback.
    Layer2,
    /// Node mode with BFD: seconds until the router drops a silently cut node (median of 10,
    /// at 300 ms x 3 and 100 ms x 3), and 60 s of CPU stress without a false alarm.
    Failover,
    /// Connections broken when the ECMP set changes and Porter restarts (200 held per
    /// policy): externalTrafficPolicy Cluster against Local in the same run.
    Disruption,
}
