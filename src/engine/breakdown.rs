//! Breakdowns: each user's value of each `[[breakdown]]` property, the
//! prop on their earliest event that carries it (at equal times the
//! smallest value in byte order).
//!
//! Per user and breakdown it keeps one `u64`: the time of the event that
//! set the value (42 bits of epoch ms suffice until 2109) above a 7-bit
//! code: 0 for none yet, `1 + i` for listed value i, and for an unlisted
//! value (`other`) `1 + MAX + p`, p being how many listed values sort
//! before it. A late event at an equal time then still compares exactly
//! with the value kept: against a listed one by its text, against an
//! unlisted one by that rank (two unlisted values are both `other`, and
//! only their order against the listed ones can ever matter).
//!
//! The shard asks [`Breakdowns::observe`] before an event reaches the
//! families, and tells each family of every user whose value it moves
//! ([`super::family::Family::relabel`]), so that the family moves the
//! user's figures from the old value's rows to the new one's.

use std::borrow::Cow;
use std::io::Write;

use serde::{Deserialize, Serialize};

use super::StateMismatch;
use super::calendar::Day;
use super::days::{DayRows, ensure_len};
use super::def::{BreakdownDef, MAX_BREAKDOWN_VALUE_BYTES, MAX_BREAKDOWN_VALUES};
use super::family::{Columns, Ctx, Family, Horizon, Touch, View, column};
use super::figures::{Figures, Split, ValueRows};
use super::users::Users;
use crate::event::Event;

const CODE_BITS: u32 = 7;
const CODE_MASK: u64 = (1 << CODE_BITS) - 1;
/// The first code of an unlisted value.
const OTHER: u64 = 1 + MAX_BREAKDOWN_VALUES as u64;

/// A user's value of one breakdown moved from slot `from` to slot `to`
/// (slots as [`BreakdownDef::label`] names them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    /// The breakdown's index.
    pub breakdown: usize,
    /// The slot the user's figures leave.
    pub from: u8,
    /// The slot they join.
    pub to: u8,
}

/// The values of the breakdowns of one shard's users.
#[derive(Debug, Clone, Default)]
pub struct Breakdowns {
    /// Per breakdown: per user, time and code (see the module docs).
    columns: Vec<Vec<u64>>,
    /// Per breakdown: its listed values in byte order, with their index.
    sorted: Vec<Vec<(String, u8)>>,
    /// Per breakdown: the slots of the user of the last event observed.
    labels: Vec<u8>,
}

/// The text of a prop as a breakdown takes it: a string's value, else its
/// JSON text as written; `null`, and a string with a lone surrogate
/// (which no UTF-8 text holds), are no value.
fn prop_text<'a>(ev: &Event<'a>, prop: &str) -> Option<Cow<'a, str>> {
    let raw = ev.prop_raw(prop)?;
    if raw.starts_with('"') {
        serde_json::from_str::<Cow<'a, str>>(raw).ok()
    } else if raw == "null" {
        None
    } else {
        Some(Cow::Borrowed(raw))
    }
}

impl Breakdowns {
    /// The slot code `code` of breakdown `def` stands for.
    fn slot(def: &BreakdownDef, code: u64) -> u8 {
        match code {
            0 => def.none() as u8,
            c if c < OTHER => (c - 1) as u8,
            _ => def.other() as u8,
        }
    }

    /// The code of value `text` for breakdown `b`.
    fn code(&self, def: &BreakdownDef, b: usize, text: &str) -> u64 {
        let sorted = &self.sorted[b];
        let rank = sorted.partition_point(|(v, _)| v.as_str() < text);
        if text.len() <= MAX_BREAKDOWN_VALUE_BYTES
            && let Some((v, i)) = sorted.get(rank)
            && v == text
        {
            return 1 + u64::from(*i);
        }
        debug_assert!(rank <= def.values.len());
        OTHER + rank as u64
    }

    /// Whether value code `a` sorts before code `b` (both set), for ties
    /// of equal times: listed values by their text, an unlisted value by
    /// its rank among them.
    fn before(&self, def: &BreakdownDef, b: usize, a: u64, than: u64) -> bool {
        // The rank among the listed values of a code: for a listed value
        // twice its sorted position plus one, for an unlisted one twice
        // the count of listed values before it; two unlisted ones of one
        // rank are equal (and both `other`).
        let key = |code: u64| -> u64 {
            if code >= OTHER {
                2 * (code - OTHER)
            } else {
                let text = &def.values[(code - 1) as usize];
                2 * self.sorted[b].partition_point(|(v, _)| v < text) as u64 + 1
            }
        };
        key(a) < key(than)
    }

    /// Reads the breakdown props of `ev` (at `ts`, of user `uid`): sets the
    /// values it gives earlier than those kept, adds a [`Move`] to `moves`
    /// for each whose slot changes, and leaves the user's slots for
    /// [`Breakdowns::labels`].
    pub fn observe(&mut self, defs: &[BreakdownDef], uid: u32, ev: &Event<'_>, ts: i64, moves: &mut Vec<Move>) {
        let u = uid as usize;
        for (b, def) in defs.iter().enumerate() {
            let kept = self.columns[b][u];
            let (kept_ts, kept_code) = ((kept >> CODE_BITS) as i64, kept & CODE_MASK);
            // Only an event no later than the one that set the value can
            // change it: the props of the others (nearly all, in order)
            // are not read.
            let may_set = kept_code == 0 || ts <= kept_ts;
            if may_set && let Some(text) = prop_text(ev, &def.prop) {
                let code = self.code(def, b, &text);
                let earlier = kept_code == 0
                    || ts < kept_ts
                    || (ts == kept_ts && code != kept_code && self.before(def, b, code, kept_code));
                if earlier {
                    self.columns[b][u] = (ts.max(0) as u64) << CODE_BITS | code;
                    let (from, to) = (Self::slot(def, kept_code), Self::slot(def, code));
                    if from != to {
                        moves.push(Move { breakdown: b, from, to });
                    }
                }
            }
            self.labels[b] = Self::slot(def, self.columns[b][u] & CODE_MASK);
        }
    }

    /// The slots of the user of the last event observed, per breakdown.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }
}

impl Family for Breakdowns {
    fn new(ctx: Ctx<'_>) -> Self {
        let defs = &ctx.cfg.breakdowns;
        let sorted = defs
            .iter()
            .map(|def| {
                let mut v: Vec<(String, u8)> = def.values.iter().cloned().zip(0u8..).collect();
                v.sort();
                v
            })
            .collect();
        Breakdowns { columns: vec![Vec::new(); defs.len()], sorted, labels: vec![0; defs.len()] }
    }

    fn push_user(&mut self) {
        for column in &mut self.columns {
            column.push(0);
        }
    }

    /// Nothing: the shard calls [`Breakdowns::observe`] before the
    /// families see an event.
    fn record(&mut self, _: Ctx<'_>, _: &Users, _: &Touch<'_>) {}

    fn maintain(&mut self, _: Ctx<'_>, _: Horizon) {}

    fn reach_days(&self, _: Ctx<'_>) -> i32 {
        0
    }

    /// Nothing of its own: the families publish their split figures.
    fn publish(&self, _: Ctx<'_>, _: View, _: &mut Figures) {}

    fn heap_bytes(&self) -> usize {
        self.columns.iter().map(|c| c.capacity() * 8).sum()
    }

    fn write_head(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_stdvec(&(self.columns.len() as u64))
    }

    fn write_columns(&self, out: &mut dyn Write) -> std::io::Result<()> {
        for c in &self.columns {
            column(out, c)?;
        }
        Ok(())
    }

    fn read_head(&mut self, _: Ctx<'_>, head: &[u8], users: u64) -> Result<u64, StateMismatch> {
        let n: u64 = postcard::from_bytes(head).map_err(|e| StateMismatch::new(format!("breakdowns: {e}")))?;
        if n != self.columns.len() as u64 {
            return Err(StateMismatch::new("the breakdowns differ"));
        }
        n.checked_mul(users)
            .and_then(|c| c.checked_mul(8))
            .ok_or_else(|| StateMismatch::new("breakdown columns out of range"))
    }

    fn read_columns(&mut self, _: Ctx<'_>, columns: &mut Columns<'_>) -> Result<(), StateMismatch> {
        let n = columns.users();
        for c in &mut self.columns {
            *c = columns.take(n)?;
        }
        Ok(())
    }
}

/// A family's counter rows split by one breakdown: per day, per slot,
/// `stride` counts (a cohort's size and retained users, a funnel's
/// levels, a day's new and active users).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SplitRows {
    /// The breakdown's index.
    pub breakdown: usize,
    slots: usize,
    stride: usize,
    rows: DayRows<Vec<i64>>,
}

impl SplitRows {
    /// Empty rows for breakdown `breakdown` of `def`, `stride` counts a
    /// value.
    pub fn new(breakdown: usize, def: &BreakdownDef, stride: usize) -> Self {
        SplitRows { breakdown, slots: def.slots(), stride, rows: DayRows::default() }
    }

    /// The counts of slot `slot` on `day` (created on first use; `None`
    /// for a day dropped).
    pub fn row(&mut self, day: Day, slot: u8) -> Option<&mut [i64]> {
        let (stride, len) = (self.stride, self.slots * self.stride);
        let row = ensure_len(self.rows.row(day)?, len);
        let at = usize::from(slot) * stride;
        row.get_mut(at..at + stride)
    }

    /// The counts of slot `slot` on `day`, zeros where none were moved.
    pub fn get(&self, day: Day, slot: usize) -> impl Iterator<Item = i64> + '_ {
        let row = self.rows.get(day).map_or(&[][..], Vec::as_slice);
        (0..self.stride).map(move |i| row.get(slot * self.stride + i).copied().unwrap_or(0))
    }

    /// The days held.
    pub fn days(&self) -> Vec<Day> {
        self.rows.range(Day::MIN, Day::MAX).map(|(d, _)| d).collect()
    }

    /// The days held in `from..=to`.
    pub fn days_in(&self, from: Day, to: Day) -> impl Iterator<Item = Day> + '_ {
        self.rows.range(from, to).map(|(d, _)| d)
    }

    /// Moves `counts` of `day` from slot `from` to slot `to`.
    pub fn shift(&mut self, day: Day, change: Move, counts: &[i64]) {
        for (slot, sign) in [(change.from, -1), (change.to, 1)] {
            if let Some(row) = self.row(day, slot) {
                for (cell, c) in row.iter_mut().zip(counts) {
                    *cell += sign * c;
                }
            }
        }
    }

    /// Drops rows before `day`.
    pub fn drop_before(&mut self, day: Day) {
        self.rows.drop_before(day);
    }

    /// The rows of the days in `from..=to` as figures of breakdown `def`:
    /// per slot, the row `row` makes of each day's counts (`None`: the
    /// value has none that day).
    pub fn publish<T>(
        &self,
        def: &BreakdownDef,
        from: Day,
        to: Day,
        mut row: impl FnMut(Day, Vec<u64>) -> Option<T>,
    ) -> Split<T> {
        let values = self
            .slots()
            .map(|slot| {
                let rows =
                    self.days_in(from, to).filter_map(|d| row(d, self.get(d, slot).map(|c| c.max(0) as u64).collect()));
                ValueRows { value: def.label(slot).to_owned(), rows: rows.collect() }
            })
            .collect();
        Split { breakdown: def.name.clone(), values }
    }

    /// What a snapshot's split rows must match: per split, its breakdown
    /// and slots.
    pub fn shape(splits: &[SplitRows]) -> Vec<(usize, usize)> {
        splits.iter().map(|s| (s.breakdown, s.slots)).collect()
    }

    /// The slots the rows are split into (see [`BreakdownDef::label`]).
    pub fn slots(&self) -> std::ops::Range<usize> {
        0..self.slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::calendar::Calendar;
    use crate::engine::def::EngineConfig;

    fn channel() -> EngineConfig {
        let mut cfg = EngineConfig::for_tests(35, Vec::new(), Vec::new());
        cfg.breakdowns = vec![BreakdownDef {
            name: "channel".into(),
            prop: "channel".into(),
            values: vec!["organic".into(), "ads".into(), "referral".into()],
        }];
        cfg
    }

    fn observe(b: &mut Breakdowns, cfg: &EngineConfig, props: &str, ts: i64) -> (Vec<Move>, u8) {
        let line = format!(r#"{{"user_id":"u","event":"e","ts":{ts},"props":{props}}}"#);
        let ev = crate::event::decode(line.as_bytes(), &cfg.fields, None).expect("valid");
        let mut moves = Vec::new();
        b.observe(&cfg.breakdowns, 0, &ev, ts, &mut moves);
        (moves, b.labels()[0])
    }

    /// The earliest event carrying the prop sets the value; at equal
    /// times the smallest value in byte order, listed or not.
    #[test]
    fn the_earliest_value_wins_and_ties_go_to_the_smallest() {
        let cfg = channel();
        let cal = Calendar::new(cfg.timezone.clone());
        let mut b = Breakdowns::new(Ctx { cfg: &cfg, cal: &cal });
        b.push_user();
        let (organic, ads, referral, other, none) = (0, 1, 2, 3, 4);
        assert_eq!(observe(&mut b, &cfg, "{}", 100), (vec![], none));
        assert_eq!(observe(&mut b, &cfg, r#"{"channel":"referral"}"#, 100).1, referral);
        // Later: nothing moves.
        assert_eq!(observe(&mut b, &cfg, r#"{"channel":"ads"}"#, 200), (vec![], referral));
        // Earlier and unlisted: to other.
        let (moves, slot) = observe(&mut b, &cfg, r#"{"channel":"tv"}"#, 50);
        assert_eq!((moves[0].from, moves[0].to, slot), (referral, other, other));
        // Same time: "organic" < "tv" moves; "zz" (after "tv") does not.
        assert_eq!(observe(&mut b, &cfg, r#"{"channel":"zz"}"#, 50), (vec![], other));
        assert_eq!(observe(&mut b, &cfg, r#"{"channel":"organic"}"#, 50).1, organic);
        // "ads" < "organic" at the same time.
        assert_eq!(observe(&mut b, &cfg, r#"{"channel":"ads"}"#, 50).1, ads);
        // A number is its JSON text ("7" sorts before "ads"); null, and a
        // lone surrogate, are no value.
        assert_eq!(observe(&mut b, &cfg, r#"{"channel":null}"#, 10).1, ads);
        assert_eq!(observe(&mut b, &cfg, r#"{"channel":"\udfff"}"#, 10).1, ads);
        // Escapes are read: "\u0061ds" is "ads".
        assert_eq!(observe(&mut b, &cfg, r#"{"channel":"\u0061ds"}"#, 50).1, ads);
        assert_eq!(observe(&mut b, &cfg, r#"{"channel":7}"#, 50).1, other);
        // Too long a listed-looking value is other.
        let long = format!(r#"{{"channel":"{}"}}"#, "a".repeat(300));
        assert_eq!(observe(&mut b, &cfg, &long, 1).1, other);
    }
}
