//! Per-user sets of active days and per-day counter rows.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::calendar::Day;

/// A "no day" marker for day fields stored per user.
pub const NO_DAY: Day = Day::MIN;

/// How many days a [`DayBits`] remembers, counted back from its latest day.
/// Config validation keeps the horizon (≤ 90 days), a 30-day MAU window
/// behind it and the lateness inside this span, so no day that can still
/// change a figure falls off the end.
pub const SPAN: i32 = 128;

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

/// The set of days on which a user did something, as a bitmap anchored at
/// the latest such day: bit k is set when the user was active on `last - k`.
/// The 128 bits are kept as eight 16-bit words, and the day in two bytes,
/// so that the set takes 18 bytes (a `u128` would align it, and the user
/// records holding it, to 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct DayBits {
    last: Day16,
    words: [u16; 8],
}

impl Default for DayBits {
    fn default() -> Self {
        DayBits { last: Day16::pack(NO_DAY), words: [0; 8] }
    }
}

impl DayBits {
    fn bits(&self) -> u128 {
        self.words.iter().rev().fold(0, |bits, &w| bits << 16 | u128::from(w))
    }

    fn set_bits(&mut self, bits: u128) {
        for (i, w) in self.words.iter_mut().enumerate() {
            *w = (bits >> (16 * i)) as u16;
        }
    }

    fn last(&self) -> Day {
        self.last.unpack()
    }

    /// Adds `day`; true when it was not there before.
    pub fn insert(&mut self, day: Day) -> bool {
        if self.last() == NO_DAY {
            self.last = Day16::pack(day);
            self.set_bits(1);
            return true;
        }
        if day > self.last() {
            let shift = day - self.last();
            let bits = if shift >= SPAN { 0 } else { self.bits() << shift };
            self.set_bits(bits | 1);
            self.last = Day16::pack(day);
            return true;
        }
        let k = self.last() - day;
        if k >= SPAN {
            // Older than anything that can still change a figure.
            return false;
        }
        let mask = 1u128 << k;
        let bits = self.bits();
        self.set_bits(bits | mask);
        bits & mask == 0
    }

    /// Whether `day` is in the set.
    pub fn contains(&self, day: Day) -> bool {
        if self.last() == NO_DAY || day > self.last() {
            return false;
        }
        let k = self.last() - day;
        k < SPAN && self.bits() & (1u128 << k) != 0
    }

    /// The nearest days in the set before and after `day` (which is in
    /// the set), found with two bit scans.
    pub fn neighbors(&self, day: Day) -> (Option<Day>, Option<Day>) {
        if self.last() == NO_DAY || day > self.last() || self.last() - day >= SPAN {
            return (None, None);
        }
        let k = (self.last() - day) as u32;
        let bits = self.bits();
        let earlier = if k + 1 >= SPAN as u32 { 0 } else { bits >> (k + 1) };
        let prev = (earlier != 0).then(|| self.last() - (k + 1 + earlier.trailing_zeros()) as Day);
        let later = bits & ((1u128 << k) - 1);
        let next = (later != 0).then(|| self.last() - (127 - later.leading_zeros()) as Day);
        (prev, next)
    }

    /// The latest day in the set, if any.
    pub fn latest(&self) -> Option<Day> {
        (self.last() != NO_DAY).then_some(self.last())
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

    /// Rows with days in `from..=to`, ascending.
    pub fn range(&self, from: Day, to: Day) -> impl Iterator<Item = (Day, &T)> {
        self.rows
            .iter()
            .enumerate()
            .map(move |(i, r)| (self.base + i as Day, r))
            .filter(move |(d, _)| *d >= from && *d <= to)
    }
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
        assert_eq!(std::mem::size_of::<DayBits>(), 18);
    }

    #[test]
    fn bits_insert_contains_and_windows() {
        let mut b = DayBits::default();
        assert!(!b.contains(5));
        assert!(b.insert(100));
        assert!(!b.insert(100));
        assert!(b.insert(90));
        assert!(b.insert(101));
        assert!(b.contains(90) && b.contains(100) && b.contains(101) && !b.contains(95));
        assert_eq!(b.neighbors(100), (Some(90), Some(101)));
        assert_eq!(b.neighbors(90), (None, Some(100)));
        assert_eq!(b.neighbors(101), (Some(100), None));
        assert_eq!(b.latest(), Some(101));
        assert!(b.insert(101 + 200));
        assert!(!b.contains(101));
        assert!(!b.insert(101));
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
