//! Route state per peer: the Adj-RIB-Out (what this peer has been sent), the
//! paths the peer should have given what it negotiated, and the UPDATEs that
//! turn one into the other, packed many prefixes to a message.
//!
//! Pure: no I/O, no clocks. The session feeds it the desired routes and sends
//! what it returns.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;
use netgauze_bgp_pkt::{
    BgpMessage,
    nlri::{Ipv4Unicast, Ipv4UnicastAddress, Ipv6Unicast, Ipv6UnicastAddress},
    path_attribute::{
        As2PathSegment, As4Path, As4PathSegment, AsPath, AsPathSegmentType, LocalPreference,
        MpReach, MpUnreach, NextHop, Origin, PathAttribute, PathAttributeValue,
    },
    update::BgpUpdateMessage,
};

use crate::Family;

/// Desired state: prefix → next hops that serve it.
pub type Routes = BTreeMap<IpNet, BTreeSet<IpAddr>>;

/// Paths of one prefix: path id → next hop.
type Paths = BTreeMap<u32, IpAddr>;

/// 4096 − header (19) − withdrawn length (2) − attribute length (2), less room
/// for the largest fixed attribute set we send (ORIGIN, AS_PATH, AS4_PATH,
/// NEXT_HOP or MP_REACH header, LOCAL_PREF): under 80 octets.
const NLRI_BUDGET: usize = 4096 - 19 - 4 - 80;

/// AS_TRANS (RFC 6793), sent in 2-octet fields for peers without 4-octet AS.
const AS_TRANS: u16 = 23456;

/// How this peer may be sent one address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FamilyPolicy {
    /// ADD-PATH send was negotiated: NLRIs carry path ids.
    pub add_path: bool,
    /// Paths per prefix: send-max with ADD-PATH, else 1.
    pub max_paths: usize,
}

/// What the session negotiated that shapes the UPDATEs for this peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendPolicy {
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
}

/// The paths this peer should have. Next hops are taken in address order, so
/// a peer limited to N paths always gets the same N.
pub fn desired_paths(routes: &Routes, policy: &SendPolicy) -> (BTreeMap<IpNet, Paths>, Omitted) {
    let mut omitted = Omitted::default();
    let mut out = BTreeMap::new();
    for (prefix, next_hops) in routes {
        let Some(family) = policy.family(family_of(prefix)) else {
            omitted.family_not_negotiated += 1;
            continue;
        };
        let mut paths = Paths::new();
        let usable = next_hops
            .iter()
            .filter(|nh| nh.is_ipv4() == prefix.addr().is_ipv4());
        for (index, next_hop) in usable.enumerate() {
            if index >= family.max_paths {
                omitted.paths_over_limit += 1;
                continue;
            }
            let mut id = if family.add_path {
                path_id(*next_hop)
            } else {
                0
            };
            while paths.contains_key(&id) {
                id = id.wrapping_add(1).max(1);
            }
            paths.insert(id, *next_hop);
        }
        omitted.next_hop_family_mismatch += next_hops
            .iter()
            .filter(|nh| nh.is_ipv4() != prefix.addr().is_ipv4())
            .count();
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
pub struct Changes {
    /// Next hop → NLRIs to announce with it.
    pub announce: BTreeMap<IpAddr, Vec<Nlri>>,
    pub withdraw: Vec<Nlri>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.announce.is_empty() && self.withdraw.is_empty()
    }
}

/// What one peer has been sent.
#[derive(Debug, Default)]
pub struct AdjRibOut {
    sent: BTreeMap<IpNet, Paths>,
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
    pub fn update(&mut self, desired: BTreeMap<IpNet, Paths>, policy: &SendPolicy) -> Changes {
        let mut changes = Changes::default();
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
            for (id, next_hop) in new {
                if old.and_then(|old| old.get(id)) != Some(next_hop) {
                    changes
                        .announce
                        .entry(*next_hop)
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

/// Splits `nlris` into runs that fit one UPDATE.
fn chunks(nlris: &[Nlri]) -> Vec<&[Nlri]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (index, nlri) in nlris.iter().enumerate() {
        let len = nlri_len(nlri);
        if size + len > NLRI_BUDGET {
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
    // Extended length costs one octet and lets MP_REACH carry a full UPDATE of NLRIs.
    let extended = matches!(
        value,
        PathAttributeValue::MpReach(_) | PathAttributeValue::MpUnreach(_)
    );
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

/// ORIGIN, AS_PATH (and AS4_PATH when AS_TRANS stands in), LOCAL_PREF for iBGP.
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
    if !policy.ebgp {
        attributes.push(attribute(
            false,
            true,
            PathAttributeValue::LocalPreference(LocalPreference::new(100)),
        ));
    }
    attributes
}

fn announce(next_hop: IpAddr, nlris: &[Nlri], common: &[PathAttribute]) -> BgpMessage {
    let mut attributes = common.to_vec();
    let update = match next_hop {
        IpAddr::V4(next_hop) => {
            attributes.push(attribute(
                false,
                true,
                PathAttributeValue::NextHop(NextHop::new(next_hop)),
            ));
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
/// paths never holds old and new at once), then one run of UPDATEs per next hop.
pub fn encode(changes: &Changes, policy: &SendPolicy) -> Vec<BgpMessage> {
    let mut messages = Vec::new();
    for family in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
        let nlris: Vec<Nlri> = changes
            .withdraw
            .iter()
            .filter(|(prefix, _)| family_of(prefix) == family)
            .copied()
            .collect();
        messages.extend(chunks(&nlris).into_iter().map(|run| withdraw(family, run)));
    }
    let common = common_attributes(policy);
    for (next_hop, nlris) in &changes.announce {
        messages.extend(
            chunks(nlris)
                .into_iter()
                .map(|run| announce(*next_hop, run, &common)),
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
    use crate::codec::{MAX_MESSAGE_LEN, WireCodec};

    fn policy(add_path: bool, max_paths: usize) -> SendPolicy {
        let family = FamilyPolicy {
            add_path,
            max_paths,
        };
        SendPolicy {
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

    fn routes(entries: &[(&str, &[&str])]) -> Routes {
        entries
            .iter()
            .map(|(prefix, hops)| (net(prefix), hops.iter().map(|hop| ip(hop)).collect()))
            .collect()
    }

    fn sync(rib: &mut AdjRibOut, routes: &Routes, policy: &SendPolicy) -> Changes {
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
                ip("10.0.0.3"),
                vec![(net("1.1.1.1/32"), Some(path_id(ip("10.0.0.3"))))]
            )])
        );
        let changes = sync(&mut rib, &Routes::new(), &policy);
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
            BTreeMap::from([(0, ip("10.0.0.1"))])
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
            BTreeMap::from([(ip("10.0.0.2"), vec![(net("1.1.1.1/32"), None)])])
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
        let hops: Vec<IpAddr> = desired[&net("1.1.1.1/32")].values().copied().collect();
        assert_eq!(hops, vec![ip("10.0.0.1"), ip("10.0.0.2")]);
        assert_eq!(omitted.paths_over_limit, 1);
        assert_eq!(omitted.next_hop_family_mismatch, 1);
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
        let mut desired = Routes::new();
        for index in 0..10_000u32 {
            let prefix = IpNet::V4(
                ipnet::Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + index), 32).expect("/32"),
            );
            desired.insert(
                prefix,
                (1..=4)
                    .map(|n| IpAddr::V4(Ipv4Addr::new(172, 30, 0, n)))
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
        let withdraw = encode(&sync(&mut rib, &Routes::new(), &policy), &policy);
        assert_eq!(withdraw.len(), 1, "both paths in one MP_UNREACH");
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
