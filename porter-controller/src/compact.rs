//! Small collections for the per-Service records the controller keeps
//! 10,000 of: most hold one item, and a `Vec` grows from empty to room for
//! four (a holding's users: 224 bytes for one).

/// Pushes `item` and leaves no spare room.
pub fn push_exact<T>(v: &mut Vec<T>, item: T) {
    v.reserve_exact(1);
    v.push(item);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_leave_no_spare_room() {
        let mut v: Vec<(u64, u64)> = Vec::new();
        push_exact(&mut v, (1, 1));
        assert_eq!((v.len(), v.capacity()), (1, 1));
        push_exact(&mut v, (2, 2));
        assert_eq!(v, [(1, 1), (2, 2)]);
        assert_eq!(v.capacity(), 2);
    }
}
