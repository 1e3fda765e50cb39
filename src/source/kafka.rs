//! The Kafka source of `cohortflow run`: a consumer-group member that keeps
//! one engine shard per owned partition, and makes the snapshot the owner
//! of the offsets.
//!
//! - **Offsets.** Auto-commit is off. A shard's snapshot holds its state and
//!   the next offset to read; offsets are committed to the group only after
//!   the snapshot is durable (progress reporting for lag tools). On
//!   assignment the snapshot is restored and the partition starts at the
//!   snapshot's offset, whatever the group says; without a snapshot it
//!   starts where `auto.offset.reset` says (earliest by default), never at
//!   a committed offset whose state is lost.
//! - **Rebalance.** Revoked partitions are snapshotted and committed before
//!   they are given up; assigned ones are restored before they are read.
//! - **A snapshot that cannot be read** (corrupt, or from another config)
//!   is never half-loaded and never silently replaced by an empty state:
//!   the partition stays paused, `/readyz` says not ready, the error is
//!   logged and counted, and the operator decides (move the file aside to
//!   rebuild from the topic, or fix the config).
//! - **Bad messages** are counted by reason and, with `dead_letter_topic`,
//!   forwarded unchanged with the reason and their origin in headers. The
//!   dead-letter producer is flushed before each snapshot, so a crash can
//!   duplicate a dead letter but never lose one.
//!
//! The consumer runs on its own thread with librdkafka's blocking poll; the
//! rebalance callback runs inside that poll on the same thread, so the
//! shard map's lock is never contended across threads except by the
//! publisher.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn};

use crate::checkpoint::{self, CheckpointError};
use crate::config::{Config, EngineConfig, KafkaConfig};
use crate::engine::figures::Figures;
use crate::engine::{Engine, merge};
use crate::export::{PartitionStatus, Published, SourceStatus};

/// Errors that stop the source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The client could not be created or subscribed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// `run` needs a `[kafka]` section.
    #[error("config has no [kafka] section")]
    NotConfigured,
    /// A snapshot could not be written at shutdown.
    #[error("{0}")]
    Checkpoint(#[from] CheckpointError),
}

/// A topic and partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Tp {
    topic: String,
    partition: i32,
}

struct Shard {
    engine: Engine,
    /// The next offset to apply; `None` until the first message when the
    /// partition started from the reset policy.
    next_offset: Option<i64>,
    /// Changed since the last snapshot.
    dirty: bool,
}

enum Slot {
    Live(Box<Shard>),
    /// The snapshot could not be read: the partition is paused.
    Refused(CheckpointError),
    /// Lost with the group session (brokers unreachable): snapshotted, not
    /// consumed, but its figures are still served until the group decides
    /// where the partition goes.
    Detached(Box<Shard>),
}

/// What the consumer thread, the rebalance callback and the publisher share.
struct Shared {
    cfg: Arc<EngineConfig>,
    topics: Vec<String>,
    state_dir: PathBuf,
    /// Where a partition without a snapshot starts.
    reset: Offset,
    shards: Mutex<BTreeMap<Tp, Slot>>,
    /// Set by librdkafka's error callback when no broker can be reached;
    /// cleared by the next successful poll or probe.
    brokers_down: AtomicBool,
    /// Set at the first assignment: not ready before the group is joined.
    joined: AtomicBool,
    snapshot_failures: AtomicU64,
    /// (epoch seconds, duration seconds, bytes) of the last snapshot round.
    last_snapshot: Mutex<Option<(f64, f64, u64)>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<Tp, Slot>> {
        // A panic while holding the lock leaves shards that are still whole:
        // each update is a complete move between states.
        self.shards.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Snapshots the given shards (all when `only` is None) and returns the
    /// offsets to commit.
    fn snapshot(&self, shards: &mut BTreeMap<Tp, Slot>, only: Option<&[Tp]>) -> (TopicPartitionList, u64) {
        let started = Instant::now();
        let mut tpl = TopicPartitionList::new();
        let mut bytes = 0;
        for (tp, slot) in shards.iter_mut() {
            if only.is_some_and(|o| !o.contains(tp)) {
                continue;
            }
            let Slot::Live(shard) = slot else { continue };
            let Some(next) = shard.next_offset else {
                continue;
            };
            if shard.dirty {
                let path = checkpoint::path_for(&self.state_dir, &tp.topic, tp.partition);
                match checkpoint::write(&path, &shard.engine, next) {
                    Ok(n) => {
                        bytes += n;
                        shard.dirty = false;
                    }
                    Err(e) => {
                        self.snapshot_failures.fetch_add(1, Ordering::Relaxed);
                        error!(topic = %tp.topic, partition = tp.partition, error = %e, "snapshot failed; offsets not committed");
                        continue;
                    }
                }
            }
            if let Err(e) = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(next)) {
                warn!(error = %e, "cannot list offset for commit");
            }
        }
        let secs = started.elapsed().as_secs_f64();
        if let Ok(mut last) = self.last_snapshot.lock() {
            *last = Some((now_ms() as f64 / 1000.0, secs, bytes));
        }
        (tpl, bytes)
    }
}

struct Context {
    shared: Arc<Shared>,
}

impl ClientContext for Context {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::Global(RDKafkaErrorCode::AllBrokersDown)) {
            self.shared.brokers_down.store(true, Ordering::Relaxed);
        }
        warn!(error = %error, reason, "kafka client error");
    }
}

impl ConsumerContext for Context {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.shared.joined.store(true, Ordering::Relaxed);
                let mut paused = TopicPartitionList::new();
                {
                    let mut shards = self.shared.lock();
                    let listed: Vec<(String, i32)> =
                        tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
                    for (topic, partition) in listed {
                        let span = info_span!("partition", %topic, partition);
                        let _guard = span.enter();
                        let tp = Tp { topic, partition };
                        if let Some(Slot::Detached(shard)) = shards.remove(&tp) {
                            if let Some(next) = shard.next_offset {
                                // Back after a lost session: the shard is exactly its snapshot.
                                info!(next_offset = next, "resumed detached shard");
                                let _ = tpl.set_partition_offset(&tp.topic, tp.partition, Offset::Offset(next));
                                shards.insert(tp, Slot::Live(shard));
                                continue;
                            }
                        }
                        let path = checkpoint::path_for(&self.shared.state_dir, &tp.topic, tp.partition);
                        let (slot, offset) = match checkpoint::read(&path, &self.shared.cfg) {
                            Ok(Some(r)) => {
                                info!(next_offset = r.next_offset, "restored snapshot");
                                let offset = Offset::Offset(r.next_offset);
                                let shard = Shard { engine: r.engine, next_offset: Some(r.next_offset), dirty: false };
                                (Slot::Live(Box::new(shard)), offset)
                            }
                            Ok(None) => {
                                info!(start = ?self.shared.reset, "no snapshot; starting from the reset policy");
                                let shard = Shard {
                                    engine: Engine::new(self.shared.cfg.clone()),
                                    next_offset: None,
                                    dirty: false,
                                };
                                (Slot::Live(Box::new(shard)), self.shared.reset)
                            }
                            Err(e) => {
                                error!(error = %e, "snapshot refused; partition paused until the file is fixed or moved aside");
                                let _ = paused.add_partition(&tp.topic, tp.partition);
                                (Slot::Refused(e), self.shared.reset)
                            }
                        };
                        if let Err(e) = tpl.set_partition_offset(&tp.topic, tp.partition, offset) {
                            warn!(error = %e, "cannot set start offset");
                        }
                        shards.insert(tp, slot);
                    }
                    // Detached shards not handed back belong to someone else now.
                    shards.retain(|_, slot| !matches!(slot, Slot::Detached(_)));
                }
                let assigned = if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                if let Err(e) = assigned {
                    error!(error = %e, "assign failed");
                }
                if paused.count() > 0 {
                    if let Err(e) = consumer.pause(&paused) {
                        error!(error = %e, "cannot pause partitions with refused snapshots");
                    }
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked: Vec<Tp> = tpl
                    .elements()
                    .iter()
                    .map(|e| Tp { topic: e.topic().to_owned(), partition: e.partition() })
                    .collect();
                {
                    let lost = consumer.assignment_lost();
                    let mut shards = self.shared.lock();
                    let (offsets, _) = self.shared.snapshot(&mut shards, Some(&revoked));
                    if offsets.count() > 0 && !lost {
                        if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
                            warn!(error = %e, "commit on revoke failed (the snapshot holds the offsets)");
                        }
                    }
                    for tp in &revoked {
                        match shards.remove(tp) {
                            Some(Slot::Live(shard)) if lost && !shard.dirty => {
                                shards.insert(tp.clone(), Slot::Detached(shard));
                            }
                            _ => {}
                        }
                    }
                    info!(partitions = revoked.len(), lost, "partitions revoked after snapshot");
                }
                let result = if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                if let Err(e) = result {
                    error!(error = %e, "unassign failed");
                }
            }
            other => {
                error!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
            }
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Timing knobs of the source.
#[derive(Debug, Clone)]
pub struct Timing {
    /// How often dirty shards are snapshotted (and offsets committed).
    pub snapshot_interval: Duration,
    /// How often figures are published to the exporters.
    pub publish_interval: Duration,
}

fn client_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers)
        .set("group.id", &k.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("auto.offset.reset", "earliest")
        // librdkafka pauses a partition's fetching for 1 s (its default)
        // whenever its local queue is over queued.min.messages, which a
        // consumer that does real work per message hits all the time: it
        // capped throughput at about 135 k msg/s here. A short pause keeps
        // the queue bounded (queued.max.messages.kbytes) without the stall.
        .set("fetch.queue.backoff.ms", "20")
        // The figures are live: a fetch returns within 100 ms when the
        // broker has nothing new (librdkafka waits 500 ms by default),
        // which bounds what an event adds to its way to /metrics.
        .set("fetch.wait.max.ms", "100");
    for (key, value) in &k.options {
        c.set(key, value);
    }
    // The snapshot owns the offsets: these two are not the user's to change.
    c.set("enable.auto.commit", "false").set("enable.auto.offset.store", "false");
    c
}

/// Runs the consumer until `shutdown`, then snapshots and commits
/// everything it owns. Blocking: call it from a thread of its own.
pub fn run(
    config: &Config,
    timing: Timing,
    published: Arc<Published>,
    shutdown: CancellationToken,
) -> Result<(), SourceError> {
    let kafka = config.kafka.as_ref().ok_or(SourceError::NotConfigured)?;
    let client = client_config(kafka);
    let reset = match client.get("auto.offset.reset") {
        Some("latest" | "largest" | "end") => Offset::End,
        _ => Offset::Beginning,
    };
    let shared = Arc::new(Shared {
        cfg: Arc::new(config.engine.clone()),
        topics: kafka.topics.clone(),
        state_dir: config.state_dir.clone(),
        reset,
        shards: Mutex::new(BTreeMap::new()),
        brokers_down: AtomicBool::new(false),
        joined: AtomicBool::new(false),
        snapshot_failures: AtomicU64::new(0),
        last_snapshot: Mutex::new(None),
    });
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|source| CheckpointError::Io { path: config.state_dir.clone(), source })?;
    let consumer: BaseConsumer<Context> = client.create_with_context(Context { shared: shared.clone() })?;
    let topics: Vec<&str> = kafka.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let producer: Option<ThreadedProducer<DefaultProducerContext>> = match &kafka.dead_letter_topic {
        Some(_) => {
            let mut p = ClientConfig::new();
            // Room for a rejected message of any size the consumer can read
            // (too_large ones are over 1 MiB); the broker's limit still applies.
            p.set("bootstrap.servers", &kafka.brokers)
                .set("enable.idempotence", "true")
                .set("message.max.bytes", "4194304");
            for (key, value) in &kafka.options {
                if !key.starts_with("auto.") && !key.starts_with("group.") && !key.starts_with("enable.auto") {
                    p.set(key, value);
                }
            }
            Some(p.create()?)
        }
        None => None,
    };
    info!(topics = ?kafka.topics, group = %kafka.group_id, "consuming");

    let mut last_snapshot = Instant::now();
    let mut last_publish = Instant::now() - timing.publish_interval;
    let mut last_probe = Instant::now();
    let mut lags: HashMap<Tp, i64> = HashMap::new();
    let mut tp = Tp { topic: String::new(), partition: -1 };
    while !shutdown.is_cancelled() {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => warn!(error = %e, "consume error"),
            Some(Ok(msg)) => {
                shared.brokers_down.store(false, Ordering::Relaxed);
                // Reused from message to message: no allocation per message.
                if tp.partition != msg.partition() || tp.topic != msg.topic() {
                    tp.topic.clear();
                    tp.topic.push_str(msg.topic());
                    tp.partition = msg.partition();
                }
                let offset = msg.offset();
                let mut shards = shared.lock();
                if let Some(Slot::Live(shard)) = shards.get_mut(&tp) {
                    if shard.next_offset.is_some_and(|next| offset < next) {
                        // Already in the restored state.
                        continue;
                    }
                    let payload = msg.payload().unwrap_or(b"");
                    let result = shard.engine.apply(payload, msg.timestamp().to_millis(), now_ms());
                    shard.next_offset = Some(offset + 1);
                    shard.dirty = true;
                    drop(shards);
                    if let (Err(reason), Some(producer), Some(dlq)) = (result, &producer, &kafka.dead_letter_topic) {
                        let origin_partition = tp.partition.to_string();
                        let origin_offset = offset.to_string();
                        let headers = OwnedHeaders::new()
                            .insert(Header { key: "cohortflow.reason", value: Some(reason.as_str()) })
                            .insert(Header { key: "cohortflow.topic", value: Some(tp.topic.as_str()) })
                            .insert(Header { key: "cohortflow.partition", value: Some(origin_partition.as_str()) })
                            .insert(Header { key: "cohortflow.offset", value: Some(origin_offset.as_str()) });
                        let mut record: BaseRecord<'_, [u8], [u8]> =
                            BaseRecord::to(dlq).payload(payload).headers(headers);
                        if let Some(key) = msg.key() {
                            record = record.key(key);
                        }
                        if let Err((e, _)) = producer.send(record) {
                            error!(error = %e, "dead-letter send failed");
                        }
                    }
                }
            }
        }

        if last_snapshot.elapsed() >= timing.snapshot_interval {
            last_snapshot = Instant::now();
            checkpoint_all(&consumer, &shared, producer.as_ref());
        }
        if last_probe.elapsed() >= Duration::from_secs(2) {
            last_probe = Instant::now();
            lags = probe_lag(&consumer, &shared);
        }
        if last_publish.elapsed() >= timing.publish_interval {
            last_publish = Instant::now();
            publish(&shared, &published, &lags);
        }
    }
    info!("shutting down: final snapshot and commit");
    checkpoint_all(&consumer, &shared, producer.as_ref());
    publish(&shared, &published, &lags);
    Ok(())
}

fn checkpoint_all(
    consumer: &BaseConsumer<Context>,
    shared: &Shared,
    producer: Option<&ThreadedProducer<DefaultProducerContext>>,
) {
    if let Some(p) = producer {
        // Dead letters of applied messages must be out before their offsets
        // are final.
        // Briefly: the loop must keep serving figures while brokers are away.
        if let Err(e) = p.flush(Duration::from_secs(1)) {
            warn!(error = %e, "dead letters not yet delivered; snapshot postponed");
            return;
        }
    }
    let mut shards = shared.lock();
    let (offsets, bytes) = shared.snapshot(&mut shards, None);
    drop(shards);
    if offsets.count() > 0 {
        if let Err(e) = consumer.commit(&offsets, CommitMode::Async) {
            debug!(error = %e, "commit failed (the snapshot holds the offsets)");
        }
    }
    debug!(bytes, "snapshot round done");
}

/// High watermarks of owned partitions, through the consumer's metadata
/// connection; a failure marks the brokers unreachable.
fn probe_lag(consumer: &BaseConsumer<Context>, shared: &Shared) -> HashMap<Tp, i64> {
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
            Slot::Live(s) => Some((tp.clone(), s.next_offset)),
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

fn publish(shared: &Shared, published: &Published, lags: &HashMap<Tp, i64>) {
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
            Slot::Live(shard) => {
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
                parts.push(shard.engine.figures_all());
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
