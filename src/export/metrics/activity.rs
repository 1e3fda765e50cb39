//! Activity: new and active users by day.

use prometheus::proto::{MetricFamily, MetricType};

use super::{Def, Family};
use crate::engine::figures::Figures;

pub(super) const FAMILIES: &[Def] = &[
    ("new_users", "Users first seen on each business day.", MetricType::GAUGE, &["date"]),
    (
        "active_users",
        "Distinct users active on the day (1d) or in the 7 or 30 days ending on it.",
        MetricType::GAUGE,
        &["window", "date"],
    ),
];

/// Its metric families for a set of figures.
pub(super) fn families(f: &Figures, out: &mut Vec<MetricFamily>) {
    let mut new_users = Family::new("new_users");
    let mut active = Family::new("active_users");
    for row in &f.activity {
        new_users.value(&[&row.date], row.new_users as f64);
        active.value(&["1d", &row.date], row.dau as f64);
        active.value(&["7d", &row.date], row.wau as f64);
        active.value(&["30d", &row.date], row.mau as f64);
    }
    out.extend([new_users, active].map(|f| f.mf));
}
