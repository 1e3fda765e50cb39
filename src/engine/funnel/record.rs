//! Recording one funnel event: the levels of the entry days it reaches,
//! before and after it joins its user's hits, and the counters moved by
//! the difference.

use std::collections::HashSet;

use super::chain::{self, Entry, Hit};
use super::store::Segments;
use super::{FunnelState, FunnelTally};
use crate::engine::calendar::{Calendar, Day};
use crate::engine::days::ensure_len;
use crate::engine::def::{FunnelDef, FunnelMode};

/// What recording a funnel event reads and moves, besides its store.
pub(super) struct Recording<'a> {
    pub(super) cal: &'a Calendar,
    pub(super) defs: &'a [FunnelDef],
    pub(super) states: &'a mut [FunnelState],
    /// Per funnel: the steps the event fills (bit k: step k+1).
    pub(super) masks: &'a [u32],
    /// The most hits a user keeps in the store.
    pub(super) user_cap: usize,
    /// The store's users found at the cap (see [`Funnels::capped`]).
    pub(super) capped: &'a mut HashSet<u32, foldhash::fast::FixedState>,
    /// The user's breakdown slots, per breakdown.
    pub(super) labels: &'a [u8],
}
pub(super) enum Recorded {
    /// In the store (or there already: a replay), and counted.
    Kept,
    /// Left out: the store has no room for it.
    StoreFull,
    /// Left out: its user already keeps `max_funnel_events_per_user` in the
    /// store (a replay of one of them too: it would change nothing). Each
    /// of a user's funnel events costs a pass over the user's kept ones, so
    /// without a cap a user's cost grows with the square of their rate
    /// (BENCHMARKS.md, "One heavy user"). The cap bounds what one event
    /// costs, and one user's share of the store.
    UserFull,
}

impl Recording<'_> {
    /// Adds `hit` of user `uid` (on business day `day`) to `store`, which
    /// the funnels `members` share, and moves the counters of every entry
    /// day whose level it raises; or leaves it out, changing nothing, when
    /// the store or the user's share of it is full.
    pub(super) fn record<S: Segments>(
        mut self,
        store: &mut S,
        hits: &mut Vec<S::Entry>,
        members: &[usize],
        uid: u32,
        hit: Hit,
        day: Day,
    ) -> Recorded {
        // Until the store's next prune, a user found at the cap stays there.
        if !self.capped.is_empty() && self.capped.contains(&uid) {
            return Recorded::UserFull;
        }
        store.load(uid, hits);
        // Before the replay check, so that a replay counts alike whether
        // the user's hits were loaded or not.
        if hits.len() >= self.user_cap {
            self.capped.insert(uid);
            return Recorded::UserFull;
        }
        let entry = S::Entry::from_hit(hit);
        let Err(pos) = hits.binary_search(&entry) else {
            // A replay, or an event the store cannot tell from one it has.
            return Recorded::Kept;
        };
        self.levels_before(hits, members, hit, day);
        // The usual case: the user's latest event so far. A pass over the
        // earlier hits then goes on with it instead of starting again.
        let latest = hits.last().is_none_or(|last| last.ts() < hit.ts);
        hits.insert(pos, entry);
        if !store.insert(uid, hits, pos) {
            // The store is full: the counters stay as they were.
            return Recorded::StoreFull;
        }
        self.raise(hits, members, hit, day, latest);
        Recorded::Kept
    }

    /// The entry days whose chains `hit` can join, and their levels before
    /// it (into each funnel's `before`): recomputed, not stored, from the
    /// hits, all of which an accepted event can still reach are kept (see
    /// `Funnels::maintain`).
    fn levels_before<E: Entry>(&mut self, hits: &[E], members: &[usize], hit: Hit, day: Day) {
        let masks = self.masks;
        for &f in members.iter().filter(|&&f| masks[f] != 0) {
            let (def, steps) = (&self.defs[f], self.states[f].steps);
            let FunnelTally { before, passes, .. } = &mut self.states[f].tally;
            before.clear();
            for (i, d) in Self::entry_days(self.cal, def, masks[f], hit.ts, day).enumerate() {
                let (start, end) = self.cal.bounds(d);
                let level = if def.mode == FunnelMode::Default {
                    if passes.len() <= i {
                        passes.push(chain::Pass::default());
                    }
                    passes[i].run(hits, start, end, def.window_ms, steps);
                    passes[i].level()
                } else {
                    chain::level(hits, start, end, def.window_ms, steps, def.mode).level
                };
                before.push(level);
            }
        }
    }

    /// With `hit` among the user's `hits`, moves the counters of each entry
    /// day whose level it raised. `latest`: `hit` is after all the others,
    /// so a `default` pass goes on from where `levels_before` left it.
    fn raise<E: Entry>(&mut self, hits: &[E], members: &[usize], hit: Hit, day: Day, latest: bool) {
        let masks = self.masks;
        for &f in members.iter().filter(|&&f| masks[f] != 0) {
            let (def, steps) = (&self.defs[f], self.states[f].steps);
            let tally = &mut self.states[f].tally;
            for (i, d) in Self::entry_days(self.cal, def, masks[f], hit.ts, day).enumerate() {
                let old = tally.before[i];
                // A chain this event raises holds the event at a step it
                // fills, with a chain of the steps before that which
                // existed without it: a step at most one above the old
                // level. It fills step 1 of its own day only.
                let fills = steps.of(hit.mask) & if d == day { !0 } else { !1 };
                if old == steps.count || fills & (u32::MAX >> (31 - old.min(31))) == 0 {
                    continue;
                }
                if def.mode == FunnelMode::Default && latest {
                    let mut passes = std::mem::take(&mut tally.passes);
                    let pass = &mut passes[i];
                    pass.feed(hit.ts, steps.of(hit.mask));
                    tally.count(d, old, pass.level(), |k| pass.span(k), self.labels);
                    tally.passes = passes;
                } else {
                    let (start, end) = self.cal.bounds(d);
                    let chain = chain::level(hits, start, end, def.window_ms, steps, def.mode);
                    tally.count(d, old, chain.level, |k| chain.reached[k], self.labels);
                }
            }
        }
    }

    /// The entry days of funnel `def` an event at `ts` (on day `day`)
    /// filling its steps `mask` can reach: its own when it fills step 1
    /// only, else the days from its time minus the window on.
    fn entry_days(cal: &Calendar, def: &FunnelDef, mask: u32, ts: i64, day: Day) -> std::ops::RangeInclusive<Day> {
        let first = if mask & !1 == 0 { day } else { cal.day_of(ts - def.window_ms) };
        first..=day
    }
}

/// The entry days of a funnel among `hits` (the days of its step-1 hits),
/// each with the level reached from it.
pub(super) fn entry_levels<E: Entry>(
    cal: &Calendar,
    def: &FunnelDef,
    steps: chain::Steps,
    hits: &[E],
) -> Vec<(Day, usize)> {
    let mut days: Vec<Day> = hits.iter().filter(|h| steps.of(h.mask()) & 1 != 0).map(|h| cal.day_of(h.ts())).collect();
    days.dedup();
    days.into_iter()
        .map(|d| {
            let (start, end) = cal.bounds(d);
            (d, chain::level(hits, start, end, def.window_ms, steps, def.mode).level)
        })
        .collect()
}

impl FunnelTally {
    /// The levels `old` → `new` of entry day `d` in the rows of the user's
    /// values (`labels`).
    fn count_split(&mut self, d: Day, old: usize, new: usize, labels: &[u8]) {
        for split in &mut self.by {
            if let Some(row) = split.row(d, labels[split.breakdown]) {
                row.iter_mut().take(new).skip(old).for_each(|u| *u += 1);
            }
        }
    }

    /// Moves entry day `d` from level `old` to level `new` (when higher):
    /// its row, the conversions, and the time to convert to each step
    /// reached (`span(k)`: ms from step 1 to step k+1).
    fn count(&mut self, d: Day, old: usize, new: usize, span: impl Fn(usize) -> i64, labels: &[u8]) {
        if new <= old {
            return;
        }
        if let Some(row) = self.rows.row(d) {
            for u in ensure_len(row, self.conversions.len()).iter_mut().take(new).skip(old) {
                *u += 1;
            }
        }
        if !self.by.is_empty() {
            self.count_split(d, old, new, labels);
        }
        for k in old..new {
            self.conversions[k] += 1;
            if k > 0 {
                self.time_to_convert[k].saturating_record(span(k).max(0) as u64);
            }
        }
    }
}
