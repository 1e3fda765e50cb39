//! Activity: new, known and active users by day, week and month; the
//! lifecycle by day and week.

use prometheus::proto::{MetricFamily, MetricType};

use super::{Def, Family};
use crate::engine::figures::{Figures, LifecycleRow};

pub(super) const FAMILIES: &[Def] = &[
    ("new_users", "Users first seen on each business day.", MetricType::GAUGE, &["date"]),
    (
        "active_users",
        "Distinct users active on the day (1d), in the 7 or 30 days ending on it, or in the calendar week or month \
         starting on it (week, month; the current one so far).",
        MetricType::GAUGE,
        &["window", "date"],
    ),
    ("known_users", "Users first seen on or before the day.", MetricType::GAUGE, &["date"]),
    (
        "lifecycle_users",
        "Users active in the day, week or month starting on date, or in the one before, by status: new (first seen in it), \
         returning (active in the one before too), resurrecting (the other active ones), dormant (active in the one \
         before, not in it).",
        MetricType::GAUGE,
        &["granularity", "status", "date"],
    ),
    (
        "lifecycle_latest_users",
        "lifecycle_users of the latest complete day and week (those before the watermark's), without a date label: \
         what the lifecycle pulse alert reads (zeros when nobody was active in it or the one before).",
        MetricType::GAUGE,
        &["granularity", "status"],
    ),
    (
        "stickiness_users",
        "Users active on exactly `days` of the `window` days ending on date.",
        MetricType::GAUGE,
        &["window", "days", "date"],
    ),
];

/// Its metric families for a set of figures.
pub(super) fn families(f: &Figures, out: &mut Vec<MetricFamily>) {
    let mut new_users = Family::new("new_users");
    let mut active = Family::new("active_users");
    let mut known = Family::new("known_users");
    for row in &f.activity {
        new_users.value(&[&row.date], row.new_users as f64);
        active.value(&["1d", &row.date], row.dau as f64);
        active.value(&["7d", &row.date], row.wau as f64);
        active.value(&["30d", &row.date], row.mau as f64);
        known.value(&[&row.date], row.known_users as f64);
    }
    for (window, rows) in [("week", &f.weeks), ("month", &f.months)] {
        for row in rows {
            active.value(&[window, &row.date], row.active_users as f64);
        }
    }
    let mut lifecycle = Family::new("lifecycle_users");
    let lc = &f.lifecycle;
    for (granularity, rows) in [("day", &lc.day), ("week", &lc.week), ("month", &lc.month)] {
        for r in rows {
            for (status, n) in
                [("new", r.new), ("returning", r.returning), ("resurrecting", r.resurrecting), ("dormant", r.dormant)]
            {
                lifecycle.value(&[granularity, status, &r.date], n as f64);
            }
        }
    }
    let mut latest = Family::new("lifecycle_latest_users");
    let wm = f.watermark_date.as_deref().and_then(|d| d.parse::<jiff::civil::Date>().ok());
    if let Some(wm) = wm {
        let day = |r: &&LifecycleRow| r.date.parse::<jiff::civil::Date>().ok();
        let since = |r: &&LifecycleRow| day(r).map(|d| (wm - d).get_days());
        // The day before the watermark's; the week whose next one holds it.
        let complete_day = f.lifecycle.day.iter().find(|r| since(r) == Some(1));
        let complete_week = f.lifecycle.week.iter().find(|r| since(r).is_some_and(|n| (7..14).contains(&n)));
        for (granularity, row) in [("day", complete_day), ("week", complete_week)] {
            let r = row.cloned().unwrap_or_default();
            for (status, n) in
                [("new", r.new), ("returning", r.returning), ("resurrecting", r.resurrecting), ("dormant", r.dormant)]
            {
                latest.value(&[granularity, status], n as f64);
            }
        }
    }
    let mut sticky = Family::new("stickiness_users");
    for t in &f.stickiness {
        let window = format!("{}d", t.window);
        for r in &t.rows {
            for (k, &n) in r.users.iter().enumerate() {
                sticky.value(&[&window, &(k + 1).to_string(), &r.date], n as f64);
            }
        }
    }
    out.extend([new_users, active, known, lifecycle, latest, sticky].map(|f| f.mf));
}
