//! Retention: per cohort period (a business day, a calendar week or
//! month), the users whose first cohort event fell in it and those of them
//! who came back in (or from) period N, or in any period of a bracket
//! (`"8-14"`); with `rolling_24h`, in the N-th 24 hours after that first
//! event, by cohort day.
//!
//! Per user and definition it keeps no more than its mode needs: the
//! cohort day (unless the cohort is the first day seen, or an earlier
//! definition with the same cohort event holds it), and the return days
//! (none when any event returns: the active days serve; the latest one for
//! `on_or_after`; the set of them for `on`). `rolling_24h` keeps the time
//! of the first cohort event and, per 24 hours of event time since the
//! epoch in which the user returned, the first and last return: a window
//! of 24 hours or more holds at most one boundary in such a slice, so
//! these two times say whether a return fell in it.

use std::io::Write;

use serde::{Deserialize, Serialize};

use super::StateMismatch;
mod periods;
mod rolling;

use periods::Periods;
use rolling::{NO_TIME, ReturnTimes, SLICE_MS, Slice};

use super::breakdown::{Move, SplitRows};
use super::calendar::{Calendar, Day};
use super::days::{Day16, DayRows, DaySets, NO_DAY, ensure_len};
use super::def::{Bracket, EngineConfig, EventMatch, Granularity, RetentionDef, RetentionMode};
use super::family::{Columns, Ctx, Family, Horizon, Touch, View, column};
use super::figures::{CohortRow, Figures, RetentionTable};
use super::users::Users;

/// What an event name means to the retention definitions.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bits {
    /// Bit r: a cohort event of definition r.
    cohort: u64,
    /// Bit r: a return event of definition r.
    returns: u64,
}

impl Bits {
    /// Bit r: a cohort event of definition r.
    pub fn cohorts(&self) -> u64 {
        self.cohort
    }
}

/// The names the definitions match by name.
pub fn names(cfg: &EngineConfig) -> impl Iterator<Item = &str> {
    cfg.retention.iter().flat_map(|def| [&def.cohort_event, &def.return_event]).filter_map(|m| match m {
        EventMatch::Named(n) => Some(n.as_str()),
        EventMatch::Any => None,
    })
}

/// What events of `name` (`None`: a name no definition names) are to the
/// definitions.
pub fn classify(cfg: &EngineConfig, name: Option<&str>) -> Bits {
    let matches = |m: &EventMatch| match name {
        Some(n) => m.matches(n),
        None => *m == EventMatch::Any,
    };
    let mut bits = Bits::default();
    for (r, def) in cfg.retention.iter().enumerate() {
        bits.cohort |= u64::from(matches(&def.cohort_event)) << r;
        bits.returns |= u64::from(matches(&def.return_event)) << r;
    }
    bits
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CohortCounts {
    users: i64,
    retained: Vec<i64>,
}

#[derive(Debug, Clone)]
struct Definition {
    cohort: Cohort,
    returns: Returns,
    /// The cohort rows, by the first day of their period.
    rows: DayRows<CohortCounts>,
    periods: Periods,
    /// Days, each figure one day N: the direct paths.
    plain: bool,
    /// Return slices announced by a snapshot head, until the columns are
    /// read.
    slices: u64,
    /// The cohort rows split by each of the definition's breakdowns: per
    /// value, the cohort's size and then its retained users per figure.
    by: Vec<SplitRows>,
}

impl Definition {
    /// Adds `users` to the size of the cohort whose period starts on
    /// `start`, and `sign` to each of its figures set in `flags` (bit i:
    /// the i-th of `n`), in the total row and in the rows of the user's
    /// values (`labels`, per breakdown).
    fn add(&mut self, n: usize, start: Day, users: i64, flags: u128, sign: i64, labels: &[u8]) {
        if let Some(row) = self.rows.row(start) {
            row.users += users;
            for (i, cell) in ensure_len(&mut row.retained, n).iter_mut().enumerate() {
                *cell += sign * (flags >> i & 1) as i64;
            }
        }
        self.add_split(start, users, flags, sign, labels);
    }

    /// The same, in the rows of the user's values alone.
    fn add_split(&mut self, start: Day, users: i64, flags: u128, sign: i64, labels: &[u8]) {
        for split in &mut self.by {
            if let Some(row) = split.row(start, labels[split.breakdown]) {
                row[0] += users;
                for (i, cell) in row[1..].iter_mut().enumerate() {
                    *cell += sign * (flags >> i & 1) as i64;
                }
            }
        }
    }
}

/// Where a retention definition finds each user's cohort day.
#[derive(Debug, Clone)]
enum Cohort {
    /// Any event is a cohort event: the user's first day seen is the day.
    FirstSeen,
    /// Per user: the cohort day, or [`NO_DAY`].
    Own(Vec<Day16>),
    /// The column of an earlier definition with the same cohort event,
    /// which always holds the same days. Only that definition writes it.
    SameAs(usize),
    /// `rolling_24h`: per user the time of the first cohort event, or
    /// [`NO_TIME`].
    Time(Vec<i64>),
}

/// What a retention definition remembers of each user's return events.
#[derive(Debug, Clone)]
enum Returns {
    /// Any event returns: the user's active days serve.
    Active,
    /// `on_or_after`, which only ever asks for the latest return day: per
    /// user that day, or [`NO_DAY`].
    Latest(Vec<Day16>),
    /// `on`: per user the days with a return event.
    Days(DaySets),
    /// `rolling_24h`: per user the slices of time with a return event.
    Times(ReturnTimes),
}

/// The retention family: one state per `[[retention]]` definition.
#[derive(Debug, Clone, Default)]
pub struct Retention {
    defs: Vec<Definition>,
}

/// The snapshot head of one definition.
#[derive(Debug, Serialize, Deserialize)]
struct Head {
    /// Whether a cohort column follows (not when the cohort is the first
    /// day seen, or an earlier definition's column serves).
    cohort: bool,
    /// 0: no return column, 1: latest return days, 2: return day sets,
    /// 3: first cohort times and return slices.
    returns: u8,
    /// With `returns = 3`: the return slices of all users together.
    slices: u64,
    rows: DayRows<CohortCounts>,
    /// The rows split by breakdowns.
    by: Vec<SplitRows>,
}

impl Retention {
    /// The user's cohort day in definition `r` ([`NO_DAY`] for none yet);
    /// `first_seen` is the user's first day seen, which the cohort is when
    /// any event is a cohort event.
    fn cohort_day(&self, ctx: Ctx<'_>, r: usize, uid: u32, first_seen: Day) -> Day {
        match &self.defs[r].cohort {
            Cohort::FirstSeen => first_seen,
            Cohort::Own(cohort) => cohort[uid as usize].unpack(),
            Cohort::SameAs(owner) => self.cohort_day(ctx, *owner, uid, first_seen),
            Cohort::Time(t0) => match t0[uid as usize] {
                NO_TIME => NO_DAY,
                t => ctx.cal.day_of(t),
            },
        }
    }

    /// Whether user `uid` of cohort day `cohort` is retained by figure `b`.
    fn retained_by(&self, ctx: Ctx<'_>, users: &Users, r: usize, uid: u32, cohort: Day, b: Bracket) -> bool {
        let state = &self.defs[r];
        let (from, to) = state.periods.window(cohort, b);
        let u = uid as usize;
        match &state.returns {
            Returns::Active => match ctx.cfg.retention[r].mode {
                RetentionMode::OnOrAfter => users.active().latest(u).is_some_and(|l| l >= from),
                _ if from == to => users.active().contains(u, from),
                _ => users.active().count_in(u, from, to) > 0,
            },
            // NO_DAY (none yet) is below every target.
            Returns::Latest(v) => v[u].unpack() >= from,
            Returns::Days(v) if from == to => v.contains(u, from),
            Returns::Days(v) => v.count_in(u, from, to) > 0,
            Returns::Times(_) => unreachable!("rolling_24h definitions are counted by rolling_flags"),
        }
    }

    /// Bit i: whether the user, first cohort event at `t0`, returned in the
    /// 24-hour windows of the definition's i-th figure.
    fn rolling_flags(&self, ctx: Ctx<'_>, r: usize, uid: u32, t0: i64) -> u128 {
        let Returns::Times(times) = &self.defs[r].returns else { return 0 };
        times.flags(uid as usize, t0, &ctx.cfg.retention[r].periods)
    }

    /// Adds `sign` times the user's flags to the row of cohort day `day`.
    #[allow(clippy::too_many_arguments)]
    fn count_rolling(&mut self, ctx: Ctx<'_>, r: usize, day: Day, flags: u128, users: i64, sign: i64, labels: &[u8]) {
        let n = ctx.cfg.retention[r].periods.len();
        self.defs[r].add(n, day, users, flags, sign, labels);
    }

    /// `rolling_24h`: what an event does to definition `r`.
    fn record_rolling(&mut self, ctx: Ctx<'_>, r: usize, t: &Touch<'_>, cohort: bool, returns: bool) {
        let u = t.uid as usize;
        let t0 = match &self.defs[r].cohort {
            Cohort::Time(t0) => t0[u],
            _ => return,
        };
        if returns {
            let before = (t0 != NO_TIME).then(|| self.rolling_flags(ctx, r, t.uid, t0));
            // Slices a return can no longer reach: the history and a day
            // of lateness and of a window's spill past its day.
            let keep = ctx.cfg.history_days + 3;
            let changed = match &mut self.defs[r].returns {
                Returns::Times(times) => times.insert(u, t.ts, keep),
                _ => false,
            };
            if let Some(before) = before
                && changed
            {
                let after = self.rolling_flags(ctx, r, t.uid, t0);
                if after != before {
                    let day = ctx.cal.day_of(t0);
                    self.count_rolling(ctx, r, day, before, 0, -1, t.labels);
                    self.count_rolling(ctx, r, day, after, 0, 1, t.labels);
                }
            }
        }
        if cohort && t.ts < t0 {
            if t0 != NO_TIME {
                let was = self.rolling_flags(ctx, r, t.uid, t0);
                self.count_rolling(ctx, r, ctx.cal.day_of(t0), was, -1, -1, t.labels);
            }
            if let Cohort::Time(v) = &mut self.defs[r].cohort {
                v[u] = t.ts;
            }
            let now = self.rolling_flags(ctx, r, t.uid, t.ts);
            self.count_rolling(ctx, r, t.day, now, 1, 1, t.labels);
        }
    }

    /// A return event: credit the cohort cells it newly fills. The cohort
    /// of a definition whose cohort event is any event is the first day
    /// seen before the event: a cohort the event moves is moved after.
    fn credit_return(&mut self, ctx: Ctx<'_>, users: &Users, r: usize, t: &Touch<'_>) {
        let (uid, day) = (t.uid, t.day);
        let cohort = self.cohort_day(ctx, r, uid, t.old_first);
        let state = &mut self.defs[r];
        let (newly, prev_latest) = match &mut state.returns {
            Returns::Active => (t.newly_active, t.prev_latest_active),
            Returns::Latest(v) => {
                let latest = &mut v[uid as usize];
                let prev = Some(latest.unpack()).filter(|&l| l != NO_DAY);
                let newly = prev.is_none_or(|p| day > p);
                if newly {
                    *latest = Day16::pack(day);
                }
                (newly, prev)
            }
            Returns::Days(v) => {
                let prev = v.latest(uid as usize);
                (v.insert(uid as usize, day), prev)
            }
            Returns::Times(_) => return,
        };
        if cohort == NO_DAY || !newly {
            return;
        }
        let def = &ctx.cfg.retention[r];
        let (plain, periods, n) = (state.plain, state.periods, def.periods.len());
        match def.mode {
            RetentionMode::On if plain => {
                let offset = day - cohort;
                if let Some(i) = def.periods.iter().position(|b| b.from as i32 == offset) {
                    // The hot path: one cell, and the splits only with breakdowns.
                    if let Some(row) = state.rows.row(cohort) {
                        ensure_len(&mut row.retained, n)[i] += 1;
                    }
                    if !state.by.is_empty() {
                        state.add_split(cohort, 0, 1 << i, 1, t.labels);
                    }
                }
            }
            RetentionMode::On => {
                // The first return in a figure's window fills it: this day,
                // just added, is the only one there.
                let returned = |from, to| match &state.returns {
                    Returns::Active => users.active().count_in(uid as usize, from, to),
                    Returns::Days(v) => v.count_in(uid as usize, from, to),
                    Returns::Latest(_) | Returns::Times(_) => 0,
                };
                let filled: u128 = def.periods.iter().enumerate().fold(0, |m, (i, &b)| {
                    let (from, to) = periods.window(cohort, b);
                    m | u128::from((from..=to).contains(&day) && returned(from, to) == 1) << i
                });
                if filled != 0 {
                    state.add(n, periods.start(cohort), 0, filled, 1, t.labels);
                }
            }
            RetentionMode::OnOrAfter => {
                let filled: u128 = def.periods.iter().enumerate().fold(0, |m, (i, &b)| {
                    let target = if plain { cohort + b.from as Day } else { periods.window(cohort, b).0 };
                    m | u128::from(target <= day && prev_latest.is_none_or(|p| p < target)) << i
                });
                if filled != 0 {
                    state.add(n, periods.start(cohort), 0, filled, 1, t.labels);
                }
            }
            RetentionMode::Rolling24h => {}
        }
    }

    /// Bit i: whether user `uid` of cohort day `cohort` is retained by
    /// definition `r`'s i-th figure (config validation keeps them under
    /// 128).
    fn flags(&self, ctx: Ctx<'_>, users: &Users, r: usize, uid: u32, cohort: Day) -> u128 {
        let periods = &ctx.cfg.retention[r].periods;
        let by = |b| self.retained_by(ctx, users, r, uid, cohort, b);
        periods.iter().enumerate().fold(0, |m, (i, &b)| m | u128::from(by(b)) << i)
    }

    /// Moves a user from cohort `old` (maybe none) to the earlier `new`.
    fn move_cohort(&mut self, ctx: Ctx<'_>, users: &Users, r: usize, t: &Touch<'_>, old: Day, new: Day) {
        let n = ctx.cfg.retention[r].periods.len();
        let shape = self.defs[r].periods;
        if old != NO_DAY {
            let was = self.flags(ctx, users, r, t.uid, old);
            self.defs[r].add(n, shape.start(old), -1, was, -1, t.labels);
        }
        let now = self.flags(ctx, users, r, t.uid, new);
        let state = &mut self.defs[r];
        if let Cohort::Own(cohort) = &mut state.cohort {
            cohort[t.uid as usize] = Day16::pack(new);
        }
        state.add(n, shape.start(new), 1, now, 1, t.labels);
    }
}

impl Family for Retention {
    fn new(ctx: Ctx<'_>) -> Self {
        let defs = &ctx.cfg.retention;
        let rolling = |d: &RetentionDef| d.mode == RetentionMode::Rolling24h;
        let defs = defs
            .iter()
            .enumerate()
            .map(|(r, def)| Definition {
                cohort: if rolling(def) {
                    Cohort::Time(Vec::new())
                } else if def.cohort_event == EventMatch::Any {
                    Cohort::FirstSeen
                } else {
                    let same = |earlier: &RetentionDef| earlier.cohort_event == def.cohort_event && !rolling(earlier);
                    match defs[..r].iter().position(same) {
                        Some(owner) => Cohort::SameAs(owner),
                        None => Cohort::Own(Vec::new()),
                    }
                },
                returns: match (&def.return_event, def.mode) {
                    (_, RetentionMode::Rolling24h) => Returns::Times(ReturnTimes::default()),
                    (EventMatch::Any, _) => Returns::Active,
                    (_, RetentionMode::OnOrAfter) => Returns::Latest(Vec::new()),
                    (_, RetentionMode::On) => Returns::Days(DaySets::for_history(ctx.cfg.history_days)),
                },
                rows: DayRows::default(),
                periods: Periods { granularity: def.granularity, week_start: ctx.cfg.week_start },
                plain: def.granularity == Granularity::Day && def.periods.iter().all(|b| b.is_one()) && !rolling(def),
                slices: 0,
                by: def
                    .breakdowns
                    .iter()
                    .map(|&b| SplitRows::new(b, &ctx.cfg.breakdowns[b], 1 + def.periods.len()))
                    .collect(),
            })
            .collect();
        Retention { defs }
    }

    fn push_user(&mut self) {
        for state in &mut self.defs {
            match &mut state.cohort {
                Cohort::Own(cohort) => cohort.push(Day16::pack(NO_DAY)),
                Cohort::Time(t0) => t0.push(NO_TIME),
                Cohort::FirstSeen | Cohort::SameAs(_) => {}
            }
            match &mut state.returns {
                Returns::Active => {}
                Returns::Latest(v) => v.push(Day16::pack(NO_DAY)),
                Returns::Days(v) => v.push_empty(),
                Returns::Times(v) => v.users.push(Vec::new()),
            }
        }
    }

    fn record(&mut self, ctx: Ctx<'_>, users: &Users, t: &Touch<'_>) {
        let Bits { cohort, returns } = t.class.retention;
        if cohort | returns == 0 {
            return;
        }
        // Last first: a definition that shares an earlier one's cohort
        // column reads it before its owner moves it.
        for r in (0..self.defs.len()).rev() {
            let (is_cohort, is_return) = (cohort & (1 << r) != 0, returns & (1 << r) != 0);
            if !(is_cohort || is_return) {
                continue;
            }
            if matches!(self.defs[r].cohort, Cohort::Time(_)) {
                self.record_rolling(ctx, r, t, is_cohort, is_return);
                continue;
            }
            if is_return {
                self.credit_return(ctx, users, r, t);
            }
            if is_cohort {
                // For `FirstSeen`, the first day seen before this event.
                let current = self.cohort_day(ctx, r, t.uid, t.old_first);
                if current == NO_DAY || t.day < current {
                    self.move_cohort(ctx, users, r, t, current, t.day);
                }
            }
        }
    }

    fn relabel(&mut self, ctx: Ctx<'_>, users: &Users, uid: u32, change: Move) {
        for r in 0..self.defs.len() {
            let Some(k) = self.defs[r].by.iter().position(|s| s.breakdown == change.breakdown) else { continue };
            let (day, flags) = match &self.defs[r].cohort {
                Cohort::Time(t0) => match t0[uid as usize] {
                    NO_TIME => continue,
                    t0 => (ctx.cal.day_of(t0), self.rolling_flags(ctx, r, uid, t0)),
                },
                _ => match self.cohort_day(ctx, r, uid, users.first_seen(uid)) {
                    NO_DAY => continue,
                    c => (self.defs[r].periods.start(c), self.flags(ctx, users, r, uid, c)),
                },
            };
            let n = ctx.cfg.retention[r].periods.len();
            let counts: Vec<i64> = std::iter::once(1).chain((0..n).map(|i| (flags >> i & 1) as i64)).collect();
            self.defs[r].by[k].shift(day, change, &counts);
        }
    }

    fn maintain(&mut self, _: Ctx<'_>, horizon: Horizon) {
        for state in &mut self.defs {
            // A period's row goes with the period that holds the horizon.
            let from = state.periods.start(horizon.keep_from);
            state.rows.drop_before(from);
            state.by.iter_mut().for_each(|split| split.drop_before(from));
        }
    }

    fn reach_days(&self, ctx: Ctx<'_>) -> i32 {
        ctx.cfg.retention.iter().map(RetentionDef::reach_days).max().unwrap_or(0) as i32
    }

    fn publish(&self, ctx: Ctx<'_>, view: View, out: &mut Figures) {
        for (state, def) in self.defs.iter().zip(&ctx.cfg.retention) {
            let mut cohorts = Vec::new();
            for (d, row) in state.rows.range(state.periods.start(view.from), view.to) {
                if row.users <= 0 {
                    continue;
                }
                cohorts.push(CohortRow {
                    date: Calendar::label(d),
                    users: row.users as u64,
                    retained: (0..def.periods.len())
                        .map(|i| row.retained.get(i).copied().unwrap_or(0).max(0) as u64)
                        .collect(),
                    mature: maturity(ctx, def, d, view.watermark_ms),
                });
            }
            let from = state.periods.start(view.from);
            let breakdowns = state
                .by
                .iter()
                .map(|split| {
                    split.publish(&ctx.cfg.breakdowns[split.breakdown], from, view.to, |d, c| {
                        (c[0] > 0).then(|| CohortRow {
                            date: Calendar::label(d),
                            users: c[0],
                            retained: c[1..].to_vec(),
                            mature: maturity(ctx, def, d, view.watermark_ms),
                        })
                    })
                })
                .collect();
            out.retention.push(RetentionTable {
                name: def.name.clone(),
                granularity: def.granularity.as_str(),
                mode: def.mode.as_str(),
                periods: def.periods.iter().map(Bracket::to_string).collect(),
                cohorts,
                breakdowns,
            });
        }
    }

    fn heap_bytes(&self) -> usize {
        let day = std::mem::size_of::<Day16>();
        self.defs
            .iter()
            .map(|r| {
                let cohort = match &r.cohort {
                    Cohort::Own(v) => v.capacity() * day,
                    Cohort::Time(v) => v.capacity() * std::mem::size_of::<i64>(),
                    Cohort::FirstSeen | Cohort::SameAs(_) => 0,
                };
                cohort
                    + match &r.returns {
                        Returns::Active => 0,
                        Returns::Latest(v) => v.capacity() * day,
                        Returns::Days(v) => v.heap_bytes(),
                        Returns::Times(v) => v.heap_bytes(),
                    }
            })
            .sum()
    }

    fn write_head(&self) -> Result<Vec<u8>, postcard::Error> {
        let heads: Vec<Head> = self
            .defs
            .iter()
            .map(|r| Head {
                cohort: matches!(r.cohort, Cohort::Own(_)),
                returns: match r.returns {
                    Returns::Active => 0,
                    Returns::Latest(_) => 1,
                    Returns::Days(_) => 2,
                    Returns::Times(_) => 3,
                },
                slices: match &r.returns {
                    Returns::Times(v) => v.users.iter().map(|s| s.len() as u64).sum(),
                    _ => 0,
                },
                rows: r.rows.clone(),
                by: r.by.clone(),
            })
            .collect();
        postcard::to_stdvec(&heads)
    }

    fn write_columns(&self, out: &mut dyn Write) -> std::io::Result<()> {
        for r in &self.defs {
            match &r.cohort {
                Cohort::Own(cohort) => column(out, cohort)?,
                Cohort::Time(t0) => column(out, t0)?,
                Cohort::FirstSeen | Cohort::SameAs(_) => {}
            }
            match &r.returns {
                Returns::Active => {}
                Returns::Latest(v) => column(out, v)?,
                Returns::Days(v) => column(out, v.cells())?,
                Returns::Times(v) => {
                    // How many slices each user has, then all of them.
                    let lens: Vec<u32> = v.users.iter().map(|s| s.len() as u32).collect();
                    column(out, &lens)?;
                    for s in &v.users {
                        column(out, s)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn read_head(&mut self, ctx: Ctx<'_>, head: &[u8], users: u64) -> Result<u64, StateMismatch> {
        let heads: Vec<Head> = postcard::from_bytes(head).map_err(|e| StateMismatch::new(format!("retention: {e}")))?;
        if heads.len() != self.defs.len() {
            return Err(StateMismatch::new("the number of retention definitions differs"));
        }
        let day = std::mem::size_of::<Day16>() as u64;
        let set = day * (1 + DaySets::for_history(ctx.cfg.history_days).words() as u64);
        let out_of_range = || StateMismatch::new("retention columns out of range");
        let mut total = 0u64;
        for (r, (state, h)) in self.defs.iter_mut().zip(heads).enumerate() {
            let own = matches!(state.cohort, Cohort::Own(_));
            let kind = match state.returns {
                Returns::Active => 0,
                Returns::Latest(_) => 1,
                Returns::Days(_) => 2,
                Returns::Times(_) => 3,
            };
            if own != h.cohort || kind != h.returns || SplitRows::shape(&state.by) != SplitRows::shape(&h.by) {
                let name = &ctx.cfg.retention[r].name;
                return Err(StateMismatch::new(format!("retention definition {name} has another shape")));
            }
            let per_user = day * u64::from(h.cohort)
                + match h.returns {
                    0 => 0,
                    1 => day,
                    2 => set,
                    // The first cohort time and the number of slices.
                    _ => 8 + 4,
                };
            let slices = h.slices.checked_mul(std::mem::size_of::<Slice>() as u64).ok_or_else(out_of_range)?;
            total = users
                .checked_mul(per_user)
                .and_then(|c| c.checked_add(slices))
                .and_then(|c| c.checked_add(total))
                .ok_or_else(out_of_range)?;
            state.slices = h.slices;
            state.rows = h.rows;
            state.by = h.by;
        }
        Ok(total)
    }

    fn read_columns(&mut self, _: Ctx<'_>, columns: &mut Columns<'_>) -> Result<(), StateMismatch> {
        let n = columns.users();
        for state in &mut self.defs {
            match &mut state.cohort {
                Cohort::Own(cohort) => *cohort = columns.take(n)?,
                Cohort::Time(t0) => *t0 = columns.take(n)?,
                Cohort::FirstSeen | Cohort::SameAs(_) => {}
            }
            match &mut state.returns {
                Returns::Active => {}
                Returns::Latest(v) => *v = columns.take(n)?,
                Returns::Days(v) => *v = columns.day_sets(v.words())?,
                Returns::Times(v) => {
                    let lens: Vec<u32> = columns.take(n)?;
                    if lens.iter().map(|&l| u64::from(l)).sum::<u64>() != state.slices {
                        return Err(StateMismatch::new("retention slices do not add up"));
                    }
                    v.users = lens.iter().map(|&l| columns.take(l as usize)).collect::<Result<_, _>>()?;
                }
            }
        }
        Ok(())
    }
}

/// Per figure: whether the cell of the cohort row starting on `d` can no
/// longer change: the watermark passed the end of its last period (for
/// `rolling_24h`, of the last window of a user first seen at the end of
/// day `d`).
fn maturity(ctx: Ctx<'_>, def: &RetentionDef, d: Day, watermark_ms: i64) -> Vec<bool> {
    let periods = Periods { granularity: def.granularity, week_start: ctx.cfg.week_start };
    def.periods
        .iter()
        .map(|&b| match def.mode {
            RetentionMode::Rolling24h => {
                watermark_ms >= ctx.cal.day_start_ms(d + 1).saturating_add(i64::from(b.to + 1) * SLICE_MS)
            }
            _ => watermark_ms >= ctx.cal.day_start_ms(periods.window(d, b).1 + 1),
        })
        .collect()
}

/// Keeps the cohorts of merged figures whose period meets the export
/// window `from..=to` and sets their maturity by the merged watermark.
pub fn rewindow(out: &mut Figures, ctx: Ctx<'_>, watermark_ms: i64, from: Day, to: Day) {
    for (t, def) in out.retention.iter_mut().zip(&ctx.cfg.retention) {
        let first = Periods { granularity: def.granularity, week_start: ctx.cfg.week_start }.start(from);
        let day = |date: &str| date.parse::<jiff::civil::Date>().ok().map(super::calendar::day_number);
        let keep = |rows: &mut Vec<CohortRow>| {
            rows.retain(|r| day(&r.date).is_some_and(|d| d >= first && d <= to) && r.users > 0);
            for row in rows {
                if let Some(d) = day(&row.date) {
                    row.mature = maturity(ctx, def, d, watermark_ms);
                }
            }
        };
        keep(&mut t.cohorts);
        for split in &mut t.breakdowns {
            split.values.iter_mut().for_each(|v| keep(&mut v.rows));
        }
    }
}
