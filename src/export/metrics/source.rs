//! The Kafka source of `run`: partitions, lag, snapshots, the broker.

use prometheus::proto::{MetricFamily, MetricType};

use super::{Def, Family};
use crate::export::SourceStatus;

pub(super) const FAMILIES: &[Def] = &[
    ("event_lag_seconds", "Wall clock minus the newest accepted event time.", MetricType::GAUGE, &[]),
    (
        "consumer_lag_messages",
        "Messages between the next offset to apply and the partition's high watermark.",
        MetricType::GAUGE,
        &["topic", "partition"],
    ),
    (
        "partition_watermark_timestamp_seconds",
        "Watermark of one partition's shard.",
        MetricType::GAUGE,
        &["topic", "partition"],
    ),
    (
        "snapshot_refused",
        "1 while a partition's snapshot is refused (the partition is paused), by reason.",
        MetricType::GAUGE,
        &["topic", "partition", "reason"],
    ),
    ("owned_partitions", "Partitions this instance owns.", MetricType::GAUGE, &[]),
    ("kafka_up", "1 when a broker answered lately, else 0.", MetricType::GAUGE, &[]),
    ("last_checkpoint_timestamp_seconds", "When the last snapshot round finished.", MetricType::GAUGE, &[]),
    ("checkpoint_duration_seconds", "How long the last snapshot round took.", MetricType::GAUGE, &[]),
    ("checkpoint_bytes", "Bytes written by the last snapshot round.", MetricType::GAUGE, &[]),
    (
        "checkpoint_failures_total",
        "Snapshot writes that failed (their offsets were not committed).",
        MetricType::COUNTER,
        &[],
    ),
];

/// Metric families of the Kafka source's status.
pub(super) fn families(s: &SourceStatus) -> Vec<MetricFamily> {
    let mut lag = Family::new("consumer_lag_messages");
    let mut watermark = Family::new("partition_watermark_timestamp_seconds");
    let mut refused = Family::new("snapshot_refused");
    for p in &s.partitions {
        let partition = p.partition.to_string();
        if let Some(l) = p.lag {
            lag.value(&[&p.topic, &partition], l as f64);
        }
        if let Some(w) = p.watermark_ms {
            watermark.value(&[&p.topic, &partition], w as f64 / 1000.0);
        }
        if let Some(reason) = p.snapshot_error {
            refused.value(&[&p.topic, &partition, reason], 1.0);
        }
    }
    let mut out: Vec<MetricFamily> = [lag, watermark, refused].map(|f| f.mf).into();
    let mut owned = Family::new("owned_partitions");
    owned.value(&[], s.partitions.len() as f64);
    let mut up = Family::new("kafka_up");
    up.value(&[], f64::from(u8::from(s.brokers_up)));
    let mut failures = Family::new("checkpoint_failures_total");
    failures.value(&[], s.snapshot_failures as f64);
    out.extend([owned, up, failures].map(|f| f.mf));
    for (name, v) in [
        ("last_checkpoint_timestamp_seconds", s.last_snapshot_seconds),
        ("checkpoint_duration_seconds", s.last_snapshot_duration_seconds),
        ("checkpoint_bytes", s.last_snapshot_bytes.map(|b| b as f64)),
    ] {
        if let Some(v) = v {
            let mut g = Family::new(name);
            g.value(&[], v);
            out.push(g.mf);
        }
    }
    out
}
