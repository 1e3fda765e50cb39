//! What every shard reports whatever its definitions: events by outcome,
//! the watermark, the users and the state's size.

use prometheus::proto::{MetricFamily, MetricType};

use super::{Def, Family};
use crate::engine::figures::Figures;
use crate::event::Reject;

pub(super) const FAMILIES: &[Def] = &[
    ("events_ingested_total", "Events accepted into the engine.", MetricType::COUNTER, &[]),
    ("events_rejected_total", "Messages rejected, by reason.", MetricType::COUNTER, &["reason"]),
    (
        "events_untracked_total",
        "Accepted events of new users not tracked because max_users was reached.",
        MetricType::COUNTER,
        &[],
    ),
    ("watermark_timestamp_seconds", "Newest accepted event time minus the allowed lateness.", MetricType::GAUGE, &[]),
    ("max_event_timestamp_seconds", "Newest accepted event time.", MetricType::GAUGE, &[]),
    ("tracked_users", "Users remembered by the engine.", MetricType::GAUGE, &[]),
    ("max_tracked_users", "The configured cap on remembered users.", MetricType::GAUGE, &[]),
    ("state_bytes", "Estimated bytes of engine state.", MetricType::GAUGE, &[]),
];

/// Its metric families for a set of figures.
pub(super) fn families(f: &Figures, max_users: u64, out: &mut Vec<MetricFamily>) {
    let mut ingested = Family::new("events_ingested_total");
    ingested.value(&[], f.counters.ingested as f64);
    let mut rejected = Family::new("events_rejected_total");
    for reason in Reject::ALL {
        rejected.value(&[reason.as_str()], f.counters.rejected[reason.index()] as f64);
    }
    let mut untracked = Family::new("events_untracked_total");
    untracked.value(&[], f.counters.untracked as f64);
    out.extend([ingested, rejected, untracked].map(|f| f.mf));

    if let Some(w) = f.watermark_ms {
        let mut g = Family::new("watermark_timestamp_seconds");
        g.value(&[], w as f64 / 1000.0);
        out.push(g.mf);
    }
    if let Some(m) = f.max_event_ms {
        let mut g = Family::new("max_event_timestamp_seconds");
        g.value(&[], m as f64 / 1000.0);
        out.push(g.mf);
    }
    for (name, v) in
        [("tracked_users", f.tracked_users), ("max_tracked_users", max_users), ("state_bytes", f.state_bytes)]
    {
        let mut g = Family::new(name);
        g.value(&[], v as f64);
        out.push(g.mf);
    }
}
