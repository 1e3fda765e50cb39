//! Funnels: users per step by entry day, conversions, time to convert, and
//! the funnel stores' limits.

use prometheus::proto::{MetricFamily, MetricType};

use super::{Def, Family};
use crate::engine::figures::Figures;

pub(super) const FAMILIES: &[Def] = &[
    (
        "funnel_users",
        "Users who entered the funnel on the day and reached at least this step.",
        MetricType::GAUGE,
        &["funnel", "step", "step_name", "entry_date"],
    ),
    (
        "funnel_conversion_ratio",
        "funnel_users of the step / funnel_users of step 1.",
        MetricType::GAUGE,
        &["funnel", "step", "step_name", "entry_date"],
    ),
    (
        "funnel_conversions_total",
        "(user, entry day) pairs that reached the step, ever.",
        MetricType::COUNTER,
        &["funnel", "step"],
    ),
    (
        "funnel_time_to_convert_seconds",
        "Time from step 1 to the step, over conversions seen.",
        MetricType::SUMMARY,
        &["funnel", "step"],
    ),
    (
        "funnel_events_refused_total",
        "Funnel events left out of the funnels because a shard's funnel store was full (2^32 units), counted since each shard started (not kept in snapshots).",
        MetricType::COUNTER,
        &[],
    ),
    (
        "funnel_events_capped_total",
        "Funnel events left out of the funnels because their user already kept max_funnel_events_per_user of the history window, counted since each shard started (not kept in snapshots).",
        MetricType::COUNTER,
        &[],
    ),
    (
        "funnel_store_fill_ratio",
        "The fullest funnel store of any shard: its arena's units over the 2^32 it can address (at 1, funnel events are refused).",
        MetricType::GAUGE,
        &[],
    ),
];

/// Its metric families for a set of figures.
pub(super) fn families(f: &Figures, out: &mut Vec<MetricFamily>) {
    let mut users = Family::new("funnel_users");
    let mut conversion = Family::new("funnel_conversion_ratio");
    let mut conversions = Family::new("funnel_conversions_total");
    let mut ttc = Family::new("funnel_time_to_convert_seconds");
    for table in &f.funnels {
        let steps: Vec<String> = (1..=table.steps.len()).map(|k| k.to_string()).collect();
        for row in &table.entries {
            let entered = row.users.first().copied().unwrap_or(0);
            for (k, name) in table.steps.iter().enumerate() {
                let labels = [table.name.as_str(), steps[k].as_str(), name.as_str(), row.date.as_str()];
                users.value(&labels, row.users[k] as f64);
                if entered > 0 {
                    conversion.value(&labels, row.users[k] as f64 / entered as f64);
                }
            }
        }
        for (k, step) in steps.iter().enumerate() {
            conversions.value(&[&table.name, step], table.conversions_total[k] as f64);
            if k > 0 {
                let t = &table.time_to_convert[k];
                ttc.summary(&[&table.name, step], &t.quantiles, t.sum_seconds, t.count);
            }
        }
    }
    out.extend([users, conversion, conversions, ttc].map(|f| f.mf));

    let mut refused = Family::new("funnel_events_refused_total");
    refused.value(&[], f.funnel_refused as f64);
    let mut capped = Family::new("funnel_events_capped_total");
    capped.value(&[], f.funnel_capped as f64);
    let mut fill = Family::new("funnel_store_fill_ratio");
    fill.value(&[], f.funnel_store_fill);
    out.extend([refused, capped, fill].map(|f| f.mf));
}
