//! Trends: per business day, the events of one name (with property
//! filters, as funnel steps have) and the distinct users who did them, and
//! a counter of them for `rate()`.
//!
//! A user's events at one time count once for a trend, so a replay, or
//! another event of the name at the same millisecond, changes nothing and
//! arrival order changes no figure. The family keeps each user's trend
//! events of the history in a store of the funnels' encoding
//! ([`CompactStore`]): an entry per time, bit t of its mask for trend t.
//! An event is new to trend t when no entry at its time has bit t; its
//! user is new to the day when no entry of that day has it.

use std::collections::HashSet;
use std::io::Write;

use serde::{Deserialize, Serialize};

use super::StateMismatch;
use super::breakdown::{Move, SplitRows};
use super::calendar::{Calendar, Day};
use super::days::DayRows;
use super::def::{EngineConfig, EventMatch};
use super::family::{Columns, Ctx, Family, Horizon, Touch, View};
use super::figures::{Figures, TrendRow, TrendTable};
use super::funnel::store::{CompactStore, Segments};
use super::funnel::{Entry, Hit, Packed, prop_equals, rebuild, write_store};
use super::users::Users;

/// The most `[[trend]]` definitions: one bit each in a store entry's mask.
pub const MAX_TRENDS: usize = Packed::MAX_STEPS;

/// What an event name means to the trends.
#[derive(Debug, Clone, Default)]
pub struct Fills {
    /// Bit t: trend t counts events of this name (no filter).
    plain: u32,
    /// Trends that count events of this name whose props pass a filter.
    filtered: Vec<usize>,
}

/// The names the trends match by name.
pub fn names(cfg: &EngineConfig) -> impl Iterator<Item = &str> {
    cfg.trends.iter().filter_map(|t| match &t.step.event {
        EventMatch::Named(n) => Some(n.as_str()),
        EventMatch::Any => None,
    })
}

/// What events of `name` (`None`: a name no definition names) count for.
pub fn classify(cfg: &EngineConfig, name: Option<&str>) -> Fills {
    let mut fills = Fills::default();
    for (t, def) in cfg.trends.iter().enumerate() {
        let hit = match (&def.step.event, name) {
            (EventMatch::Any, _) => true,
            (EventMatch::Named(n), Some(name)) => n == name,
            (EventMatch::Named(_), None) => false,
        };
        if hit && def.step.filter.is_empty() {
            fills.plain |= 1 << t;
        } else if hit {
            fills.filtered.push(t);
        }
    }
    fills
}

/// One trend's counts: per day its events and its users, and the events
/// ever counted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Tally {
    /// Per day: `[events, users]`.
    rows: DayRows<[i64; 2]>,
    total: u64,
    /// The rows split by each of the trend's breakdowns: per value,
    /// events and users.
    by: Vec<SplitRows>,
}

/// The trends family.
#[derive(Debug, Clone, Default)]
pub struct Trends {
    tallies: Vec<Tally>,
    store: CompactStore,
    /// Events a trend counts that were left out: their user already kept
    /// `max_funnel_events_per_user` entries, or the store was full.
    left_out: u64,
    /// Users found at the cap since the last prune.
    capped: HashSet<u32, foldhash::fast::FixedState>,
    /// Scratch: a user's entries.
    hits: Vec<Packed>,
    /// Entries announced by a snapshot head, until its columns are read.
    pending_entries: Option<u64>,
}

/// The snapshot head.
#[derive(Debug, Serialize, Deserialize)]
struct Head {
    tallies: Vec<Tally>,
    left_out: u64,
    entries: u64,
}

impl Family for Trends {
    fn new(ctx: Ctx<'_>) -> Self {
        let tallies = ctx
            .cfg
            .trends
            .iter()
            .map(|def| Tally {
                by: def.breakdowns.iter().map(|&b| SplitRows::new(b, &ctx.cfg.breakdowns[b], 2)).collect(),
                ..Tally::default()
            })
            .collect();
        Trends { tallies, ..Trends::default() }
    }

    fn push_user(&mut self) {
        if !self.tallies.is_empty() {
            self.store.push_user();
        }
    }

    fn record(&mut self, ctx: Ctx<'_>, _: &Users, t: &Touch<'_>) {
        let fills = &t.class.trend;
        let mut mask = fills.plain;
        for &tr in &fills.filtered {
            let filter = &ctx.cfg.trends[tr].step.filter;
            if filter.iter().all(|(key, want)| prop_equals(t.ev.prop(key).as_ref(), want)) {
                mask |= 1 << tr;
            }
        }
        if mask == 0 {
            return;
        }
        if !self.capped.is_empty() && self.capped.contains(&t.uid) {
            self.left_out += u64::from(mask.count_ones());
            return;
        }
        let hits = &mut self.hits;
        self.store.load(t.uid, hits);
        let at = hits.partition_point(|h| h.ts() < t.ts);
        let there = hits[at..].iter().take_while(|h| h.ts() == t.ts).fold(0, |m, h| m | h.mask());
        let new = mask & !there;
        if new == 0 {
            // A replay, or another event of the name at that millisecond.
            return;
        }
        if hits.len() >= ctx.cfg.max_funnel_events_per_user as usize {
            self.capped.insert(t.uid);
            self.left_out += u64::from(new.count_ones());
            return;
        }
        let (start, end) = ctx.cal.bounds(t.day);
        let (lo, hi) = (hits.partition_point(|h| h.ts() < start), hits.partition_point(|h| h.ts() < end));
        let on_day = hits[lo..hi].iter().fold(0, |m, h| m | h.mask());
        // Entries at one time are ordered by mask: find the new one's place.
        let entry = Packed::from_hit(Hit { ts: t.ts, mask: new, tag: 0 });
        let pos = hits.binary_search(&entry).unwrap_or_else(|p| p);
        hits.insert(pos, entry);
        if !self.store.insert(t.uid, hits, pos) {
            self.left_out += u64::from(new.count_ones());
            return;
        }
        let mut bits = new;
        while bits != 0 {
            let tr = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let tally = &mut self.tallies[tr];
            tally.total += 1;
            let new_user = i64::from(on_day & (1 << tr) == 0);
            if let Some(row) = tally.rows.row(t.day) {
                row[0] += 1;
                row[1] += new_user;
            }
            for split in &mut tally.by {
                if let Some(row) = split.row(t.day, t.labels[split.breakdown]) {
                    row[0] += 1;
                    row[1] += new_user;
                }
            }
        }
    }

    fn relabel(&mut self, ctx: Ctx<'_>, _: &Users, uid: u32, change: Move) {
        if !self.tallies.iter().any(|t| t.by.iter().any(|s| s.breakdown == change.breakdown)) {
            return;
        }
        self.store.load(uid, &mut self.hits);
        // Per trend, per day: the user's events, and 1 for the user.
        for (tr, tally) in self.tallies.iter_mut().enumerate() {
            let Some(split) = tally.by.iter_mut().find(|s| s.breakdown == change.breakdown) else { continue };
            let mut days: Vec<(Day, i64)> = Vec::new();
            for h in self.hits.iter().filter(|h| h.mask() & (1 << tr) != 0) {
                let d = ctx.cal.day_of(h.ts());
                match days.last_mut() {
                    Some((last, n)) if *last == d => *n += 1,
                    _ => days.push((d, 1)),
                }
            }
            for (d, events) in days {
                split.shift(d, change, &[events, 1]);
            }
        }
    }

    fn maintain(&mut self, ctx: Ctx<'_>, horizon: Horizon) {
        for tally in &mut self.tallies {
            tally.rows.drop_before(horizon.keep_from);
            tally.by.iter_mut().for_each(|split| split.drop_before(horizon.keep_from));
        }
        if !self.tallies.is_empty() {
            // An accepted event is at or after the horizon; whether its
            // user is new to its day reads the entries from the day's start.
            let day = ctx.cal.day_of(horizon.horizon_ms.max(0));
            self.store.prune(ctx.cal.bounds(day).0);
            self.capped.clear();
        }
    }

    fn reach_days(&self, _: Ctx<'_>) -> i32 {
        0
    }

    fn publish(&self, ctx: Ctx<'_>, view: View, out: &mut Figures) {
        out.trend_left_out = self.left_out;
        for (tally, def) in self.tallies.iter().zip(&ctx.cfg.trends) {
            let rows = tally
                .rows
                .range(view.from, view.to)
                .filter(|(_, r)| r[0] > 0)
                .map(|(d, r)| TrendRow { date: Calendar::label(d), events: r[0] as u64, users: r[1].max(0) as u64 })
                .collect();
            let breakdowns = tally
                .by
                .iter()
                .map(|split| {
                    split.publish(&ctx.cfg.breakdowns[split.breakdown], view.from, view.to, |d, c| {
                        (c[0] > 0).then(|| TrendRow { date: Calendar::label(d), events: c[0], users: c[1] })
                    })
                })
                .collect();
            out.trends.push(TrendTable { name: def.name.clone(), events_total: tally.total, rows, breakdowns });
        }
    }

    fn heap_bytes(&self) -> usize {
        if self.tallies.is_empty() { 0 } else { self.store.heap_bytes() }
    }

    fn write_head(&self) -> Result<Vec<u8>, postcard::Error> {
        let entries = if self.tallies.is_empty() { 0 } else { self.store.entries() as u64 };
        postcard::to_stdvec(&Head { tallies: self.tallies.clone(), left_out: self.left_out, entries })
    }

    fn write_columns(&self, out: &mut dyn Write) -> std::io::Result<()> {
        if self.tallies.is_empty() {
            return Ok(());
        }
        write_store(out, &self.store)
    }

    fn read_head(&mut self, _: Ctx<'_>, head: &[u8], users: u64) -> Result<u64, StateMismatch> {
        let head: Head = postcard::from_bytes(head).map_err(|e| StateMismatch::new(format!("trends: {e}")))?;
        if head.tallies.len() != self.tallies.len() {
            return Err(StateMismatch::new("the number of trends differs"));
        }
        if self.tallies.iter().zip(&head.tallies).any(|(a, b)| SplitRows::shape(&a.by) != SplitRows::shape(&b.by)) {
            return Err(StateMismatch::new("a trend has other breakdowns"));
        }
        if self.tallies.is_empty() {
            return Ok(0);
        }
        let bytes = head
            .entries
            .checked_mul(std::mem::size_of::<Packed>() as u64)
            .and_then(|b| b.checked_add(users.checked_mul(4)?));
        self.tallies = head.tallies;
        self.left_out = head.left_out;
        self.pending_entries = Some(head.entries);
        bytes.ok_or_else(|| StateMismatch::new("trend columns out of range"))
    }

    fn read_columns(&mut self, _: Ctx<'_>, columns: &mut Columns<'_>) -> Result<(), StateMismatch> {
        let Some(entries) = self.pending_entries.take() else {
            return Ok(());
        };
        let lens: Vec<u32> = columns.take(columns.users())?;
        let words = columns.count(entries)?;
        let words: Vec<u64> = columns.take(words)?;
        self.store = rebuild(&lens, &words)
            .ok_or_else(|| StateMismatch::new("the trends' entries do not add up or are out of order"))?;
        Ok(())
    }
}

/// Keeps the days of merged figures in the export window.
pub fn rewindow(out: &mut Figures, in_window: impl Fn(&str) -> bool) {
    for t in &mut out.trends {
        t.rows.retain(|r| in_window(&r.date));
        for split in &mut t.breakdowns {
            split.values.iter_mut().for_each(|v| v.rows.retain(|r| in_window(&r.date)));
        }
    }
}
