//! Deltas of monotonic kernel counters between two reports.
//!
//! A counter that goes backwards was reset (its map entry was recreated): what it holds now
//! was counted since the reset. A 64-bit counter that crosses 2^64 wraps instead, and the
//! modular difference is the growth. Never a huge bogus delta.

use std::{collections::HashMap, hash::Hash};

/// Growth of one 64-bit counter from `prev` to `cur`.
pub fn delta(prev: u64, cur: u64) -> u64 {
    if cur >= prev {
        return cur - prev;
    }
    let wrapped = cur.wrapping_sub(prev);
    // A wrap leaves the old value near the top and the new one near zero; anything else
    // going backwards is a reset.
    if prev > u64::MAX - u64::MAX / 4 && wrapped < u64::MAX / 4 {
        wrapped
    } else {
        cur
    }
}

/// Last readings of a set of counters, keyed by what they count.
///
/// A key seen for the first time counts from zero: the maps tern reads are created empty
/// when tern loads, so a new key was born after the previous reading.
#[derive(Debug)]
pub struct Readings<K, const N: usize> {
    last: HashMap<K, [u64; N]>,
}

impl<K: Eq + Hash, const N: usize> Default for Readings<K, N> {
    fn default() -> Self {
        Self {
            last: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash, const N: usize> Readings<K, N> {
    /// Records `cur` for `key` and returns each counter's growth since the last reading.
    pub fn advance(&mut self, key: K, cur: [u64; N]) -> [u64; N] {
        let growth = self.since(&key, cur);
        self.last.insert(key, cur);
        growth
    }

    /// Each counter's growth from the last reading to `cur`, recording nothing.
    pub fn since(&self, key: &K, cur: [u64; N]) -> [u64; N] {
        let prev = self.last.get(key).copied().unwrap_or([0; N]);
        std::array::from_fn(|i| delta(prev[i], cur[i]))
    }

    pub fn forget(&mut self, key: &K) {
        self.last.remove(key);
    }
}

impl<K: Eq + Hash + Copy, const N: usize> Readings<K, N> {
    /// Every last reading, to be kept across a restart.
    pub fn entries(&self) -> Vec<(K, [u64; N])> {
        self.last.iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// Continues from readings an earlier process kept.
    pub fn restore(&mut self, entries: impl IntoIterator<Item = (K, [u64; N])>) {
        self.last = entries.into_iter().collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_is_the_difference() {
        assert_eq!(delta(100, 250), 150);
        assert_eq!(delta(7, 7), 0);
    }

    #[test]
    fn first_reading_counts_from_zero_not_from_an_absolute_spike() {
        let mut readings = Readings::<u32, 2>::default();
        assert_eq!(readings.advance(3, [1500, 1]), [1500, 1]);
        assert_eq!(readings.advance(3, [1600, 3]), [100, 2]);
    }

    #[test]
    fn a_counter_going_backwards_is_a_reset() {
        assert_eq!(delta(1_000_000, 40), 40);
        let mut readings = Readings::<u32, 1>::default();
        readings.advance(1, [5_000]);
        assert_eq!(readings.advance(1, [12]), [12]);
        assert_eq!(readings.advance(1, [20]), [8]);
    }

    #[test]
    fn a_counter_crossing_two_to_the_64_wraps() {
        assert_eq!(delta(u64::MAX - 5, 10), 16);
        assert_eq!(delta(u64::MAX, 0), 1);
    }

    #[test]
    fn a_reset_from_the_upper_half_is_not_mistaken_for_a_wrap() {
        assert_eq!(delta(u64::MAX / 2 + 1, 3), 3);
    }

    #[test]
    fn forgotten_keys_count_from_zero_again() {
        let mut readings = Readings::<u32, 1>::default();
        readings.advance(9, [300]);
        readings.forget(&9);
        assert_eq!(readings.advance(9, [50]), [50]);
    }
}
