//! Where a retention definition's periods fall on the calendar: the day,
//! week or month holding a cohort day, and the days of periods N after it.

use super::super::calendar::{Day, add_months, month_of, week_of};
use super::super::def::{Bracket, Granularity};

/// How a definition's periods fall on the calendar.
#[derive(Debug, Clone, Copy)]
pub(super) struct Periods {
    pub(super) granularity: Granularity,
    pub(super) week_start: jiff::civil::Weekday,
}

impl Periods {
    /// The first day of the period holding `day`.
    pub(super) fn start(self, day: Day) -> Day {
        match self.granularity {
            Granularity::Day => day,
            Granularity::Week => week_of(day, self.week_start),
            Granularity::Month => month_of(day).0,
        }
    }

    /// The first and last day of periods `b.from..=b.to` after the one
    /// holding `cohort`.
    pub(super) fn window(self, cohort: Day, b: Bracket) -> (Day, Day) {
        match self.granularity {
            Granularity::Day => (cohort + b.from as Day, cohort + b.to as Day),
            Granularity::Week => {
                let week = week_of(cohort, self.week_start);
                (week + 7 * b.from as Day, week + 7 * b.to as Day + 6)
            }
            Granularity::Month => {
                let month = month_of(cohort).0;
                (add_months(month, b.from), add_months(month, b.to + 1) - 1)
            }
        }
    }
}
