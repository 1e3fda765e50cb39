//! The engine: exact retention, activity, funnel and trend state for the events of
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
//!
//! The shard ([`Engine`]) keeps what every figure reads: the users
//! ([`users`]), the calendar, the watermark and the counters. Each metric
//! family is a room of its own that keeps its per-user columns, its
//! per-day rows, its snapshot section and its figures, behind
//! [`family::Family`]: [`activity`], [`retention`], [`funnel`], [`trend`],
//! [`revenue`]. [`breakdown`] keeps each user's value of each breakdown,
//! read before an event reaches the families, which split their figures by
//! it. The definitions they run are [`def`]; [`class`] says what an event
//! name means to each.

pub mod activity;
pub mod breakdown;
pub mod calendar;
pub mod class;
pub mod days;
pub mod def;
pub mod family;
pub mod figures;
pub mod funnel;
pub mod ids;
pub mod retention;
pub mod revenue;
pub mod state;
pub mod trend;
pub mod users;

use std::sync::Arc;

use crate::event::{self, Event, Reject};
use activity::Activity;
use breakdown::Breakdowns;
use calendar::{Calendar, Day};
use class::Classes;
use def::EngineConfig;
use family::{Ctx, Family, Horizon, Touch, View};
use figures::{Counters, Figures};
use funnel::Funnels;
use retention::Retention;
use revenue::Revenue;
pub use state::StateMismatch;
use trend::Trends;
use users::Users;

const DAY_MS: i64 = 86_400_000;

/// The state of one shard. See the module docs. A clone is a full copy
/// (a snapshot written in the background writes one).
#[derive(Debug, Clone)]
pub struct Engine {
    cfg: Arc<EngineConfig>,
    cal: Calendar,
    classes: Classes,
    users: Users,
    /// Each user's breakdown values, read before the families see an event.
    breakdowns: Breakdowns,
    /// The breakdown moves of the event being ingested; kept to avoid an
    /// allocation.
    moves: Vec<breakdown::Move>,
    // The families, in the order an event reaches them. Adding one: a
    // field here, and a line in `new`, `ingest` and `families(_mut)`.
    activity: Activity,
    retention: Retention,
    funnels: Funnels,
    trends: Trends,
    revenue: Revenue,
    max_ts: Option<i64>,
    /// The watermark day at the last maintenance pass.
    maintained_day: Day,
    counters: Counters,
    /// Days a row is kept past the horizon: the longest reach of any
    /// family, plus one.
    reach_days: i32,
}

impl Engine {
    /// An empty engine for `cfg`.
    pub fn new(cfg: Arc<EngineConfig>) -> Self {
        let cal = Calendar::new(cfg.timezone.clone());
        let ctx = Ctx { cfg: &cfg, cal: &cal };
        let (activity, retention, funnels, trends, revenue) =
            (Activity::new(ctx), Retention::new(ctx), Funnels::new(ctx), Trends::new(ctx), Revenue::new(ctx));
        let breakdowns = Breakdowns::new(ctx);
        let reach_days =
            [activity.reach_days(ctx), retention.reach_days(ctx), funnels.reach_days(ctx), trends.reach_days(ctx)]
                .into_iter()
                .max()
                .unwrap_or(0)
                + 1;
        Engine {
            classes: Classes::new(&cfg),
            users: Users::new(cfg.history_days),
            breakdowns,
            moves: Vec::new(),
            activity,
            retention,
            funnels,
            trends,
            revenue,
            max_ts: None,
            maintained_day: Day::MIN,
            counters: Counters::default(),
            reach_days,
            cal,
            cfg,
        }
    }

    /// The families, in order, for what is not done per event.
    fn families(&self) -> [&dyn Family; 6] {
        [&self.breakdowns, &self.activity, &self.retention, &self.funnels, &self.trends, &self.revenue]
    }

    /// The same, to change, with what they read.
    fn families_mut(&mut self) -> (Ctx<'_>, [&mut dyn Family; 6]) {
        let families: [&mut dyn Family; 6] = [
            &mut self.breakdowns,
            &mut self.activity,
            &mut self.retention,
            &mut self.funnels,
            &mut self.trends,
            &mut self.revenue,
        ];
        (Ctx { cfg: &self.cfg, cal: &self.cal }, families)
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
        if !self.cfg.breakdowns.is_empty() {
            self.relabel(uid, ev);
        }
        let day = self.cal.day_of(ts);
        let seen = self.users.touch(uid, day);
        let touch = Touch {
            ev,
            class: self.classes.get(ev.name.as_ref()),
            uid,
            ts,
            day,
            newly_active: seen.newly_active,
            prev_latest_active: seen.prev_latest_active,
            old_first: seen.old_first,
            labels: self.breakdowns.labels(),
        };
        let ctx = Ctx { cfg: &self.cfg, cal: &self.cal };
        self.activity.record(ctx, &self.users, &touch);
        self.retention.record(ctx, &self.users, &touch);
        self.funnels.record(ctx, &self.users, &touch);
        self.trends.record(ctx, &self.users, &touch);
        self.revenue.record(ctx, &self.users, &touch);
        Ok(())
    }

    /// Reads the event's breakdown values, and moves the user's figures
    /// to the values it changes, before the event itself is counted.
    fn relabel(&mut self, uid: u32, ev: &Event<'_>) {
        let mut moves = std::mem::take(&mut self.moves);
        moves.clear();
        self.breakdowns.observe(&self.cfg.breakdowns, uid, ev, ev.ts_ms, &mut moves);
        // A user with no event yet has no figures to move.
        if !moves.is_empty() && self.users.first_seen(uid) != days::NO_DAY {
            let ctx = Ctx { cfg: &self.cfg, cal: &self.cal };
            for &change in &moves {
                self.activity.relabel(ctx, &self.users, uid, change);
                self.retention.relabel(ctx, &self.users, uid, change);
                self.funnels.relabel(ctx, &self.users, uid, change);
                self.trends.relabel(ctx, &self.users, uid, change);
            }
        }
        self.moves = moves;
    }

    fn user_index(&mut self, id: &str) -> Option<u32> {
        if let Some(i) = self.users.get(id) {
            return Some(i);
        }
        if self.users.len() as u64 >= self.cfg.max_users {
            return None;
        }
        let i = self.users.push(id)?;
        let (_, families) = self.families_mut();
        for family in families {
            family.push_user();
        }
        Some(i)
    }

    /// Called when the watermark enters a new day: drops day rows and
    /// per-user state that no accepted event can change any more.
    fn maintain(&mut self, wm_day: Day) {
        self.maintained_day = wm_day;
        let Some(horizon_ms) = self.horizon_ms() else {
            return;
        };
        let horizon_day = self.cal.day_of(horizon_ms.max(0));
        let export_from = wm_day - self.cfg.export_days as i32 + 1;
        let horizon = Horizon { keep_from: export_from.min(horizon_day - self.reach_days), horizon_ms };
        let (ctx, families) = self.families_mut();
        for family in families {
            family.maintain(ctx, horizon);
        }
    }

    /// The counters alone (cheap).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Users remembered.
    pub fn tracked_users(&self) -> usize {
        self.users.len()
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
            watermark_date: watermark.map(|w| Calendar::label(self.cal.day_of(w.max(0)))),
            max_event_ms: self.max_ts,
            counters: self.counters.clone(),
            tracked_users: self.users.len() as u64,
            state_bytes: self.state_bytes(),
            ..Figures::default()
        };
        let (from, to) = range.unwrap_or((1, 0));
        let view = View { from, to, watermark_ms: watermark.unwrap_or(i64::MIN) };
        let ctx = Ctx { cfg: &self.cfg, cal: &self.cal };
        for family in self.families() {
            family.publish(ctx, view, &mut out);
        }
        out
    }

    /// An estimate of the heap bytes this state holds.
    pub fn state_bytes(&self) -> u64 {
        let families: usize = self.families().iter().map(|f| f.heap_bytes()).sum();
        (self.users.heap_bytes() + families) as u64
    }
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
    out.watermark_date = out.watermark_ms.map(|w| Calendar::label(cal.day_of(w.max(0))));
    let (from, to, wm) = match out.watermark_ms {
        Some(wm) => {
            let to = cal.day_of(wm.max(0));
            (to - cfg.export_days as i32 + 1, to, wm)
        }
        // No events: no dated rows.
        None => (1, 0, i64::MIN),
    };
    let in_window =
        |date: &str| date.parse::<jiff::civil::Date>().map(calendar::day_number).is_ok_and(|d| d >= from && d <= to);
    activity::rewindow(&mut out, cfg, from, to);
    retention::rewindow(&mut out, Ctx { cfg, cal: &cal }, wm, from, to);
    funnel::rewindow(&mut out, in_window);
    trend::rewindow(&mut out, in_window);
    revenue::rewindow(&mut out, in_window);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::def::{FunnelDef, FunnelMode, RetentionDef, RetentionMode};

    /// One retention definition and a view → order funnel, with
    /// `history_days` of history and a cap of `cap` funnel events a user.
    fn view_order_config(history_days: u32, cap: u32) -> Arc<EngineConfig> {
        let all = RetentionDef::daily("all", "*", "*", &[1], RetentionMode::On);
        let checkout = FunnelDef::of_steps("checkout", 3_600_000, FunnelMode::Default, &["view", "order"]);
        Arc::new(EngineConfig {
            max_funnel_events_per_user: cap,
            ..EngineConfig::for_tests(history_days, vec![all], vec![checkout])
        })
    }

    /// A full funnel store refuses the events it cannot keep: they are
    /// counted and left out of the funnels, and every other figure is as
    /// an engine with room gives it.
    #[test]
    fn a_full_funnel_store_refuses_events_and_counts_them() {
        let cfg = view_order_config(35, 10_000);
        let mut full = Engine::new(cfg.clone());
        full.funnels.limit_arenas(0);
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
        let mut engines = [Engine::new(view_order_config(3, 3)), Engine::new(view_order_config(3, 10_000))];
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
