//! Ids for services and backends: slots of the pinned arrays, taken lowest
//! first so that the arrays stay dense.
/// The lowest id from `from` below `limit` that `used` (ascending, none
/// below `from`) lacks.
pub(super) fn free_id(used: impl Iterator<Item = u32>, from: u32, limit: u32) -> Option<u32> {
    let mut id = from;
    for taken in used {
        if taken != id {
            break;
        }
        id += 1;
    }
    (id < limit).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::free_id;

    #[test]
    fn the_lowest_gap_from_the_cursor_is_taken() {
        assert_eq!(free_id([0, 1, 3].into_iter(), 0, 10), Some(2));
        assert_eq!(free_id([].into_iter(), 0, 10), Some(0));
        // Ids below the cursor were taken earlier in the batch.
        assert_eq!(free_id([5, 6].into_iter(), 5, 10), Some(7));
        assert_eq!(free_id([4, 6].into_iter(), 4, 10), Some(5));
    }

    #[test]
    fn nothing_is_free_at_the_limit() {
        assert_eq!(free_id(0..10, 0, 10), None);
        assert_eq!(free_id([8, 9].into_iter(), 8, 10), None);
        assert_eq!(free_id([].into_iter(), 10, 10), None);
    }
}
