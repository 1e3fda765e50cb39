//! Activity: new and known users, users active in a day, in the 7 and 30
//! days up to each day (DAU, WAU, MAU) and in each calendar week and
//! month, and the lifecycle of each day, week and month. Per-user state:
//! none of its own; it reads the users' first-seen and active days.
//!
//! Every count moves when a user gains an active day, from that day's
//! nearest other active days alone, so arrival order changes none. A user
//! newly active in a period (day, week, month) counts once for it; the
//! lifecycle needs only one more count per period, the users active in it
//! and in the period before (`returning`): new users are the period's
//! first-seen ones, the resurrecting the rest of its active users, and the
//! dormant the active users of the period before who did not return.
//! Every neighbour it looks for is within the active days a user's set
//! remembers (a month back from the oldest day an event may still have);
//! the monthly lifecycle looks two months back, which the sets remember
//! for some histories only ([`monthly_lifecycle`]).

use std::io::Write;

use jiff::civil::Weekday;
use serde::{Deserialize, Serialize};

use super::StateMismatch;
use super::breakdown::{Move, SplitRows};
use super::calendar::{Calendar, Day, month_of, week_of};
use super::days::{DayRows, NO_DAY, ensure_len};
use super::family::{Columns, Ctx, Family, Horizon, Touch, View};
use super::figures::{ActivityRow, Figures, LifecycleRow, PeriodRow, SplitActivityRow, StickinessRow, StickinessTable};
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
    /// Users active on this day and the day before.
    returning: i64,
}

/// One calendar week's or month's counts, in the row of its first day.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeriodCounts {
    /// Users first seen in the period (months: with the monthly lifecycle).
    new_users: i64,
    active: i64,
    /// Users active in this period and the one before (months: with the
    /// monthly lifecycle).
    returning: i64,
}

/// Whether the monthly lifecycle is counted with `history_days`: whether a
/// user gaining an active day still remembers the month before that day's
/// month, up to 62 days back from a day up to `history_days + 2` days
/// before their latest one. The active-day sets span 128 days from a
/// history of 33 days on, 64 below (see `engine::days::DaySets`): so from
/// 33 to 64 days, the default 35 included.
pub fn monthly_lifecycle(history_days: u32) -> bool {
    let span = 16 * super::days::DaySets::for_history(history_days).words() as u32;
    history_days + 2 + 62 <= span
}

/// The activity family: a row of counts per day, per week and per month.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Activity {
    rows: DayRows<ActivityCounts>,
    weeks: DayRows<PeriodCounts>,
    months: DayRows<PeriodCounts>,
    /// New users of the day rows dropped: the known users before the
    /// first row.
    known_before: i64,
    /// Per stickiness window (as configured), per day: `[k - 1]` the users
    /// active on exactly k days of the window ending on it.
    sticky: Vec<DayRows<Vec<i64>>>,
    /// The bounds of the month last asked for: nearly every event falls in
    /// the month of the one before it. A cache only.
    #[serde(skip)]
    month: (Day, Day),
    /// Whether the monthly lifecycle is counted (from the config).
    #[serde(skip)]
    monthly: bool,
    /// Per activity breakdown, per day and value: new users, DAU, WAU,
    /// MAU.
    by: Vec<SplitRows>,
}

/// Where a split row keeps each count.
const NEW: usize = 0;
const DAU: usize = 1;
const WAU: usize = 2;
const MAU: usize = 3;

/// The lifecycle row of a period from its counts and those of the period
/// before.
fn lifecycle(date: Day, new: i64, active: i64, returning: i64, active_before: i64) -> LifecycleRow {
    LifecycleRow {
        date: Calendar::label(date),
        new: new.max(0) as u64,
        returning: returning.max(0) as u64,
        resurrecting: (active - new - returning).max(0) as u64,
        dormant: (active_before - returning).max(0) as u64,
    }
}

impl Activity {
    /// The first day of the month holding `day`, and of the next.
    fn month_of(&mut self, day: Day) -> (Day, Day) {
        if day < self.month.0 || day >= self.month.1 {
            self.month = month_of(day);
        }
        self.month
    }

    /// Adds `delta` to count `at` of `day` in the rows of the user's
    /// values (`labels`).
    fn split(&mut self, labels: &[u8], day: Day, at: usize, delta: i64) {
        for split in &mut self.by {
            if let Some(row) = split.row(day, labels[split.breakdown]) {
                row[at] += delta;
            }
        }
    }

    /// A user's first-seen day moves from `old` (or [`NO_DAY`]) to `day`.
    fn first_seen(&mut self, week_start: Weekday, old: Day, day: Day, labels: &[u8]) {
        if !self.by.is_empty() {
            if old != NO_DAY {
                self.split(labels, old, NEW, -1);
            }
            self.split(labels, day, NEW, 1);
        }
        if old != NO_DAY {
            if let Some(row) = self.rows.row(old) {
                row.new_users -= 1;
            }
            if let Some(row) = self.weeks.row(week_of(old, week_start)) {
                row.new_users -= 1;
            }
            if self.monthly {
                let month = self.month_of(old).0;
                if let Some(row) = self.months.row(month) {
                    row.new_users -= 1;
                }
            }
        }
        if let Some(row) = self.rows.row(day) {
            row.new_users += 1;
        }
        if let Some(row) = self.weeks.row(week_of(day, week_start)) {
            row.new_users += 1;
        }
        if self.monthly {
            let month = self.month_of(day).0;
            if let Some(row) = self.months.row(month) {
                row.new_users += 1;
            }
        }
    }

    /// A user's active day `day` is new; `prev` and `next` are their
    /// nearest other active days.
    fn calendar_periods(&mut self, week_start: Weekday, day: Day, prev: Option<Day>, next: Option<Day>) {
        let week = week_of(day, week_start);
        if prev.is_none_or(|p| p < week) && next.is_none_or(|n| n >= week + 7) {
            if let Some(row) = self.weeks.row(week) {
                row.active += 1;
                if prev.is_some_and(|p| p >= week - 7) {
                    row.returning += 1;
                }
            }
            if next.is_some_and(|n| n < week + 14)
                && let Some(row) = self.weeks.row(week + 7)
            {
                row.returning += 1;
            }
        }
        let (month, next_month) = self.month_of(day);
        if prev.is_none_or(|p| p < month) && next.is_none_or(|n| n >= next_month) {
            // Newly active in the month: returning in it if active in the
            // one before, and in the next if active in that.
            let monthly = self.monthly;
            let returning = monthly && prev.is_some_and(|p| p >= month_of(month - 1).0);
            if let Some(row) = self.months.row(month) {
                row.active += 1;
                row.returning += i64::from(returning);
            }
            if monthly
                && next.is_some_and(|n| n < month_of(next_month).1)
                && let Some(row) = self.months.row(next_month)
            {
                row.returning += 1;
            }
        }
    }
}

impl Family for Activity {
    fn new(ctx: Ctx<'_>) -> Self {
        Activity {
            sticky: ctx.cfg.stickiness_windows.iter().map(|_| DayRows::default()).collect(),
            monthly: monthly_lifecycle(ctx.cfg.history_days),
            by: ctx.cfg.activity_breakdowns.iter().map(|&b| SplitRows::new(b, &ctx.cfg.breakdowns[b], 4)).collect(),
            ..Activity::default()
        }
    }

    fn relabel(&mut self, _: Ctx<'_>, users: &Users, uid: u32, change: Move) {
        let u = uid as usize;
        let first = users.first_seen(uid);
        for split in self.by.iter_mut().filter(|s| s.breakdown == change.breakdown) {
            split.shift(first, change, &[1, 0, 0, 0]);
            for d in split.days() {
                let active = |window: i32| i64::from(users.active().count_in(u, d - window + 1, d) > 0);
                let counts = [0, active(1), active(WAU_DAYS), active(MAU_DAYS)];
                if counts != [0; 4] {
                    split.shift(d, change, &counts);
                }
            }
        }
    }

    fn push_user(&mut self) {}

    fn record(&mut self, ctx: Ctx<'_>, users: &Users, t: &Touch<'_>) {
        let (day, old_first) = (t.day, t.old_first);
        if old_first == NO_DAY || day < old_first {
            self.first_seen(ctx.cfg.week_start, old_first, day, t.labels);
        }
        if !t.newly_active {
            return;
        }
        // Day d's window newly holds the user iff no other active day
        // falls in it: d after prev + window - 1 and before next.
        let (prev, next) = users.active().neighbors(t.uid as usize, day);
        if let Some(row) = self.rows.row(day) {
            row.dau += 1;
            if prev == Some(day - 1) {
                row.returning += 1;
            }
        }
        if next == Some(day + 1)
            && let Some(row) = self.rows.row(day + 1)
        {
            row.returning += 1;
        }
        let until = next.unwrap_or(Day::MAX);
        let mut windows = [(WAU, day..day), (MAU, day..day)];
        for ((window, is_mau), (_, days)) in [(WAU_DAYS, false), (MAU_DAYS, true)].into_iter().zip(&mut windows) {
            let from = prev.map_or(day, |p| day.max(p + window));
            *days = from..(day + window).min(until);
            for d in days.clone() {
                if let Some(row) = self.rows.row(d) {
                    if is_mau {
                        row.mau += 1;
                    } else {
                        row.wau += 1;
                    }
                }
            }
        }
        // The same for the user's values, apart: no cost without breakdowns.
        if !self.by.is_empty() {
            self.split(t.labels, day, DAU, 1);
            for (at, days) in windows {
                for d in days {
                    self.split(t.labels, d, at, 1);
                }
            }
        }
        self.calendar_periods(ctx.cfg.week_start, day, prev, next);
        // Each window that holds the new day has the user on one day more:
        // the counts of the windows ending on day .. day + window - 1, from
        // one read of the user's days.
        let mut counts = [0u32; MAU_DAYS as usize];
        for (rows, &window) in self.sticky.iter_mut().zip(&ctx.cfg.stickiness_windows) {
            let n = window as usize;
            users.active().window_counts(t.uid as usize, day, n, window, &mut counts);
            for (i, &k) in counts[..n].iter().enumerate() {
                let k = k as usize;
                if let Some(row) = rows.row(day + i as Day) {
                    let row = ensure_len(row, n);
                    if k >= 2 {
                        row[k - 2] -= 1;
                    }
                    row[k - 1] += 1;
                }
            }
        }
    }

    fn maintain(&mut self, ctx: Ctx<'_>, horizon: Horizon) {
        let from = horizon.keep_from;
        if from > self.rows.kept_from() {
            self.known_before += self.rows.range(Day::MIN, from - 1).map(|(_, r)| r.new_users).sum::<i64>();
        }
        self.rows.drop_before(from);
        self.by.iter_mut().for_each(|split| split.drop_before(from));
        for rows in &mut self.sticky {
            rows.drop_before(from);
        }
        // A period's row is complete once its days are gone, and the
        // lifecycle of the first period kept reads the one before it.
        self.weeks.drop_before(week_of(from, ctx.cfg.week_start).saturating_sub(7));
        self.months.drop_before(month_of(month_of(from).0.saturating_sub(1)).0);
    }

    fn reach_days(&self, _: Ctx<'_>) -> i32 {
        MAU_DAYS
    }

    fn publish(&self, ctx: Ctx<'_>, view: View, out: &mut Figures) {
        out.activity_breakdowns = self
            .by
            .iter()
            .map(|split| {
                split.publish(&ctx.cfg.breakdowns[split.breakdown], view.from, view.to, |d, c| {
                    (c[MAU] > 0).then(|| SplitActivityRow {
                        date: Calendar::label(d),
                        new_users: c[NEW],
                        dau: c[DAU],
                        wau: c[WAU],
                        mau: c[MAU],
                    })
                })
            })
            .collect();
        out.stickiness =
            ctx.cfg.stickiness_windows.iter().map(|&window| StickinessTable { window, rows: Vec::new() }).collect();
        let mut known = self.known_before;
        let day_lifecycle_from = self.rows.kept_from().saturating_add(1);
        for (d, row) in self.rows.range(Day::MIN, view.to) {
            known += row.new_users;
            if d < view.from || row.mau <= 0 {
                continue;
            }
            out.activity.push(ActivityRow {
                date: Calendar::label(d),
                new_users: row.new_users.max(0) as u64,
                dau: row.dau.max(0) as u64,
                wau: row.wau.max(0) as u64,
                mau: row.mau.max(0) as u64,
                known_users: known.max(0) as u64,
            });
            for (table, (rows, &window)) in
                out.stickiness.iter_mut().zip(self.sticky.iter().zip(&ctx.cfg.stickiness_windows))
            {
                let counts = rows.get(d).map_or(&[][..], Vec::as_slice);
                let users = (0..window as usize).map(|k| counts.get(k).map_or(0, |&n| n.max(0) as u64)).collect();
                table.rows.push(StickinessRow { date: Calendar::label(d), users });
            }
            if d >= day_lifecycle_from {
                let before = self.rows.get(d - 1).map_or(0, |r| r.dau);
                out.lifecycle.day.push(lifecycle(d, row.new_users, row.dau, row.returning, before));
            }
        }
        let week_start = ctx.cfg.week_start;
        let week_lifecycle_from = self.weeks.kept_from().saturating_add(7);
        // Week by week from the first one held, up to the week after the
        // last (its dormant users).
        let first = self.weeks.range(week_of(view.from, week_start), view.to).next().map(|(d, _)| {
            let week = week_of(d, week_start);
            if week < d { week + 7 } else { week }
        });
        let mut week = first.unwrap_or(Day::MAX);
        while week <= view.to {
            let none = PeriodCounts::default();
            let row = self.weeks.get(week).unwrap_or(&none);
            let before = self.weeks.get(week - 7).map_or(0, |r| r.active);
            if row.active > 0 {
                out.weeks.push(PeriodRow { date: Calendar::label(week), active_users: row.active as u64 });
            }
            if week >= week_lifecycle_from && (row.active > 0 || before > 0) {
                out.lifecycle.week.push(lifecycle(week, row.new_users, row.active, row.returning, before));
            }
            if row.active <= 0 && before <= 0 && self.weeks.get(week).is_none() {
                break;
            }
            week = week.saturating_add(7);
        }
        for (m, row) in self.months.range(month_of(view.from).0, view.to) {
            if row.active > 0 {
                out.months.push(PeriodRow { date: Calendar::label(m), active_users: row.active as u64 });
            }
        }
        if self.monthly {
            // Month by month from the first one held, up to the month
            // after the last (its dormant users); the first month kept
            // after rows were dropped lacks the one before.
            let kept = self.months.kept_from();
            let lifecycle_from = if kept == Day::MIN { Day::MIN } else { month_of(kept).1 };
            let first = self.months.range(month_of(view.from).0, view.to).next().map(|(d, _)| d);
            let mut month = first.map_or(Day::MAX, |d| month_of(d).0);
            while month <= view.to {
                let none = PeriodCounts::default();
                let row = self.months.get(month).unwrap_or(&none);
                let (before, next) = (month_of(month - 1).0, month_of(month).1);
                let active_before = self.months.get(before).map_or(0, |r| r.active);
                if month >= lifecycle_from && (row.active > 0 || active_before > 0) {
                    out.lifecycle.month.push(lifecycle(month, row.new_users, row.active, row.returning, active_before));
                }
                if row.active <= 0 && active_before <= 0 && self.months.get(month).is_none() {
                    break;
                }
                month = next;
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        0
    }

    fn write_head(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_stdvec(self)
    }

    fn write_columns(&self, _: &mut dyn Write) -> std::io::Result<()> {
        Ok(())
    }

    fn read_head(&mut self, ctx: Ctx<'_>, head: &[u8], _: u64) -> Result<u64, StateMismatch> {
        let read: Activity = postcard::from_bytes(head).map_err(|e| StateMismatch::new(format!("activity: {e}")))?;
        if SplitRows::shape(&read.by) != SplitRows::shape(&self.by) {
            return Err(StateMismatch::new("the activity breakdowns differ"));
        }
        *self = read;
        self.monthly = monthly_lifecycle(ctx.cfg.history_days);
        Ok(0)
    }

    fn read_columns(&mut self, _: Ctx<'_>, _: &mut Columns<'_>) -> Result<(), StateMismatch> {
        Ok(())
    }
}

/// Keeps the rows of merged figures in the export window `from..=to`:
/// dated rows of its days, period rows of the periods that overlap it.
pub fn rewindow(out: &mut Figures, cfg: &crate::engine::def::EngineConfig, from: Day, to: Day) {
    let day = |date: &str| date.parse::<jiff::civil::Date>().map(super::calendar::day_number).ok();
    let in_days = |date: &str| day(date).is_some_and(|d| d >= from && d <= to);
    out.activity.retain(|r| in_days(&r.date));
    for split in &mut out.activity_breakdowns {
        split.values.iter_mut().for_each(|v| v.rows.retain(|r| in_days(&r.date)));
    }
    out.lifecycle.day.retain(|r| in_days(&r.date));
    for t in &mut out.stickiness {
        t.rows.retain(|r| in_days(&r.date));
    }
    let week = week_of(from, cfg.week_start);
    let in_weeks = |date: &str| day(date).is_some_and(|d| d >= week && d <= to);
    out.weeks.retain(|r| in_weeks(&r.date));
    out.lifecycle.week.retain(|r| in_weeks(&r.date));
    let month = month_of(from).0;
    let in_months = |date: &str| day(date).is_some_and(|d| d >= month && d <= to);
    out.months.retain(|r| in_months(&r.date));
    out.lifecycle.month.retain(|r| in_months(&r.date));
}
