//! Retention: the cohort triangles, and the latest mature cohort with its
//! trailing baseline, which the alerts compare.

use prometheus::proto::{MetricFamily, MetricType};

use super::{Def, Family};
use crate::engine::figures::Figures;

/// How many mature cohorts before the latest one make the trailing
/// baseline that alerts compare the latest one with.
pub const TRAILING_COHORTS: usize = 7;

pub(super) const FAMILIES: &[Def] = &[
    ("cohort_users", "Users in each cohort (by cohort date).", MetricType::GAUGE, &["retention", "cohort_date"]),
    (
        "retained_users",
        "Users of the cohort with a return event in period N (or from period N on, in on_or_after mode; in any period of a bracket like 8-14; in the N-th 24 hours after their first cohort event, in rolling_24h mode). The label is day, week or month, by the definition's granularity; cohort_date is the cohort period's first day.",
        MetricType::GAUGE,
        &["retention", "cohort_date", "day"],
    ),
    ("retention_ratio", "retained_users / cohort_users.", MetricType::GAUGE, &["retention", "cohort_date", "day"]),
    (
        "retention_mature",
        "1 once the watermark has passed the end of period D+N (of a bracket's last period; of the last user's window in rolling_24h mode): the cell is final; else 0.",
        MetricType::GAUGE,
        &["retention", "cohort_date", "day"],
    ),
    (
        "retention_latest_ratio",
        "Retention ratio of the latest mature cohort for each N: what alerts use.",
        MetricType::GAUGE,
        &["retention", "day"],
    ),
    (
        "retention_latest_cohort_timestamp_seconds",
        "Start of the cohort day behind retention_latest_ratio, as a date in UTC seconds.",
        MetricType::GAUGE,
        &["retention", "day"],
    ),
    (
        "retention_latest_cohort_users",
        "Size of the latest mature cohort for each N (sums across instances for the global ratio).",
        MetricType::GAUGE,
        &["retention", "day"],
    ),
    (
        "retention_latest_retained_users",
        "Retained users of the latest mature cohort for each N.",
        MetricType::GAUGE,
        &["retention", "day"],
    ),
    (
        "retention_trailing_cohort_users",
        "Users of the 7 mature cohorts before the latest one, for each N: the alerting baseline.",
        MetricType::GAUGE,
        &["retention", "day"],
    ),
    (
        "retention_trailing_retained_users",
        "Retained users of the 7 mature cohorts before the latest one, for each N.",
        MetricType::GAUGE,
        &["retention", "day"],
    ),
];

/// Its metric families for a set of figures.
pub(super) fn families(f: &Figures, out: &mut Vec<MetricFamily>) {
    let mut cohort_users = Family::new("cohort_users");
    let mut retained = Family::new("retained_users");
    let mut ratio = Family::new("retention_ratio");
    let mut mature = Family::new("retention_mature");
    let mut latest = Family::new("retention_latest_ratio");
    let mut latest_cohort = Family::new("retention_latest_cohort_timestamp_seconds");
    let mut latest_users = Family::new("retention_latest_cohort_users");
    let mut latest_retained = Family::new("retention_latest_retained_users");
    let mut trailing_users = Family::new("retention_trailing_cohort_users");
    let mut trailing_retained = Family::new("retention_trailing_retained_users");
    for table in &f.retention {
        let (days, unit) = (&table.periods, table.granularity);
        for row in &table.cohorts {
            cohort_users.value(&[&table.name, &row.date], row.users as f64);
            for (i, day) in days.iter().enumerate() {
                let labels = [table.name.as_str(), row.date.as_str(), day.as_str()];
                retained.value_as(unit, &labels, row.retained[i] as f64);
                ratio.value_as(unit, &labels, row.retained[i] as f64 / row.users as f64);
                mature.value_as(unit, &labels, f64::from(u8::from(row.mature[i])));
            }
        }
        for (i, day) in days.iter().enumerate() {
            // Mature cohorts, newest first: the latest one, then the 7 before it.
            let mut matured = table.cohorts.iter().rev().filter(|r| r.mature[i]);
            if let Some(row) = matured.next() {
                let labels = [table.name.as_str(), day.as_str()];
                latest.value_as(unit, &labels, row.retained[i] as f64 / row.users as f64);
                latest_users.value_as(unit, &labels, row.users as f64);
                latest_retained.value_as(unit, &labels, row.retained[i] as f64);
                if let Ok(date) = row.date.parse::<jiff::civil::Date>()
                    && let Ok(z) = date.to_zoned(jiff::tz::TimeZone::UTC)
                {
                    latest_cohort.value_as(unit, &labels, z.timestamp().as_second() as f64);
                }
                let (users, kept) =
                    matured.take(TRAILING_COHORTS).fold((0u64, 0u64), |(u, k), r| (u + r.users, k + r.retained[i]));
                if users > 0 {
                    trailing_users.value_as(unit, &labels, users as f64);
                    trailing_retained.value_as(unit, &labels, kept as f64);
                }
            }
        }
    }
    out.extend(
        [
            cohort_users,
            retained,
            ratio,
            mature,
            latest,
            latest_cohort,
            latest_users,
            latest_retained,
            trailing_users,
            trailing_retained,
        ]
        .map(|f| f.mf),
    );
}
