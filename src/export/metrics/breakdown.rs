//! Breakdowns: the cohort, activity, trend and funnel figures split by a
//! first-touch user property, as metrics of their own (a `breakdown` and a
//! `value` label beside the figure's own), so that no `sum()` over the
//! figure's series counts a user twice. Over the values of a breakdown
//! each sums to the figure without it.

use prometheus::proto::{MetricFamily, MetricType};

use super::retention::TRAILING_COHORTS;
use super::{Def, Family};
use crate::engine::figures::Figures;

pub(super) const FAMILIES: &[Def] = &[
    (
        "breakdown_cohort_users",
        "cohort_users of the users of one breakdown value (their prop on their earliest event carrying it; other: a value not listed; none: no such event).",
        MetricType::GAUGE,
        &["retention", "breakdown", "value", "cohort_date"],
    ),
    (
        "breakdown_retained_users",
        "retained_users of the users of one breakdown value (the last label is day, week or month, by the definition's granularity).",
        MetricType::GAUGE,
        &["retention", "breakdown", "value", "cohort_date", "day"],
    ),
    (
        "breakdown_retention_ratio",
        "breakdown_retained_users / breakdown_cohort_users.",
        MetricType::GAUGE,
        &["retention", "breakdown", "value", "cohort_date", "day"],
    ),
    (
        "breakdown_retention_latest_cohort_users",
        "Users of one breakdown value in the latest mature cohort (with any of them) for each N.",
        MetricType::GAUGE,
        &["retention", "breakdown", "value", "day"],
    ),
    (
        "breakdown_retention_latest_retained_users",
        "Retained users of one breakdown value in that cohort.",
        MetricType::GAUGE,
        &["retention", "breakdown", "value", "day"],
    ),
    (
        "breakdown_retention_trailing_cohort_users",
        "Users of one breakdown value in the 7 mature cohorts (with any of them) before the latest one, for each N: the alerting baseline.",
        MetricType::GAUGE,
        &["retention", "breakdown", "value", "day"],
    ),
    (
        "breakdown_retention_trailing_retained_users",
        "Retained users of one breakdown value in those 7 cohorts.",
        MetricType::GAUGE,
        &["retention", "breakdown", "value", "day"],
    ),
    (
        "breakdown_new_users",
        "new_users of one breakdown value (with activity_breakdowns).",
        MetricType::GAUGE,
        &["breakdown", "value", "date"],
    ),
    (
        "breakdown_active_users",
        "active_users of one breakdown value, windows 1d, 7d and 30d (with activity_breakdowns).",
        MetricType::GAUGE,
        &["breakdown", "value", "window", "date"],
    ),
    (
        "breakdown_trend_events",
        "trend_events of the users of one breakdown value.",
        MetricType::GAUGE,
        &["trend", "breakdown", "value", "date"],
    ),
    (
        "breakdown_trend_users",
        "trend_users of one breakdown value.",
        MetricType::GAUGE,
        &["trend", "breakdown", "value", "date"],
    ),
    (
        "breakdown_funnel_users",
        "funnel_users of the users of one breakdown value.",
        MetricType::GAUGE,
        &["funnel", "breakdown", "value", "step", "step_name", "entry_date"],
    ),
    (
        "breakdown_funnel_conversion_ratio",
        "breakdown_funnel_users of the step / breakdown_funnel_users of step 1.",
        MetricType::GAUGE,
        &["funnel", "breakdown", "value", "step", "step_name", "entry_date"],
    ),
];

/// Its metric families for a set of figures.
pub(super) fn families(f: &Figures, out: &mut Vec<MetricFamily>) {
    let mut cohort_users = Family::new("breakdown_cohort_users");
    let mut retained = Family::new("breakdown_retained_users");
    let mut ratio = Family::new("breakdown_retention_ratio");
    let mut latest_users = Family::new("breakdown_retention_latest_cohort_users");
    let mut latest_retained = Family::new("breakdown_retention_latest_retained_users");
    let mut trailing_users = Family::new("breakdown_retention_trailing_cohort_users");
    let mut trailing_retained = Family::new("breakdown_retention_trailing_retained_users");
    for table in &f.retention {
        let (days, unit) = (&table.periods, table.granularity);
        for split in &table.breakdowns {
            for v in &split.values {
                let head = [table.name.as_str(), split.breakdown.as_str(), v.value.as_str()];
                for row in &v.rows {
                    cohort_users.value(&[head[0], head[1], head[2], &row.date], row.users as f64);
                    for (i, day) in days.iter().enumerate() {
                        let labels = [head[0], head[1], head[2], row.date.as_str(), day.as_str()];
                        retained.value_as(unit, &labels, row.retained[i] as f64);
                        ratio.value_as(unit, &labels, row.retained[i] as f64 / row.users as f64);
                    }
                }
                for (i, day) in days.iter().enumerate() {
                    let mut matured = v.rows.iter().rev().filter(|r| r.mature[i]);
                    let Some(row) = matured.next() else { continue };
                    let labels = [head[0], head[1], head[2], day.as_str()];
                    latest_users.value_as(unit, &labels, row.users as f64);
                    latest_retained.value_as(unit, &labels, row.retained[i] as f64);
                    let (users, kept) =
                        matured.take(TRAILING_COHORTS).fold((0u64, 0u64), |(u, k), r| (u + r.users, k + r.retained[i]));
                    if users > 0 {
                        trailing_users.value_as(unit, &labels, users as f64);
                        trailing_retained.value_as(unit, &labels, kept as f64);
                    }
                }
            }
        }
    }
    let mut new_users = Family::new("breakdown_new_users");
    let mut active = Family::new("breakdown_active_users");
    for split in &f.activity_breakdowns {
        for v in &split.values {
            let (b, value) = (split.breakdown.as_str(), v.value.as_str());
            for row in &v.rows {
                new_users.value(&[b, value, &row.date], row.new_users as f64);
                for (window, n) in [("1d", row.dau), ("7d", row.wau), ("30d", row.mau)] {
                    active.value(&[b, value, window, &row.date], n as f64);
                }
            }
        }
    }
    let mut trend_events = Family::new("breakdown_trend_events");
    let mut trend_users = Family::new("breakdown_trend_users");
    for table in &f.trends {
        for split in &table.breakdowns {
            for v in &split.values {
                for row in &v.rows {
                    let labels = [table.name.as_str(), split.breakdown.as_str(), v.value.as_str(), row.date.as_str()];
                    trend_events.value(&labels, row.events as f64);
                    trend_users.value(&labels, row.users as f64);
                }
            }
        }
    }
    let mut funnel_users = Family::new("breakdown_funnel_users");
    let mut conversion = Family::new("breakdown_funnel_conversion_ratio");
    for table in &f.funnels {
        let steps: Vec<String> = (1..=table.steps.len()).map(|k| k.to_string()).collect();
        for split in &table.breakdowns {
            for v in &split.values {
                for row in &v.rows {
                    let entered = row.users.first().copied().unwrap_or(0);
                    for (k, name) in table.steps.iter().enumerate() {
                        let labels = [
                            table.name.as_str(),
                            split.breakdown.as_str(),
                            v.value.as_str(),
                            steps[k].as_str(),
                            name.as_str(),
                            row.date.as_str(),
                        ];
                        funnel_users.value(&labels, row.users[k] as f64);
                        if entered > 0 {
                            conversion.value(&labels, row.users[k] as f64 / entered as f64);
                        }
                    }
                }
            }
        }
    }
    out.extend(
        [
            cohort_users,
            retained,
            ratio,
            latest_users,
            latest_retained,
            trailing_users,
            trailing_retained,
            new_users,
            active,
            trend_events,
            trend_users,
            funnel_users,
            conversion,
        ]
        .map(|f| f.mf),
    );
}
