//! Telling unchanged objects apart by identity. The sources share an
//! unchanged object's `Arc` between snapshots, so "same allocation" means
//! "same object", as long as no other object can have been given that
//! allocation since. Two ways rule that out:
//!
//! - An object from the API server carries a `resourceVersion`, which every
//!   write changes (and no two objects share: each write has its own
//!   revision). The same allocation with the same version is the same
//!   content; a copy in a reused allocation would be equal too.
//! - An object without one (a manifest, a test) is remembered as a `Weak`,
//!   which keeps its allocation, not its contents, from being reused. That
//!   costs the object's size (a Service: 840 bytes) for each one replaced
//!   until the next pass: 8 MiB when a first pass's status writes replace
//!   10,000 Services.

use std::sync::{Arc, Weak};

use kube::Resource;

/// One object as seen in the last pass.
#[derive(Debug)]
pub enum Seen<T> {
    /// Its allocation's address (kept as a number: only compared) and its
    /// `resourceVersion`.
    Version {
        at: usize,
        version: u64,
    },
    Held(Weak<T>),
}

impl<T: Resource> Seen<T> {
    pub fn of(now: &Arc<T>) -> Self {
        match version(now.as_ref()) {
            Some(version) => Seen::Version {
                at: Arc::as_ptr(now) as usize,
                version,
            },
            None => Seen::Held(Arc::downgrade(now)),
        }
    }

    /// Whether `now` is the object seen then.
    pub fn is(&self, now: &Arc<T>) -> bool {
        match self {
            Seen::Version { at, version: v } => {
                *at == Arc::as_ptr(now) as usize && version(now.as_ref()) == Some(*v)
            }
            Seen::Held(last) => is(last, now),
        }
    }
}

/// A `resourceVersion` the API server wrote: opaque, so only one that reads
/// back as the same string (a decimal without leading zeros, as etcd
/// revisions are) is kept as a number; any other is held as a `Weak`.
fn version<T: Resource>(object: &T) -> Option<u64> {
    let v = object.meta().resource_version.as_deref()?;
    if v.is_empty() || (v.len() > 1 && v.starts_with('0')) {
        return None;
    }
    // One pass over the digits: every pass reads every object's version.
    v.bytes().try_fold(0u64, |n, b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

pub fn same_objects<T: Resource>(last: &[Seen<T>], now: &[Arc<T>]) -> bool {
    last.len() == now.len() && last.iter().zip(now).all(|(s, a)| s.is(a))
}

pub fn remember<T: Resource>(now: &[Arc<T>]) -> Vec<Seen<T>> {
    now.iter().map(Seen::of).collect()
}

/// Whether `now` is the object `last` holds the allocation of.
pub fn is<T>(last: &Weak<T>, now: &Arc<T>) -> bool {
    std::ptr::eq(last.as_ptr(), Arc::as_ptr(now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn service(version: Option<&str>) -> Arc<Service> {
        Arc::new(Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                resource_version: version.map(str::to_string),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    #[test]
    fn a_versioned_object_is_known_by_address_and_version_without_holding_it() {
        let mut web = service(Some("41"));
        let seen = Seen::of(&web);
        assert!(matches!(seen, Seen::Version { version: 41, .. }));
        assert_eq!(Arc::weak_count(&web), 0, "nothing keeps its allocation");
        assert!(seen.is(&web));
        // Another object in the same allocation (as a freed one may be
        // reused): a write gave it another version.
        if let Some(reused) = Arc::get_mut(&mut web) {
            reused.metadata.resource_version = Some("42".into());
        }
        assert!(!seen.is(&web));
        // The same version in another allocation: a new object to us.
        assert!(!Seen::of(&service(Some("41"))).is(&service(Some("41"))));
    }

    #[test]
    fn an_unversioned_object_is_held_so_its_allocation_is_not_reused() {
        let web = service(None);
        let seen = Seen::of(&web);
        assert!(seen.is(&web));
        assert_eq!(Arc::weak_count(&web), 1);
        assert!(!seen.is(&service(None)));
        // Versions that would not read back as the same string are not
        // compared as numbers.
        for odd in ["", "007", "+7", "12a", "99999999999999999999"] {
            assert!(
                matches!(Seen::of(&service(Some(odd))), Seen::Held(_)),
                "{odd:?}"
            );
        }
        assert!(matches!(
            Seen::of(&service(Some("0"))),
            Seen::Version { .. }
        ));
    }

    #[test]
    fn lists_are_the_same_only_object_for_object() {
        let (a, b) = (service(Some("1")), service(None));
        let last = remember(&[a.clone(), b.clone()]);
        assert!(same_objects(&last, &[a.clone(), b.clone()]));
        assert!(!same_objects(&last, &[b.clone(), a.clone()]));
        assert!(!same_objects(&last, std::slice::from_ref(&a)));
        assert!(!same_objects(&last, &[a, service(None)]));
    }
}
