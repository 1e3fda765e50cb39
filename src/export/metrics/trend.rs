//! Trends: events and users per day of each `[[trend]]`, and their
//! counters.

use prometheus::proto::{MetricFamily, MetricType};

use super::{Def, Family};
use crate::engine::figures::Figures;

pub(super) const FAMILIES: &[Def] = &[
    (
        "trend_events",
        "Events of the trend on each business day, a user's events at one time counting once.",
        MetricType::GAUGE,
        &["trend", "date"],
    ),
    (
        "trend_users",
        "Distinct users with an event of the trend on each business day.",
        MetricType::GAUGE,
        &["trend", "date"],
    ),
    (
        "trend_events_total",
        "Events of the trend counted, a user's events at one time once (for rate() and alerts).",
        MetricType::COUNTER,
        &["trend"],
    ),
    (
        "trend_events_left_out_total",
        "Trend events left out: their user already kept max_funnel_events_per_user of them in the history, or the \
         store was full.",
        MetricType::COUNTER,
        &[],
    ),
];

/// Its metric families for a set of figures (none without trends).
pub(super) fn families(f: &Figures, out: &mut Vec<MetricFamily>) {
    if f.trends.is_empty() {
        return;
    }
    let mut events = Family::new("trend_events");
    let mut users = Family::new("trend_users");
    let mut total = Family::new("trend_events_total");
    for t in &f.trends {
        for r in &t.rows {
            events.value(&[&t.name, &r.date], r.events as f64);
            users.value(&[&t.name, &r.date], r.users as f64);
        }
        total.value(&[&t.name], t.events_total as f64);
    }
    let mut left_out = Family::new("trend_events_left_out_total");
    left_out.value(&[], f.trend_left_out as f64);
    out.extend([events, users, total, left_out].map(|f| f.mf));
}
