//! One ordered walk over two sorted maps: what a change of the plan adds, alters and drops.

use std::{cmp::Ordering, collections::BTreeMap};

/// Calls `on(key, Some(value))` for every key `after` adds or gives another value, and
/// `on(key, None)` for every key of `before` it drops, in key order. One pass over both
/// maps, so a change to a few of 160,000 entries costs a sequential walk, not 160,000 lookups.
pub fn each_difference<'a, K: Ord, V: PartialEq>(
    before: &'a BTreeMap<K, V>,
    after: &'a BTreeMap<K, V>,
    mut on: impl FnMut(&'a K, Option<&'a V>),
) {
    let (mut old, mut new) = (before.iter().peekable(), after.iter().peekable());
    loop {
        let order = match (old.peek(), new.peek()) {
            (None, None) => return,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((a, _)), Some((b, _))) => a.cmp(b),
        };
        match order {
            Ordering::Less => on(old.next().expect("peeked").0, None),
            Ordering::Greater => {
                let (key, value) = new.next().expect("peeked");
                on(key, Some(value));
            }
            Ordering::Equal => {
                let ((_, a), (key, b)) = (old.next().expect("peeked"), new.next().expect("peeked"));
                if a != b {
                    on(key, Some(b));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_and_altered_keys_carry_their_value_and_dropped_ones_none_in_key_order() {
        let before: BTreeMap<u32, char> = [(1, 'a'), (2, 'b'), (4, 'd'), (6, 'f')].into();
        let after: BTreeMap<u32, char> = [(0, 'z'), (2, 'b'), (4, 'D'), (5, 'e')].into();
        let mut seen = Vec::new();
        each_difference(&before, &after, |k, v| seen.push((*k, v.copied())));
        assert_eq!(
            seen,
            [
                (0, Some('z')),
                (1, None),
                (4, Some('D')),
                (5, Some('e')),
                (6, None)
            ]
        );
        let mut none = 0;
        each_difference(&after, &after, |_, _| none += 1);
        assert_eq!(none, 0);
    }
}
