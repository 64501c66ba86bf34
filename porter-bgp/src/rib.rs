//! Route state per peer: the Adj-RIB-Out (what this peer has been sent), the
//! paths the peer should have given what it negotiated, and the UPDATEs that
//! turn one into the other, packed many prefixes to a message.
//!
//! Pure: no I/O, no clocks. The session feeds it the desired routes and sends
//! what it returns.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use ipnet::IpNet;
use netgauze_bgp_pkt::{
    BgpMessage,
    nlri::{Ipv4Unicast, Ipv4UnicastAddress, Ipv6Unicast, Ipv6UnicastAddress},
    path_attribute::{
        As2PathSegment, As4Path, As4PathSegment, AsPath, AsPathSegmentType, MpReach, MpUnreach,
        NextHop, Origin, PathAttribute, PathAttributeValue,
    },
    update::BgpUpdateMessage,
};

use crate::{
    Family, PathTable,
    policy::{self, AS_TRANS, PathAttributes, PeerPolicy},
};

/// Desired state without attributes: prefix → next hops that serve it.
pub type Routes = BTreeMap<IpNet, BTreeSet<IpAddr>>;

/// One path as a peer is sent it: next hop and the attributes after the
/// peer's policy. UPDATEs group NLRIs by this.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SentPath {
    pub next_hop: IpAddr,
    pub attributes: Arc<PathAttributes>,
}

/// PrefixPaths of one prefix: path id → path.
type PrefixPaths = BTreeMap<u32, SentPath>;

/// 4096 − header (19) − withdrawn length (2) − attribute length (2), less room
/// for the largest fixed attribute set we send (ORIGIN, AS_PATH, AS4_PATH,
/// NEXT_HOP or MP_REACH header, LOCAL_PREF): under 80 octets. A path's
/// communities take more; see [`nlri_budget`].
const NLRI_BUDGET: usize = 4096 - 19 - 4 - 80;

/// Room for NLRIs in an UPDATE carrying `path`.
fn nlri_budget(path: &SentPath) -> usize {
    NLRI_BUDGET.saturating_sub(policy::encoded_len(&path.attributes))
}

/// How this peer may be sent one address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FamilyPolicy {
    /// ADD-PATH send was negotiated: NLRIs carry path ids.
    pub add_path: bool,
    /// PrefixPaths per prefix: send-max with ADD-PATH, else 1.
    pub max_paths: usize,
}

/// What the session negotiated that shapes the UPDATEs for this peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendPolicy {
    /// The peer's address, for paths scoped to some peers.
    pub peer: IpAddr,
    /// Our end of the session, which replaces the unspecified next hop
    /// ("next hop self", as in the per-node speaker mode).
    pub local_address: Option<IpAddr>,
    /// Next hop self for a family `local_address` is not of
    /// ([`crate::PeerConfig::next_hop_self`]).
    pub next_hop_self: Vec<IpAddr>,
    pub peer_policy: PeerPolicy,
    pub local_as: u32,
    /// eBGP: prepend our AS; iBGP: empty AS_PATH and LOCAL_PREF.
    pub ebgp: bool,
    /// The peer speaks 4-octet AS numbers.
    pub asn4: bool,
    pub ipv4: Option<FamilyPolicy>,
    pub ipv6: Option<FamilyPolicy>,
}

impl SendPolicy {
    pub fn family(&self, family: Family) -> Option<FamilyPolicy> {
        match family {
            Family::Ipv4Unicast => self.ipv4,
            Family::Ipv6Unicast => self.ipv6,
        }
    }

    /// What next hop self means for a path of `unspecified`'s family: the
    /// session's own address of that family, else the configured one.
    pub fn next_hop_self(&self, unspecified: IpAddr) -> Option<IpAddr> {
        self.local_address
            .iter()
            .chain(&self.next_hop_self)
            .copied()
            .find(|address| address.is_ipv4() == unspecified.is_ipv4())
    }
}

/// The ADD-PATH path id of `next_hop`: derived from the address alone, so it
/// is the same for every prefix, every peer and every restart. IPv4 uses the
/// address itself; IPv6 a 32-bit FNV-1a hash of it (collisions within one
/// prefix are resolved by [`desired_paths`]).
pub fn path_id(next_hop: IpAddr) -> u32 {
    match next_hop {
        IpAddr::V4(v4) => u32::from(v4).max(1),
        IpAddr::V6(v6) => v6
            .octets()
            .iter()
            .fold(0x811c_9dc5u32, |hash, byte| {
                (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
            })
            .max(1),
    }
}

pub fn family_of(prefix: &IpNet) -> Family {
    match prefix {
        IpNet::V4(_) => Family::Ipv4Unicast,
        IpNet::V6(_) => Family::Ipv6Unicast,
    }
}

/// What [`desired_paths`] left out, so the session can say why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Omitted {
    /// Prefixes whose family the peer did not negotiate.
    pub family_not_negotiated: usize,
    /// Next hops dropped because the peer takes fewer paths (no ADD-PATH, or send-max).
    pub paths_over_limit: usize,
    /// Next hops of the other address family than their prefix (not supported).
    pub next_hop_family_mismatch: usize,
    /// PrefixPaths scoped to other peers.
    pub scoped_to_other_peers: usize,
    /// Next hop self (the unspecified address) where neither the session
    /// nor the peer's `next_hop_self` has an address of that family.
    pub next_hop_self_unavailable: usize,
}

/// The paths this peer should have. Next hops are taken in address order, so
/// a peer limited to N paths always gets the same N.
pub fn desired_paths(
    routes: &PathTable,
    policy: &SendPolicy,
) -> (BTreeMap<IpNet, PrefixPaths>, Omitted) {
    let mut omitted = Omitted::default();
    let mut out = BTreeMap::new();
    for (prefix, next_hops) in routes {
        let Some(family) = policy.family(family_of(prefix)) else {
            omitted.family_not_negotiated += 1;
            continue;
        };
        let mut paths = PrefixPaths::new();
        let in_scope: Vec<_> = next_hops
            .iter()
            .filter(|(_, attributes)| policy::applies_to(attributes, policy.peer))
            .collect();
        omitted.scoped_to_other_peers += next_hops.len() - in_scope.len();
        let mut usable = Vec::new();
        for (next_hop, attributes) in in_scope {
            let next_hop = if next_hop.is_unspecified() {
                match policy.next_hop_self(*next_hop) {
                    Some(local) => local,
                    None => {
                        omitted.next_hop_self_unavailable += 1;
                        continue;
                    }
                }
            } else {
                *next_hop
            };
            if next_hop.is_ipv4() != prefix.addr().is_ipv4() {
                omitted.next_hop_family_mismatch += 1;
                continue;
            }
            usable.push((next_hop, attributes));
        }
        for (index, (next_hop, attributes)) in usable.into_iter().enumerate() {
            if index >= family.max_paths {
                omitted.paths_over_limit += 1;
                continue;
            }
            let mut id = if family.add_path {
                path_id(next_hop)
            } else {
                0
            };
            while paths.contains_key(&id) {
                id = id.wrapping_add(1).max(1);
            }
            let attributes = policy::for_peer(attributes, &policy.peer_policy, policy.ebgp);
            paths.insert(
                id,
                SentPath {
                    next_hop,
                    attributes,
                },
            );
        }
        if !paths.is_empty() {
            out.insert(*prefix, paths);
        }
    }
    (out, omitted)
}

/// One NLRI in flight: prefix and path id (`None` without ADD-PATH).
type Nlri = (IpNet, Option<u32>);

/// The difference between two Adj-RIB-Outs, grouped the way UPDATEs carry it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RibChanges {
    /// Next hop and attributes → NLRIs to announce with them. A path whose
    /// attributes changed is announced again under the same path id, which
    /// replaces it at the peer (implicit withdraw).
    pub announce: BTreeMap<SentPath, Vec<Nlri>>,
    pub withdraw: Vec<Nlri>,
}

impl RibChanges {
    pub fn is_empty(&self) -> bool {
        self.announce.is_empty() && self.withdraw.is_empty()
    }
}

/// What one peer has been sent.
#[derive(Debug, Default)]
pub struct AdjRibOut {
    sent: BTreeMap<IpNet, PrefixPaths>,
}

impl AdjRibOut {
    /// Number of paths the peer holds from us.
    pub fn paths(&self) -> usize {
        self.sent.values().map(BTreeMap::len).sum()
    }

    /// Forgets what was sent for `family`, so the next sync re-sends all of
    /// it (route refresh, or a new session).
    pub fn forget(&mut self, family: Family) {
        self.sent.retain(|prefix, _| family_of(prefix) != family);
    }

    /// Makes `desired` the new Adj-RIB-Out and returns what changed.
    pub fn update(
        &mut self,
        desired: BTreeMap<IpNet, PrefixPaths>,
        policy: &SendPolicy,
    ) -> RibChanges {
        let mut changes = RibChanges::default();
        let nlri_id = |prefix: &IpNet, id: u32| {
            let add_path = policy
                .family(family_of(prefix))
                .is_some_and(|family| family.add_path);
            (*prefix, add_path.then_some(id))
        };
        for (prefix, old) in &self.sent {
            let new = desired.get(prefix);
            for id in old.keys() {
                if new.is_none_or(|new| !new.contains_key(id)) {
                    changes.withdraw.push(nlri_id(prefix, *id));
                }
            }
        }
        for (prefix, new) in &desired {
            let old = self.sent.get(prefix);
            for (id, path) in new {
                if old.and_then(|old| old.get(id)) != Some(path) {
                    changes
                        .announce
                        .entry(path.clone())
                        .or_default()
                        .push(nlri_id(prefix, *id));
                }
            }
        }
        self.sent = desired;
        changes
    }
}

fn nlri_len(nlri: &Nlri) -> usize {
    usize::from(nlri.1.is_some()) * 4 + 1 + usize::from(nlri.0.prefix_len()).div_ceil(8)
}

/// Splits `nlris` into runs of at most `budget` octets, each for one UPDATE.
fn chunks(nlris: &[Nlri], budget: usize) -> Vec<&[Nlri]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (index, nlri) in nlris.iter().enumerate() {
        let len = nlri_len(nlri);
        if size + len > budget && index > start {
            out.push(&nlris[start..index]);
            start = index;
            size = 0;
        }
        size += len;
    }
    if start < nlris.len() {
        out.push(&nlris[start..]);
    }
    out
}

fn attribute(optional: bool, transitive: bool, value: PathAttributeValue) -> PathAttribute {
    // Extended length costs one octet and lets MP_REACH carry a full UPDATE
    // of NLRIs; community lists need it past 255 octets.
    let extended = match &value {
        PathAttributeValue::MpReach(_) | PathAttributeValue::MpUnreach(_) => true,
        PathAttributeValue::Communities(list) => list.communities().len() * 4 > 255,
        PathAttributeValue::LargeCommunities(list) => list.communities().len() * 12 > 255,
        _ => false,
    };
    match PathAttribute::from(optional, transitive, false, extended, value) {
        Ok(attribute) => attribute,
        // The flags passed below are the ones RFC 4271/4760/6793 fix for each attribute.
        Err((_, error)) => unreachable!("fixed attribute flags are valid: {error:?}"),
    }
}

fn v4_nlris(nlris: &[Nlri]) -> Vec<Ipv4UnicastAddress> {
    nlris
        .iter()
        .filter_map(|(prefix, id)| match prefix {
            IpNet::V4(net) => Ipv4Unicast::from_net(net.trunc())
                .ok()
                .map(|net| Ipv4UnicastAddress::new(*id, net)),
            IpNet::V6(_) => None,
        })
        .collect()
}

fn v6_nlris(nlris: &[Nlri]) -> Vec<Ipv6UnicastAddress> {
    nlris
        .iter()
        .filter_map(|(prefix, id)| match prefix {
            IpNet::V6(net) => Ipv6Unicast::from_net(net.trunc())
                .ok()
                .map(|net| Ipv6UnicastAddress::new(*id, net)),
            IpNet::V4(_) => None,
        })
        .collect()
}

/// ORIGIN, AS_PATH (and AS4_PATH when AS_TRANS stands in): the same for every path.
fn common_attributes(policy: &SendPolicy) -> Vec<PathAttribute> {
    let mut attributes = vec![attribute(
        false,
        true,
        PathAttributeValue::Origin(Origin::IGP),
    )];
    let as_path = match (policy.ebgp, policy.asn4) {
        (false, true) => AsPath::As4PathSegments(Box::new([])),
        (false, false) => AsPath::As2PathSegments(Box::new([])),
        (true, true) => AsPath::As4PathSegments(Box::new([As4PathSegment::new(
            AsPathSegmentType::AsSequence,
            [policy.local_as],
        )])),
        (true, false) => AsPath::As2PathSegments(Box::new([As2PathSegment::new(
            AsPathSegmentType::AsSequence,
            [u16::try_from(policy.local_as).unwrap_or(AS_TRANS)],
        )])),
    };
    attributes.push(attribute(false, true, PathAttributeValue::AsPath(as_path)));
    if policy.ebgp && !policy.asn4 && u16::try_from(policy.local_as).is_err() {
        attributes.push(attribute(
            true,
            true,
            PathAttributeValue::As4Path(As4Path::new([As4PathSegment::new(
                AsPathSegmentType::AsSequence,
                [policy.local_as],
            )])),
        ));
    }
    attributes
}

/// The attributes that vary per path: LOCAL_PREF (iBGP), COMMUNITIES,
/// EXTENDED COMMUNITIES (link bandwidth), LARGE_COMMUNITY.
fn path_attributes(path: &SentPath, policy: &SendPolicy) -> Vec<PathAttribute> {
    let encoded = policy::encode(&path.attributes, policy.local_as, !policy.ebgp);
    let mut attributes = Vec::new();
    if let Some(local_pref) = encoded.local_pref {
        attributes.push(attribute(
            false,
            true,
            PathAttributeValue::LocalPreference(local_pref),
        ));
    }
    if let Some(communities) = encoded.communities {
        attributes.push(attribute(
            true,
            true,
            PathAttributeValue::Communities(communities),
        ));
    }
    if let Some(extended) = encoded.extended_communities {
        attributes.push(attribute(
            true,
            true,
            PathAttributeValue::ExtendedCommunities(extended),
        ));
    }
    if let Some(large) = encoded.large_communities {
        attributes.push(attribute(
            true,
            true,
            PathAttributeValue::LargeCommunities(large),
        ));
    }
    attributes
}

/// The attribute type code, for sending attributes in ascending order as
/// RFC 4271 §5 recommends.
fn type_code(attribute: &PathAttribute) -> u8 {
    attribute
        .value()
        .path_attribute_type()
        .map_or_else(|code| code, |known| known as u8)
}

fn announce(path: &SentPath, nlris: &[Nlri], mut attributes: Vec<PathAttribute>) -> BgpMessage {
    let update = match path.next_hop {
        IpAddr::V4(next_hop) => {
            attributes.push(attribute(
                false,
                true,
                PathAttributeValue::NextHop(NextHop::new(next_hop)),
            ));
            attributes.sort_by_key(type_code);
            BgpUpdateMessage::new(vec![], attributes, v4_nlris(nlris))
        }
        IpAddr::V6(next_hop) => {
            attributes.push(attribute(
                true,
                false,
                PathAttributeValue::MpReach(MpReach::Ipv6Unicast {
                    next_hop_global: next_hop,
                    next_hop_local: None,
                    nlri: v6_nlris(nlris).into(),
                }),
            ));
            attributes.sort_by_key(type_code);
            BgpUpdateMessage::new(vec![], attributes, vec![])
        }
    };
    BgpMessage::Update(update)
}

fn withdraw(family: Family, nlris: &[Nlri]) -> BgpMessage {
    BgpMessage::Update(match family {
        Family::Ipv4Unicast => BgpUpdateMessage::new(v4_nlris(nlris), vec![], vec![]),
        Family::Ipv6Unicast => BgpUpdateMessage::new(
            vec![],
            vec![attribute(
                true,
                false,
                PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast {
                    nlri: v6_nlris(nlris).into(),
                }),
            )],
            vec![],
        ),
    })
}

/// The End-of-RIB marker for `family` (RFC 4724): an UPDATE with nothing in it.
pub fn end_of_rib(family: Family) -> BgpMessage {
    withdraw(family, &[])
}

/// The UPDATEs that carry `changes`: withdrawals first (so a peer limited in
/// paths never holds old and new at once), then one run of UPDATEs per next hop and attribute set.
pub fn encode(changes: &RibChanges, policy: &SendPolicy) -> Vec<BgpMessage> {
    let mut messages = Vec::new();
    for family in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
        let nlris: Vec<Nlri> = changes
            .withdraw
            .iter()
            .filter(|(prefix, _)| family_of(prefix) == family)
            .copied()
            .collect();
        messages.extend(
            chunks(&nlris, NLRI_BUDGET)
                .into_iter()
                .map(|run| withdraw(family, run)),
        );
    }
    let common = common_attributes(policy);
    for (path, nlris) in &changes.announce {
        let mut attributes = common.clone();
        attributes.extend(path_attributes(path, policy));
        messages.extend(
            chunks(nlris, nlri_budget(path))
                .into_iter()
                .map(|run| announce(path, run, attributes.clone())),
        );
    }
    messages
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use tokio_util::codec::{Decoder, Encoder};

    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        LinkBandwidth,
        codec::{MAX_MESSAGE_LEN, WireCodec},
        policy::{MAX_COMMUNITIES, MAX_LARGE_COMMUNITIES},
    };

    fn policy(add_path: bool, max_paths: usize) -> SendPolicy {
        let family = FamilyPolicy {
            add_path,
            max_paths,
        };
        SendPolicy {
            peer: ip("172.30.0.1"),
            local_address: Some(ip("172.30.0.10")),
            next_hop_self: Vec::new(),
            peer_policy: PeerPolicy::default(),
            local_as: 65000,
            ebgp: true,
            asn4: true,
            ipv4: Some(family),
            ipv6: Some(family),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    fn net(text: &str) -> IpNet {
        text.parse().expect("test prefix")
    }

    fn routes(entries: &[(&str, &[&str])]) -> PathTable {
        let plain = Arc::new(PathAttributes::default());
        entries
            .iter()
            .map(|(prefix, hops)| {
                (
                    net(prefix),
                    hops.iter().map(|hop| (ip(hop), plain.clone())).collect(),
                )
            })
            .collect()
    }

    fn plain(next_hop: &str) -> SentPath {
        SentPath {
            next_hop: ip(next_hop),
            attributes: Arc::new(PathAttributes::default()),
        }
    }

    fn sync(rib: &mut AdjRibOut, routes: &PathTable, policy: &SendPolicy) -> RibChanges {
        let (desired, _) = desired_paths(routes, policy);
        rib.update(desired, policy)
    }

    #[test]
    fn path_ids_are_stable_per_next_hop() {
        assert_eq!(
            path_id(ip("172.30.0.11")),
            u32::from(Ipv4Addr::new(172, 30, 0, 11))
        );
        assert_eq!(path_id(ip("fd00::11")), path_id(ip("fd00::11")));
        assert_ne!(path_id(ip("fd00::11")), path_id(ip("fd00::12")));
        assert_eq!(
            path_id(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            1,
            "path id 0 is avoided"
        );
    }

    #[test]
    fn only_the_difference_is_sent() {
        let policy = policy(true, 8);
        let mut rib = AdjRibOut::default();
        let first = routes(&[("1.1.1.1/32", &["10.0.0.1", "10.0.0.2"])]);
        let changes = sync(&mut rib, &first, &policy);
        assert_eq!(changes.announce.len(), 2, "one group per next hop");
        assert!(changes.withdraw.is_empty());
        assert!(
            sync(&mut rib, &first, &policy).is_empty(),
            "nothing re-sent"
        );

        let second = routes(&[("1.1.1.1/32", &["10.0.0.2", "10.0.0.3"])]);
        let changes = sync(&mut rib, &second, &policy);
        assert_eq!(
            changes.withdraw,
            vec![(net("1.1.1.1/32"), Some(path_id(ip("10.0.0.1"))))]
        );
        assert_eq!(
            changes.announce,
            BTreeMap::from([(
                plain("10.0.0.3"),
                vec![(net("1.1.1.1/32"), Some(path_id(ip("10.0.0.3"))))]
            )])
        );
        let changes = sync(&mut rib, &PathTable::new(), &policy);
        assert_eq!(
            changes.withdraw.len(),
            2,
            "an empty set withdraws everything"
        );
        assert_eq!(rib.paths(), 0);
    }

    #[test]
    fn without_add_path_one_path_per_prefix() {
        let policy = policy(false, 1);
        let (desired, omitted) = desired_paths(
            &routes(&[("1.1.1.1/32", &["10.0.0.2", "10.0.0.1"])]),
            &policy,
        );
        assert_eq!(omitted.paths_over_limit, 1);
        assert_eq!(
            desired[&net("1.1.1.1/32")],
            BTreeMap::from([(0, plain("10.0.0.1"))])
        );
        // Losing the chosen next hop replaces the path (implicit withdraw), no withdraw.
        let mut rib = AdjRibOut::default();
        sync(
            &mut rib,
            &routes(&[("1.1.1.1/32", &["10.0.0.1", "10.0.0.2"])]),
            &policy,
        );
        let changes = sync(&mut rib, &routes(&[("1.1.1.1/32", &["10.0.0.2"])]), &policy);
        assert!(changes.withdraw.is_empty());
        assert_eq!(
            changes.announce,
            BTreeMap::from([(plain("10.0.0.2"), vec![(net("1.1.1.1/32"), None)])])
        );
    }

    #[test]
    fn send_max_limits_paths_and_mismatched_families_are_skipped() {
        let policy = policy(true, 2);
        let (desired, omitted) = desired_paths(
            &routes(&[(
                "1.1.1.1/32",
                &["10.0.0.3", "10.0.0.1", "10.0.0.2", "fd00::1"],
            )]),
            &policy,
        );
        let hops: Vec<IpAddr> = desired[&net("1.1.1.1/32")]
            .values()
            .map(|path| path.next_hop)
            .collect();
        assert_eq!(hops, vec![ip("10.0.0.1"), ip("10.0.0.2")]);
        assert_eq!(omitted.paths_over_limit, 1);
        assert_eq!(omitted.next_hop_family_mismatch, 1);
    }

    #[test]
    fn next_hop_self_is_the_sessions_own_address() {
        let policy = policy(true, 8);
        let (desired, omitted) = desired_paths(
            &routes(&[("1.1.1.1/32", &["0.0.0.0"]), ("fd00:1::/64", &["::"])]),
            &policy,
        );
        let paths: Vec<(IpNet, IpAddr, u32)> = desired
            .iter()
            .flat_map(|(prefix, paths)| {
                paths.iter().map(|(id, path)| (*prefix, path.next_hop, *id))
            })
            .collect();
        assert_eq!(
            paths,
            vec![(
                net("1.1.1.1/32"),
                ip("172.30.0.10"),
                path_id(ip("172.30.0.10"))
            )]
        );
        assert_eq!(
            omitted.next_hop_self_unavailable, 1,
            "no IPv6 address on an IPv4 session"
        );
    }

    /// An IPv6 prefix over an IPv4 session (MP-BGP) takes the configured
    /// IPv6 address; the session's own address still wins for its family,
    /// and an IPv6 session uses its own address.
    #[test]
    fn next_hop_self_of_the_other_family_is_the_configured_address() {
        let routes = routes(&[("1.1.1.1/32", &["0.0.0.0"]), ("fd00:1::/64", &["::"])]);
        let hops = |policy: &SendPolicy| -> Vec<IpAddr> {
            let (desired, omitted) = desired_paths(&routes, policy);
            assert_eq!(omitted, Omitted::default());
            desired
                .values()
                .flat_map(|paths| paths.values().map(|path| path.next_hop))
                .collect()
        };
        let mut over_v4 = policy(true, 8);
        over_v4.next_hop_self = vec![ip("172.30.9.9"), ip("fd00:30::11")];
        assert_eq!(hops(&over_v4), vec![ip("172.30.0.10"), ip("fd00:30::11")]);

        let mut over_v6 = policy(true, 8);
        over_v6.local_address = Some(ip("fd00:30::10"));
        over_v6.next_hop_self = vec![ip("172.30.0.11"), ip("fd00:30::11")];
        assert_eq!(hops(&over_v6), vec![ip("172.30.0.11"), ip("fd00:30::10")]);
    }

    #[test]
    fn families_not_negotiated_are_not_sent() {
        let mut policy = policy(true, 4);
        policy.ipv6 = None;
        let (desired, omitted) = desired_paths(&routes(&[("fd00:1::/64", &["fd00::1"])]), &policy);
        assert!(desired.is_empty());
        assert_eq!(omitted.family_not_negotiated, 1);
    }

    /// Encodes and decodes each message, checking the size limit on the way.
    fn wire_round_trip(messages: Vec<BgpMessage>) -> Vec<BgpMessage> {
        let mut codec = WireCodec::expecting_path_ids();
        messages
            .into_iter()
            .map(|message| {
                let mut buf = BytesMut::new();
                codec
                    .encode(message.clone(), &mut buf)
                    .expect("UPDATE encodes");
                assert!(buf.len() <= MAX_MESSAGE_LEN, "{} octets", buf.len());
                let decoded = codec.decode(&mut buf).expect("decodes").expect("whole");
                assert_eq!(decoded, message);
                decoded
            })
            .collect()
    }

    #[test]
    fn many_prefixes_pack_into_few_updates_that_fit() {
        let policy = policy(true, 4);
        let plain = Arc::new(PathAttributes::default());
        let mut desired = PathTable::new();
        for index in 0..10_000u32 {
            let prefix = IpNet::V4(
                ipnet::Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + index), 32).expect("/32"),
            );
            desired.insert(
                prefix,
                (1..=4)
                    .map(|n| (IpAddr::V4(Ipv4Addr::new(172, 30, 0, n)), plain.clone()))
                    .collect(),
            );
        }
        let mut rib = AdjRibOut::default();
        let changes = sync(&mut rib, &desired, &policy);
        let messages = wire_round_trip(encode(&changes, &policy));
        // 40,000 paths of 9 octets each need at least 90 full UPDATEs.
        assert!(
            (90..=100).contains(&messages.len()),
            "{} UPDATEs",
            messages.len()
        );
        let nlris: usize = messages
            .iter()
            .map(|message| match message {
                BgpMessage::Update(update) => update.nlri().len(),
                _ => 0,
            })
            .sum();
        assert_eq!(nlris, 40_000);
    }

    #[test]
    fn ipv6_updates_use_mp_reach_and_mp_unreach() {
        let policy = policy(true, 4);
        let mut rib = AdjRibOut::default();
        let v6 = routes(&[("fd00:1::/64", &["fd00::11", "fd00::12"])]);
        let messages = encode(&sync(&mut rib, &v6, &policy), &policy);
        assert_eq!(messages.len(), 2);
        let mut codec = WireCodec::expecting_path_ids();
        for message in messages {
            let mut buf = BytesMut::new();
            codec.encode(message.clone(), &mut buf).expect("encodes");
            assert_eq!(
                codec.decode(&mut buf).expect("decodes"),
                Some(message.clone())
            );
            let BgpMessage::Update(update) = message else {
                panic!("an UPDATE");
            };
            assert!(update.path_attributes().iter().any(|attr| matches!(
                attr.value(),
                PathAttributeValue::MpReach(MpReach::Ipv6Unicast { .. })
            )));
        }
        let withdraw = encode(&sync(&mut rib, &PathTable::new(), &policy), &policy);
        assert_eq!(withdraw.len(), 1, "both paths in one MP_UNREACH");
    }

    fn with(attributes: PathAttributes, entries: &[(&str, &[&str])]) -> PathTable {
        let attributes = Arc::new(attributes);
        entries
            .iter()
            .map(|(prefix, hops)| {
                (
                    net(prefix),
                    hops.iter()
                        .map(|hop| (ip(hop), attributes.clone()))
                        .collect(),
                )
            })
            .collect()
    }

    fn tagged(community: u32) -> PathAttributes {
        PathAttributes {
            communities: vec![community],
            ..PathAttributes::default()
        }
    }

    #[test]
    fn attribute_changes_replace_paths_under_the_same_id() {
        let policy = policy(true, 8);
        let mut rib = AdjRibOut::default();
        let prefixes: &[(&str, &[&str])] = &[("1.1.1.1/32", &["10.0.0.1", "10.0.0.2"])];
        sync(&mut rib, &with(tagged(1), prefixes), &policy);
        assert!(
            sync(&mut rib, &with(tagged(1), prefixes), &policy).is_empty(),
            "equal attributes (even in new allocations) are not re-sent"
        );
        let changes = sync(&mut rib, &with(tagged(2), prefixes), &policy);
        assert!(changes.withdraw.is_empty(), "no withdraw, implicit replace");
        let (path, nlris) = changes.announce.iter().next().expect("announced");
        assert_eq!(path.attributes.communities, vec![2]);
        assert_eq!(
            nlris,
            &vec![(net("1.1.1.1/32"), Some(path_id(ip("10.0.0.1"))))]
        );
        assert_eq!(changes.announce.len(), 2, "both next hops, each once");
    }

    #[test]
    fn prefixes_with_equal_attributes_share_updates() {
        let policy = policy(true, 8);
        let mut rib = AdjRibOut::default();
        let mut desired = with(
            tagged(1),
            &[("1.1.1.1/32", &["10.0.0.1"]), ("1.1.1.2/32", &["10.0.0.1"])],
        );
        desired.extend(with(tagged(2), &[("1.1.1.3/32", &["10.0.0.1"])]));
        let changes = sync(&mut rib, &desired, &policy);
        let messages = wire_round_trip(encode(&changes, &policy));
        let sizes: Vec<usize> = messages
            .iter()
            .map(|message| match message {
                BgpMessage::Update(update) => update.nlri().len(),
                _ => 0,
            })
            .collect();
        assert_eq!(
            sizes,
            vec![2, 1],
            "two UPDATEs: community 1 ×2, community 2 ×1"
        );
    }

    #[test]
    fn local_pref_is_for_ibgp_only_and_its_changes_are_not_sent_to_ebgp() {
        let mut ebgp = policy(true, 8);
        let mut rib = AdjRibOut::default();
        let prefixes: &[(&str, &[&str])] = &[("1.1.1.1/32", &["10.0.0.1"])];
        let preferred = |value| PathAttributes {
            local_pref: Some(value),
            ..PathAttributes::default()
        };
        let messages = encode(
            &sync(&mut rib, &with(preferred(200), prefixes), &ebgp),
            &ebgp,
        );
        let BgpMessage::Update(update) = &messages[0] else {
            panic!("an UPDATE");
        };
        assert!(
            !update
                .path_attributes()
                .iter()
                .any(|attr| matches!(attr.value(), PathAttributeValue::LocalPreference(_)))
        );
        assert!(sync(&mut rib, &with(preferred(300), prefixes), &ebgp).is_empty());

        ebgp.ebgp = false;
        let ibgp = ebgp;
        let mut rib = AdjRibOut::default();
        let local_prefs = |messages: Vec<BgpMessage>| -> Vec<u32> {
            messages
                .iter()
                .flat_map(|message| match message {
                    BgpMessage::Update(update) => update.path_attributes().to_vec(),
                    _ => vec![],
                })
                .filter_map(|attr| match attr.value() {
                    PathAttributeValue::LocalPreference(pref) => Some(pref.metric()),
                    _ => None,
                })
                .collect()
        };
        let plain = encode(&sync(&mut rib, &routes(prefixes), &ibgp), &ibgp);
        assert_eq!(local_prefs(plain), vec![policy::DEFAULT_LOCAL_PREF]);
        let preferred = encode(
            &sync(&mut rib, &with(preferred(300), prefixes), &ibgp),
            &ibgp,
        );
        assert_eq!(local_prefs(preferred), vec![300]);
    }

    #[test]
    fn paths_scoped_to_other_peers_are_not_sent() {
        let policy = policy(true, 8);
        let scoped = |peer: &str| PathAttributes {
            only_peers: Some([ip(peer)].into()),
            ..PathAttributes::default()
        };
        let mut desired = with(scoped("172.30.0.1"), &[("1.1.1.1/32", &["10.0.0.1"])]);
        desired.extend(with(scoped("172.30.0.2"), &[("1.1.1.2/32", &["10.0.0.1"])]));
        let (paths, omitted) = desired_paths(&desired, &policy);
        assert_eq!(
            paths.keys().copied().collect::<Vec<_>>(),
            vec![net("1.1.1.1/32")]
        );
        assert_eq!(omitted.scoped_to_other_peers, 1);
    }

    #[test]
    fn all_policy_attributes_round_trip_in_type_order_within_size() {
        let mut ibgp = policy(true, 8);
        ibgp.ebgp = false;
        let (attributes, _) = PathAttributes {
            communities: (0..MAX_COMMUNITIES as u32).collect(),
            large_communities: (0..MAX_LARGE_COMMUNITIES as u32)
                .map(|n| (65000, n, n))
                .collect(),
            local_pref: Some(250),
            link_bandwidth: Some(LinkBandwidth::for_endpoints(3, true)),
            only_peers: None,
        }
        .sanitized();
        let expected = attributes.clone();
        let prefixes: Vec<String> = (0..2000u32)
            .map(|n| format!("{}/32", Ipv4Addr::from(0x0a00_0000 + n)))
            .collect();
        let entries: Vec<(&str, &[&str])> = prefixes
            .iter()
            .map(|prefix| (prefix.as_str(), &["10.0.0.1", "10.0.0.2"][..]))
            .collect();
        let mut rib = AdjRibOut::default();
        let changes = sync(&mut rib, &with(attributes, &entries), &ibgp);
        let messages = wire_round_trip(encode(&changes, &ibgp));
        let mut nlris = 0;
        for message in &messages {
            let BgpMessage::Update(update) = message else {
                panic!("an UPDATE");
            };
            nlris += update.nlri().len();
            let codes: Vec<u8> = update.path_attributes().iter().map(type_code).collect();
            assert_eq!(codes, vec![1, 2, 3, 5, 8, 16, 32], "ascending type codes");
            for attr in update.path_attributes() {
                match attr.value() {
                    PathAttributeValue::LocalPreference(pref) => assert_eq!(pref.metric(), 250),
                    PathAttributeValue::Communities(list) => assert_eq!(
                        list.communities()
                            .iter()
                            .map(|c| c.value())
                            .collect::<Vec<_>>(),
                        expected.communities
                    ),
                    PathAttributeValue::LargeCommunities(list) => assert_eq!(
                        list.communities()
                            .iter()
                            .map(|c| (c.global_admin(), c.local_data1(), c.local_data2()))
                            .collect::<Vec<_>>(),
                        expected.large_communities
                    ),
                    PathAttributeValue::ExtendedCommunities(list) => assert_eq!(
                        list.communities()
                            .iter()
                            .filter_map(policy::link_bandwidth_of)
                            .collect::<Vec<_>>(),
                        vec![LinkBandwidth::for_endpoints(3, true)]
                    ),
                    _ => {}
                }
            }
        }
        assert_eq!(nlris, 4000);
    }

    #[test]
    fn end_of_rib_markers_are_recognised() {
        for (family, address_type) in [
            (
                Family::Ipv4Unicast,
                netgauze_iana::address_family::AddressType::Ipv4Unicast,
            ),
            (
                Family::Ipv6Unicast,
                netgauze_iana::address_family::AddressType::Ipv6Unicast,
            ),
        ] {
            let BgpMessage::Update(update) = end_of_rib(family) else {
                panic!("EoR is an UPDATE");
            };
            assert_eq!(update.end_of_rib(), Some(address_type));
        }
    }
}
