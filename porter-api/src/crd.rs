//! The custom resources: `Eip` (v1alpha2 stored, v1alpha1 served for the
//! seed's manifests), `BgpConf` and `BgpPeer`, all cluster-scoped in
//! `network.kubesphere.io`. Field names follow OpenELB so that its objects
//! apply unchanged.

// Each `printcolumn(...)` repeats `type_ = "integer"` and the like; clippy
// reads those as duplicated attributes although they are separate columns.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use kube::core::CustomResourceExt;
use kube::core::crd::merge_crds;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "network.kubesphere.io";

/// An address pool Services are given external IPs from.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "network.kubesphere.io",
    version = "v1alpha2",
    kind = "Eip",
    status = "EipStatus",
    derive = "PartialEq",
    derive = "Default",
    printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.address"),
    printcolumn(name = "Usage", type_ = "integer", json_path = ".status.usage"),
    printcolumn(name = "Total", type_ = "integer", json_path = ".status.poolSize"),
    printcolumn(name = "Disabled", type_ = "boolean", json_path = ".spec.disable"),
    printcolumn(name = "Ready", type_ = "boolean", json_path = ".status.ready"),
    printcolumn(
        name = "Announcers",
        type_ = "string",
        json_path = ".status.layer2Nodes"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct EipSpec {
    /// A single IP (`10.0.0.5`), a CIDR (`10.0.0.0/24`, `2001:db8::/64`) or an
    /// inclusive range (`10.0.0.10-10.0.0.20`). IPv4 or IPv6.
    pub address: String,
    /// How the addresses are announced: `bgp` (the default when empty) or `layer2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// For `layer2`: the NIC to answer on, by name (`eth0`) or as
    /// `can_reach:<ip>` (the interface the node would reach `<ip>` through).
    /// Unset: every interface the data plane is attached to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Stop handing out new addresses from this pool; addresses already given keep working.
    #[serde(default)]
    pub disable: bool,
    /// For a CIDR `address`: hand out its edge addresses too, which are
    /// left out by default: the network and broadcast addresses of IPv4
    /// (hosts on that subnet treat them specially), the Subnet-Router
    /// anycast address (the first) of IPv6. Turn it on for a BGP pool whose
    /// addresses are routed one by one (/32, /128), where they are ordinary
    /// addresses. A /31, /32, /127 or /128 has no edges to leave out; a
    /// range `a-b` or a single IP is always taken as written.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub include_network_and_broadcast: bool,
    /// Order among the pools a Service may use: lower wins.
    #[serde(default)]
    pub priority: i32,
    /// Only Services in these namespaces are given addresses from this pool
    /// automatically (together with `namespaceSelector`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Only Services in namespaces with all of these labels are given
    /// addresses from this pool automatically (together with `namespaces`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespace_selector: BTreeMap<String, String>,
    /// Who may share this pool's addresses (`porter.kubesphere.io/allow-shared-ip`).
    /// Unset: only Services of one namespace share an address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharing: Option<EipSharing>,
    /// BGP advertisement policy for every address of this pool (see
    /// docs/bgp-policy.md). Values that cannot be read set the
    /// `BgpPolicyInvalid` condition; the rest of the policy still applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<EipBgp>,
}

/// `Eip.spec.sharing`: how far a sharing key reaches.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EipSharing {
    /// Let Services of different namespaces (among those the pool is open
    /// to) share an address under one sharing key. Off by default: a
    /// sharing key then only joins Services of one namespace, so nobody
    /// who learns a key can attach a Service of theirs to another
    /// tenant's address.
    #[serde(default)]
    pub cross_namespace: bool,
}

/// `Eip.spec.bgp`: what the pool's paths carry and where they go. Field
/// names follow MetalLB's `BGPAdvertisement`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EipBgp {
    /// RFC 1997 communities: `ASN:VALUE` (each 0..=65535) or a well-known
    /// name (`no-export`, `no-advertise`, `no-export-subconfed`, `no-peer`,
    /// `blackhole`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<String>,
    /// RFC 8092 large communities: `GLOBAL:LOCAL1:LOCAL2`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub large_communities: Vec<String>,
    /// LOCAL_PREF, sent to iBGP peers only; 100 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_pref: Option<u32>,
    /// Which BgpPeers (by their labels) are sent this pool; all when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_selector: Option<LabelSelector>,
    /// Which nodes (by their labels) may be next hops for this pool; all
    /// when unset. A pool whose serving nodes all fail it is withdrawn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// What the pool's Services may add to its paths with their
    /// `bgp.porter.kubesphere.io/*` annotations. Unset: nothing; a
    /// Service's communities, large communities and LOCAL_PREF are then
    /// not sent, and an Event says so. (A Service may always switch link
    /// bandwidth off.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_attributes: Option<ServiceAttributes>,
}

/// `Eip.spec.bgp.serviceAttributes`: the BGP attributes a pool lets its
/// Services set, so that a Service owner cannot attach `blackhole`,
/// `no-export` or a preference the network operator did not intend.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAttributes {
    /// Communities a Service may add, spelled as in `communities`; `"*"`
    /// allows any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<String>,
    /// Large communities a Service may add, spelled as in
    /// `largeCommunities`; `"*"` allows any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub large_communities: Vec<String>,
    /// Whether a Service may set LOCAL_PREF; `false` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_pref: Option<bool>,
}

/// What the controller reports about a pool.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EipStatus {
    /// Every address is in use.
    #[serde(default)]
    pub occupied: bool,
    /// Addresses in use.
    #[serde(default)]
    pub usage: i64,
    /// Addresses in the pool; saturates at 2^63-1 for very large IPv6 pools.
    #[serde(default)]
    pub pool_size: i64,
    /// Address → the Services using it, as `namespace/name` joined by `;`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub used: BTreeMap<String, String>,
    #[serde(default, rename = "firstIP", skip_serializing_if = "Option::is_none")]
    pub first_ip: Option<String>,
    #[serde(default, rename = "lastIP", skip_serializing_if = "Option::is_none")]
    pub last_ip: Option<String>,
    /// The pool holds IPv4 addresses.
    #[serde(default)]
    pub v4: bool,
    /// The pool is valid, does not overlap another, and is in force. A
    /// disabled or full one is too: the reason of its `Ready` condition
    /// (`Accepted`, `Disabled`, `Exhausted`) says whether it hands out
    /// addresses.
    #[serde(default)]
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// `layer2` pools: the node that answers ARP/NDP for each address in
    /// use, i.e. holds the address's lease. An address nobody answers for
    /// is absent. Mirrored from the agents' leases by the controller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["address"]))]
    pub layer2_announcers: Vec<Layer2Announcer>,
    /// The nodes of `layer2Announcers`, sorted and comma-separated (the
    /// `Announcers` column of `kubectl get eip`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub layer2_nodes: String,
}

/// Which node announces one `layer2` address.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Layer2Announcer {
    pub address: String,
    /// The node answering ARP (IPv4) or neighbour solicitations (IPv6) for it.
    pub node: String,
    /// When the controller first saw this node announce the address.
    pub since: Time,
}

/// The seed's (Porter v0.1–v0.3) `Eip`: served so that old manifests apply as
/// they are. With no conversion webhook the API server maps the fields by
/// name, which is right because v1alpha1's are a subset of v1alpha2's.
pub mod v1alpha1 {
    use super::*;

    #[derive(
        CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema,
    )]
    #[kube(
        group = "network.kubesphere.io",
        version = "v1alpha1",
        kind = "Eip",
        status = "EipStatus",
        printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.address"),
        printcolumn(name = "Usage", type_ = "integer", json_path = ".status.usage"),
        printcolumn(name = "Total", type_ = "integer", json_path = ".status.poolSize"),
        printcolumn(name = "Disabled", type_ = "boolean", json_path = ".spec.disable"),
        printcolumn(
            name = "Age",
            type_ = "date",
            json_path = ".metadata.creationTimestamp"
        )
    )]
    #[serde(rename_all = "camelCase")]
    pub struct EipSpec {
        /// A single IP, a CIDR or an inclusive range `a-b`.
        pub address: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub protocol: Option<String>,
        #[serde(default)]
        pub disable: bool,
    }
}

/// Cluster-wide BGP settings; only the object named `default` is read.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "network.kubesphere.io",
    version = "v1alpha2",
    kind = "BgpConf",
    derive = "PartialEq",
    printcolumn(name = "AS", type_ = "integer", json_path = ".spec.as"),
    printcolumn(name = "RouterID", type_ = "string", json_path = ".spec.routerId"),
    printcolumn(name = "ListenPort", type_ = "integer", json_path = ".spec.listenPort")
)]
#[serde(rename_all = "camelCase")]
pub struct BgpConfSpec {
    /// Our AS number.
    #[serde(rename = "as")]
    pub as_number: u32,
    /// Our BGP identifier, an IPv4 address. When unset, each controller
    /// replica uses its own (`--router-id`: the deploy manifest passes its
    /// node's address), and in node mode each agent its node's InternalIP.
    /// Leave it unset with more than one controller replica: set, it is
    /// shared, and a router sees two sessions with one identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_id: Option<String>,
    /// Port to accept passive sessions on; 17900 when unset (the seed's
    /// default), negative to not listen at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_port: Option<i32>,
    /// RFC 4724 graceful restart: peers keep our routes while a new leader
    /// (or, in node mode, a restarted agent) takes over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graceful_restart: Option<GracefulRestart>,
    /// Who speaks BGP: `controller` (the default: the leader announces every
    /// node's paths with ADD-PATH) or `node` (each agent announces its own
    /// node's paths to the BgpPeers whose `nodeSelector` matches its node).
    /// See docs/bgp-policy.md, section 5, for when to use which.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speaker_mode: Option<SpeakerMode>,
    /// The link bandwidth extended community that makes routers weight
    /// each node's path by its ready endpoints; on when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_bandwidth: Option<LinkBandwidthConf>,
}

/// `BgpConf.spec.linkBandwidth`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkBandwidthConf {
    /// `false`: no path carries link bandwidth, routers fall back to plain
    /// per-node ECMP.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

impl Default for LinkBandwidthConf {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// Where the BGP speaker runs.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SpeakerMode {
    /// The leader controller peers with every BgpPeer.
    #[default]
    Controller,
    /// Every agent peers with the BgpPeers that select its node.
    Node,
}

impl BgpConfSpec {
    pub fn speaker_mode(&self) -> SpeakerMode {
        self.speaker_mode.unwrap_or_default()
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GracefulRestart {
    /// Graceful restart is on only when this is true. (Without
    /// `gracefulRestart` at all it is on, with a restart time of 120 s.)
    #[serde(default)]
    pub enabled: bool,
    /// Seconds peers keep our routes after the session drops (default 120).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_time: Option<u16>,
}

/// One BGP neighbour to announce to.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "network.kubesphere.io",
    version = "v1alpha2",
    kind = "BgpPeer",
    status = "BgpPeerStatus",
    derive = "PartialEq",
    printcolumn(
        name = "Neighbor",
        type_ = "string",
        json_path = ".spec.conf.neighborAddress"
    ),
    printcolumn(name = "PeerAS", type_ = "integer", json_path = ".spec.conf.peerAs")
)]
#[serde(rename_all = "camelCase")]
pub struct BgpPeerSpec {
    pub conf: PeerConf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebgp_multihop: Option<EbgpMultihop>,
    /// GTSM (RFC 5082) for a directly connected router: Porter sends with
    /// TTL 255 and drops the router's packets that arrive with a TTL below
    /// `ttlMin` (255 when unset), so that nobody further away can reach the
    /// session. The router must send with TTL 255 too (BIRD `ttl security`,
    /// FRR `ttl-security hops 1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_security: Option<TtlSecurity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timers: Option<Timers>,
    /// Address families and ADD-PATH; empty means the neighbour's own family
    /// with `sendMax` 10.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub afi_safis: Vec<AfiSafi>,
    /// The nodes this peer is about (labels that must all match; all nodes
    /// when empty). In `speakerMode: node`, the agents of these nodes open a
    /// session to this peer, as in OpenELB; in `controller` mode, the
    /// controller sends the peer only the paths through these nodes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// How paths are shaped for this peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PeerPolicySpec>,
    /// Run BFD (RFC 5880) with the neighbour, so that a dead link or node
    /// takes the session down within the detection time instead of the hold
    /// time. Single hop (RFC 5881), or multihop (RFC 5883) when
    /// `ebgpMultihop.enabled`. Unset: no BFD. See docs/bfd.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<BfdSpec>,
}

/// `BgpPeer.spec.bfd`; field names as in MetalLB's BFDProfile. An empty
/// block (`bfd: {}`) runs BFD at 300 ms × 3.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BfdSpec {
    /// Milliseconds: the shortest interval between BFD packets this side
    /// accepts (Required Min RX); 10-60000, 300 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 60000))]
    pub receive_interval: Option<u32>,
    /// Milliseconds: how often this side wants to send (Desired Min TX) once
    /// the session is up; 10-60000, 300 when unset. While it is not up,
    /// packets go out once a second (RFC 5880 slow start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 60000))]
    pub transmit_interval: Option<u32>,
    /// Packets the neighbour may miss before it declares this side down;
    /// 2-255, 3 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 255))]
    pub detect_multiplier: Option<u8>,
}

/// `BgpPeer.spec.policy`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerPolicySpec {
    /// Send COMMUNITIES and LARGE_COMMUNITY to this peer; true when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_communities: Option<bool>,
    /// The form of the link bandwidth community this peer gets; `Transitive`
    /// when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_bandwidth: Option<LinkBandwidthMode>,
}

/// How a peer gets the link bandwidth extended community.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum LinkBandwidthMode {
    /// Type 0x00 sub-type 0x04: survives into the next AS, where FRR sums it.
    #[default]
    Transitive,
    /// Type 0x40 sub-type 0x04: stops at the first router.
    NonTransitive,
    /// Never sent: for routers that reject it.
    Off,
}

/// The sessions to a peer, one entry per speaker. Each speaker writes only
/// its own entry (server-side apply, one field manager per node), so the
/// list is a map keyed by `node`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BgpPeerStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub nodes: Vec<BgpPeerNodeStatus>,
}

/// One speaker's session to the peer.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BgpPeerNodeStatus {
    /// The node whose agent holds the session, or `controller` for the
    /// controller's speaker.
    pub node: String,
    /// The RFC 4271 session state: Idle, Connect, Active, OpenSent,
    /// OpenConfirm or Established.
    pub state: String,
    /// Paths the peer holds from this speaker.
    #[serde(default)]
    pub paths_announced: u64,
    /// Why the session last failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The BFD session state when `spec.bfd` is set: Up, Init, Down or
    /// AdminDown, with the diagnostic when it is not Up (e.g. `Down
    /// (control detection time expired)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<String>,
}

/// The `BgpPeer.status.nodes` key of the controller's own session.
pub const CONTROLLER_STATUS_KEY: &str = "controller";

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerConf {
    pub peer_as: u32,
    pub neighbor_address: String,
    /// TCP MD5 (RFC 2385) password in plain text, as OpenELB spells it.
    /// Anyone who can read BgpPeers can read it: prefer
    /// `authPasswordSecretRef`, which wins when both are set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_password: Option<String>,
    /// TCP MD5 (RFC 2385) password from a key of a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_password_secret_ref: Option<SecretKeyRef>,
}

/// One key of a Secret (`SecretKeySelector` plus a namespace).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    /// The key under `data` (or `stringData`) that holds the password.
    pub key: String,
    /// Defaults to the controller's own namespace (`porter-system`), the
    /// only one it reads Secrets from unless told otherwise
    /// (`--secret-namespaces`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Transport {
    /// Wait for the neighbour to connect instead of connecting out.
    #[serde(default)]
    pub passive_mode: bool,
    /// The neighbour's port (default 179).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_port: Option<u16>,
    /// Our source address for the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_address: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EbgpMultihop {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multihop_ttl: Option<u8>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TtlSecurity {
    #[serde(default)]
    pub enabled: bool,
    /// The least TTL accepted: 255 for a directly connected router, 255 - n
    /// for one n hops further.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_min: Option<u8>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Timers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<TimersConfig>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimersConfig {
    /// Seconds; 90 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_time: Option<u16>,
    /// Seconds between KEEPALIVEs: a third of the hold time when unset or
    /// longer, and at least 1. 1 bounds how long a BIRD 2.0 router takes to
    /// act on a dead controller replica's expired restart time (docs/bfd.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_interval: Option<u16>,
    /// Seconds between connection attempts; 30 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_retry: Option<u16>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AfiSafi {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<AfiSafiConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_paths: Option<AddPaths>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AfiSafiConfig {
    pub family: AfiSafiFamily,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

// The address family an `AfiSafi` names; porter-bgp's `Family` is what it
// becomes once read. The doc comment below is the CRD's description.
/// GoBGP spelling: `afi: AFI_IP | AFI_IP6`, `safi: SAFI_UNICAST`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct AfiSafiFamily {
    pub afi: String,
    pub safi: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddPaths {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<AddPathsConfig>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddPathsConfig {
    /// Paths per prefix to send (RFC 7911); 0 or 1 disables ADD-PATH.
    #[serde(default)]
    pub send_max: u8,
}

/// Every CRD this project defines, keyed by the file name under `deploy/crds/`.
pub fn crds() -> Result<Vec<(&'static str, CustomResourceDefinition)>, kube::core::crd::MergeError>
{
    let eip = merge_crds(vec![v1alpha1::Eip::crd(), Eip::crd()], "v1alpha2")?;
    Ok(vec![
        ("eip.yaml", eip),
        ("bgpconf.yaml", BgpConf::crd()),
        ("bgppeer.yaml", BgpPeer::crd()),
    ])
}

/// The CRDs rendered as the YAML `cargo xtask gen-crds` writes.
pub fn crd_manifests() -> Result<Vec<(&'static str, String)>, CrdRenderError> {
    crds()?
        .into_iter()
        .map(|(file, crd)| {
            let yaml = serde_yaml::to_string(&crd)?;
            Ok((
                file,
                format!(
                    "# Generated by `cargo xtask gen-crds` from porter-api; do not edit.\n{yaml}"
                ),
            ))
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum CrdRenderError {
    #[error("the Eip versions cannot be merged into one CRD: {0}")]
    Merge(#[from] kube::core::crd::MergeError),
    #[error("a CRD cannot be rendered as YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}
