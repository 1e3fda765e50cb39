//! The engine: exact retention, activity and funnel state for the events of
//! one shard (one Kafka partition, or one replay).
//!
//! It is a deterministic state machine with no I/O and no clock of its own:
//! the wall clock is passed to [`Engine::apply`] and is used only to refuse
//! events too far in the future. Every figure is kept as a counter that is
//! updated incrementally when a (user, day) fact first becomes true, so a
//! scrape costs O(days × definitions), never O(users).
//!
//! Arrival order within the horizon does not matter: per user the engine
//! keeps what a late event needs to correct the counters it already moved
//! (the set of active days, the cohort day, the funnel events of the
//! horizon), and every update is a move between exact states. Replaying an
//! event changes nothing: each fact is counted when it first becomes true.

pub mod calendar;
pub mod days;
pub mod def;
pub mod figures;
pub mod funnel;
pub mod ids;
pub mod state;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::allocator::GrowthTrim;
use crate::event::{self, Event, PropValue, Reject};
use calendar::{Calendar, Day};
use days::{Day16, DayRows, DaySets, NO_DAY};
use def::{EngineConfig, EventMatch, FilterValue, FunnelDef, FunnelMode, RetentionMode};
use figures::{ActivityRow, CohortRow, Counters, Figures, FunnelRow, FunnelTable, RetentionTable, TimeToConvert};
use funnel::{Entry, Hit, Steps};
use ids::UserIds;
pub use state::StateMismatch;
use store::{Layout, Segments, Store};

const DAY_MS: i64 = 86_400_000;
/// The longest activity window (MAU).
const MAU_DAYS: i32 = 30;
const WAU_DAYS: i32 = 7;

/// What one event name means to the configured definitions, computed once
/// per name at start so that an event costs one hash lookup.
#[derive(Debug, Clone, Default)]
struct Class {
    /// Bit r: a cohort event of retention definition r.
    cohort: u64,
    /// Bit r: a return event of retention definition r.
    returns: u64,
    /// Per funnel: steps this name fills without a property filter.
    steps: Vec<u32>,
    /// Steps this name fills if their property filter holds: (funnel, step).
    filtered: Vec<(usize, usize)>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ActivityCounts {
    new_users: i64,
    dau: i64,
    wau: i64,
    mau: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CohortCounts {
    users: i64,
    retained: Vec<i64>,
}

#[derive(Debug, Clone)]
struct RetentionState {
    cohort: Cohort,
    returns: Returns,
    rows: DayRows<CohortCounts>,
}

/// Where a retention definition finds each user's cohort day.
#[derive(Debug, Clone)]
enum Cohort {
    /// Any event is a cohort event: the user's `first_seen` is the day.
    FirstSeen,
    /// Per user: the cohort day, or [`NO_DAY`].
    Own(Vec<Day16>),
    /// The column of an earlier definition with the same cohort event,
    /// which always holds the same days. Only that definition writes it.
    SameAs(usize),
}

/// What a retention definition remembers of each user's return events:
/// no more than its mode needs.
#[derive(Debug, Clone)]
enum Returns {
    /// Any event returns: the user's `active` days serve.
    Active,
    /// `on_or_after`, which only ever asks for the latest return day: per
    /// user that day, or [`NO_DAY`].
    Latest(Vec<Day16>),
    /// `on`: per user the days with a return event.
    Days(DaySets),
}

#[derive(Debug, Clone)]
struct FunnelState {
    /// Where the funnel's steps lie in its store's entry masks (see
    /// `Engine::members` for which store).
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
    passes: Vec<funnel::Pass>,
}

/// The state of one shard. See the module docs. A clone is a full copy
/// (a snapshot written in the background writes one).
#[derive(Debug, Clone)]
pub struct Engine {
    cfg: Arc<EngineConfig>,
    cal: Calendar,
    classes: HashMap<Box<str>, Class, foldhash::fast::RandomState>,
    /// The class of names no definition names.
    other: Class,
    user_ids: UserIds,
    /// Per user: the first day seen (any event).
    first_seen: Vec<Day16>,
    /// Per user: the days with any event.
    active: DaySets,
    retention: Vec<RetentionState>,
    funnels: Vec<FunnelState>,
    /// Per user (index), the funnels' events: stores shared by funnels as
    /// [`Layout`] says.
    stores: Vec<Store>,
    /// Per store, the funnels that use it.
    members: Vec<Vec<usize>>,
    activity: DayRows<ActivityCounts>,
    max_ts: Option<i64>,
    /// The watermark day at the last maintenance pass.
    maintained_day: Day,
    counters: Counters,
    /// Funnel events a full funnel store could not keep, since this engine
    /// was made or restored (not in snapshots).
    funnel_refused: u64,
    /// Funnel events of users who already held `max_funnel_events_per_user`,
    /// since this engine was made or restored (not in snapshots).
    funnel_capped: u64,
    /// Per store, the users found at the cap since its last prune: until
    /// the next one they cannot drop below it, so their funnel events are
    /// left out without loading their hits (10 000 of them, some 240 000
    /// instructions, each time). Bounded: no more users than the store's
    /// hits over the cap.
    capped: Vec<HashSet<u32, foldhash::fast::FixedState>>,
    /// Gives the heap's free pages back as the per-user columns grow.
    trim: GrowthTrim,
    /// Longest funnel window, ms.
    max_window_ms: i64,
    /// Largest retention N.
    max_retention_day: i32,
    /// Whether some funnel keeps distinct events of one millisecond apart,
    /// and so reads each event's tag.
    needs_tags: bool,
    /// Per-event step masks, one per funnel; kept to avoid an allocation.
    scratch_masks: Vec<u32>,
    /// A user's hits while an event is added to them, per entry layout;
    /// kept to avoid an allocation.
    scratch_packed: Vec<funnel::Packed>,
    scratch_wide: Vec<Hit>,
    /// The distinct property keys step filters read.
    filter_keys: Vec<String>,
    /// Per funnel and step: the filter as (index into `filter_keys`, value).
    filters: Vec<Vec<Vec<(usize, FilterValue)>>>,
}

impl Engine {
    /// An empty engine for `cfg`.
    pub fn new(cfg: Arc<EngineConfig>) -> Self {
        let n_funnels = cfg.funnels.len();
        let mut other = Class { steps: vec![0; n_funnels], ..Class::default() };
        let mut named: Vec<&str> = Vec::new();
        for (r, def) in cfg.retention.iter().enumerate() {
            for (m, is_cohort) in [(&def.cohort_event, true), (&def.return_event, false)] {
                match m {
                    EventMatch::Any if is_cohort => other.cohort |= 1 << r,
                    EventMatch::Any => other.returns |= 1 << r,
                    EventMatch::Named(n) => named.push(n),
                }
            }
        }
        for (f, def) in cfg.funnels.iter().enumerate() {
            for (k, step) in def.steps.iter().enumerate() {
                match (&step.event, step.filter.is_empty()) {
                    (EventMatch::Any, true) => other.steps[f] |= 1 << k,
                    (EventMatch::Any, false) => other.filtered.push((f, k)),
                    (EventMatch::Named(n), _) => named.push(n),
                }
            }
        }
        let mut classes: HashMap<Box<str>, Class, _> = HashMap::default();
        for name in named {
            let mut class = other.clone();
            for (r, def) in cfg.retention.iter().enumerate() {
                if def.cohort_event.matches(name) {
                    class.cohort |= 1 << r;
                }
                if def.return_event.matches(name) {
                    class.returns |= 1 << r;
                }
            }
            for (f, def) in cfg.funnels.iter().enumerate() {
                for (k, step) in def.steps.iter().enumerate() {
                    if step.event == EventMatch::Named(name.to_owned()) {
                        if step.filter.is_empty() {
                            class.steps[f] |= 1 << k;
                        } else {
                            class.filtered.push((f, k));
                        }
                    }
                }
            }
            classes.insert(name.into(), class);
        }

        let retention = cfg
            .retention
            .iter()
            .enumerate()
            .map(|(r, def)| RetentionState {
                cohort: if def.cohort_event == EventMatch::Any {
                    Cohort::FirstSeen
                } else {
                    match cfg.retention[..r].iter().position(|earlier| earlier.cohort_event == def.cohort_event) {
                        Some(owner) => Cohort::SameAs(owner),
                        None => Cohort::Own(Vec::new()),
                    }
                },
                returns: match (&def.return_event, def.mode) {
                    (EventMatch::Any, _) => Returns::Active,
                    (_, RetentionMode::OnOrAfter) => Returns::Latest(Vec::new()),
                    (_, RetentionMode::On) => Returns::Days(DaySets::for_history(cfg.history_days)),
                },
                rows: DayRows::default(),
            })
            .collect();
        let layout = Layout::of(&cfg.funnels);
        let stores: Vec<Store> = layout.wide.iter().map(|&wide| Store::new(wide)).collect();
        let members = (0..stores.len()).map(|s| layout.members(s).collect()).collect();
        let funnels: Vec<FunnelState> = cfg
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
                },
            })
            .collect();
        let needs_tags = layout.wide.iter().any(|&wide| wide);
        let max_window_ms = cfg.funnels.iter().map(|f| f.window_ms).max().unwrap_or(0);
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
        let max_retention_day = cfg.retention.iter().flat_map(|r| r.days.iter().copied()).max().unwrap_or(0) as i32;
        let active = DaySets::for_history(cfg.history_days);
        let store_count = stores.len();
        Engine {
            cal: Calendar::new(cfg.timezone.clone()),
            cfg,
            classes,
            other,
            user_ids: UserIds::default(),
            first_seen: Vec::new(),
            active,
            retention,
            funnels,
            stores,
            members,
            activity: DayRows::default(),
            max_ts: None,
            maintained_day: Day::MIN,
            counters: Counters::default(),
            funnel_refused: 0,
            funnel_capped: 0,
            capped: vec![HashSet::default(); store_count],
            trim: GrowthTrim::default(),
            max_window_ms,
            max_retention_day,
            needs_tags,
            scratch_masks: Vec::new(),
            scratch_packed: Vec::new(),
            scratch_wide: Vec::new(),
            filter_keys,
            filters,
        }
    }

    /// The configuration this engine runs.
    pub fn config(&self) -> &Arc<EngineConfig> {
        &self.cfg
    }

    /// Decodes and ingests one message, counting it as ingested or rejected.
    /// `message_ts_ms` is the Kafka message timestamp, if any.
    pub fn apply(&mut self, bytes: &[u8], message_ts_ms: Option<i64>, now_ms: i64) -> Result<(), Reject> {
        let fallback = if self.cfg.use_message_timestamp { message_ts_ms } else { None };
        let result = event::decode(bytes, &self.cfg.fields, fallback).and_then(|ev| self.ingest(&ev, now_ms));
        match result {
            Ok(()) => self.counters.ingested += 1,
            Err(reason) => self.counters.rejected[reason.index()] += 1,
        }
        result
    }

    /// Counts a message rejected before it reached the engine (e.g. too
    /// large to read).
    pub fn count_rejected(&mut self, reason: Reject) {
        self.counters.rejected[reason.index()] += 1;
    }

    /// The watermark: newest accepted event time minus the allowed lateness.
    pub fn watermark_ms(&self) -> Option<i64> {
        self.max_ts.map(|t| t - self.cfg.allowed_lateness_ms)
    }

    /// Events older than this are too late.
    pub fn horizon_ms(&self) -> Option<i64> {
        self.watermark_ms().map(|w| w - i64::from(self.cfg.history_days) * DAY_MS)
    }

    /// Ingests one decoded event (not counted: see [`Engine::apply`]).
    pub fn ingest(&mut self, ev: &Event<'_>, now_ms: i64) -> Result<(), Reject> {
        let ts = ev.ts_ms;
        if ts > now_ms.saturating_add(self.cfg.max_future_skew_ms) {
            return Err(Reject::TooEarly);
        }
        if self.horizon_ms().is_some_and(|h| ts < h) {
            return Err(Reject::TooLate);
        }
        let Some(uid) = self.user_index(&ev.user_id) else {
            self.counters.untracked += 1;
            return Ok(());
        };
        if self.max_ts.is_none_or(|m| ts > m) {
            self.max_ts = Some(ts);
            let wm_day = self.cal.day_of(ts - self.cfg.allowed_lateness_ms);
            if wm_day > self.maintained_day {
                self.maintain(wm_day);
            }
        }
        let day = self.cal.day_of(ts);
        let class = match self.classes.get(ev.name.as_ref()) {
            Some(c) => c,
            None => &self.other,
        };
        let (cohort_bits, return_bits) = (class.cohort, class.returns);
        let mut masks = std::mem::take(&mut self.scratch_masks);
        masks.clear();
        masks.extend_from_slice(&class.steps);
        if !class.filtered.is_empty() {
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
            for &(f, k) in &class.filtered {
                if self.filters[f][k].iter().all(|(key, want)| prop_equals(values[*key].as_ref(), want)) {
                    masks[f] |= 1 << k;
                }
            }
        }

        // Activity and first-seen.
        let u = uid as usize;
        let prev_active_latest = self.active.latest(u);
        let newly_active = self.active.insert(u, day);
        let old_first = self.first_seen[u].unpack();
        if old_first == NO_DAY || day < old_first {
            self.first_seen[u] = Day16::pack(day);
            if old_first != NO_DAY
                && let Some(row) = self.activity.row(old_first)
            {
                row.new_users -= 1;
            }
            if let Some(row) = self.activity.row(day) {
                row.new_users += 1;
            }
        }
        if newly_active {
            if let Some(row) = self.activity.row(day) {
                row.dau += 1;
            }
            // Day d's window newly holds the user iff no other active day
            // falls in it: d after prev + window - 1 and before next.
            let (prev, next) = self.active.neighbors(u, day);
            let until = next.unwrap_or(Day::MAX);
            for (window, is_mau) in [(WAU_DAYS, false), (MAU_DAYS, true)] {
                let from = prev.map_or(day, |p| day.max(p + window));
                for d in from..(day + window).min(until) {
                    if let Some(row) = self.activity.row(d) {
                        if is_mau {
                            row.mau += 1;
                        } else {
                            row.wau += 1;
                        }
                    }
                }
            }
        }

        // Retention definitions, last first: a definition that shares an
        // earlier one's cohort column reads it before its owner moves it.
        for r in (0..self.retention.len()).rev() {
            let is_return = return_bits & (1 << r) != 0;
            let is_cohort = cohort_bits & (1 << r) != 0;
            if is_return {
                self.credit_return(r, uid, day, newly_active, prev_active_latest, old_first);
            }
            if is_cohort {
                // For `FirstSeen`, the first day seen as it was before this
                // event.
                let current = self.cohort_day(r, uid).unwrap_or(old_first);
                if current == NO_DAY || day < current {
                    self.move_cohort(r, uid, current, day);
                }
            }
        }

        // Funnels.
        if masks.iter().any(|&m| m != 0) {
            let tag = if self.needs_tags { event_tag(ev) } else { 0 };
            for s in 0..self.stores.len() {
                let mask = self.members[s].iter().fold(0, |m, &f| m | masks[f] << self.funnels[f].steps.shift);
                if mask == 0 {
                    continue;
                }
                match self.funnel_event(s, uid, Hit { ts, mask, tag }, day, &masks) {
                    Recorded::Kept => {}
                    Recorded::StoreFull => self.funnel_refused += 1,
                    Recorded::UserFull => self.funnel_capped += 1,
                }
            }
        }
        self.scratch_masks = masks;
        Ok(())
    }

    fn user_index(&mut self, id: &str) -> Option<u32> {
        if let Some(i) = self.user_ids.get(id) {
            return Some(i);
        }
        if self.first_seen.len() as u64 >= self.cfg.max_users {
            return None;
        }
        let i = self.user_ids.push(id)?;
        self.first_seen.push(Day16::pack(NO_DAY));
        self.active.push_empty();
        for state in &mut self.retention {
            if let Cohort::Own(cohort) = &mut state.cohort {
                cohort.push(Day16::pack(NO_DAY));
            }
            match &mut state.returns {
                Returns::Active => {}
                Returns::Latest(v) => v.push(Day16::pack(NO_DAY)),
                Returns::Days(v) => v.push_empty(),
            }
        }
        for store in &mut self.stores {
            store.push_user();
        }
        // Every column has its new user: those that grew have just moved.
        self.trim.observe(self.first_seen.len());
        Some(i)
    }

    /// The user's cohort day in definition `r`'s column ([`NO_DAY`] for
    /// none yet); `None` when the cohort is the first day seen.
    fn cohort_day(&self, r: usize, uid: u32) -> Option<Day> {
        match &self.retention[r].cohort {
            Cohort::FirstSeen => None,
            Cohort::Own(cohort) => Some(cohort[uid as usize].unpack()),
            Cohort::SameAs(owner) => self.cohort_day(*owner, uid),
        }
    }

    fn retained_by(&self, r: usize, uid: u32, cohort: Day, n: u32) -> bool {
        let target = cohort + n as i32;
        let u = uid as usize;
        match &self.retention[r].returns {
            Returns::Active => match self.cfg.retention[r].mode {
                RetentionMode::On => self.active.contains(u, target),
                RetentionMode::OnOrAfter => self.active.latest(u).is_some_and(|l| l >= target),
            },
            // NO_DAY (none yet) is below every target.
            Returns::Latest(v) => v[u].unpack() >= target,
            Returns::Days(v) => v.contains(u, target),
        }
    }

    /// A return event on `day`: credit the cohort cells it newly fills.
    /// `first_seen` is the user's first day before this event (the cohort
    /// of a definition whose cohort event is any event: a cohort this event
    /// moves is moved after the credit).
    fn credit_return(
        &mut self,
        r: usize,
        uid: u32,
        day: Day,
        newly_active: bool,
        prev_active_latest: Option<Day>,
        first_seen: Day,
    ) {
        let cohort = self.cohort_day(r, uid).unwrap_or(first_seen);
        let state = &mut self.retention[r];
        let (newly, prev_latest) = match &mut state.returns {
            Returns::Active => (newly_active, prev_active_latest),
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
        let def = &self.cfg.retention[r];
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
    fn move_cohort(&mut self, r: usize, uid: u32, old: Day, new: Day) {
        let n_days = self.cfg.retention[r].days.len();
        // Bit i: retained by the i-th N (config validation keeps N ≤ 88).
        let flags = |engine: &Self, c: Day| -> u128 {
            let days = engine.cfg.retention[r].days.iter().enumerate();
            days.fold(0, |m, (i, &n)| m | u128::from(engine.retained_by(r, uid, c, n)) << i)
        };
        if old != NO_DAY {
            let was = flags(self, old);
            if let Some(row) = self.retention[r].rows.row(old) {
                row.users -= 1;
                for (i, cell) in ensure_len(&mut row.retained, n_days).iter_mut().enumerate() {
                    *cell -= (was >> i & 1) as i64;
                }
            }
        }
        let now = flags(self, new);
        if let Cohort::Own(cohort) = &mut self.retention[r].cohort {
            cohort[uid as usize] = Day16::pack(new);
        }
        if let Some(row) = self.retention[r].rows.row(new) {
            row.users += 1;
            for (i, cell) in ensure_len(&mut row.retained, n_days).iter_mut().enumerate() {
                *cell += (now >> i & 1) as i64;
            }
        }
    }

    /// Adds `hit` (its mask: the steps of every funnel of store `s` the
    /// event fills; `masks`: per funnel, its own steps) to the store, and
    /// moves the counters of each funnel whose levels it raises, unless
    /// the store or the user's share of it is full: the event is then left
    /// out of the funnels.
    fn funnel_event(&mut self, s: usize, uid: u32, hit: Hit, day: Day, masks: &[u32]) -> Recorded {
        let funnels = Funnels {
            cal: &self.cal,
            defs: &self.cfg.funnels,
            states: &mut self.funnels,
            masks,
            user_cap: self.cfg.max_funnel_events_per_user as usize,
            capped: &mut self.capped[s],
        };
        let members = &self.members[s];
        match &mut self.stores[s] {
            Store::Packed(store) => funnels.record(store, &mut self.scratch_packed, members, uid, hit, day),
            Store::Wide(store) => funnels.record(store, &mut self.scratch_wide, members, uid, hit, day),
        }
    }

    /// Called when the watermark enters a new day: drops day rows and
    /// funnel events that no accepted event can change any more.
    fn maintain(&mut self, wm_day: Day) {
        self.maintained_day = wm_day;
        let Some(horizon) = self.horizon_ms() else {
            return;
        };
        let horizon_day = self.cal.day_of(horizon.max(0));
        let export_from = wm_day - self.cfg.export_days as i32 + 1;
        let window_days = (self.max_window_ms / DAY_MS) as i32 + 1;
        let reach = self.max_retention_day.max(MAU_DAYS).max(window_days) + 1;
        let keep_from = export_from.min(horizon_day - reach);
        self.activity.drop_before(keep_from);
        for state in &mut self.retention {
            state.rows.drop_before(keep_from);
        }
        for state in &mut self.funnels {
            state.tally.rows.drop_before(keep_from);
        }
        for (s, store) in self.stores.iter_mut().enumerate() {
            // An accepted event is at or after the horizon and reaches
            // entry days from the day of its time minus the window on; their
            // levels read hits from those days' starts. A shared store
            // keeps what its longest window needs.
            let window = self.members[s].iter().map(|&f| self.cfg.funnels[f].window_ms).max().unwrap_or(0);
            let reach = self.cal.day_of((horizon - window).max(0));
            store.prune(self.cal.bounds(reach).0);
            // Old hits gone, users at the cap may have room again.
            self.capped[s].clear();
        }
    }

    /// The counters alone (cheap).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Users remembered.
    pub fn tracked_users(&self) -> usize {
        self.first_seen.len()
    }

    /// The exported figures: dated rows for the `export_days` business
    /// days up to the watermark's day.
    pub fn figures(&self) -> Figures {
        let range = self.watermark_ms().map(|w| {
            let to = self.cal.day_of(w.max(0));
            (to - self.cfg.export_days as i32 + 1, to)
        });
        self.figures_in(range)
    }

    /// All dated rows the engine holds, for [`merge`] (which applies the
    /// export window of the merged watermark).
    pub fn figures_all(&self) -> Figures {
        self.figures_in(Some((Day::MIN, Day::MAX)))
    }

    fn figures_in(&self, range: Option<(Day, Day)>) -> Figures {
        let watermark = self.watermark_ms();
        let mut out = Figures {
            watermark_ms: watermark,
            max_event_ms: self.max_ts,
            counters: self.counters.clone(),
            funnel_refused: self.funnel_refused,
            funnel_capped: self.funnel_capped,
            funnel_store_fill: self.stores.iter().map(Store::fill).fold(0.0, f64::max),
            tracked_users: self.first_seen.len() as u64,
            state_bytes: self.state_bytes(),
            ..Figures::default()
        };
        let (from, to) = range.unwrap_or((1, 0));
        let wm = watermark.unwrap_or(i64::MIN);
        for (r, def) in self.cfg.retention.iter().enumerate() {
            let mut cohorts = Vec::new();
            for (d, row) in self.retention[r].rows.range(from, to) {
                if row.users <= 0 {
                    continue;
                }
                cohorts.push(CohortRow {
                    date: Calendar::label(d),
                    users: row.users as u64,
                    retained: (0..def.days.len())
                        .map(|i| row.retained.get(i).copied().unwrap_or(0).max(0) as u64)
                        .collect(),
                    mature: def.days.iter().map(|&n| wm >= self.cal.day_start_ms(d + n as i32 + 1)).collect(),
                });
            }
            out.retention.push(RetentionTable {
                name: def.name.clone(),
                mode: def.mode.as_str(),
                days: def.days.clone(),
                cohorts,
            });
        }
        for (d, row) in self.activity.range(from, to).filter(|(_, r)| r.mau > 0) {
            out.activity.push(ActivityRow {
                date: Calendar::label(d),
                new_users: row.new_users.max(0) as u64,
                dau: row.dau.max(0) as u64,
                wau: row.wau.max(0) as u64,
                mau: row.mau.max(0) as u64,
            });
        }
        for (f, def) in self.cfg.funnels.iter().enumerate() {
            let state = &self.funnels[f].tally;
            let steps = def.steps.len();
            let entries = state
                .rows
                .range(from, to)
                .filter(|(_, users)| users.first().is_some_and(|&u| u > 0))
                .map(|(d, users)| FunnelRow {
                    date: Calendar::label(d),
                    users: (0..steps).map(|k| users.get(k).copied().unwrap_or(0).max(0) as u64).collect(),
                })
                .collect();
            let time_to_convert = state.time_to_convert.iter().map(TimeToConvert::of).collect();
            out.funnels.push(FunnelTable {
                name: def.name.clone(),
                steps: def.steps.iter().map(|s| s.label().to_owned()).collect(),
                window_seconds: def.window_ms as f64 / 1000.0,
                mode: def.mode.as_str(),
                entries,
                conversions_total: state.conversions.clone(),
                time_to_convert,
                histograms: state.time_to_convert.clone(),
            });
        }
        out
    }

    /// An estimate of the heap bytes this state holds.
    pub fn state_bytes(&self) -> u64 {
        let ids = self.user_ids.heap_bytes();
        let users = self.first_seen.capacity() * std::mem::size_of::<Day16>() + self.active.heap_bytes();
        let retention: usize = self
            .retention
            .iter()
            .map(|r| {
                let cohort = match &r.cohort {
                    Cohort::Own(v) => v.capacity() * std::mem::size_of::<Day16>(),
                    Cohort::FirstSeen | Cohort::SameAs(_) => 0,
                };
                cohort
                    + match &r.returns {
                        Returns::Active => 0,
                        Returns::Latest(v) => v.capacity() * std::mem::size_of::<Day16>(),
                        Returns::Days(v) => v.heap_bytes(),
                    }
            })
            .sum();
        let funnels: usize = self.stores.iter().map(Store::heap_bytes).sum();
        (ids + users + retention + funnels) as u64
    }
}

/// What recording a funnel event reads and moves, besides its store.
struct Funnels<'a> {
    cal: &'a Calendar,
    defs: &'a [FunnelDef],
    states: &'a mut [FunnelState],
    /// Per funnel: the steps the event fills (bit k: step k+1).
    masks: &'a [u32],
    /// The most hits a user keeps in the store.
    user_cap: usize,
    /// The store's users found at the cap (see [`Engine::capped`]).
    capped: &'a mut HashSet<u32, foldhash::fast::FixedState>,
}

/// What became of a funnel event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recorded {
    /// In the store (or there already: a replay), and counted.
    Kept,
    /// Left out: the store has no room for it.
    StoreFull,
    /// Left out: its user already keeps `max_funnel_events_per_user` in the
    /// store (a replay of one of them too: it would change nothing). Each
    /// of a user's funnel events costs a pass over the user's kept ones
    /// (about 3 ns each), so without a cap a user's cost grows with the
    /// square of their rate: one synthetic user sending 20 funnel events a
    /// second would hold 57 M hits after 33 days and take three cores. The
    /// cap bounds what one event costs, and one user's share of the store.
    UserFull,
}

impl Funnels<'_> {
    /// Adds `hit` of user `uid` (on business day `day`) to `store`, which
    /// the funnels `members` share, and moves the counters of every entry
    /// day whose level it raises; or leaves it out, changing nothing, when
    /// the store or the user's share of it is full.
    fn record<S: Segments>(
        self,
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
        let masks = self.masks;
        let filled = |f: &&usize| masks[**f] != 0;
        // Entry days whose chains this event can join, and their levels
        // before it: recomputed, not stored, from the hits, all of which
        // an accepted event can still reach are kept (see `maintain`).
        for &f in members.iter().filter(filled) {
            let (def, steps) = (&self.defs[f], self.states[f].steps);
            let FunnelTally { before, passes, .. } = &mut self.states[f].tally;
            before.clear();
            for (i, d) in Self::entry_days(self.cal, def, masks[f], hit.ts, day).enumerate() {
                let (start, end) = self.cal.bounds(d);
                let level = if def.mode == FunnelMode::Default {
                    if passes.len() <= i {
                        passes.push(funnel::Pass::default());
                    }
                    passes[i].run(hits, start, end, def.window_ms, steps);
                    passes[i].level()
                } else {
                    funnel::level(hits, start, end, def.window_ms, steps, def.mode).level
                };
                before.push(level);
            }
        }
        // The usual case: the user's latest event so far. A pass over the
        // earlier hits then goes on with it instead of starting again.
        let latest = hits.last().is_none_or(|last| last.ts() < hit.ts);
        hits.insert(pos, entry);
        if !store.insert(uid, hits, pos) {
            // The store is full: the counters stay as they were.
            return Recorded::StoreFull;
        }
        for &f in members.iter().filter(filled) {
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
                    tally.count(d, old, pass.level(), |k| pass.span(k));
                    tally.passes = passes;
                } else {
                    let (start, end) = self.cal.bounds(d);
                    let chain = funnel::level(hits, start, end, def.window_ms, steps, def.mode);
                    tally.count(d, old, chain.level, |k| chain.reached[k]);
                }
            }
        }
        Recorded::Kept
    }

    /// The entry days of funnel `def` an event at `ts` (on day `day`)
    /// filling its steps `mask` can reach: its own when it fills step 1
    /// only, else the days from its time minus the window on.
    fn entry_days(cal: &Calendar, def: &FunnelDef, mask: u32, ts: i64, day: Day) -> std::ops::RangeInclusive<Day> {
        let first = if mask & !1 == 0 { day } else { cal.day_of(ts - def.window_ms) };
        first..=day
    }
}

impl FunnelTally {
    /// Moves entry day `d` from level `old` to level `new` (when higher):
    /// its row, the conversions, and the time to convert to each step
    /// reached (`span(k)`: ms from step 1 to step k+1).
    fn count(&mut self, d: Day, old: usize, new: usize, span: impl Fn(usize) -> i64) {
        if new <= old {
            return;
        }
        if let Some(row) = self.rows.row(d) {
            for u in ensure_len(row, self.conversions.len()).iter_mut().take(new).skip(old) {
                *u += 1;
            }
        }
        for k in old..new {
            self.conversions[k] += 1;
            if k > 0 {
                self.time_to_convert[k].saturating_record(span(k).max(0) as u64);
            }
        }
    }
}

/// A stable hash of what makes two events of one user at one time distinct.
fn event_tag(ev: &Event<'_>) -> u32 {
    use std::hash::BuildHasher;
    let state = foldhash::fast::FixedState::with_seed(0x636f_686f_7274);
    state.hash_one((ev.name.as_ref(), ev.props_raw().unwrap_or(""))) as u32
}

/// The figures of shards that own disjoint users, as one: sums by date,
/// then the export window and maturity of the merged watermark (the newest
/// event time of all shards minus the allowed lateness), exactly as one
/// engine fed every event would report them. The parts must come from
/// [`Engine::figures_all`].
pub fn merge(parts: Vec<Figures>, cfg: &EngineConfig) -> Figures {
    let mut out = Figures::sum(parts);
    let cal = Calendar::new(cfg.timezone.clone());
    out.watermark_ms = out.max_event_ms.map(|m| m - cfg.allowed_lateness_ms);
    let Some(wm) = out.watermark_ms else {
        out.retention.iter_mut().for_each(|t| t.cohorts.clear());
        out.activity.clear();
        out.funnels.iter_mut().for_each(|t| t.entries.clear());
        return out;
    };
    let to = cal.day_of(wm.max(0));
    let from = to - cfg.export_days as i32 + 1;
    let in_window =
        |date: &str| date.parse::<jiff::civil::Date>().map(calendar::day_number).is_ok_and(|d| d >= from && d <= to);
    for (t, def) in out.retention.iter_mut().zip(&cfg.retention) {
        t.cohorts.retain(|r| in_window(&r.date) && r.users > 0);
        for row in &mut t.cohorts {
            if let Ok(date) = row.date.parse::<jiff::civil::Date>() {
                let d = calendar::day_number(date);
                row.mature = def.days.iter().map(|&n| wm >= cal.day_start_ms(d + n as i32 + 1)).collect();
            }
        }
    }
    out.activity.retain(|r| in_window(&r.date));
    for t in &mut out.funnels {
        t.entries.retain(|r| in_window(&r.date));
    }
    out
}

fn ensure_len(v: &mut Vec<i64>, n: usize) -> &mut Vec<i64> {
    if v.len() < n {
        v.resize(n, 0);
    }
    v
}

fn prop_equals(value: Option<&PropValue<'_>>, want: &FilterValue) -> bool {
    match (value, want) {
        (Some(PropValue::Str(s)), FilterValue::Str(w)) => s == w.as_str(),
        (Some(PropValue::Num(x)), FilterValue::Num(w)) => x == w,
        (Some(PropValue::Bool(b)), FilterValue::Bool(w)) => b == w,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// One retention definition and a view → order funnel, with `extra`
    /// top-level keys.
    fn view_order_config(extra: &str) -> Arc<EngineConfig> {
        let toml = format!(
            r#"
            timezone = "UTC"
            {extra}
            [[retention]]
            name = "all"
            cohort_event = "*"
            return_event = "*"
            days = [1]
            [[funnel]]
            name = "checkout"
            window = "1h"
            steps = ["view", "order"]
            "#
        );
        Arc::new(Config::from_toml_str(&toml).expect("config").engine)
    }

    /// A full funnel store refuses the events it cannot keep: they are
    /// counted and left out of the funnels, and every other figure is as
    /// an engine with room gives it.
    #[test]
    fn a_full_funnel_store_refuses_events_and_counts_them() {
        let cfg = view_order_config("");
        let mut full = Engine::new(cfg.clone());
        for store in &mut full.stores {
            store.limit_arena(0);
        }
        let mut open = Engine::new(cfg);
        let t0 = 1_790_000_000_000;
        let events = [
            ("u1", "view", t0),
            ("u1", "order", t0 + 60_000),
            ("u2", "view", t0 + DAY_MS),
            ("u1", "login", t0 + DAY_MS),
        ];
        for (user, name, ts) in events {
            let line = format!(r#"{{"user_id":"{user}","event":"{name}","ts":{ts}}}"#);
            for engine in [&mut full, &mut open] {
                engine.apply(line.as_bytes(), None, t0 + 2 * DAY_MS).expect("valid");
            }
        }
        let (a, b) = (full.figures(), open.figures());
        assert_eq!((a.funnel_refused, b.funnel_refused), (3, 0));
        assert_eq!(a.funnel_store_fill, 1.0);
        assert!(b.funnel_store_fill > 0.0 && b.funnel_store_fill < 1e-6, "{}", b.funnel_store_fill);
        assert_eq!(a.funnels[0].conversions_total, vec![0, 0]);
        assert_eq!(b.funnels[0].conversions_total, vec![2, 1]);
        assert_eq!((&a.counters, &a.retention, &a.activity), (&b.counters, &b.retention, &b.activity));
        assert_eq!(a.tracked_users, 2);
    }

    /// Past `max_funnel_events_per_user`, a user's funnel events are left
    /// out of the funnels and counted (a replay of one kept too, changing
    /// nothing); other users' funnels and every other figure are as
    /// without the cap; and once the user's old hits leave the history,
    /// the user's events are kept again.
    #[test]
    fn a_user_past_the_cap_has_funnel_events_left_out_and_counted() {
        // Capped at 3, and at the default.
        let mut engines = [
            Engine::new(view_order_config("history_days = 3\nmax_funnel_events_per_user = 3")),
            Engine::new(view_order_config("history_days = 3")),
        ];
        let t0 = 1_790_000_000_000;
        let feed = |engines: &mut [Engine; 2], events: &[(&str, &str, i64)]| {
            for &(user, name, ts) in events {
                let line = format!(r#"{{"user_id":"{user}","event":"{name}","ts":{ts}}}"#);
                for engine in engines.iter_mut() {
                    engine.apply(line.as_bytes(), None, t0 + 30 * DAY_MS).expect("valid");
                }
            }
        };
        feed(
            &mut engines,
            &[
                ("bot", "view", t0),
                ("bot", "view", t0 + 1_000),
                ("u2", "view", t0 + 1_500),
                ("bot", "view", t0 + 2_000),
                // The cap is reached: these two are left out, and a replay
                // of a kept one is counted with them.
                ("bot", "view", t0 + 3_000),
                ("bot", "order", t0 + 4_000),
                ("bot", "view", t0 + 1_000),
                // Another user's order.
                ("u2", "order", t0 + 5_000),
            ],
        );
        let [a, b] = engines.each_ref().map(Engine::figures);
        assert_eq!((a.funnel_capped, b.funnel_capped, a.funnel_refused), (3, 0, 0));
        assert_eq!(a.funnels[0].conversions_total, vec![2, 1]);
        assert_eq!(b.funnels[0].conversions_total, vec![2, 2]);
        assert_eq!((&a.counters, &a.retention, &a.activity), (&b.counters, &b.retention, &b.activity));

        // Five days on, the bot's first hits are out of the history, and
        // its funnel events are kept again.
        let later = t0 + 5 * DAY_MS;
        feed(&mut engines, &[("bot", "view", later), ("bot", "order", later + 1_000)]);
        let [a, b] = engines.each_ref().map(Engine::figures);
        assert_eq!(a.funnel_capped, 3);
        assert_eq!(a.funnels[0].conversions_total, vec![3, 2]);
        assert_eq!(b.funnels[0].conversions_total, vec![3, 3]);
    }
}
