//! Telling unchanged objects apart by identity. The sources share an
//! unchanged object's `Arc` between snapshots, so "same allocation" means
//! "same object". The last inputs are kept as `Weak`: that keeps an identity
//! from being reused by a new object (the allocation stays while a Weak points
//! to it) without keeping a replaced object's contents alive.

use std::sync::{Arc, Weak};

pub fn is<T>(last: &Weak<T>, now: &Arc<T>) -> bool {
    std::ptr::eq(last.as_ptr(), Arc::as_ptr(now))
}

pub fn same_objects<T>(last: &[Weak<T>], now: &[Arc<T>]) -> bool {
    last.len() == now.len() && last.iter().zip(now).all(|(w, a)| is(w, a))
}

pub fn remember<T>(now: &[Arc<T>]) -> Vec<Weak<T>> {
    now.iter().map(Arc::downgrade).collect()
}
