//! Every annotation, label and name a user or another component can see, in one
//! place, with the OpenELB spellings accepted as aliases so that manifests
//! written for OpenELB keep working unchanged.

use std::collections::BTreeMap;

/// An annotation key with the aliases that mean the same thing. The first
/// spelling found wins, in the order `key`, then `aliases`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnotationKey {
    pub key: &'static str,
    pub aliases: &'static [&'static str],
}

impl AnnotationKey {
    /// The value under this key or one of its aliases, trimmed; `None` when
    /// absent or blank.
    pub fn get<'a>(&self, annotations: Option<&'a BTreeMap<String, String>>) -> Option<&'a str> {
        let annotations = annotations?;
        std::iter::once(self.key)
            .chain(self.aliases.iter().copied())
            .filter_map(|k| annotations.get(k))
            .map(|v| v.trim())
            .find(|v| !v.is_empty())
    }
}

/// A Service opts in with this annotation set to one of [`LB_ANNOTATION_VALUES`].
pub const LB: AnnotationKey = AnnotationKey {
    key: "lb.kubesphere.io/v1alpha1",
    aliases: &[],
};
/// `porter` is the seed's value; `openelb` is what OpenELB ≥ 0.4.4 writes.
pub const LB_ANNOTATION_VALUES: &[&str] = &["porter", "openelb"];

/// The alternative opt-in: `spec.loadBalancerClass`.
pub const LOAD_BALANCER_CLASS: &str = "network.kubesphere.io/porter";

/// Picks the pool (an `Eip` name) a Service allocates from.
pub const EIP_POOL: AnnotationKey = AnnotationKey {
    key: "eip.porter.kubesphere.io/v1alpha2",
    aliases: &["eip.openelb.kubesphere.io/v1alpha2"],
};

/// Requests specific addresses (comma-separated for dual stack), like
/// `spec.loadBalancerIP`.
pub const EIP_REQUEST: AnnotationKey = AnnotationKey {
    key: "eip.porter.kubesphere.io/v1alpha1",
    aliases: &["eip.openelb.kubesphere.io/v1alpha1"],
};

/// Services with the same value and non-overlapping ports may share one IP.
pub const ALLOW_SHARED_IP: AnnotationKey = AnnotationKey {
    key: "porter.kubesphere.io/allow-shared-ip",
    aliases: &["openelb.kubesphere.io/allow-shared-ip"],
};

/// BGP communities added to the pool's for this Service's paths:
/// comma-separated, `65000:300,no-export`.
pub const BGP_COMMUNITIES: AnnotationKey = AnnotationKey {
    key: "bgp.porter.kubesphere.io/communities",
    aliases: &["bgp.openelb.kubesphere.io/communities"],
};

/// BGP large communities added to the pool's: comma-separated, `65000:3:0`.
pub const BGP_LARGE_COMMUNITIES: AnnotationKey = AnnotationKey {
    key: "bgp.porter.kubesphere.io/large-communities",
    aliases: &["bgp.openelb.kubesphere.io/large-communities"],
};

/// LOCAL_PREF for this Service's paths (iBGP), overriding the pool's.
pub const BGP_LOCAL_PREF: AnnotationKey = AnnotationKey {
    key: "bgp.porter.kubesphere.io/local-pref",
    aliases: &["bgp.openelb.kubesphere.io/local-pref"],
};

/// `off`: this Service's EIP carries no link bandwidth (plain ECMP).
pub const BGP_LINK_BANDWIDTH: AnnotationKey = AnnotationKey {
    key: "bgp.porter.kubesphere.io/link-bandwidth",
    aliases: &["bgp.openelb.kubesphere.io/link-bandwidth"],
};

/// On an `Eip`: `"true"` makes it the default pool.
pub const DEFAULT_EIP: AnnotationKey = AnnotationKey {
    key: "eip.porter.kubesphere.io/is-default-eip",
    aliases: &["eip.openelb.kubesphere.io/is-default-eip"],
};

/// Kept on a Service while it holds an address, so that its deletion is seen
/// and the address released and withdrawn before the object goes. The
/// spelling is OpenELB's, so that an existing cluster's Services are adopted.
pub const SERVICE_FINALIZER: &str = "finalizer.lb.kubesphere.io/v1alpha1";

/// EndpointSlice label naming the Service it belongs to (set by Kubernetes).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The seed's BGP configuration: a ConfigMap of GoBGP-style TOML.
pub const SEED_BGP_CONFIGMAP_NAMESPACE: &str = "porter-system";
pub const SEED_BGP_CONFIGMAP_NAME: &str = "bgp-cfg";

/// Where deploy/porter.yaml installs Porter; the controller reads Secrets
/// (BgpPeer passwords) here unless told otherwise.
pub const PORTER_NAMESPACE: &str = "porter-system";

/// The only BgpConf object that is read.
pub const BGP_CONF_NAME: &str = "default";

/// Field manager for server-side apply, and the Events' reporting component.
pub const FIELD_MANAGER: &str = "porter-controller";

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn openelb_alias_is_read() {
        let a = ann(&[("eip.openelb.kubesphere.io/v1alpha2", "pool-a")]);
        assert_eq!(EIP_POOL.get(Some(&a)), Some("pool-a"));
    }

    #[test]
    fn porter_spelling_wins_over_alias() {
        let a = ann(&[
            ("eip.openelb.kubesphere.io/v1alpha2", "old"),
            ("eip.porter.kubesphere.io/v1alpha2", "new"),
        ]);
        assert_eq!(EIP_POOL.get(Some(&a)), Some("new"));
    }

    #[test]
    fn blank_value_counts_as_absent() {
        let a = ann(&[("porter.kubesphere.io/allow-shared-ip", "  ")]);
        assert_eq!(ALLOW_SHARED_IP.get(Some(&a)), None);
        assert_eq!(ALLOW_SHARED_IP.get(None), None);
    }
}
