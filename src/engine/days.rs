//! Per-user sets of active days and per-day counter rows.

use std::collections::BTreeMap;

use super::calendar::Day;

/// A "no day" marker for day fields stored per user.
pub const NO_DAY: Day = Day::MIN;

/// How many days a [`DayBits`] remembers, counted back from its latest day.
/// Config validation keeps the horizon (≤ 90 days), a 30-day MAU window
/// behind it and the lateness inside this span, so no day that can still
/// change a figure falls off the end.
pub const SPAN: i32 = 128;

/// The set of days on which a user did something, as a bitmap anchored at
/// the latest such day: bit k is set when the user was active on `last - k`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayBits {
    last: Day,
    bits: u128,
}

impl Default for DayBits {
    fn default() -> Self {
        DayBits {
            last: NO_DAY,
            bits: 0,
        }
    }
}

impl DayBits {
    /// Adds `day`; true when it was not there before.
    pub fn insert(&mut self, day: Day) -> bool {
        if self.last == NO_DAY {
            *self = DayBits { last: day, bits: 1 };
            return true;
        }
        if day > self.last {
            let shift = day - self.last;
            self.bits = if shift >= SPAN { 0 } else { self.bits << shift };
            self.bits |= 1;
            self.last = day;
            return true;
        }
        let k = self.last - day;
        if k >= SPAN {
            // Older than anything that can still change a figure.
            return false;
        }
        let mask = 1u128 << k;
        let fresh = self.bits & mask == 0;
        self.bits |= mask;
        fresh
    }

    /// Whether `day` is in the set.
    pub fn contains(&self, day: Day) -> bool {
        if self.last == NO_DAY || day > self.last {
            return false;
        }
        let k = self.last - day;
        k < SPAN && self.bits & (1u128 << k) != 0
    }

    /// Whether any day in `from..=to` other than `except` is in the set.
    pub fn any_in_except(&self, from: Day, to: Day, except: Day) -> bool {
        if self.last == NO_DAY || to < from {
            return false;
        }
        let to = to.min(self.last);
        if to < from {
            return false;
        }
        // Bits for days to..=from are k = last-to ..= last-from.
        let lo = self.last - to;
        let hi = (self.last - from).min(SPAN - 1);
        if lo > hi {
            return false;
        }
        let width = hi - lo + 1;
        let window = if width >= SPAN {
            u128::MAX
        } else {
            ((1u128 << width) - 1) << lo
        };
        let mut bits = self.bits & window;
        if except <= self.last && self.last - except < SPAN {
            bits &= !(1u128 << (self.last - except));
        }
        bits != 0
    }

    /// The latest day in the set, if any.
    pub fn latest(&self) -> Option<Day> {
        (self.last != NO_DAY).then_some(self.last)
    }
}

/// Counter rows per business day, kept from a moving first day on.
#[derive(Debug, Clone)]
pub struct DayRows<T> {
    rows: BTreeMap<Day, T>,
    keep_from: Day,
}

impl<T: Default> Default for DayRows<T> {
    fn default() -> Self {
        DayRows {
            rows: BTreeMap::new(),
            keep_from: Day::MIN,
        }
    }
}

impl<T: Default> DayRows<T> {
    /// The row of `day`, created on first use; `None` for a day already
    /// dropped (nothing exported reads it any more).
    pub fn row(&mut self, day: Day) -> Option<&mut T> {
        if day < self.keep_from {
            return None;
        }
        Some(self.rows.entry(day).or_default())
    }

    /// The row of `day`, if it exists.
    pub fn get(&self, day: Day) -> Option<&T> {
        self.rows.get(&day)
    }

    /// Drops rows before `day`; they will not be recreated.
    pub fn drop_before(&mut self, day: Day) {
        if day > self.keep_from {
            self.keep_from = day;
            self.rows = self.rows.split_off(&day);
        }
    }

    /// Rows with days in `from..=to`, ascending.
    pub fn range(&self, from: Day, to: Day) -> impl Iterator<Item = (Day, &T)> {
        self.rows.range(from..=to).map(|(d, r)| (*d, r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_insert_contains_and_windows() {
        let mut b = DayBits::default();
        assert!(!b.contains(5));
        assert!(b.insert(100));
        assert!(!b.insert(100));
        assert!(b.insert(90));
        assert!(b.insert(101));
        assert!(b.contains(90) && b.contains(100) && b.contains(101) && !b.contains(95));
        assert!(b.any_in_except(95, 100, 101));
        assert!(!b.any_in_except(91, 99, 0));
        assert!(!b.any_in_except(100, 100, 100));
        assert!(b.any_in_except(0, 1000, 101));
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
        r.drop_before(3);
        assert!(r.row(2).is_none());
        assert_eq!(r.range(0, 10).count(), 1);
    }
}
