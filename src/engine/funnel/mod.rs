//! Funnels: per entry day, the users who reached each step within the
//! window (ClickHouse's `windowFunnel`), the conversions and the time to
//! convert to each step.
//!
//! Per user it keeps the events that can fill a step within the horizon,
//! in stores shared by funnels whose steps fit one entry ([`store`]); a
//! day's level is recomputed from them before and after an event
//! ([`chain`]), and the counters move by the difference.

pub mod chain;
mod record;
pub mod store;

use std::collections::HashSet;
use std::io::Write;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

pub use chain::{Entry, Hit, Packed, Pass, Steps, level};
use record::{Recorded, Recording, entry_levels};
use store::{Layout, Segments, Store};

use super::StateMismatch;
use super::breakdown::{Move, SplitRows};
use super::calendar::Calendar;
use super::days::DayRows;
use super::def::{EngineConfig, EventMatch, FilterValue};
use super::family::{Columns, Ctx, Family, Horizon, Touch, View, column};
use super::figures::{Figures, FunnelRow, FunnelTable, TimeToConvert};
use super::users::Users;
use crate::event::{Event, PropValue};

const DAY_MS: i64 = 86_400_000;

/// What an event name means to the funnels.
#[derive(Debug, Clone, Default)]
pub struct Fills {
    /// Per funnel: steps this name fills without a property filter.
    steps: Vec<u32>,
    /// Steps this name fills if their property filter holds: (funnel, step).
    filtered: Vec<(usize, usize)>,
}

/// The names the steps match by name.
pub fn names(cfg: &EngineConfig) -> impl Iterator<Item = &str> {
    cfg.funnels.iter().flat_map(|f| &f.steps).filter_map(|step| match &step.event {
        EventMatch::Named(n) => Some(n.as_str()),
        EventMatch::Any => None,
    })
}

/// What events of `name` (`None`: a name no definition names) fill.
pub fn classify(cfg: &EngineConfig, name: Option<&str>) -> Fills {
    let mut fills = Fills { steps: vec![0; cfg.funnels.len()], filtered: Vec::new() };
    for (f, def) in cfg.funnels.iter().enumerate() {
        for (k, step) in def.steps.iter().enumerate() {
            let hit = match (&step.event, name) {
                (EventMatch::Any, _) => true,
                (EventMatch::Named(n), Some(name)) => n == name,
                (EventMatch::Named(_), None) => false,
            };
            if !hit {
                continue;
            }
            if step.filter.is_empty() {
                fills.steps[f] |= 1 << k;
            } else {
                fills.filtered.push((f, k));
            }
        }
    }
    fills
}

#[derive(Debug, Clone)]
struct FunnelState {
    /// Where the funnel's steps lie in its store's entry masks (see
    /// `Funnels::members` for which store).
    steps: Steps,
    tally: FunnelTally,
}

/// A funnel's figures.
#[derive(Debug, Clone)]
struct FunnelTally {
    /// Per entry day: users with level ≥ k+1.
    rows: DayRows<Vec<i64>>,
    conversions: Vec<u64>,
    /// Time to convert to step k+1, in ms.
    time_to_convert: Vec<Histogram<u64>>,
    /// Levels before an event, per entry day it reaches; kept to avoid an
    /// allocation.
    before: Vec<usize>,
    /// In `default` mode, the passes that found them: an event after all
    /// of the user's others goes on from them. Reused in place.
    passes: Vec<chain::Pass>,
    /// The rows split by each of the funnel's breakdowns: per value, the
    /// users with level ≥ k+1.
    by: Vec<SplitRows>,
}

/// The funnel family.
#[derive(Debug, Clone)]
pub struct Funnels {
    funnels: Vec<FunnelState>,
    /// Per user (index), the funnels' events: stores shared by funnels as
    /// [`Layout`] says.
    stores: Vec<Store>,
    /// Per store, the funnels that use it.
    members: Vec<Vec<usize>>,
    /// Funnel events a full funnel store could not keep, since this state
    /// was made or restored (not in snapshots).
    refused: u64,
    /// Funnel events of users who already held `max_funnel_events_per_user`,
    /// since this state was made or restored (not in snapshots).
    capped_events: u64,
    /// Per store, the users found at the cap since its last prune: until
    /// the next one they cannot drop below it, so their funnel events are
    /// left out without loading their hits (as many as the cap, each
    /// time). Bounded: no more users than the store's
    /// hits over the cap.
    capped: Vec<HashSet<u32, foldhash::fast::FixedState>>,
    /// Whether some funnel keeps distinct events of one millisecond apart,
    /// and so reads each event's tag.
    needs_tags: bool,
    /// Per-event step masks, one per funnel; kept to avoid an allocation.
    scratch_masks: Vec<u32>,
    /// A user's hits while an event is added to them, per entry layout;
    /// kept to avoid an allocation.
    scratch_packed: Vec<Packed>,
    scratch_wide: Vec<Hit>,
    /// The distinct property keys step filters read.
    filter_keys: Vec<String>,
    /// Per funnel and step: the filter as (index into `filter_keys`, value).
    filters: Vec<Vec<Vec<(usize, FilterValue)>>>,
    /// Snapshot heads read, until their columns are.
    pending: Option<Head>,
}

/// The snapshot head of the funnels.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Head {
    funnels: Vec<FunnelHead>,
    stores: Vec<StoreHead>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FunnelHead {
    rows: DayRows<Vec<i64>>,
    /// The rows split by breakdowns.
    by: Vec<SplitRows>,
    conversions: Vec<u64>,
    /// Per step: (value, count) pairs of the time-to-convert histogram.
    time_to_convert: Vec<Vec<(u64, u64)>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoreHead {
    /// Bytes an entry takes: 8 (packed) or 16 (with tags).
    entry_bytes: u8,
    entries: u64,
}

impl Funnels {
    /// Lowers every store's arena limit (tests of a full store).
    #[cfg(test)]
    pub fn limit_arenas(&mut self, units: usize) {
        self.stores.iter_mut().for_each(|s| s.limit_arena(units));
    }

    /// The per-funnel step masks of an event: the steps its name fills,
    /// and those whose filters its props pass.
    fn masks(&self, fills: &Fills, ev: &Event<'_>, masks: &mut Vec<u32>) {
        masks.clear();
        masks.extend_from_slice(&fills.steps);
        if fills.filtered.is_empty() {
            return;
        }
        // One pass over props for every filter key this event may need
        // (no allocation in the common case of a single key).
        let one;
        let many;
        let values: &[Option<PropValue<'_>>] = if let [key] = &self.filter_keys[..] {
            one = [ev.prop(key)];
            &one
        } else {
            many = ev.props(&self.filter_keys);
            &many
        };
        for &(f, k) in &fills.filtered {
            if self.filters[f][k].iter().all(|(key, want)| prop_equals(values[*key].as_ref(), want)) {
                masks[f] |= 1 << k;
            }
        }
    }

    /// Adds `hit` (its mask: the steps of every funnel of store `s` the
    /// event fills; `masks`: per funnel, its own steps) of the event `t` to
    /// the store, and
    /// moves the counters of each funnel whose levels it raises, unless
    /// the store or the user's share of it is full: the event is then left
    /// out of the funnels.
    fn store_event(&mut self, ctx: Ctx<'_>, s: usize, hit: Hit, masks: &[u32], t: &Touch<'_>) -> Recorded {
        let (uid, day) = (t.uid, t.day);
        let recording = Recording {
            labels: t.labels,
            cal: ctx.cal,
            defs: &ctx.cfg.funnels,
            states: &mut self.funnels,
            masks,
            user_cap: ctx.cfg.max_funnel_events_per_user as usize,
            capped: &mut self.capped[s],
        };
        let members = &self.members[s];
        match &mut self.stores[s] {
            Store::Packed(store) => recording.record(store, &mut self.scratch_packed, members, uid, hit, day),
            Store::Wide(store) => recording.record(store, &mut self.scratch_wide, members, uid, hit, day),
        }
    }
}

impl Family for Funnels {
    fn new(ctx: Ctx<'_>) -> Self {
        let cfg = ctx.cfg;
        let layout = Layout::of(&cfg.funnels);
        let stores: Vec<Store> = layout.wide.iter().map(|&wide| Store::new(wide)).collect();
        let members = (0..stores.len()).map(|s| layout.members(s).collect()).collect();
        let funnels = cfg
            .funnels
            .iter()
            .zip(&layout.funnels)
            .map(|(def, &(_, steps))| FunnelState {
                steps,
                tally: FunnelTally {
                    rows: DayRows::default(),
                    conversions: vec![0; def.steps.len()],
                    time_to_convert: (0..def.steps.len())
                        .map(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant figures are valid")))
                        .collect(),
                    before: Vec::new(),
                    passes: Vec::new(),
                    by: def
                        .breakdowns
                        .iter()
                        .map(|&b| SplitRows::new(b, &cfg.breakdowns[b], def.steps.len()))
                        .collect(),
                },
            })
            .collect();
        let mut filter_keys: Vec<String> = Vec::new();
        let filters = cfg
            .funnels
            .iter()
            .map(|f| {
                f.steps
                    .iter()
                    .map(|step| {
                        step.filter
                            .iter()
                            .map(|(key, want)| {
                                let i = filter_keys.iter().position(|k| k == key).unwrap_or_else(|| {
                                    filter_keys.push(key.clone());
                                    filter_keys.len() - 1
                                });
                                (i, want.clone())
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        Funnels {
            funnels,
            capped: vec![HashSet::default(); stores.len()],
            stores,
            members,
            refused: 0,
            capped_events: 0,
            needs_tags: layout.wide.iter().any(|&wide| wide),
            scratch_masks: Vec::new(),
            scratch_packed: Vec::new(),
            scratch_wide: Vec::new(),
            filter_keys,
            filters,
            pending: None,
        }
    }

    fn push_user(&mut self) {
        for store in &mut self.stores {
            store.push_user();
        }
    }

    fn record(&mut self, ctx: Ctx<'_>, _: &Users, t: &Touch<'_>) {
        let mut masks = std::mem::take(&mut self.scratch_masks);
        self.masks(&t.class.funnel, t.ev, &mut masks);
        if masks.iter().any(|&m| m != 0) {
            let tag = if self.needs_tags { event_tag(t.ev) } else { 0 };
            for s in 0..self.stores.len() {
                let mask = self.members[s].iter().fold(0, |m, &f| m | masks[f] << self.funnels[f].steps.shift);
                if mask == 0 {
                    continue;
                }
                match self.store_event(ctx, s, Hit { ts: t.ts, mask, tag }, &masks, t) {
                    Recorded::Kept => {}
                    Recorded::StoreFull => self.refused += 1,
                    Recorded::UserFull => self.capped_events += 1,
                }
            }
        }
        self.scratch_masks = masks;
    }

    fn relabel(&mut self, ctx: Ctx<'_>, _: &Users, uid: u32, change: Move) {
        for f in 0..self.funnels.len() {
            let Some(k) = self.funnels[f].tally.by.iter().position(|s| s.breakdown == change.breakdown) else {
                continue;
            };
            let Some(s) = self.members.iter().position(|m| m.contains(&f)) else { continue };
            let (def, steps) = (&ctx.cfg.funnels[f], self.funnels[f].steps);
            let levels = match &self.stores[s] {
                Store::Packed(store) => {
                    store.load(uid, &mut self.scratch_packed);
                    entry_levels(ctx.cal, def, steps, &self.scratch_packed)
                }
                Store::Wide(store) => {
                    store.load(uid, &mut self.scratch_wide);
                    entry_levels(ctx.cal, def, steps, &self.scratch_wide)
                }
            };
            let split = &mut self.funnels[f].tally.by[k];
            for (d, level) in levels {
                let counts: Vec<i64> = (0..steps.count).map(|i| i64::from(i < level)).collect();
                split.shift(d, change, &counts);
            }
        }
    }

    fn maintain(&mut self, ctx: Ctx<'_>, horizon: Horizon) {
        for state in &mut self.funnels {
            state.tally.rows.drop_before(horizon.keep_from);
            state.tally.by.iter_mut().for_each(|split| split.drop_before(horizon.keep_from));
        }
        for (s, store) in self.stores.iter_mut().enumerate() {
            // An accepted event is at or after the horizon and reaches
            // entry days from the day of its time minus the window on; their
            // levels read hits from those days' starts. A shared store
            // keeps what its longest window needs.
            let window = self.members[s].iter().map(|&f| ctx.cfg.funnels[f].window_ms).max().unwrap_or(0);
            let reach = ctx.cal.day_of((horizon.horizon_ms - window).max(0));
            store.prune(ctx.cal.bounds(reach).0);
            // Old hits gone, users at the cap may have room again.
            self.capped[s].clear();
        }
    }

    fn reach_days(&self, ctx: Ctx<'_>) -> i32 {
        let max_window_ms = ctx.cfg.funnels.iter().map(|f| f.window_ms).max().unwrap_or(0);
        (max_window_ms / DAY_MS) as i32 + 1
    }

    fn publish(&self, ctx: Ctx<'_>, view: View, out: &mut Figures) {
        out.funnel_refused = self.refused;
        out.funnel_capped = self.capped_events;
        out.funnel_store_fill = self.stores.iter().map(Store::fill).fold(0.0, f64::max);
        for (state, def) in self.funnels.iter().zip(&ctx.cfg.funnels) {
            let tally = &state.tally;
            let steps = def.steps.len();
            let entries = tally
                .rows
                .range(view.from, view.to)
                .filter(|(_, users)| users.first().is_some_and(|&u| u > 0))
                .map(|(d, users)| FunnelRow {
                    date: Calendar::label(d),
                    users: (0..steps).map(|k| users.get(k).copied().unwrap_or(0).max(0) as u64).collect(),
                })
                .collect();
            let breakdowns = tally
                .by
                .iter()
                .map(|split| {
                    split.publish(&ctx.cfg.breakdowns[split.breakdown], view.from, view.to, |d, users| {
                        (users.first().is_some_and(|&u| u > 0)).then(|| FunnelRow { date: Calendar::label(d), users })
                    })
                })
                .collect();
            out.funnels.push(FunnelTable {
                breakdowns,
                name: def.name.clone(),
                steps: def.steps.iter().map(|s| s.label().to_owned()).collect(),
                window_seconds: def.window_ms as f64 / 1000.0,
                mode: def.mode.as_str(),
                entries,
                conversions_total: tally.conversions.clone(),
                time_to_convert: tally.time_to_convert.iter().map(TimeToConvert::of).collect(),
                histograms: tally.time_to_convert.clone(),
            });
        }
    }

    fn heap_bytes(&self) -> usize {
        self.stores.iter().map(Store::heap_bytes).sum()
    }

    fn write_head(&self) -> Result<Vec<u8>, postcard::Error> {
        let head = Head {
            funnels: self
                .funnels
                .iter()
                .map(|f| FunnelHead {
                    rows: f.tally.rows.clone(),
                    by: f.tally.by.clone(),
                    conversions: f.tally.conversions.clone(),
                    time_to_convert: f
                        .tally
                        .time_to_convert
                        .iter()
                        .map(|h| h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect())
                        .collect(),
                })
                .collect(),
            stores: self
                .stores
                .iter()
                .map(|s| StoreHead { entry_bytes: s.entry_bytes() as u8, entries: s.entries() as u64 })
                .collect(),
        };
        postcard::to_stdvec(&head)
    }

    fn write_columns(&self, out: &mut dyn Write) -> std::io::Result<()> {
        for store in &self.stores {
            match store {
                Store::Packed(s) => write_store(out, s)?,
                Store::Wide(s) => write_store(out, s)?,
            }
        }
        Ok(())
    }

    fn read_head(&mut self, _: Ctx<'_>, head: &[u8], users: u64) -> Result<u64, StateMismatch> {
        let head: Head = postcard::from_bytes(head).map_err(|e| StateMismatch::new(format!("funnels: {e}")))?;
        if head.funnels.len() != self.funnels.len() || head.stores.len() != self.stores.len() {
            return Err(StateMismatch::new("the number of funnels or funnel stores differs"));
        }
        let mut total = 0u64;
        for (store, h) in self.stores.iter().zip(&head.stores) {
            if usize::from(h.entry_bytes) != store.entry_bytes() {
                return Err(StateMismatch::new("a funnel store's entries have another layout"));
            }
            let bytes =
                h.entries.checked_mul(u64::from(h.entry_bytes)).and_then(|b| b.checked_add(users.checked_mul(4)?));
            total = bytes
                .and_then(|b| total.checked_add(b))
                .ok_or_else(|| StateMismatch::new("funnel columns out of range"))?;
        }
        for (state, h) in self.funnels.iter_mut().zip(&head.funnels) {
            let steps = state.tally.conversions.len();
            if h.conversions.len() != steps || h.time_to_convert.len() != steps {
                return Err(StateMismatch::new("a funnel has another number of steps"));
            }
            if SplitRows::shape(&state.tally.by) != SplitRows::shape(&h.by) {
                return Err(StateMismatch::new("a funnel has other breakdowns"));
            }
        }
        self.pending = Some(head);
        Ok(total)
    }

    fn read_columns(&mut self, _: Ctx<'_>, columns: &mut Columns<'_>) -> Result<(), StateMismatch> {
        let head = self.pending.take().ok_or_else(|| StateMismatch::new("funnel columns before their head"))?;
        let n = columns.users();
        let mut parts = Vec::with_capacity(self.stores.len());
        for (store, h) in self.stores.iter().zip(&head.stores) {
            let lens: Vec<u32> = columns.take(n)?;
            let words = columns.count(h.entries)?.saturating_mul(store.entry_bytes() / 8);
            parts.push((store, lens, columns.take::<u64>(words)?));
        }
        // A thread per store lays out its arena.
        let stores: Vec<Result<Store, StateMismatch>> = std::thread::scope(|scope| {
            let jobs: Vec<_> = parts
                .into_iter()
                .map(|(store, lens, words)| {
                    scope.spawn(move || {
                        let rebuilt = match store {
                            Store::Packed(_) => rebuild(&lens, &words).map(Store::Packed),
                            Store::Wide(_) => rebuild(&lens, &words).map(Store::Wide),
                        };
                        rebuilt
                            .ok_or_else(|| StateMismatch::new("a funnel's entries do not add up or are out of order"))
                    })
                })
                .collect();
            jobs.into_iter()
                .map(|job| job.join().unwrap_or_else(|_| Err(StateMismatch::new("decoding panicked"))))
                .collect()
        });
        for (slot, store) in self.stores.iter_mut().zip(stores) {
            *slot = store?;
        }
        for (state, h) in self.funnels.iter_mut().zip(head.funnels) {
            let tally = &mut state.tally;
            tally.rows = h.rows;
            tally.by = h.by;
            tally.conversions = h.conversions;
            for (hist, values) in tally.time_to_convert.iter_mut().zip(h.time_to_convert) {
                for (value, count) in values {
                    hist.saturating_record_n(value, count);
                }
            }
        }
        Ok(())
    }
}

/// Writes a store's columns: each user's number of entries, then the
/// entries user after user.
pub(crate) fn write_store<S: Segments>(out: &mut dyn Write, store: &S) -> std::io::Result<()> {
    for len in store.lens() {
        out.write_all(&len.to_le_bytes())?;
    }
    let mut hits = Vec::new();
    for u in 0..store.users() {
        store.load(u as u32, &mut hits);
        column(out, &hits)?;
    }
    Ok(())
}

/// The store of columns [`write_store`] wrote.
pub(crate) fn rebuild<S: Segments>(lens: &[u32], words: &[u64]) -> Option<S> {
    S::from_parts(lens, bytemuck::try_cast_slice(words).ok()?)
}

/// Keeps the entry days of merged figures in the export window.
pub fn rewindow(out: &mut Figures, in_window: impl Fn(&str) -> bool) {
    for t in &mut out.funnels {
        t.entries.retain(|r| in_window(&r.date));
        for split in &mut t.breakdowns {
            split.values.iter_mut().for_each(|v| v.rows.retain(|r| in_window(&r.date)));
        }
    }
}

/// A stable hash of what makes two events of one user at one time distinct.
fn event_tag(ev: &Event<'_>) -> u32 {
    use std::hash::BuildHasher;
    let state = foldhash::fast::FixedState::with_seed(0x636f_686f_7274);
    state.hash_one((ev.name.as_ref(), ev.props_raw().unwrap_or(""))) as u32
}

/// Whether a prop's value passes a filter's equality.
pub(crate) fn prop_equals(value: Option<&PropValue<'_>>, want: &FilterValue) -> bool {
    match (value, want) {
        (Some(PropValue::Str(s)), FilterValue::Str(w)) => s == w.as_str(),
        (Some(PropValue::Num(x)), FilterValue::Num(w)) => x == w,
        (Some(PropValue::Bool(b)), FilterValue::Bool(w)) => b == w,
        _ => false,
    }
}
