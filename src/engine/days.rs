//! Per-user sets of active days and per-day counter rows.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::calendar::Day;

/// A "no day" marker for day fields stored per user.
pub const NO_DAY: Day = Day::MIN;

/// A day as the per-user columns store it, in two bytes: 0 for [`NO_DAY`],
/// else the day plus two (event times start at the epoch, whose day is -1
/// in zones west of UTC, and end before 2100: day 47 483 at most).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(transparent)]
pub struct Day16(u16);

const _: () = assert!(crate::event::MIN_TS_MS >= 0 && crate::event::END_TS_MS / 86_400_000 + 3 <= u16::MAX as i64);

impl Day16 {
    /// `day` (a day of an accepted event, or [`NO_DAY`]) in two bytes.
    pub fn pack(day: Day) -> Self {
        if day == NO_DAY {
            return Day16(0);
        }
        debug_assert!((-1..=i32::from(u16::MAX) - 2).contains(&day), "day {day} out of range");
        Day16((day + 2) as u16)
    }

    /// The day, or [`NO_DAY`].
    pub fn unpack(self) -> Day {
        if self.0 == 0 { NO_DAY } else { i32::from(self.0) - 2 }
    }
}

/// The sets of days on which each user did something: per user, its
/// latest day (a [`Day16`]) and a bitmap anchored there, bit k set when the
/// user was active on `latest - k`, kept as `words` 16-bit words in one
/// flat column (no alignment padding, no allocation per user).
///
/// How far back a set must see: an accepted event's day is at most
/// `history_days + 2` days before the user's latest day (the horizon is
/// `history_days` days and the lateness, at most a day, before the newest
/// event; a DST change can add a calendar day), and deciding whether the
/// event's day starts a 30-day MAU window looks 29 days further back. So
/// `history_days + 32` days are enough: 64 (4 words, 10 bytes a user) up
/// to `history_days = 32`, which D30 retention needs, else 128 (8 words, 18
/// bytes; config validation keeps `history_days` ≤ 90).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaySets {
    words: usize,
    /// Per user `1 + words` cells: the latest day, then the bitmap's words,
    /// least significant first.
    cells: Vec<u16>,
}

/// The days a set of `words` words remembers.
fn span(words: usize) -> i32 {
    16 * words as i32
}

impl DaySets {
    /// Empty sets of `words` words (4 or 8).
    pub fn new(words: usize) -> Self {
        debug_assert!(words == 4 || words == 8);
        DaySets { words, cells: Vec::new() }
    }

    /// Empty sets as wide as `history_days` needs (see the type's docs).
    pub fn for_history(history_days: u32) -> Self {
        DaySets::new(if history_days + 32 <= 64 { 4 } else { 8 })
    }

    /// Sets of `words` words from their cells, as [`DaySets::cells`] gave
    /// them; `None` when the cells do not make whole sets.
    pub fn from_cells(words: usize, cells: Vec<u16>) -> Option<Self> {
        (matches!(words, 4 | 8) && cells.len().is_multiple_of(1 + words)).then_some(DaySets { words, cells })
    }

    /// Words a set takes.
    pub fn words(&self) -> usize {
        self.words
    }

    /// The sets' cells, user after user.
    pub fn cells(&self) -> &[u16] {
        &self.cells
    }

    /// Users (sets).
    pub fn len(&self) -> usize {
        self.cells.len() / (1 + self.words)
    }

    /// Whether there are no sets.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.cells.capacity() * 2
    }

    /// Adds an empty set for a new user.
    pub fn push_empty(&mut self) {
        self.cells.extend(std::iter::repeat_n(0, 1 + self.words));
    }

    fn cell(&self, u: usize) -> &[u16] {
        let stride = 1 + self.words;
        &self.cells[u * stride..(u + 1) * stride]
    }

    fn last(&self, u: usize) -> Day {
        Day16(self.cell(u)[0]).unpack()
    }

    /// User `u`'s latest day and bitmap, read in one go (the common
    /// 4-word width spelled out: a few loads, not a loop).
    fn load(&self, u: usize) -> (Day, u128) {
        let cell = self.cell(u);
        let bits = match *cell {
            [_, a, b, c, d] => u128::from(u64::from(a) | u64::from(b) << 16 | u64::from(c) << 32 | u64::from(d) << 48),
            _ => cell[1..].iter().rev().fold(0, |bits, &x| bits << 16 | u128::from(x)),
        };
        (Day16(cell[0]).unpack(), bits)
    }

    fn set(&mut self, u: usize, last: Day16, bits: u128) {
        let stride = 1 + self.words;
        let cell = &mut self.cells[u * stride..(u + 1) * stride];
        let w = |i: u32| (bits >> (16 * i)) as u16;
        match cell {
            [l, a, b, c, d] => [*l, *a, *b, *c, *d] = [last.0, w(0), w(1), w(2), w(3)],
            cell => {
                cell[0] = last.0;
                for (i, x) in cell[1..].iter_mut().enumerate() {
                    *x = w(i as u32);
                }
            }
        }
    }

    /// Adds `day` to user `u`'s set; true when it was not there before.
    pub fn insert(&mut self, u: usize, day: Day) -> bool {
        let span = span(self.words);
        let (last, bits) = self.load(u);
        if last == NO_DAY {
            self.set(u, Day16::pack(day), 1);
            return true;
        }
        if day > last {
            let shift = day - last;
            let bits = if shift >= span { 0 } else { bits << shift };
            self.set(u, Day16::pack(day), bits | 1);
            return true;
        }
        let k = last - day;
        if k >= span {
            // Older than anything that can still change a figure.
            return false;
        }
        let bit = 1u128 << k;
        if bits & bit != 0 {
            return false;
        }
        self.set(u, Day16::pack(last), bits | bit);
        true
    }

    /// Whether `day` is in user `u`'s set.
    pub fn contains(&self, u: usize, day: Day) -> bool {
        let (last, bits) = self.load(u);
        if last == NO_DAY || day > last {
            return false;
        }
        let k = last - day;
        k < span(self.words) && bits & (1u128 << k) != 0
    }

    /// The nearest days in user `u`'s set before and after `day` (which is
    /// in the set), found with two bit scans.
    pub fn neighbors(&self, u: usize, day: Day) -> (Option<Day>, Option<Day>) {
        let ((last, bits), span) = (self.load(u), span(self.words));
        if last == NO_DAY || day > last || last - day >= span {
            return (None, None);
        }
        let k = (last - day) as u32;
        let earlier = if k + 1 >= span as u32 { 0 } else { bits >> (k + 1) };
        let prev = (earlier != 0).then(|| last - (k + 1 + earlier.trailing_zeros()) as Day);
        let later = bits & ((1u128 << k) - 1);
        let next = (later != 0).then(|| last - (127 - later.leading_zeros()) as Day);
        (prev, next)
    }

    /// How many days of `from..=to` are in user `u`'s set (those it still
    /// remembers).
    pub fn count_in(&self, u: usize, from: Day, to: Day) -> u32 {
        let ((last, bits), span) = (self.load(u), span(self.words));
        if last == NO_DAY || from > to || from > last {
            return 0;
        }
        // Bit k is day last - k.
        let (lo, hi) = ((last - to.min(last)) as u32, (last - from).min(span - 1) as u32);
        if lo > hi {
            return 0;
        }
        let width = hi - lo + 1;
        let mask = if width >= 128 { u128::MAX } else { (1u128 << width) - 1 };
        ((bits >> lo) & mask).count_ones()
    }

    /// For each of the `n` windows of `window` days ending on `first_end`,
    /// `first_end + 1`, ...: how many of their days are in user `u`'s set
    /// (those it still remembers), from one read of the set. `window` is
    /// at most 64.
    pub fn window_counts(&self, u: usize, first_end: Day, n: usize, window: u32, out: &mut [u32]) {
        debug_assert!(window <= 64 && out.len() >= n);
        let ((last, bits), span) = (self.load(u), span(self.words));
        if last == NO_DAY {
            out[..n].fill(0);
            return;
        }
        // Only the days the set remembers: bit k is day last - k.
        let bits = if span >= 128 { bits } else { bits & ((1u128 << span) - 1) };
        let mask = (1u128 << window) - 1;
        for (i, slot) in out[..n].iter_mut().enumerate() {
            let end = first_end + i as Day;
            // The window's days are bits last - end .. last - end + window - 1.
            let shifted = if end <= last {
                let k = (last - end) as u32;
                if k >= 128 { 0 } else { bits >> k }
            } else {
                let k = (end - last) as u32;
                if k >= 128 { 0 } else { bits << k }
            };
            *slot = (shifted & mask).count_ones();
        }
    }

    /// The latest day in user `u`'s set, if any.
    pub fn latest(&self, u: usize) -> Option<Day> {
        let last = self.last(u);
        (last != NO_DAY).then_some(last)
    }
}

/// Counter rows per business day, kept from a moving first day on: a ring
/// indexed by day, so that a lookup is O(1) on the hot path. Days between
/// rows that were touched hold default (zero) rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DayRows<T> {
    /// Day of `rows[0]`.
    base: Day,
    rows: VecDeque<T>,
    keep_from: Day,
}

impl<T: Default> Default for DayRows<T> {
    fn default() -> Self {
        DayRows { base: 0, rows: VecDeque::new(), keep_from: Day::MIN }
    }
}

impl<T: Default> DayRows<T> {
    /// The row of `day`, created on first use; `None` for a day already
    /// dropped (nothing exported reads it any more).
    pub fn row(&mut self, day: Day) -> Option<&mut T> {
        if day < self.keep_from {
            return None;
        }
        if self.rows.is_empty() {
            self.base = day;
        }
        if day < self.base {
            for _ in day..self.base {
                self.rows.push_front(T::default());
            }
            self.base = day;
        }
        let i = (day - self.base) as usize;
        while self.rows.len() <= i {
            self.rows.push_back(T::default());
        }
        self.rows.get_mut(i)
    }

    /// The row of `day`, if it exists.
    pub fn get(&self, day: Day) -> Option<&T> {
        if day < self.base {
            return None;
        }
        self.rows.get((day - self.base) as usize)
    }

    /// Drops rows before `day`; they will not be recreated.
    pub fn drop_before(&mut self, day: Day) {
        if day <= self.keep_from {
            return;
        }
        self.keep_from = day;
        while !self.rows.is_empty() && self.base < day {
            self.rows.pop_front();
            self.base += 1;
        }
    }

    /// The first day whose row can still exist: `Day::MIN` until rows
    /// have been dropped.
    pub fn kept_from(&self) -> Day {
        self.keep_from
    }

    /// Rows with days in `from..=to`, ascending.
    pub fn range(&self, from: Day, to: Day) -> impl Iterator<Item = (Day, &T)> {
        self.rows
            .iter()
            .enumerate()
            .map(move |(i, r)| (self.base + i as Day, r))
            .filter(move |(d, _)| *d >= from && *d <= to)
    }
}

/// `v` with at least `n` counts (the new ones 0): a day row's counts are
/// allocated when first moved.
pub fn ensure_len(v: &mut Vec<i64>, n: usize) -> &mut Vec<i64> {
    if v.len() < n {
        v.resize(n, 0);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_byte_days_cover_every_event_day() {
        let last = crate::event::END_TS_MS / 86_400_000 + 1;
        for day in [NO_DAY, -1, 0, 20_660, last as Day] {
            assert_eq!(Day16::pack(day).unpack(), day);
        }
        assert_eq!(Day16::default().unpack(), NO_DAY);
    }

    #[test]
    fn sets_insert_contains_and_windows() {
        for words in [4, 8] {
            let mut s = DaySets::new(words);
            s.push_empty();
            s.push_empty();
            assert!(!s.contains(0, 5));
            assert!(s.insert(0, 100));
            assert!(!s.insert(0, 100));
            assert!(s.insert(0, 90));
            assert!(s.insert(0, 101));
            assert!(s.contains(0, 90) && s.contains(0, 100) && s.contains(0, 101) && !s.contains(0, 95));
            assert_eq!(s.neighbors(0, 100), (Some(90), Some(101)));
            assert_eq!(s.neighbors(0, 90), (None, Some(100)));
            assert_eq!(s.neighbors(0, 101), (Some(100), None));
            assert_eq!(s.latest(0), Some(101));
            assert_eq!(s.latest(1), None, "the other user's set is untouched");
            let span = 16 * words as Day;
            // The oldest day the span holds, and one past it.
            assert!(s.insert(1, 1000));
            assert!(s.insert(1, 1000 - span + 1));
            assert!(!s.insert(1, 1000 - span));
            assert_eq!(s.neighbors(1, 1000), (Some(1000 - span + 1), None));
            assert!(s.insert(1, 1001));
            assert!(!s.contains(1, 1000 - span + 1));
            assert!(s.insert(0, 101 + 200));
            assert!(!s.contains(0, 101));
            assert!(!s.insert(0, 101));
        }
    }

    #[test]
    fn widths_follow_the_history() {
        assert_eq!(DaySets::for_history(32).words(), 4);
        assert_eq!(DaySets::for_history(33).words(), 8);
        assert!(DaySets::from_cells(4, vec![0; 10]).is_some());
        assert!(DaySets::from_cells(4, vec![0; 11]).is_none());
        assert!(DaySets::from_cells(5, vec![0; 12]).is_none());
    }

    #[test]
    fn days_are_counted_in_a_range() {
        let mut sets = DaySets::new(4);
        sets.push_empty();
        for d in [100, 102, 103, 110] {
            sets.insert(0, d);
        }
        assert_eq!(sets.count_in(0, 100, 110), 4);
        assert_eq!(sets.count_in(0, 101, 103), 2);
        assert_eq!(sets.count_in(0, 104, 109), 0);
        assert_eq!(sets.count_in(0, 90, 200), 4);
        assert_eq!(sets.count_in(0, 111, 120), 0);
        assert_eq!(sets.count_in(0, 103, 102), 0);
    }

    #[test]
    fn window_counts_equal_counts_in_each_window() {
        for words in [4, 8] {
            let mut sets = DaySets::new(words);
            sets.push_empty();
            sets.push_empty();
            for d in [100, 102, 103, 110, 129, 130, 160] {
                sets.insert(0, d);
            }
            let mut out = [0u32; 40];
            for window in [1u32, 7, 30] {
                for first_end in [40, 95, 100, 105, 128, 150, 161, 200] {
                    sets.window_counts(0, first_end, 40, window, &mut out);
                    for (i, &k) in out.iter().enumerate() {
                        let end = first_end + i as Day;
                        assert_eq!(k, sets.count_in(0, end - window as Day + 1, end), "{words} {window} {end}");
                    }
                    sets.window_counts(1, first_end, 40, window, &mut out);
                    assert!(out.iter().all(|&k| k == 0));
                }
            }
        }
    }

    #[test]
    fn rows_are_dropped_for_good() {
        let mut r: DayRows<u32> = DayRows::default();
        *r.row(1).expect("kept") += 1;
        *r.row(5).expect("kept") += 1;
        assert_eq!(r.range(0, 10).count(), 5);
        assert_eq!(r.get(3), Some(&0));
        r.drop_before(3);
        assert!(r.row(2).is_none());
        assert_eq!(r.range(0, 10).map(|(d, _)| d).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(r.get(5), Some(&1));
        *r.row(8).expect("kept") += 2;
        assert_eq!(r.range(7, 8).collect::<Vec<_>>(), vec![(7, &0), (8, &2)]);
    }
}
