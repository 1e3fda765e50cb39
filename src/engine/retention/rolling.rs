//! `rolling_24h`: per user, the first and last return in each 24 hours of
//! event time since the epoch. A window of 24 hours or more holds at most
//! one of its bounds inside such a slice, so these two times say exactly
//! whether a return fell in it, whatever the order events came in.

use super::super::def::Bracket;

/// The milliseconds of a slice of event time (see the module docs).
pub(super) const SLICE_MS: i64 = 86_400_000;

/// A slice of event time in which a user returned: its number since the
/// epoch, and the first and last return in it, in milliseconds from its
/// start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub(super) struct Slice {
    n: u32,
    first: u32,
    last: u32,
}

/// Per user, the slices with a return, in ascending order.
#[derive(Debug, Clone, Default)]
pub(super) struct ReturnTimes {
    pub(super) users: Vec<Vec<Slice>>,
}

impl ReturnTimes {
    /// Adds a return at `ts` to user `u`'s slices, forgetting those a
    /// return no longer reaches (further back than `keep_slices` before
    /// it); true when the slices changed.
    pub(super) fn insert(&mut self, u: usize, ts: i64, keep_slices: u32) -> bool {
        let (n, at) = ((ts / SLICE_MS) as u32, (ts % SLICE_MS) as u32);
        let slices = &mut self.users[u];
        let old = slices.iter().take_while(|s| s.n.saturating_add(keep_slices) < n).count();
        slices.drain(..old);
        match slices.binary_search_by_key(&n, |s| s.n) {
            Ok(i) => {
                let s = &mut slices[i];
                let before = *s;
                s.first = s.first.min(at);
                s.last = s.last.max(at);
                *s != before || old > 0
            }
            Err(i) => {
                slices.insert(i, Slice { n, first: at, last: at });
                true
            }
        }
    }

    /// Whether user `u` returned in `[from, to)`, a span of at least one
    /// slice.
    fn any_in(&self, u: usize, from: i64, to: i64) -> bool {
        debug_assert!(to - from >= SLICE_MS);
        let (lo, hi) = ((from / SLICE_MS) as u32, ((to - 1) / SLICE_MS) as u32);
        let slices = &self.users[u];
        let start = slices.partition_point(|s| s.n < lo);
        slices[start..].iter().take_while(|s| s.n <= hi).any(|s| {
            let base = i64::from(s.n) * SLICE_MS;
            // At most one of the two bounds falls inside the slice.
            base + i64::from(s.last) >= from && base + i64::from(s.first) < to
        })
    }

    /// Bit i: whether user `u`, first cohort event at `t0`, returned in
    /// the 24-hour windows of figure i of `periods`.
    pub(super) fn flags(&self, u: usize, t0: i64, periods: &[Bracket]) -> u128 {
        let at = |n: u32| t0.saturating_add(i64::from(n) * SLICE_MS);
        periods.iter().enumerate().fold(0, |m, (i, b)| m | u128::from(self.any_in(u, at(b.from), at(b.to + 1))) << i)
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.users.capacity() * std::mem::size_of::<Vec<Slice>>()
            + self.users.iter().map(|v| v.capacity() * std::mem::size_of::<Slice>()).sum::<usize>()
    }
}

/// "No cohort event yet", in a column of first cohort times.
pub(super) const NO_TIME: i64 = i64::MAX;
