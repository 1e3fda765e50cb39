//! The figures an engine publishes: a plain, owned, read-only value that
//! exporters render (Prometheus text, JSON tables) without touching the
//! engine. Computing it costs O(days × definitions), not O(users).

use serde::Serialize;

use crate::event::Reject;

/// Monotonic counters (they are part of the state, so they survive restarts).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Events accepted into the engine.
    pub ingested: u64,
    /// Rejected messages, indexed like [`Reject::ALL`].
    pub rejected: [u64; Reject::ALL.len()],
    /// Accepted events of users not tracked because `max_users` was reached.
    pub untracked: u64,
}

impl Counters {
    /// All messages read: ingested plus rejected.
    pub fn read(&self) -> u64 {
        self.ingested + self.rejected.iter().sum::<u64>()
    }
}

/// One cohort row of a retention definition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CohortRow {
    /// Cohort date, `YYYY-MM-DD`.
    pub date: String,
    /// Cohort size.
    pub users: u64,
    /// Retained users for each configured day N (same order as `days`).
    pub retained: Vec<u64>,
    /// Whether each cell is mature (the watermark passed the end of D+N).
    pub mature: Vec<bool>,
}

/// One retention definition's cohort triangle.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetentionTable {
    /// Definition name.
    pub name: String,
    /// `on` or `on_or_after`.
    pub mode: &'static str,
    /// The configured N values.
    pub days: Vec<u32>,
    /// Cohorts, oldest first.
    pub cohorts: Vec<CohortRow>,
}

/// Activity of one business day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActivityRow {
    /// The date, `YYYY-MM-DD`.
    pub date: String,
    /// Users first seen on this day.
    pub new_users: u64,
    /// Distinct users active on this day.
    pub dau: u64,
    /// Distinct users active in the 7 days ending on this day.
    pub wau: u64,
    /// Distinct users active in the 30 days ending on this day.
    pub mau: u64,
}

/// Users per step among those entering a funnel on one day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FunnelRow {
    /// Entry date, `YYYY-MM-DD`.
    pub date: String,
    /// `users[k]` = users with level ≥ k+1.
    pub users: Vec<u64>,
}

/// Quantiles of one step's time to convert from step 1.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimeToConvert {
    /// (quantile, seconds).
    pub quantiles: Vec<(f64, f64)>,
    /// Sum of all observed seconds.
    pub sum_seconds: f64,
    /// Number of conversions observed.
    pub count: u64,
}

/// One funnel's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunnelTable {
    /// Funnel name.
    pub name: String,
    /// Step labels, in order.
    pub steps: Vec<String>,
    /// Conversion window in seconds.
    pub window_seconds: f64,
    /// Mode name.
    pub mode: &'static str,
    /// Entry days, oldest first.
    pub entries: Vec<FunnelRow>,
    /// Monotonic: (user, entry day) pairs that ever reached each step.
    pub conversions_total: Vec<u64>,
    /// Time from step 1 to each step (index 0 is step 1: always zero).
    pub time_to_convert: Vec<TimeToConvert>,
}

/// Everything exported at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Figures {
    /// The watermark, epoch ms (none before the first event).
    pub watermark_ms: Option<i64>,
    /// The newest accepted event time, epoch ms.
    pub max_event_ms: Option<i64>,
    /// Counters.
    pub counters: Counters,
    /// Users remembered.
    pub tracked_users: u64,
    /// Approximate bytes of engine state.
    pub state_bytes: u64,
    /// Retention tables.
    pub retention: Vec<RetentionTable>,
    /// Activity, oldest first.
    pub activity: Vec<ActivityRow>,
    /// Funnels.
    pub funnels: Vec<FunnelTable>,
}
