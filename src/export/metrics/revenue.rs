//! Revenue: per day the sum of the payments, paying and first-time paying
//! users; counters of payments, refunds and unreadable amounts.

use prometheus::proto::{MetricFamily, MetricType};

use super::{Def, Family};
use crate::engine::figures::Figures;
use crate::engine::revenue::{AmountReject, decimal_text};

pub(super) const FAMILIES: &[Def] = &[
    (
        "revenue",
        "Sum of the [revenue] payments' amounts on each business day, refunds (negative amounts) included, in \
         currency units.",
        MetricType::GAUGE,
        &["date"],
    ),
    ("paying_users", "Users with a payment of a positive amount on each business day.", MetricType::GAUGE, &["date"]),
    (
        "new_paying_users",
        "Users whose first payment of a positive amount ever fell on each business day.",
        MetricType::GAUGE,
        &["date"],
    ),
    (
        "revenue_total",
        "Sum of the payments of positive amounts counted, in currency units (refunds in refunds_total).",
        MetricType::COUNTER,
        &[],
    ),
    ("refunds_total", "Sum of the refunds (negative amounts) counted, as a positive amount.", MetricType::COUNTER, &[]),
    (
        "cohort_revenue",
        "Revenue from the cohort's users from the cohort day through day D+N (N-day LTV), refunds included, in \
         currency units; for retention definitions with revenue = true.",
        MetricType::GAUGE,
        &["retention", "cohort_date", "day"],
    ),
    (
        "cohort_paying_users",
        "Users of the cohort with a payment of a positive amount from the cohort day through day D+N.",
        MetricType::GAUGE,
        &["retention", "cohort_date", "day"],
    ),
    (
        "revenue_amounts_rejected_total",
        "Payment events whose amount was not counted (the event counts everywhere else), by reason: absent, \
         not_a_number, too_many_decimals (more than [revenue] scale), out_of_range.",
        MetricType::COUNTER,
        &["reason"],
    ),
];

/// `units` of 10^-`scale` in currency units: the double nearest the exact
/// decimal, which the text format prints as that decimal while it has at
/// most 15 significant digits.
fn currency(units: i128, scale: u32) -> f64 {
    decimal_text(units, scale).parse().unwrap_or(f64::NAN)
}

/// Its metric families for a set of figures (none without `[revenue]`).
pub(super) fn families(f: &Figures, out: &mut Vec<MetricFamily>) {
    let Some(r) = &f.revenue else { return };
    let mut revenue = Family::new("revenue");
    let mut paying = Family::new("paying_users");
    let mut new_paying = Family::new("new_paying_users");
    for row in &r.rows {
        revenue.value(&[&row.date], currency(row.units, r.scale));
        paying.value(&[&row.date], row.paying_users as f64);
        new_paying.value(&[&row.date], row.new_paying_users as f64);
    }
    let mut total = Family::new("revenue_total");
    total.value(&[], currency(r.paid_units, r.scale));
    let mut refunds = Family::new("refunds_total");
    refunds.value(&[], currency(r.refunded_units, r.scale));
    let mut rejected = Family::new("revenue_amounts_rejected_total");
    for (reason, n) in AmountReject::ALL.iter().zip(r.rejected) {
        rejected.value(&[reason.as_str()], n as f64);
    }
    let mut ltv = Family::new("cohort_revenue");
    let mut payers = Family::new("cohort_paying_users");
    for t in &r.cohorts {
        let days: Vec<String> = t.days.iter().map(u32::to_string).collect();
        for row in &t.rows {
            for (i, day) in days.iter().enumerate() {
                let labels = [t.name.as_str(), row.date.as_str(), day.as_str()];
                ltv.value(&labels, currency(row.units[i], r.scale));
                payers.value(&labels, row.paying_users[i] as f64);
            }
        }
    }
    out.extend([revenue, paying, new_paying, total, refunds, rejected, ltv, payers].map(|f| f.mf));
}
