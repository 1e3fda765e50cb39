//! Retention: per cohort day, the users whose cohort event fell on it and
//! those of them who came back on (or on or after) day N.
//!
//! Per user and definition it keeps no more than its mode needs: the
//! cohort day (unless the cohort is the first day seen, or an earlier
//! definition with the same cohort event holds it), and the return days
//! (none when any event returns: the active days serve; the latest one for
//! `on_or_after`; the set of them for `on`).

use std::io::Write;

use serde::{Deserialize, Serialize};

use super::StateMismatch;
use super::calendar::{Calendar, Day};
use super::days::{Day16, DayRows, DaySets, NO_DAY, ensure_len};
use super::def::{EngineConfig, EventMatch, RetentionMode};
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
    rows: DayRows<CohortCounts>,
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
    /// 0: no return column, 1: latest return days, 2: return day sets.
    returns: u8,
    rows: DayRows<CohortCounts>,
}

impl Retention {
    /// The user's cohort day in definition `r` ([`NO_DAY`] for none yet);
    /// `first_seen` is the user's first day seen, which the cohort is when
    /// any event is a cohort event.
    fn cohort_day(&self, r: usize, uid: u32, first_seen: Day) -> Day {
        match &self.defs[r].cohort {
            Cohort::FirstSeen => first_seen,
            Cohort::Own(cohort) => cohort[uid as usize].unpack(),
            Cohort::SameAs(owner) => self.cohort_day(*owner, uid, first_seen),
        }
    }

    fn retained_by(&self, ctx: Ctx<'_>, users: &Users, r: usize, uid: u32, cohort: Day, n: u32) -> bool {
        let target = cohort + n as i32;
        let u = uid as usize;
        match &self.defs[r].returns {
            Returns::Active => match ctx.cfg.retention[r].mode {
                RetentionMode::On => users.active().contains(u, target),
                RetentionMode::OnOrAfter => users.active().latest(u).is_some_and(|l| l >= target),
            },
            // NO_DAY (none yet) is below every target.
            Returns::Latest(v) => v[u].unpack() >= target,
            Returns::Days(v) => v.contains(u, target),
        }
    }

    /// A return event: credit the cohort cells it newly fills. The cohort
    /// of a definition whose cohort event is any event is the first day
    /// seen before the event: a cohort the event moves is moved after.
    fn credit_return(&mut self, ctx: Ctx<'_>, r: usize, t: &Touch<'_>) {
        let (uid, day) = (t.uid, t.day);
        let cohort = self.cohort_day(r, uid, t.old_first);
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
        };
        if cohort == NO_DAY {
            return;
        }
        let def = &ctx.cfg.retention[r];
        match def.mode {
            RetentionMode::On => {
                if !newly {
                    return;
                }
                let n = day - cohort;
                if let Some(i) = def.days.iter().position(|&d| d as i32 == n)
                    && let Some(row) = state.rows.row(cohort)
                {
                    ensure_len(&mut row.retained, def.days.len())[i] += 1;
                }
            }
            RetentionMode::OnOrAfter => {
                for (i, &n) in def.days.iter().enumerate() {
                    let target = cohort + n as i32;
                    if target <= day
                        && prev_latest.is_none_or(|p| p < target)
                        && let Some(row) = state.rows.row(cohort)
                    {
                        ensure_len(&mut row.retained, def.days.len())[i] += 1;
                    }
                }
            }
        }
    }

    /// Moves a user from cohort `old` (maybe none) to the earlier `new`.
    fn move_cohort(&mut self, ctx: Ctx<'_>, users: &Users, r: usize, uid: u32, old: Day, new: Day) {
        let days = &ctx.cfg.retention[r].days;
        // Bit i: retained by the i-th N (config validation keeps N ≤ 88).
        let flags = |this: &Self, c: Day| -> u128 {
            let by = |n| this.retained_by(ctx, users, r, uid, c, n);
            days.iter().enumerate().fold(0, |m, (i, &n)| m | u128::from(by(n)) << i)
        };
        if old != NO_DAY {
            let was = flags(self, old);
            if let Some(row) = self.defs[r].rows.row(old) {
                row.users -= 1;
                for (i, cell) in ensure_len(&mut row.retained, days.len()).iter_mut().enumerate() {
                    *cell -= (was >> i & 1) as i64;
                }
            }
        }
        let now = flags(self, new);
        let state = &mut self.defs[r];
        if let Cohort::Own(cohort) = &mut state.cohort {
            cohort[uid as usize] = Day16::pack(new);
        }
        if let Some(row) = state.rows.row(new) {
            row.users += 1;
            for (i, cell) in ensure_len(&mut row.retained, days.len()).iter_mut().enumerate() {
                *cell += (now >> i & 1) as i64;
            }
        }
    }
}

impl Family for Retention {
    fn new(ctx: Ctx<'_>) -> Self {
        let defs = &ctx.cfg.retention;
        let defs = defs
            .iter()
            .enumerate()
            .map(|(r, def)| Definition {
                cohort: if def.cohort_event == EventMatch::Any {
                    Cohort::FirstSeen
                } else {
                    match defs[..r].iter().position(|earlier| earlier.cohort_event == def.cohort_event) {
                        Some(owner) => Cohort::SameAs(owner),
                        None => Cohort::Own(Vec::new()),
                    }
                },
                returns: match (&def.return_event, def.mode) {
                    (EventMatch::Any, _) => Returns::Active,
                    (_, RetentionMode::OnOrAfter) => Returns::Latest(Vec::new()),
                    (_, RetentionMode::On) => Returns::Days(DaySets::for_history(ctx.cfg.history_days)),
                },
                rows: DayRows::default(),
            })
            .collect();
        Retention { defs }
    }

    fn push_user(&mut self) {
        for state in &mut self.defs {
            if let Cohort::Own(cohort) = &mut state.cohort {
                cohort.push(Day16::pack(NO_DAY));
            }
            match &mut state.returns {
                Returns::Active => {}
                Returns::Latest(v) => v.push(Day16::pack(NO_DAY)),
                Returns::Days(v) => v.push_empty(),
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
            if returns & (1 << r) != 0 {
                self.credit_return(ctx, r, t);
            }
            if cohort & (1 << r) != 0 {
                // For `FirstSeen`, the first day seen before this event.
                let current = self.cohort_day(r, t.uid, t.old_first);
                if current == NO_DAY || t.day < current {
                    self.move_cohort(ctx, users, r, t.uid, current, t.day);
                }
            }
        }
    }

    fn maintain(&mut self, _: Ctx<'_>, horizon: Horizon) {
        for state in &mut self.defs {
            state.rows.drop_before(horizon.keep_from);
        }
    }

    fn reach_days(&self, ctx: Ctx<'_>) -> i32 {
        ctx.cfg.retention.iter().flat_map(|r| r.days.iter().copied()).max().unwrap_or(0) as i32
    }

    fn publish(&self, ctx: Ctx<'_>, view: View, out: &mut Figures) {
        for (state, def) in self.defs.iter().zip(&ctx.cfg.retention) {
            let mut cohorts = Vec::new();
            for (d, row) in state.rows.range(view.from, view.to) {
                if row.users <= 0 {
                    continue;
                }
                cohorts.push(CohortRow {
                    date: Calendar::label(d),
                    users: row.users as u64,
                    retained: (0..def.days.len())
                        .map(|i| row.retained.get(i).copied().unwrap_or(0).max(0) as u64)
                        .collect(),
                    mature: maturity(ctx.cal, &def.days, d, view.watermark_ms),
                });
            }
            out.retention.push(RetentionTable {
                name: def.name.clone(),
                mode: def.mode.as_str(),
                days: def.days.clone(),
                cohorts,
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
                    Cohort::FirstSeen | Cohort::SameAs(_) => 0,
                };
                cohort
                    + match &r.returns {
                        Returns::Active => 0,
                        Returns::Latest(v) => v.capacity() * day,
                        Returns::Days(v) => v.heap_bytes(),
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
                },
                rows: r.rows.clone(),
            })
            .collect();
        postcard::to_stdvec(&heads)
    }

    fn write_columns(&self, out: &mut dyn Write) -> std::io::Result<()> {
        for r in &self.defs {
            if let Cohort::Own(cohort) = &r.cohort {
                column(out, cohort)?;
            }
            match &r.returns {
                Returns::Active => {}
                Returns::Latest(v) => column(out, v)?,
                Returns::Days(v) => column(out, v.cells())?,
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
        let mut per_user = 0u64;
        for (r, (state, h)) in self.defs.iter_mut().zip(heads).enumerate() {
            let shape = (matches!(state.cohort, Cohort::Own(_)), &state.returns);
            if !matches!((shape, h.cohort, h.returns), ((c, Returns::Active), hc, 0) | ((c, Returns::Latest(_)), hc, 1) | ((c, Returns::Days(_)), hc, 2) if c == hc)
            {
                let name = &ctx.cfg.retention[r].name;
                return Err(StateMismatch::new(format!("retention definition {name} has another shape")));
            }
            per_user += day * u64::from(h.cohort)
                + match h.returns {
                    0 => 0,
                    1 => day,
                    _ => set,
                };
            state.rows = h.rows;
        }
        users.checked_mul(per_user).ok_or_else(|| StateMismatch::new("retention columns out of range"))
    }

    fn read_columns(&mut self, _: Ctx<'_>, columns: &mut Columns<'_>) -> Result<(), StateMismatch> {
        let n = columns.users();
        for state in &mut self.defs {
            if let Cohort::Own(cohort) = &mut state.cohort {
                *cohort = columns.take(n)?;
            }
            match &mut state.returns {
                Returns::Active => {}
                Returns::Latest(v) => *v = columns.take(n)?,
                Returns::Days(v) => *v = columns.day_sets(v.words())?,
            }
        }
        Ok(())
    }
}

/// Per N: whether cohort day `d`'s cell can still change.
fn maturity(cal: &Calendar, days: &[u32], d: Day, watermark_ms: i64) -> Vec<bool> {
    days.iter().map(|&n| watermark_ms >= cal.day_start_ms(d + n as i32 + 1)).collect()
}

/// Keeps the cohorts of merged figures in the export window and sets their
/// maturity by the merged watermark.
pub fn rewindow(out: &mut Figures, ctx: Ctx<'_>, watermark_ms: i64, in_window: impl Fn(&str) -> bool) {
    for (t, def) in out.retention.iter_mut().zip(&ctx.cfg.retention) {
        t.cohorts.retain(|r| in_window(&r.date) && r.users > 0);
        for row in &mut t.cohorts {
            if let Ok(date) = row.date.parse::<jiff::civil::Date>() {
                let d = super::calendar::day_number(date);
                row.mature = maturity(ctx.cal, &def.days, d, watermark_ms);
            }
        }
    }
}
