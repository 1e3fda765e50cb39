//! The figures an engine publishes: a plain, owned, read-only value that
//! exporters render (Prometheus text, JSON tables) without touching the
//! engine. Computing it costs O(days × definitions), not O(users).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::event::Reject;

/// Monotonic counters (they are part of the state, so they survive restarts).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Retained users for each configured figure (same order as `periods`).
    pub retained: Vec<u64>,
    /// Whether each cell is mature (the watermark passed the end of D+N,
    /// or of the last period of the bracket).
    pub mature: Vec<bool>,
}

/// Rows of a figure split by one breakdown: per value, its rows. Over the
/// values they sum to the figure's own rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Split<T> {
    /// The breakdown's name.
    pub breakdown: String,
    /// Per value (the listed ones in config order, then `other`, `none`).
    pub values: Vec<ValueRows<T>>,
}

/// The rows of one breakdown value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValueRows<T> {
    /// The value (label `value`).
    pub value: String,
    /// Its rows, oldest first.
    pub rows: Vec<T>,
}

/// New and active users of one day among the users of one breakdown value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SplitActivityRow {
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

/// Merges the splits of two shards value by value, rows by date.
fn merge_splits<T>(
    a: &mut [Split<T>],
    b: Vec<Split<T>>,
    key: impl Fn(&T) -> String + Copy,
    add: impl Fn(&mut T, &T) + Copy,
) {
    for (sa, sb) in a.iter_mut().zip(b) {
        for (va, vb) in sa.values.iter_mut().zip(sb.values) {
            va.rows = merge_rows(std::mem::take(&mut va.rows), vb.rows, key, add);
        }
    }
}

/// One retention definition's cohort triangle.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetentionTable {
    /// Definition name.
    pub name: String,
    /// `day`, `week` or `month`: the period of the cohorts, and the name of
    /// the label of `periods` in the metrics.
    pub granularity: &'static str,
    /// `on`, `on_or_after` or `rolling_24h`.
    pub mode: &'static str,
    /// The configured figures: periods N (`"7"`) and brackets (`"8-14"`).
    pub periods: Vec<String>,
    /// Cohorts, oldest first.
    pub cohorts: Vec<CohortRow>,
    /// The cohorts split by each of the definition's breakdowns (JSON:
    /// with `?breakdown=`).
    #[serde(skip)]
    pub breakdowns: Vec<Split<CohortRow>>,
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
    /// Users first seen on or before this day.
    pub known_users: u64,
}

/// Users active in one calendar week or month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeriodRow {
    /// The period's first day, `YYYY-MM-DD`.
    pub date: String,
    /// Distinct users active in it (so far, for the current period).
    pub active_users: u64,
}

/// The lifecycle of one day or week: every user active in it or in the one
/// before, by status (PostHog's rule, with first seen as creation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LifecycleRow {
    /// The period's first day, `YYYY-MM-DD`.
    pub date: String,
    /// Active in it, and first seen in it.
    pub new: u64,
    /// Active in it and in the period before.
    pub returning: u64,
    /// Active in it, first seen before the period before, not active then.
    pub resurrecting: u64,
    /// Active in the period before, not in it.
    pub dormant: u64,
}

/// Stickiness: for the `window` days ending on each day, the users
/// active on exactly k of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StickinessTable {
    /// The window, in days.
    pub window: u32,
    /// Rows, oldest first.
    pub rows: Vec<StickinessRow>,
}

/// One day of a stickiness table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StickinessRow {
    /// The window's last day, `YYYY-MM-DD`.
    pub date: String,
    /// `users[k - 1]`: users active on exactly k days of the window.
    pub users: Vec<u64>,
}

/// Lifecycle by granularity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Lifecycle {
    /// By day, oldest first.
    pub day: Vec<LifecycleRow>,
    /// By calendar week, oldest first.
    pub week: Vec<LifecycleRow>,
    /// By calendar month, oldest first (only with a `history_days` of 33
    /// to 64: see `engine::activity::monthly_lifecycle`).
    pub month: Vec<LifecycleRow>,
}

/// One day of revenue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevenueRow {
    /// The date, `YYYY-MM-DD`.
    pub date: String,
    /// Sum of the day's amounts (refunds included), in 10^-scale units.
    #[serde(serialize_with = "units_text")]
    pub units: i128,
    /// Users with a payment of a positive amount that day.
    pub paying_users: u64,
    /// Users whose first such payment ever fell on the day.
    pub new_paying_users: u64,
}

/// One cohort's revenue through each day N (N-day LTV) and its payers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CohortRevenueRow {
    /// Cohort date, `YYYY-MM-DD`.
    pub date: String,
    /// Per N: units paid by the cohort's users from the cohort day through
    /// day D+N, refunds included.
    #[serde(serialize_with = "all_units_text")]
    pub units: Vec<i128>,
    /// Per N: the cohort's users with a positive payment in those days.
    pub paying_users: Vec<u64>,
}

/// The cohort revenue of one `revenue = true` retention definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CohortRevenueTable {
    /// The retention definition.
    pub name: String,
    /// Its days N.
    pub days: Vec<u32>,
    /// Cohorts, oldest first.
    pub rows: Vec<CohortRevenueRow>,
}

fn all_units_text<S: serde::Serializer>(v: &[i128], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(v.len()))?;
    for x in v {
        seq.serialize_element(&x.to_string())?;
    }
    seq.end()
}

/// Revenue figures (with `[revenue]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevenueFigures {
    /// Decimals of the units.
    pub scale: u32,
    /// Days, oldest first.
    pub rows: Vec<RevenueRow>,
    /// Monotonic: units of payments of positive amounts, ever.
    #[serde(serialize_with = "units_text")]
    pub paid_units: i128,
    /// Monotonic: units of refunds (negative amounts, as positive), ever.
    #[serde(serialize_with = "units_text")]
    pub refunded_units: i128,
    /// Amounts not counted, by `engine::revenue::AmountReject::ALL`.
    pub rejected: [u64; 4],
    /// Per `revenue = true` retention definition.
    pub cohorts: Vec<CohortRevenueTable>,
}

/// An `i128` as its decimal digits (JSON numbers lose precision past 2^53).
fn units_text<S: serde::Serializer>(v: &i128, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

/// One day of a trend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrendRow {
    /// The date, `YYYY-MM-DD`.
    pub date: String,
    /// Events of the trend (a user's at one time counting once).
    pub events: u64,
    /// Distinct users with such an event.
    pub users: u64,
}

/// One trend's figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrendTable {
    /// Trend name.
    pub name: String,
    /// Monotonic: events ever counted (since each shard's state began).
    pub events_total: u64,
    /// Days, oldest first.
    pub rows: Vec<TrendRow>,
    /// The days split by each of the trend's breakdowns (JSON: with
    /// `?breakdown=`).
    #[serde(skip)]
    pub breakdowns: Vec<Split<TrendRow>>,
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
    /// The histograms behind `time_to_convert`, in ms (kept for merging).
    #[serde(skip)]
    pub histograms: Vec<Histogram<u64>>,
    /// The entry days split by each of the funnel's breakdowns (JSON: with
    /// `?breakdown=`).
    #[serde(skip)]
    pub breakdowns: Vec<Split<FunnelRow>>,
}

/// Quantiles exported for time to convert.
pub const QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];

impl TimeToConvert {
    /// Summarises a histogram of milliseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        TimeToConvert {
            quantiles: QUANTILES.iter().map(|&q| (q, h.value_at_quantile(q) as f64 / 1000.0)).collect(),
            sum_seconds: h.mean() * h.len() as f64 / 1000.0,
            count: h.len(),
        }
    }
}

/// Everything exported at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Figures {
    /// The watermark, epoch ms (none before the first event).
    pub watermark_ms: Option<i64>,
    /// The watermark's business day, `YYYY-MM-DD`.
    pub watermark_date: Option<String>,
    /// The newest accepted event time, epoch ms.
    pub max_event_ms: Option<i64>,
    /// Counters.
    pub counters: Counters,
    /// Funnel events a full funnel store could not keep, since each
    /// shard's engine was made or restored.
    pub funnel_refused: u64,
    /// Funnel events of users who already kept `max_funnel_events_per_user`
    /// in a store, since each shard's engine was made or restored.
    pub funnel_capped: u64,
    /// The fullest funnel store: its arena's units over those it can
    /// address (refusals start at 1).
    pub funnel_store_fill: f64,
    /// Users remembered.
    pub tracked_users: u64,
    /// Approximate bytes of engine state.
    pub state_bytes: u64,
    /// Retention tables.
    pub retention: Vec<RetentionTable>,
    /// Activity, oldest first.
    pub activity: Vec<ActivityRow>,
    /// New and active users split by each of `activity_breakdowns`.
    pub activity_breakdowns: Vec<Split<SplitActivityRow>>,
    /// Users active in each calendar week, oldest first.
    pub weeks: Vec<PeriodRow>,
    /// Users active in each calendar month, oldest first.
    pub months: Vec<PeriodRow>,
    /// Lifecycle by day and by week.
    pub lifecycle: Lifecycle,
    /// Stickiness, one table per configured window.
    pub stickiness: Vec<StickinessTable>,
    /// Funnels.
    pub funnels: Vec<FunnelTable>,
    /// Trend tables.
    pub trends: Vec<TrendTable>,
    /// Trend events left out (their user at `max_funnel_events_per_user`
    /// entries, or the store full), since each shard's engine was made or
    /// restored.
    pub trend_left_out: u64,
    /// Revenue, with `[revenue]`.
    pub revenue: Option<RevenueFigures>,
}

impl Figures {
    /// Sums the figures of shards that own disjoint sets of users (the
    /// partitions of a topic keyed by user): counts add up by date. Dates,
    /// maturity and the watermark are left to the caller
    /// ([`crate::engine::merge`]), which knows the calendar.
    pub fn sum(parts: Vec<Figures>) -> Figures {
        let mut parts = parts.into_iter();
        let Some(mut out) = parts.next() else {
            return Figures::default();
        };
        for p in parts {
            out.max_event_ms = out.max_event_ms.max(p.max_event_ms);
            out.counters.ingested += p.counters.ingested;
            for (a, b) in out.counters.rejected.iter_mut().zip(p.counters.rejected) {
                *a += b;
            }
            out.counters.untracked += p.counters.untracked;
            out.funnel_refused += p.funnel_refused;
            out.funnel_capped += p.funnel_capped;
            out.trend_left_out += p.trend_left_out;
            if let (Some(r), Some(pr)) = (&mut out.revenue, p.revenue) {
                r.paid_units += pr.paid_units;
                r.refunded_units += pr.refunded_units;
                for (a, b) in r.rejected.iter_mut().zip(pr.rejected) {
                    *a += b;
                }
                for (t, pt) in r.cohorts.iter_mut().zip(pr.cohorts) {
                    t.rows = merge_rows(
                        std::mem::take(&mut t.rows),
                        pt.rows,
                        |row| row.date.clone(),
                        |a, b| {
                            for (x, y) in a.units.iter_mut().zip(&b.units) {
                                *x += y;
                            }
                            add_all(&mut a.paying_users, &b.paying_users);
                        },
                    );
                }
                r.rows = merge_rows(
                    std::mem::take(&mut r.rows),
                    pr.rows,
                    |row| row.date.clone(),
                    |a, b| {
                        a.units += b.units;
                        a.paying_users += b.paying_users;
                        a.new_paying_users += b.new_paying_users;
                    },
                );
            }
            for (t, pt) in out.trends.iter_mut().zip(p.trends) {
                t.events_total += pt.events_total;
                let add = |a: &mut TrendRow, b: &TrendRow| {
                    a.events += b.events;
                    a.users += b.users;
                };
                t.rows = merge_rows(std::mem::take(&mut t.rows), pt.rows, |r| r.date.clone(), add);
                merge_splits(&mut t.breakdowns, pt.breakdowns, |r| r.date.clone(), add);
            }
            out.funnel_store_fill = out.funnel_store_fill.max(p.funnel_store_fill);
            out.tracked_users += p.tracked_users;
            out.state_bytes += p.state_bytes;
            let add_cohort = |a: &mut CohortRow, b: &CohortRow| {
                a.users += b.users;
                add_all(&mut a.retained, &b.retained);
            };
            for (t, pt) in out.retention.iter_mut().zip(p.retention) {
                t.cohorts = merge_rows(std::mem::take(&mut t.cohorts), pt.cohorts, |r| r.date.clone(), add_cohort);
                merge_splits(&mut t.breakdowns, pt.breakdowns, |r| r.date.clone(), add_cohort);
            }
            merge_splits(
                &mut out.activity_breakdowns,
                p.activity_breakdowns,
                |r| r.date.clone(),
                |a, b| {
                    a.new_users += b.new_users;
                    a.dau += b.dau;
                    a.wau += b.wau;
                    a.mau += b.mau;
                },
            );
            out.activity = merge_rows(
                std::mem::take(&mut out.activity),
                p.activity,
                |r| r.date.clone(),
                |a, b| {
                    a.new_users += b.new_users;
                    a.dau += b.dau;
                    a.wau += b.wau;
                    a.mau += b.mau;
                    a.known_users += b.known_users;
                },
            );
            let add_period = |a: &mut PeriodRow, b: &PeriodRow| a.active_users += b.active_users;
            out.weeks = merge_rows(std::mem::take(&mut out.weeks), p.weeks, |r| r.date.clone(), add_period);
            out.months = merge_rows(std::mem::take(&mut out.months), p.months, |r| r.date.clone(), add_period);
            let add_status = |a: &mut LifecycleRow, b: &LifecycleRow| {
                a.new += b.new;
                a.returning += b.returning;
                a.resurrecting += b.resurrecting;
                a.dormant += b.dormant;
            };
            for (t, pt) in out.stickiness.iter_mut().zip(p.stickiness) {
                t.rows = merge_rows(
                    std::mem::take(&mut t.rows),
                    pt.rows,
                    |r| r.date.clone(),
                    |a, b| add_all(&mut a.users, &b.users),
                );
            }
            let (lc, plc) = (&mut out.lifecycle, p.lifecycle);
            lc.day = merge_rows(std::mem::take(&mut lc.day), plc.day, |r| r.date.clone(), add_status);
            lc.week = merge_rows(std::mem::take(&mut lc.week), plc.week, |r| r.date.clone(), add_status);
            lc.month = merge_rows(std::mem::take(&mut lc.month), plc.month, |r| r.date.clone(), add_status);
            for (t, pt) in out.funnels.iter_mut().zip(p.funnels) {
                let add_entry = |a: &mut FunnelRow, b: &FunnelRow| add_all(&mut a.users, &b.users);
                t.entries = merge_rows(std::mem::take(&mut t.entries), pt.entries, |r| r.date.clone(), add_entry);
                merge_splits(&mut t.breakdowns, pt.breakdowns, |r| r.date.clone(), add_entry);
                add_all(&mut t.conversions_total, &pt.conversions_total);
                for (h, ph) in t.histograms.iter_mut().zip(&pt.histograms) {
                    // Same bounds on both sides: adding cannot fail.
                    let _ = h.add(ph);
                }
                t.time_to_convert = t.histograms.iter().map(TimeToConvert::of).collect();
            }
        }
        out
    }
}

/// Adds `b` to `a`, count by count.
fn add_all(a: &mut [u64], b: &[u64]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

fn merge_rows<T>(a: Vec<T>, b: Vec<T>, key: impl Fn(&T) -> String, add: impl Fn(&mut T, &T)) -> Vec<T> {
    let mut rows: BTreeMap<String, T> = a.into_iter().map(|r| (key(&r), r)).collect();
    for r in b {
        match rows.get_mut(&key(&r)) {
            Some(existing) => add(existing, &r),
            None => {
                rows.insert(key(&r), r);
            }
        }
    }
    rows.into_values().collect()
}
