//! Activity: new users, and users active in a day, in the 7 days and in
//! the 30 days up to each day (DAU, WAU, MAU). Per-user state: none of its
//! own; it reads the users' first-seen and active days.

use std::io::Write;

use serde::{Deserialize, Serialize};

use super::StateMismatch;
use super::calendar::{Calendar, Day};
use super::days::{DayRows, NO_DAY};
use super::family::{Columns, Ctx, Family, Horizon, Touch, View};
use super::figures::{ActivityRow, Figures};
use super::users::Users;

/// The longest activity window (MAU).
pub const MAU_DAYS: i32 = 30;
const WAU_DAYS: i32 = 7;

/// One day's activity counts (signed: a late event moves a user between
/// days, and a row may go below its final value in between).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ActivityCounts {
    new_users: i64,
    dau: i64,
    wau: i64,
    mau: i64,
}

/// The activity family: a row of counts per day.
#[derive(Debug, Clone, Default)]
pub struct Activity {
    rows: DayRows<ActivityCounts>,
}

impl Family for Activity {
    fn new(_: Ctx<'_>) -> Self {
        Activity::default()
    }

    fn push_user(&mut self) {}

    fn record(&mut self, _: Ctx<'_>, users: &Users, t: &Touch<'_>) {
        let (day, old_first) = (t.day, t.old_first);
        if old_first == NO_DAY || day < old_first {
            if old_first != NO_DAY
                && let Some(row) = self.rows.row(old_first)
            {
                row.new_users -= 1;
            }
            if let Some(row) = self.rows.row(day) {
                row.new_users += 1;
            }
        }
        if !t.newly_active {
            return;
        }
        if let Some(row) = self.rows.row(day) {
            row.dau += 1;
        }
        // Day d's window newly holds the user iff no other active day
        // falls in it: d after prev + window - 1 and before next.
        let (prev, next) = users.active().neighbors(t.uid as usize, day);
        let until = next.unwrap_or(Day::MAX);
        for (window, is_mau) in [(WAU_DAYS, false), (MAU_DAYS, true)] {
            let from = prev.map_or(day, |p| day.max(p + window));
            for d in from..(day + window).min(until) {
                if let Some(row) = self.rows.row(d) {
                    if is_mau {
                        row.mau += 1;
                    } else {
                        row.wau += 1;
                    }
                }
            }
        }
    }

    fn maintain(&mut self, _: Ctx<'_>, horizon: Horizon) {
        self.rows.drop_before(horizon.keep_from);
    }

    fn reach_days(&self, _: Ctx<'_>) -> i32 {
        MAU_DAYS
    }

    fn publish(&self, _: Ctx<'_>, view: View, out: &mut Figures) {
        for (d, row) in self.rows.range(view.from, view.to).filter(|(_, r)| r.mau > 0) {
            out.activity.push(ActivityRow {
                date: Calendar::label(d),
                new_users: row.new_users.max(0) as u64,
                dau: row.dau.max(0) as u64,
                wau: row.wau.max(0) as u64,
                mau: row.mau.max(0) as u64,
            });
        }
    }

    fn heap_bytes(&self) -> usize {
        0
    }

    fn write_head(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_stdvec(&self.rows)
    }

    fn write_columns(&self, _: &mut dyn Write) -> std::io::Result<()> {
        Ok(())
    }

    fn read_head(&mut self, _: Ctx<'_>, head: &[u8], _: u64) -> Result<u64, StateMismatch> {
        self.rows = postcard::from_bytes(head).map_err(|e| StateMismatch::new(format!("activity: {e}")))?;
        Ok(0)
    }

    fn read_columns(&mut self, _: Ctx<'_>, _: &mut Columns<'_>) -> Result<(), StateMismatch> {
        Ok(())
    }
}

/// Keeps the rows of merged figures in the export window.
pub fn rewindow(out: &mut Figures, in_window: impl Fn(&str) -> bool) {
    out.activity.retain(|r| in_window(&r.date));
}
