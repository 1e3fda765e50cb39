//! Business days: calendar dates in the configured IANA time zone.
//!
//! A [`Day`] is the number of days from 1970-01-01 to the civil date, so
//! consecutive dates are consecutive numbers whatever the zone's offsets.
//! The zone arithmetic is jiff's; this module only caches the bounds of a
//! few days, since nearly every event falls on the day of the one before it,
//! and a funnel event also asks for the day before.

use std::cell::Cell;

use jiff::Timestamp;
use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;

/// A business day: days since 1970-01-01 of the civil date in the zone.
pub type Day = i32;

/// Days whose bounds a [`Calendar`] remembers.
const SLOTS: usize = 4;

/// Maps timestamps to business days and back.
#[derive(Debug, Clone)]
pub struct Calendar {
    tz: TimeZone,
    /// Bounds of recent days, each in the slot of its day modulo
    /// [`SLOTS`]: (start ms, end ms, day); empty while end ≤ start. A cache
    /// only.
    days: [Cell<(i64, i64, Day)>; SLOTS],
    /// The slot [`Calendar::day_of`] answered from last.
    last: Cell<usize>,
}

fn slot(day: Day) -> usize {
    day.rem_euclid(SLOTS as Day) as usize
}

const UNIX_EPOCH_DATE: Date = jiff::civil::date(1970, 1, 1);

impl Calendar {
    /// A calendar in `tz`.
    pub fn new(tz: TimeZone) -> Self {
        Calendar { tz, days: Default::default(), last: Cell::new(0) }
    }

    /// The business day of an event time (epoch ms within [1970, 2100)).
    pub fn day_of(&self, ts_ms: i64) -> Day {
        let (start, end, last) = self.days[self.last.get()].get();
        if ts_ms >= start && ts_ms < end {
            return last;
        }
        // The days either side of the last one.
        for day in [last - 1, last + 1] {
            let (start, end, cached) = self.days[slot(day)].get();
            if cached == day && ts_ms >= start && ts_ms < end {
                self.last.set(slot(day));
                return day;
            }
        }
        let day = match Timestamp::from_millisecond(ts_ms) {
            Ok(ts) => {
                let date = ts.to_zoned(self.tz.clone()).date();
                day_number(date)
            }
            // Out of jiff's range: cannot happen for validated events.
            Err(_) => (ts_ms.div_euclid(86_400_000)) as Day,
        };
        self.bounds(day);
        self.last.set(slot(day));
        day
    }

    /// `[start, end)` of `day` in epoch ms; cached like [`Calendar::day_of`].
    pub fn bounds(&self, day: Day) -> (i64, i64) {
        let cell = &self.days[slot(day)];
        let (start, end, cached) = cell.get();
        if cached == day && end > start {
            return (start, end);
        }
        let bounds = (self.day_start_ms(day), self.day_start_ms(day + 1));
        cell.set((bounds.0, bounds.1, day));
        bounds
    }

    /// Epoch ms of the first instant of `day` in the zone.
    pub fn day_start_ms(&self, day: Day) -> i64 {
        let date = date_of(day);
        match date.to_zoned(self.tz.clone()) {
            Ok(z) => z.timestamp().as_millisecond(),
            Err(_) => i64::from(day) * 86_400_000,
        }
    }

    /// The civil date of `day`, formatted `YYYY-MM-DD`.
    pub fn label(day: Day) -> String {
        date_of(day).to_string()
    }
}

/// Days from 1970-01-01 to `date`.
pub fn day_number(date: Date) -> Day {
    (date - UNIX_EPOCH_DATE).get_days()
}

/// The civil date of a day number.
pub fn date_of(day: Day) -> Date {
    // Out of jiff's range (Day::MIN, say, the lower bound of a view of
    // every row): the epoch, before which no event is accepted.
    jiff::Span::new()
        .try_days(i64::from(day))
        .ok()
        .and_then(|span| UNIX_EPOCH_DATE.checked_add(span).ok())
        .unwrap_or(UNIX_EPOCH_DATE)
}

/// The first day of the calendar week that holds `day`, weeks starting on
/// `start`.
pub fn week_of(day: Day, start: Weekday) -> Day {
    // 1970-01-01 was a Thursday: 3 days after a Monday.
    let from_monday = (day + 3).rem_euclid(7);
    day.saturating_sub((from_monday - Day::from(start.to_monday_zero_offset())).rem_euclid(7))
}

/// The first day of the calendar month that holds `day`, and the first
/// day of the next.
pub fn month_of(day: Day) -> (Day, Day) {
    let date = date_of(day);
    (day_number(date.first_of_month()), day_number(date.last_of_month()) + 1)
}

/// The first day of the month `k` months after the one starting on
/// `month` (a month's first day).
pub fn add_months(month: Day, k: u32) -> Day {
    let span = jiff::Span::new().try_months(i64::from(k)).ok();
    span.and_then(|s| date_of(month).checked_add(s).ok()).map_or(Day::MAX, day_number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weeks_and_months_start_where_the_calendar_says() {
        let day = |y, m, d| day_number(jiff::civil::date(y, m, d));
        // 2026-12-06 is a Sunday.
        assert_eq!(week_of(day(2026, 12, 6), Weekday::Monday), day(2026, 11, 30));
        assert_eq!(week_of(day(2026, 12, 6), Weekday::Sunday), day(2026, 12, 6));
        assert_eq!(week_of(day(2026, 12, 5), Weekday::Sunday), day(2026, 11, 29));
        assert_eq!(week_of(day(1970, 1, 1), Weekday::Thursday), day(1970, 1, 1));
        assert_eq!(week_of(day(1969, 12, 31), Weekday::Monday), day(1969, 12, 29));
        for d in day(2024, 1, 1)..day(2025, 1, 1) {
            let w = week_of(d, Weekday::Tuesday);
            assert!(w <= d && d - w < 7 && date_of(w).weekday() == Weekday::Tuesday);
        }
        assert_eq!(month_of(day(2024, 2, 29)), (day(2024, 2, 1), day(2024, 3, 1)));
        assert_eq!(month_of(day(2026, 12, 31)), (day(2026, 12, 1), day(2027, 1, 1)));
        assert_eq!(add_months(day(2026, 11, 1), 0), day(2026, 11, 1));
        assert_eq!(add_months(day(2026, 11, 1), 3), day(2027, 2, 1));
        assert_eq!(add_months(day(2024, 1, 1), 1), day(2024, 2, 1));
    }

    #[test]
    fn days_follow_the_zone() {
        let utc = Calendar::new(TimeZone::UTC);
        let sh = Calendar::new(TimeZone::get("Asia/Shanghai").expect("zone"));
        // 2026-11-20T20:00:00Z is 2026-11-21 04:00 in Shanghai.
        let ts = 1_795_204_800_000;
        assert_eq!(Calendar::label(utc.day_of(ts)), "2026-11-20");
        assert_eq!(Calendar::label(sh.day_of(ts)), "2026-11-21");
        assert_eq!(sh.day_of(ts), utc.day_of(ts) + 1);
        // Shanghai's 2026-11-21 starts at 2026-11-20T16:00:00Z.
        assert_eq!(sh.day_start_ms(sh.day_of(ts)), 1_795_190_400_000);
        assert_eq!(utc.day_of(0), 0);
        assert_eq!(utc.day_of(86_399_999), 0);
        assert_eq!(utc.day_of(86_400_000), 1);
    }

    #[test]
    fn cached_days_answer_like_fresh_ones() {
        // Lookups jumping between nearby and distant days, in a zone with a
        // DST change, against a calendar that has seen nothing yet.
        let zone = TimeZone::get("America/New_York").expect("zone");
        let cal = Calendar::new(zone.clone());
        let base = 1_793_000_000_000i64; // late October 2026
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let hours = if rng.is_multiple_of(24) { 24 * 400 } else { 24 * 12 };
            let ts = base + (rng >> 8) as i64 % (hours * 3_600_000);
            let fresh = Calendar::new(zone.clone());
            let day = cal.day_of(ts);
            assert_eq!(day, fresh.day_of(ts), "{ts}");
            assert_eq!(cal.bounds(day - 1), (fresh.day_start_ms(day - 1), fresh.day_start_ms(day)));
            assert_eq!(cal.bounds(day), (fresh.day_start_ms(day), fresh.day_start_ms(day + 1)));
        }
    }

    #[test]
    fn dst_days_are_23_and_25_hours() {
        let ny = Calendar::new(TimeZone::get("America/New_York").expect("zone"));
        let d = day_number(jiff::civil::date(2026, 3, 8));
        assert_eq!(ny.day_start_ms(d + 1) - ny.day_start_ms(d), 23 * 3_600_000);
        let d = day_number(jiff::civil::date(2026, 11, 1));
        assert_eq!(ny.day_start_ms(d + 1) - ny.day_start_ms(d), 25 * 3_600_000);
        let start = ny.day_start_ms(d);
        assert_eq!(ny.day_of(start - 1), d - 1);
        assert_eq!(ny.day_of(start), d);
        assert_eq!(ny.day_of(start + 25 * 3_600_000 - 1), d);
    }
}
