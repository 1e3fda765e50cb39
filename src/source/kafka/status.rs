//! What the source tells: partitions' lag, read from the brokers, and the
//! merged figures and status it publishes to the exporters.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::debug;

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::Tp;
use super::rebalance::Context;
use super::shard::{Shared, Slot, lock_shard};
use crate::engine::figures::Figures;
use crate::engine::merge;
use crate::export::{PartitionStatus, Published, SourceStatus};

/// High watermarks of owned partitions, through the consumer's metadata
/// connection; a failure marks the brokers unreachable.
pub(super) fn probe_lag(consumer: &BaseConsumer<Context>, shared: &Shared) -> HashMap<Tp, i64> {
    let mut lags = HashMap::new();
    // Whether a broker answers at all, whether or not partitions are owned.
    let topic = shared.topics.first().map(String::as_str);
    if let Err(e) = consumer.fetch_metadata(topic, Duration::from_millis(1500)) {
        shared.brokers_down.store(true, Ordering::Relaxed);
        debug!(error = %e, "metadata probe failed");
        return lags;
    }
    shared.brokers_down.store(false, Ordering::Relaxed);
    let owned: Vec<(Tp, Option<i64>)> = shared
        .lock()
        .iter()
        .filter_map(|(tp, slot)| match slot {
            Slot::Live(s, _) => Some((tp.clone(), lock_shard(s).next_offset)),
            Slot::Refused(_) => Some((tp.clone(), None)),
            Slot::Detached(_) => None,
        })
        .collect();
    for (tp, next) in owned {
        match consumer.fetch_watermarks(&tp.topic, tp.partition, Duration::from_millis(1500)) {
            Ok((low, high)) => {
                lags.insert(tp, (high - next.unwrap_or(low)).max(0));
            }
            Err(e) => {
                shared.brokers_down.store(true, Ordering::Relaxed);
                debug!(error = %e, "watermark probe failed");
                break;
            }
        }
    }
    lags
}

pub(super) fn publish(shared: &Shared, published: &Published, lags: &HashMap<Tp, i64>) {
    let shards = shared.lock();
    let mut parts = Vec::with_capacity(shards.len());
    let mut partitions = Vec::with_capacity(shards.len());
    let mut all_restored = true;
    for (tp, slot) in shards.iter() {
        let mut status = PartitionStatus {
            topic: tp.topic.clone(),
            partition: tp.partition,
            lag: lags.get(tp).copied(),
            next_offset: None,
            watermark_ms: None,
            snapshot_error: None,
        };
        match slot {
            Slot::Live(shard, _) => {
                let shard = lock_shard(shard);
                let f = shard.engine.figures_all();
                status.next_offset = shard.next_offset;
                status.watermark_ms = f.watermark_ms;
                parts.push(f);
            }
            Slot::Refused(e) => {
                all_restored = false;
                status.snapshot_error = Some(e.kind());
            }
            Slot::Detached(shard) => {
                // Not owned, but its last figures are still the best there are.
                parts.push(lock_shard(shard).engine.figures_all());
                continue;
            }
        }
        partitions.push(status);
    }
    drop(shards);
    let figures = if parts.is_empty() { Figures::default() } else { merge(parts, &shared.cfg) };
    published.publish(figures);
    let last = shared.last_snapshot.lock().ok().and_then(|l| *l);
    let brokers_up = !shared.brokers_down.load(Ordering::Relaxed);
    published.publish_source(SourceStatus {
        partitions,
        brokers_up,
        last_snapshot_seconds: last.map(|l| l.0),
        last_snapshot_duration_seconds: last.map(|l| l.1),
        last_snapshot_bytes: last.map(|l| l.2),
        snapshot_failures: shared.snapshot_failures.load(Ordering::Relaxed),
    });
    published.set_ready(shared.joined.load(Ordering::Relaxed) && all_restored && brokers_up);
}
