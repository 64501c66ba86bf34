//! Per-path attributes (communities, large communities, LOCAL_PREF, link
//! bandwidth), per-peer policy that shapes them, and their wire form.
//!
//! Pure: the speaker sanitises what the caller gives it once
//! ([`PathAttributes::sanitized`]); each session derives what its peer gets
//! ([`for_peer`]) and the rib encodes it ([`encode`]).
use std::{cmp::Ordering, collections::BTreeSet, net::IpAddr, sync::Arc};

use netgauze_bgp_pkt::{
    community::{
        Community, ExtendedCommunity, LargeCommunity, NonTransitiveTwoOctetExtendedCommunity,
        TransitiveTwoOctetExtendedCommunity,
    },
    path_attribute::{Communities, ExtendedCommunities, LargeCommunities, LocalPreference},
};

/// At most this many communities per path: 64 × 4 octets keeps every UPDATE
/// well inside 4096 octets together with the large communities below.
pub const MAX_COMMUNITIES: usize = 64;
/// At most this many large communities per path (32 × 12 octets).
pub const MAX_LARGE_COMMUNITIES: usize = 32;
/// LOCAL_PREF sent on iBGP sessions when the path sets none (the usual default).
pub const DEFAULT_LOCAL_PREF: u32 = 100;
/// The sub-type of the link bandwidth extended community, in both the
/// transitive (type 0x00) and the non-transitive (type 0x40) two-octet-AS
/// forms (draft-ietf-idr-link-bandwidth).
pub const LINK_BANDWIDTH_SUB_TYPE: u8 = 0x04;
/// AS_TRANS (RFC 6793), in 2-octet AS fields when our AS does not fit.
pub const AS_TRANS: u16 = 23456;

/// The BGP link bandwidth extended community: how much traffic this path
/// should get relative to the other paths of the prefix. Routers that
/// support weighted ECMP (FRR) split traffic in proportion to it.
#[derive(Clone, Copy, Debug)]
pub struct LinkBandwidth {
    /// IEEE 754 single precision, bytes per second, as on the wire.
    pub bytes_per_second: f32,
    /// Send the transitive form (type 0x00, sub-type 0x04) instead of the
    /// non-transitive one (type 0x40, sub-type 0x04).
    pub transitive: bool,
}

impl LinkBandwidth {
    /// What one ready endpoint is worth: 1 Gbit/s. FRR reads the value in
    /// whole Mbit/s, so anything under 125,000 bytes/s per endpoint would
    /// round to 0 there; larger units overflow nothing until ~4 million
    /// endpoints per path.
    pub const BYTES_PER_SECOND_PER_ENDPOINT: f32 = 125_000_000.0;

    /// The link bandwidth of a node with `endpoints` ready local endpoints.
    pub fn for_endpoints(endpoints: u32, transitive: bool) -> Self {
        Self {
            // f32 holds this exactly up to 8 endpoints; beyond, the relative
            // error stays under 1e-7, which no traffic split can notice.
            bytes_per_second: endpoints as f32 * Self::BYTES_PER_SECOND_PER_ENDPOINT,
            transitive,
        }
    }

    fn key(&self) -> (u32, bool) {
        (self.bytes_per_second.to_bits(), self.transitive)
    }
}

// Compared by bit pattern: the wire carries bits, and a path whose bits did
// not change must not be re-sent.
impl PartialEq for LinkBandwidth {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for LinkBandwidth {}

impl PartialOrd for LinkBandwidth {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for LinkBandwidth {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

/// The attributes of one path (one prefix through one next hop), as the
/// caller wants them. The default is a plain path: no communities, LOCAL_PREF
/// 100 on iBGP, no link bandwidth, every peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct PathAttributes {
    /// RFC 1997 communities, `(asn << 16) | value`.
    pub communities: Vec<u32>,
    /// RFC 8092 large communities: (global administrator, local 1, local 2).
    pub large_communities: Vec<(u32, u32, u32)>,
    /// LOCAL_PREF; sent on iBGP sessions only (RFC 4271 §5.1.5), where it
    /// defaults to [`DEFAULT_LOCAL_PREF`].
    pub local_pref: Option<u32>,
    pub link_bandwidth: Option<LinkBandwidth>,
    /// Only these peers (by address) get the path; `None`: every peer.
    pub only_peers: Option<BTreeSet<IpAddr>>,
}

/// What was wrong with attributes given to the speaker, and has been fixed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sanitized {
    CommunitiesTruncated {
        given: usize,
    },
    LargeCommunitiesTruncated {
        given: usize,
    },
    /// Link bandwidth was NaN, infinite or negative; it is left out.
    LinkBandwidthInvalid,
}

impl PathAttributes {
    /// The canonical form: communities sorted and deduplicated (their order
    /// means nothing in BGP, so reordering must not cause an UPDATE), within
    /// the size limits, and a link bandwidth that is a real non-negative
    /// number. Returns what had to be fixed.
    pub fn sanitized(mut self) -> (Self, Vec<Sanitized>) {
        let mut fixed = Vec::new();
        self.communities.sort_unstable();
        self.communities.dedup();
        if self.communities.len() > MAX_COMMUNITIES {
            fixed.push(Sanitized::CommunitiesTruncated {
                given: self.communities.len(),
            });
            self.communities.truncate(MAX_COMMUNITIES);
        }
        self.large_communities.sort_unstable();
        self.large_communities.dedup();
        if self.large_communities.len() > MAX_LARGE_COMMUNITIES {
            fixed.push(Sanitized::LargeCommunitiesTruncated {
                given: self.large_communities.len(),
            });
            self.large_communities.truncate(MAX_LARGE_COMMUNITIES);
        }
        if let Some(bandwidth) = self.link_bandwidth
            && !(bandwidth.bytes_per_second.is_finite() && bandwidth.bytes_per_second >= 0.0)
        {
            fixed.push(Sanitized::LinkBandwidthInvalid);
            self.link_bandwidth = None;
        }
        (self, fixed)
    }
}

/// A community or large community written by a user could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommunityError {
    #[error(
        "{0:?} is not a BGP community: write ASN:VALUE with each part 0..=65535 (e.g. 65000:100), or one of no-export, no-advertise, no-export-subconfed, no-peer, blackhole"
    )]
    Community(String),
    #[error(
        "{0:?} is not a BGP large community: write GLOBAL:LOCAL1:LOCAL2 with each part 0..=4294967295 (e.g. 65000:1:2)"
    )]
    LargeCommunity(String),
}

/// Reads an RFC 1997 community as users write it: `65000:100`, or a
/// well-known name (RFC 1997, RFC 3765, RFC 7999).
pub fn parse_community(text: &str) -> Result<u32, CommunityError> {
    let text = text.trim();
    let well_known = match text.to_ascii_lowercase().as_str() {
        "no-export" => Some(0xFFFF_FF01),
        "no-advertise" => Some(0xFFFF_FF02),
        "no-export-subconfed" => Some(0xFFFF_FF03),
        "no-peer" => Some(0xFFFF_FF04),
        "blackhole" => Some(0xFFFF_029A),
        _ => None,
    };
    if let Some(value) = well_known {
        return Ok(value);
    }
    let error = || CommunityError::Community(text.to_owned());
    let (asn, value) = text.split_once(':').ok_or_else(error)?;
    let asn: u16 = asn.parse().map_err(|_| error())?;
    let value: u16 = value.parse().map_err(|_| error())?;
    Ok((u32::from(asn) << 16) | u32::from(value))
}

/// Reads an RFC 8092 large community: `GLOBAL:LOCAL1:LOCAL2`.
pub fn parse_large_community(text: &str) -> Result<(u32, u32, u32), CommunityError> {
    let text = text.trim();
    let error = || CommunityError::LargeCommunity(text.to_owned());
    let mut parts = text.split(':').map(|part| part.parse::<u32>());
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(Ok(global)), Some(Ok(one)), Some(Ok(two)), None) => Ok((global, one, two)),
        _ => Err(error()),
    }
}

/// Whether and how a peer gets the link bandwidth community.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LinkBandwidthPolicy {
    /// As each path says (the default).
    #[default]
    AsGiven,
    /// Always the transitive form (type 0x00), whatever the path says.
    Transitive,
    /// Always the non-transitive form (type 0x40).
    NonTransitive,
    /// Never: for peers that reject or mishandle it.
    Off,
}

/// Per-peer policy: how a path's attributes are shaped for this peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPolicy {
    /// Send COMMUNITIES and LARGE_COMMUNITY (default true).
    pub communities: bool,
    pub link_bandwidth: LinkBandwidthPolicy,
}

impl Default for PeerPolicy {
    fn default() -> Self {
        Self {
            communities: true,
            link_bandwidth: LinkBandwidthPolicy::AsGiven,
        }
    }
}

/// Whether `peer` gets a path with these attributes at all.
pub fn applies_to(attributes: &PathAttributes, peer: IpAddr) -> bool {
    attributes
        .only_peers
        .as_ref()
        .is_none_or(|peers| peers.contains(&peer))
}

/// The attributes `peer` is sent for a path: the peer's policy applied,
/// LOCAL_PREF removed on eBGP, the scope removed (it is not an attribute).
/// Shares `attributes` when nothing changes, which is the common case.
pub fn for_peer(
    attributes: &Arc<PathAttributes>,
    policy: &PeerPolicy,
    ebgp: bool,
) -> Arc<PathAttributes> {
    let bandwidth = attributes
        .link_bandwidth
        .and_then(|bandwidth| match policy.link_bandwidth {
            LinkBandwidthPolicy::AsGiven => Some(bandwidth),
            LinkBandwidthPolicy::Transitive => Some(LinkBandwidth {
                transitive: true,
                ..bandwidth
            }),
            LinkBandwidthPolicy::NonTransitive => Some(LinkBandwidth {
                transitive: false,
                ..bandwidth
            }),
            LinkBandwidthPolicy::Off => None,
        });
    let has_communities =
        !(attributes.communities.is_empty() && attributes.large_communities.is_empty());
    let strip_communities = !policy.communities && has_communities;
    let strip_local_pref = ebgp && attributes.local_pref.is_some();
    if attributes.only_peers.is_none()
        && !strip_communities
        && !strip_local_pref
        && bandwidth == attributes.link_bandwidth
    {
        return Arc::clone(attributes);
    }
    let mut shaped = PathAttributes::clone(attributes);
    shaped.only_peers = None;
    shaped.link_bandwidth = bandwidth;
    if strip_communities {
        shaped.communities.clear();
        shaped.large_communities.clear();
    }
    if ebgp {
        shaped.local_pref = None;
    }
    Arc::new(shaped)
}

/// The 2-octet AS for the link bandwidth community's global administrator.
fn two_octet_as(local_as: u32) -> u16 {
    u16::try_from(local_as).unwrap_or(AS_TRANS)
}

/// The link bandwidth extended community in netgauze's model.
pub fn link_bandwidth_community(bandwidth: LinkBandwidth, local_as: u32) -> ExtendedCommunity {
    let global_admin = two_octet_as(local_as);
    let local_admin = bandwidth.bytes_per_second.to_bits();
    if bandwidth.transitive {
        // netgauze has no name for transitive sub-type 0x04; the generic
        // form writes the same eight octets.
        ExtendedCommunity::TransitiveTwoOctet(TransitiveTwoOctetExtendedCommunity::Unassigned {
            sub_type: LINK_BANDWIDTH_SUB_TYPE,
            global_admin,
            local_admin,
        })
    } else {
        ExtendedCommunity::NonTransitiveTwoOctet(
            NonTransitiveTwoOctetExtendedCommunity::LinkBandwidth {
                global_admin,
                local_admin,
            },
        )
    }
}

/// The link bandwidth carried by an extended community, if it is one.
#[cfg(test)]
pub fn link_bandwidth_of(community: &ExtendedCommunity) -> Option<LinkBandwidth> {
    let (local_admin, transitive) = match community {
        ExtendedCommunity::TransitiveTwoOctet(
            TransitiveTwoOctetExtendedCommunity::Unassigned {
                sub_type: LINK_BANDWIDTH_SUB_TYPE,
                local_admin,
                ..
            },
        ) => (*local_admin, true),
        ExtendedCommunity::NonTransitiveTwoOctet(
            NonTransitiveTwoOctetExtendedCommunity::LinkBandwidth { local_admin, .. },
        ) => (*local_admin, false),
        _ => return None,
    };
    Some(LinkBandwidth {
        bytes_per_second: f32::from_bits(local_admin),
        transitive,
    })
}

/// The policy attributes of a path in netgauze's model, each `Some` when sent.
pub struct Encoded {
    pub local_pref: Option<LocalPreference>,
    pub communities: Option<Communities>,
    pub extended_communities: Option<ExtendedCommunities>,
    pub large_communities: Option<LargeCommunities>,
}

/// Encodes the policy attributes of a path. `ibgp`: LOCAL_PREF is sent,
/// defaulting to [`DEFAULT_LOCAL_PREF`]; on eBGP it never is.
pub fn encode(attributes: &PathAttributes, local_as: u32, ibgp: bool) -> Encoded {
    Encoded {
        local_pref: ibgp
            .then(|| LocalPreference::new(attributes.local_pref.unwrap_or(DEFAULT_LOCAL_PREF))),
        communities: (!attributes.communities.is_empty()).then(|| {
            Communities::new(
                attributes
                    .communities
                    .iter()
                    .map(|value| Community::new(*value))
                    .collect::<Vec<_>>(),
            )
        }),
        extended_communities: attributes.link_bandwidth.map(|bandwidth| {
            ExtendedCommunities::new(vec![link_bandwidth_community(bandwidth, local_as)])
        }),
        large_communities: (!attributes.large_communities.is_empty()).then(|| {
            LargeCommunities::new(
                attributes
                    .large_communities
                    .iter()
                    .map(|(global, one, two)| LargeCommunity::new(*global, *one, *two))
                    .collect::<Vec<_>>(),
            )
        }),
    }
}

/// An upper bound of the octets these attributes add to an UPDATE beyond
/// the fixed ones (4-octet attribute headers assumed).
pub fn encoded_len(attributes: &PathAttributes) -> usize {
    let list = |count: usize, each: usize| if count == 0 { 0 } else { 4 + count * each };
    list(attributes.communities.len(), 4)
        + list(attributes.large_communities.len(), 12)
        + list(usize::from(attributes.link_bandwidth.is_some()), 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    #[test]
    fn communities_parse_as_users_write_them() {
        assert_eq!(parse_community("65000:100"), Ok(0xfde8_0064));
        assert_eq!(parse_community(" NO-EXPORT "), Ok(0xffff_ff01));
        assert_eq!(parse_community("blackhole"), Ok(0xffff_029a));
        for bad in ["65536:1", "1:65536", "65000", "a:b", "1:2:3", ""] {
            assert!(parse_community(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_large_community("4200000000:1:2"),
            Ok((4_200_000_000, 1, 2))
        );
        for bad in ["1:2", "1:2:3:4", "1:2:x", "4294967296:1:2"] {
            assert!(parse_large_community(bad).is_err(), "{bad:?}");
        }
        let message = parse_community("65000").err().map(|e| e.to_string());
        assert!(message.is_some_and(|m| m.contains("ASN:VALUE")));
    }

    #[test]
    fn sanitizing_sorts_dedups_and_bounds() {
        let (clean, fixed) = PathAttributes {
            communities: vec![3, 1, 3, 2],
            large_communities: (0..40).rev().map(|n| (65000, n, 0)).collect(),
            link_bandwidth: Some(LinkBandwidth {
                bytes_per_second: f32::NAN,
                transitive: false,
            }),
            ..PathAttributes::default()
        }
        .sanitized();
        assert_eq!(clean.communities, vec![1, 2, 3]);
        assert_eq!(clean.large_communities.len(), MAX_LARGE_COMMUNITIES);
        assert_eq!(clean.large_communities[0], (65000, 0, 0));
        assert_eq!(clean.link_bandwidth, None);
        assert_eq!(
            fixed,
            vec![
                Sanitized::LargeCommunitiesTruncated { given: 40 },
                Sanitized::LinkBandwidthInvalid
            ]
        );
    }

    #[test]
    fn peer_policy_shapes_attributes() {
        let path = Arc::new(PathAttributes {
            communities: vec![0xfde8_0001],
            large_communities: vec![(65000, 1, 2)],
            local_pref: Some(200),
            link_bandwidth: Some(LinkBandwidth::for_endpoints(3, false)),
            only_peers: None,
        });
        let shared = for_peer(&path, &PeerPolicy::default(), false);
        assert!(Arc::ptr_eq(&shared, &path), "iBGP, default policy: as is");

        let ebgp = for_peer(&path, &PeerPolicy::default(), true);
        assert_eq!(ebgp.local_pref, None, "no LOCAL_PREF on eBGP");
        assert_eq!(ebgp.communities, path.communities);

        let policy = PeerPolicy {
            communities: false,
            link_bandwidth: LinkBandwidthPolicy::Transitive,
        };
        let shaped = for_peer(&path, &policy, false);
        assert!(shaped.communities.is_empty() && shaped.large_communities.is_empty());
        assert_eq!(
            shaped.link_bandwidth.map(|bandwidth| bandwidth.transitive),
            Some(true)
        );
        let off = PeerPolicy {
            link_bandwidth: LinkBandwidthPolicy::Off,
            ..PeerPolicy::default()
        };
        assert_eq!(for_peer(&path, &off, false).link_bandwidth, None);
    }

    #[test]
    fn scope_limits_peers_and_is_not_sent() {
        let path = Arc::new(PathAttributes {
            only_peers: Some([ip("10.0.0.1")].into()),
            ..PathAttributes::default()
        });
        assert!(applies_to(&path, ip("10.0.0.1")));
        assert!(!applies_to(&path, ip("10.0.0.2")));
        assert_eq!(
            for_peer(&path, &PeerPolicy::default(), true).only_peers,
            None
        );
    }

    #[test]
    fn endpoint_counts_map_to_proportional_bandwidth() {
        let one = LinkBandwidth::for_endpoints(1, true).bytes_per_second;
        let three = LinkBandwidth::for_endpoints(3, true).bytes_per_second;
        assert_eq!(three / one, 3.0);
        // FRR's view: whole Mbit/s.
        assert_eq!((one * 8.0 / 1e6) as u32, 1000);
    }

    /// The eight octets of each form, built by hand from the draft.
    #[test]
    fn link_bandwidth_wire_forms_match_the_draft() {
        use netgauze_parse_utils::WritablePdu;
        for (transitive, type_octet) in [(false, 0x40u8), (true, 0x00)] {
            let bandwidth = LinkBandwidth {
                bytes_per_second: 375_000_000.0,
                transitive,
            };
            let community = link_bandwidth_community(bandwidth, 65000);
            let mut wire = Vec::new();
            community.write(&mut wire).expect("writes");
            let mut expected = vec![type_octet, LINK_BANDWIDTH_SUB_TYPE];
            expected.extend_from_slice(&65000u16.to_be_bytes());
            expected.extend_from_slice(&375_000_000f32.to_be_bytes());
            assert_eq!(wire, expected, "transitive: {transitive}");
            assert_eq!(link_bandwidth_of(&community), Some(bandwidth));
        }
        let four_octet_as =
            link_bandwidth_community(LinkBandwidth::for_endpoints(1, false), 4_200_000_000);
        let mut wire = Vec::new();
        four_octet_as.write(&mut wire).expect("writes");
        assert_eq!(wire[2..4], AS_TRANS.to_be_bytes());
    }
}
