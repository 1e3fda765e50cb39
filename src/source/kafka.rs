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
//! - **Snapshots in the background.** Every `snapshot_interval` the changed
//!   shards are copied while locked, which is all the pause the workers
//!   see, and written from the copies on a thread of their own; their
//!   offsets are committed when the files are durable. One round at a
//!   time; a round needs memory for the copies of the changed shards.
//! - **Rebalance.** Revoked partitions are snapshotted and committed before
//!   they are given up (after the round in the background, if any, is
//!   done); assigned ones are restored before they are read.
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
//! The consumer runs on its own thread. It reads messages many at a call
//! from a fetch queue that each partition is forwarded to when assigned
//! ([`crate::source::fetch`]), polls the consumer's own queue for events
//! between calls, and copies messages into batches per partition;
//! `kafka.workers` threads apply them, a partition always on the same one.
//! The rebalance callback runs inside the poll on the consumer thread.
//! Locks are taken in one order: the background round, the shard map,
//! then shards.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
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
use crate::ratelimit::LogLimiter;
use crate::source::fetch::{FetchQueue, FetchedMessage};

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
    /// A shard worker thread could not be started.
    #[error("cannot start a shard worker: {0}")]
    Thread(std::io::Error),
    /// A shard worker thread ended (it panicked).
    #[error("a shard worker stopped")]
    WorkerStopped,
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
    /// Cleared for good when the partition is revoked: batches still on
    /// their way to this shard are dropped. A partition assigned again
    /// gets a new shard.
    live: bool,
}

/// A shard as the map, the workers and the publisher share it.
type ShardRef = Arc<Mutex<Shard>>;

impl Shard {
    /// A live, unchanged shard holding `engine`, to be read from `next_offset`.
    fn start(engine: Engine, next_offset: Option<i64>) -> ShardRef {
        Arc::new(Mutex::new(Shard { engine, next_offset, dirty: false, live: true }))
    }
}

fn lock_shard(shard: &ShardRef) -> MutexGuard<'_, Shard> {
    // Each update is a complete move between states: a panic mid-batch
    // leaves a whole shard.
    shard.lock().unwrap_or_else(|p| p.into_inner())
}

enum Slot {
    Live(ShardRef),
    /// The snapshot could not be read: the partition is paused.
    Refused(CheckpointError),
    /// Lost with the group session (brokers unreachable): snapshotted, not
    /// consumed, but its figures are still served until the group decides
    /// where the partition goes.
    Detached(ShardRef),
}

/// Where rejected messages go.
struct DeadLetters {
    producer: ThreadedProducer<DefaultProducerContext>,
    topic: String,
}

/// What the consumer thread, the rebalance callback, the workers and the
/// publisher share.
struct Shared {
    cfg: Arc<EngineConfig>,
    topics: Vec<String>,
    /// Repeated warnings, one line per cause every 10 s.
    warnings: LogLimiter,
    /// The consumer group: it is part of every snapshot's identity.
    group: String,
    /// The group's snapshot directory (see [`checkpoint::group_dir`]).
    state_dir: PathBuf,
    /// Where a partition without a snapshot starts.
    reset: Offset,
    shards: Mutex<BTreeMap<Tp, Slot>>,
    dead_letters: Option<DeadLetters>,
    /// Bumped by every rebalance: the consumer thread then looks its
    /// partitions' shards up again.
    rebalances: AtomicU64,
    /// Set by librdkafka's error callback when no broker can be reached;
    /// cleared by the next successful poll or probe.
    brokers_down: AtomicBool,
    /// Set at the first assignment: not ready before the group is joined.
    joined: AtomicBool,
    snapshot_failures: AtomicU64,
    /// (epoch seconds, duration seconds, bytes) of the last snapshot round.
    last_snapshot: Mutex<Option<(f64, f64, u64)>>,
    /// The snapshot round being written in the background, if any.
    writing: Mutex<Option<JoinHandle<Round>>>,
    /// Where assigned partitions' messages go (see [`crate::source::fetch`]).
    /// `run` owns the queue, which holds the consumer; this is a weak
    /// reference, for the rebalance callback.
    fetch: OnceLock<Weak<FetchQueue<Context>>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<Tp, Slot>> {
        self.shards.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fetch_queue(&self) -> Option<Arc<FetchQueue<Context>>> {
        self.fetch.get().and_then(Weak::upgrade)
    }

    /// Locks the given live shards (all when `only` is None), then
    /// flushes the dead letters already sent; `None` when they could not
    /// be flushed and `need_flush` says to wait for them. With the shards
    /// locked no worker applies a message, so a snapshot taken under these
    /// locks never holds an offset whose dead letter a crash could lose.
    fn lock_for_snapshot<'s>(
        &self,
        shards: &'s BTreeMap<Tp, Slot>,
        only: Option<&[Tp]>,
        need_flush: bool,
    ) -> Option<Vec<(&'s Tp, &'s ShardRef, MutexGuard<'s, Shard>)>> {
        let locked: Vec<_> = shards
            .iter()
            .filter(|(tp, _)| only.is_none_or(|o| o.contains(tp)))
            .filter_map(|(tp, slot)| match slot {
                Slot::Live(shard) => Some((tp, shard, lock_shard(shard))),
                _ => None,
            })
            .collect();
        if let Some(dl) = &self.dead_letters {
            // Briefly: the loop must keep serving figures while brokers are away.
            if let Err(e) = dl.producer.flush(Duration::from_secs(1)) {
                if need_flush {
                    warn!(error = %e, "dead letters not yet delivered; snapshot postponed");
                    return None;
                }
                warn!(error = %e, "dead letters not yet delivered; snapshotting the revoked partitions anyway");
            }
        }
        Some(locked)
    }

    /// Writes the snapshots of the given live shards (all when `only` is
    /// None) here and now, and returns the offsets to commit (see
    /// [`Shared::lock_for_snapshot`] for `None`).
    fn snapshot(
        &self,
        shards: &BTreeMap<Tp, Slot>,
        only: Option<&[Tp]>,
        need_flush: bool,
    ) -> Option<TopicPartitionList> {
        let started = Instant::now();
        let mut locked = self.lock_for_snapshot(shards, only, need_flush)?;
        let mut tpl = TopicPartitionList::new();
        let mut bytes = 0;
        for (tp, _, shard) in &mut locked {
            let Some(next) = shard.next_offset else {
                continue;
            };
            if shard.dirty {
                match self.write(tp, &shard.engine, next) {
                    Some(n) => {
                        bytes += n;
                        shard.dirty = false;
                    }
                    None => continue,
                }
            }
            list_offset(&mut tpl, tp, next);
        }
        drop(locked);
        self.record_round(started.elapsed().as_secs_f64(), bytes);
        Some(tpl)
    }

    /// Writes one snapshot; `None` (logged and counted) when it failed.
    fn write(&self, tp: &Tp, engine: &Engine, next: i64) -> Option<u64> {
        let path = checkpoint::path_for(&self.state_dir, &tp.topic, tp.partition);
        match checkpoint::write(&path, &self.group, engine, next) {
            Ok(n) => Some(n),
            Err(e) => {
                self.snapshot_failures.fetch_add(1, Ordering::Relaxed);
                error!(topic = %tp.topic, partition = tp.partition, error = %e, "snapshot failed; offsets not committed");
                None
            }
        }
    }

    fn record_round(&self, secs: f64, bytes: u64) {
        if let Ok(mut last) = self.last_snapshot.lock() {
            *last = Some((now_ms() as f64 / 1000.0, secs, bytes));
        }
        debug!(bytes, secs, "snapshot round done");
    }

    /// Starts a snapshot round written on a thread of its own: the changed
    /// shards are copied while locked (the only pause the workers see),
    /// then written from the copies. Offsets of unchanged shards, already
    /// in their snapshots, are returned to commit now.
    fn start_round(self: &Arc<Self>) -> Option<TopicPartitionList> {
        let mut writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        if writing.is_some() {
            // The last round is still being written: this one waits.
            return None;
        }
        let started = Instant::now();
        let shards = self.lock();
        let mut locked = self.lock_for_snapshot(&shards, None, true)?;
        let mut durable = TopicPartitionList::new();
        let mut copies = Vec::new();
        for (tp, shard_ref, shard) in &mut locked {
            let Some(next) = shard.next_offset else {
                continue;
            };
            if shard.dirty {
                copies.push(((*tp).clone(), Arc::clone(shard_ref), shard.engine.clone(), next));
                shard.dirty = false;
            } else {
                list_offset(&mut durable, tp, next);
            }
        }
        drop(locked);
        drop(shards);
        debug!(shards = copies.len(), pause_seconds = started.elapsed().as_secs_f64(), "snapshot round copied");
        if !copies.is_empty() {
            let shared = Arc::clone(self);
            let round = std::thread::Builder::new().name("snapshot-writer".into()).spawn(move || {
                let mut round = Round { written: Vec::new(), failed: Vec::new(), bytes: 0, secs: 0.0 };
                for (tp, shard, engine, next) in copies {
                    match shared.write(&tp, &engine, next) {
                        Some(n) => {
                            round.bytes += n;
                            round.written.push((tp, shard, next));
                        }
                        None => round.failed.push(shard),
                    }
                }
                round.secs = started.elapsed().as_secs_f64();
                round
            });
            match round {
                Ok(handle) => *writing = Some(handle),
                Err(e) => {
                    // Nothing was written: the shards are changed still.
                    error!(error = %e, "cannot start the snapshot writer");
                    self.snapshot_failures.fetch_add(1, Ordering::Relaxed);
                    return Some(durable);
                }
            }
        }
        Some(durable)
    }

    /// Ends the round being written, if any (waiting for it when `wait`),
    /// and returns the offsets it made durable for shards still live.
    /// Shards whose write failed are marked changed again.
    fn finish_round(&self, wait: bool) -> Option<TopicPartitionList> {
        let handle = {
            let mut writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
            match writing.take() {
                Some(h) if wait || h.is_finished() => h,
                other => {
                    *writing = other;
                    return None;
                }
            }
        };
        let Ok(round) = handle.join() else {
            error!("the snapshot writer panicked; its shards are written again next round");
            self.snapshot_failures.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        for shard in &round.failed {
            let mut shard = lock_shard(shard);
            shard.dirty = shard.live;
        }
        let mut tpl = TopicPartitionList::new();
        for (tp, shard, next) in &round.written {
            // A shard revoked since then has had its own snapshot.
            if lock_shard(shard).live {
                list_offset(&mut tpl, tp, *next);
            }
        }
        self.record_round(round.secs, round.bytes);
        Some(tpl)
    }
}

/// A snapshot round written in the background.
struct Round {
    written: Vec<(Tp, ShardRef, i64)>,
    failed: Vec<ShardRef>,
    bytes: u64,
    secs: f64,
}

/// Logs an error of the consumer's poll, at most once per kind every
/// interval.
fn consume_error(shared: &Shared, e: &KafkaError) {
    let cause = format!("consume: {e}");
    if let Some(held_back) = shared.warnings.check(&cause) {
        warn!(error = %e, held_back, "consume error");
    }
}

fn list_offset(tpl: &mut TopicPartitionList, tp: &Tp, next: i64) {
    if let Err(e) = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(next)) {
        warn!(error = %e, "cannot list offset for commit");
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
        // One line per kind of error every interval: an unreachable broker
        // reports itself many times a second.
        if let Some(held_back) = self.shared.warnings.check(&error.to_string()) {
            warn!(error = %error, reason, held_back, "kafka client error");
        }
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
                        if let Some(Slot::Detached(old)) = shards.remove(&tp) {
                            let mut old = lock_shard(&old);
                            if let Some(next) = old.next_offset {
                                // Back after a lost session: the shard is exactly its
                                // snapshot. It moves to a new shard, so that nothing
                                // sent to the old one before the loss reaches it.
                                info!(next_offset = next, "resumed detached shard");
                                let _ = tpl.set_partition_offset(&tp.topic, tp.partition, Offset::Offset(next));
                                let engine = std::mem::replace(&mut old.engine, Engine::new(self.shared.cfg.clone()));
                                shards.insert(tp, Slot::Live(Shard::start(engine, Some(next))));
                                continue;
                            }
                        }
                        let path = checkpoint::path_for(&self.shared.state_dir, &tp.topic, tp.partition);
                        let (slot, offset) = match checkpoint::read(&path, &self.shared.group, &self.shared.cfg) {
                            Ok(Some(r)) => {
                                info!(next_offset = r.next_offset, "restored snapshot");
                                let offset = Offset::Offset(r.next_offset);
                                (Slot::Live(Shard::start(r.engine, Some(r.next_offset))), offset)
                            }
                            Ok(None) => {
                                info!(start = ?self.shared.reset, "no snapshot; starting from the reset policy");
                                let engine = Engine::new(self.shared.cfg.clone());
                                (Slot::Live(Shard::start(engine, None)), self.shared.reset)
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
                if let Some(queue) = self.shared.fetch_queue()
                    && !queue.take_partitions(tpl)
                {
                    warn!("a partition's queue cannot be had: its messages are read one at a time");
                }
                self.shared.rebalances.fetch_add(1, Ordering::Relaxed);
                let assigned = if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                if let Err(e) = assigned {
                    error!(error = %e, "assign failed");
                }
                if paused.count() > 0
                    && let Err(e) = consumer.pause(&paused)
                {
                    error!(error = %e, "cannot pause partitions with refused snapshots");
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
                    // The round in the background first: its offsets, then
                    // the revoked shards' own snapshots over its files.
                    if let Some(offsets) = self.shared.finish_round(true).filter(|o| o.count() > 0 && !lost)
                        && let Err(e) = consumer.commit(&offsets, CommitMode::Sync)
                    {
                        warn!(error = %e, "commit failed (the snapshot holds the offsets)");
                    }
                    let mut shards = self.shared.lock();
                    let offsets = self.shared.snapshot(&shards, Some(&revoked), false);
                    if let Some(offsets) = offsets.filter(|o| o.count() > 0 && !lost)
                        && let Err(e) = consumer.commit(&offsets, CommitMode::Sync)
                    {
                        warn!(error = %e, "commit on revoke failed (the snapshot holds the offsets)");
                    }
                    for tp in &revoked {
                        if let Some(Slot::Live(shard)) = shards.remove(tp) {
                            let mut locked = lock_shard(&shard);
                            locked.live = false;
                            if lost && !locked.dirty {
                                drop(locked);
                                shards.insert(tp.clone(), Slot::Detached(shard));
                            }
                        }
                    }
                    info!(partitions = revoked.len(), lost, "partitions revoked after snapshot");
                }
                self.shared.rebalances.fetch_add(1, Ordering::Relaxed);
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

/// Messages of one partition on their way from the consumer thread to a
/// worker, in one buffer.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    messages: Vec<Queued>,
}

impl Batch {
    /// Whether the batch is to be handed over.
    fn full(&self) -> bool {
        self.messages.len() >= BATCH_MESSAGES || self.bytes.len() >= BATCH_BYTES
    }

    /// The batch emptied for reuse, without the room a large message left
    /// in it.
    fn emptied(mut self) -> Batch {
        self.bytes.clear();
        self.bytes.shrink_to(BATCH_BYTES);
        self.messages.clear();
        self
    }
}

struct Queued {
    offset: i64,
    timestamp_ms: Option<i64>,
    payload: std::ops::Range<usize>,
    key: Option<std::ops::Range<usize>>,
}

/// A batch and the shard it was read for.
struct Job {
    tp: Tp,
    shard: ShardRef,
    batch: Batch,
}

/// A batch being filled for one partition.
struct Pending {
    tp: Tp,
    shard: ShardRef,
    worker: usize,
    batch: Batch,
}

/// Messages a batch takes before it is handed over.
const BATCH_MESSAGES: usize = 512;
/// Payload bytes a batch takes before it is handed over (some 7 000
/// typical events, so for those the message count comes first): with
/// [`WORKER_QUEUE`] this bounds what a worker has waiting when messages
/// are large (a run of oversized ones on their way to the dead-letter
/// topic, say) to 64 MiB and one message a batch.
const BATCH_BYTES: usize = 1 << 20;
/// Messages taken from the fetch queue a call.
const FETCH_MESSAGES: usize = 512;
/// How often the consumer thread looks at its timers (snapshots, lag
/// probes, publishing).
const TICK: Duration = Duration::from_millis(10);
/// Batches a worker may have waiting before the consumer thread waits.
/// librdkafka hands over a fetch a partition at a time (up to 1 MiB, some
/// 9 000 small messages), so a queue shorter than a few such runs stops
/// the consumer thread on one worker while the others run dry. At 64
/// batches of 512 messages the measured wait halved (see
/// BENCHMARKS-HISTORY.md); the cost is up to 64 batches of memory a
/// worker.
const WORKER_QUEUE: usize = 64;

/// The worker threads: each owns the partitions hashed to it, so a
/// partition's messages are applied in order, and distinct partitions'
/// shards on several cores.
struct Workers {
    queues: Vec<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
    /// Emptied batches come back for reuse.
    free: Receiver<Batch>,
}

impl Workers {
    fn start(n: usize, shared: &Arc<Shared>) -> std::io::Result<Self> {
        let (give_back, free) = sync_channel(n * (WORKER_QUEUE + 2));
        let mut queues = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let (queue, jobs) = sync_channel::<Job>(WORKER_QUEUE);
            let shared = shared.clone();
            let give_back = give_back.clone();
            let thread = std::thread::Builder::new()
                .name(format!("shard-worker-{i}"))
                .spawn(move || work(&shared, jobs, give_back))?;
            queues.push(queue);
            threads.push(thread);
        }
        Ok(Workers { queues, threads, free })
    }

    /// A batch to fill: a returned one when there is one.
    fn batch(&self) -> Batch {
        match self.free.try_recv() {
            Ok(b) => b.emptied(),
            Err(_) => Batch::default(),
        }
    }

    /// Hands the pending batch over (blocking while the worker is busy).
    fn send(&self, pending: &mut Pending) -> Result<(), SourceError> {
        if pending.batch.messages.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut pending.batch, self.batch());
        let job = Job { tp: pending.tp.clone(), shard: pending.shard.clone(), batch };
        self.queues[pending.worker].send(job).map_err(|_| SourceError::WorkerStopped)
    }

    /// Lets every worker finish what it was given.
    fn finish(self) {
        drop(self.queues);
        for t in self.threads {
            if t.join().is_err() {
                error!("a shard worker panicked");
            }
        }
    }
}

/// A worker: applies batches to their shards, and dead-letters what the
/// engine rejects, under the shard's lock (see [`Shared::snapshot`]).
fn work(shared: &Shared, jobs: Receiver<Job>, give_back: SyncSender<Batch>) {
    for Job { tp, shard, batch } in jobs {
        {
            let mut shard = lock_shard(&shard);
            if !shard.live {
                // Revoked since it was read: whoever owns the partition now
                // reads these messages again from its snapshot's offset.
                continue;
            }
            let now = now_ms();
            for m in &batch.messages {
                if shard.next_offset.is_some_and(|next| m.offset < next) {
                    // Already in the restored state.
                    continue;
                }
                let payload = &batch.bytes[m.payload.clone()];
                let result = shard.engine.apply(payload, m.timestamp_ms, now);
                shard.next_offset = Some(m.offset + 1);
                shard.dirty = true;
                if let (Err(reason), Some(dl)) = (result, &shared.dead_letters) {
                    let origin_partition = tp.partition.to_string();
                    let origin_offset = m.offset.to_string();
                    let headers = OwnedHeaders::new()
                        .insert(Header { key: "cohortflow.reason", value: Some(reason.as_str()) })
                        .insert(Header { key: "cohortflow.topic", value: Some(tp.topic.as_str()) })
                        .insert(Header { key: "cohortflow.partition", value: Some(origin_partition.as_str()) })
                        .insert(Header { key: "cohortflow.offset", value: Some(origin_offset.as_str()) });
                    let mut record: BaseRecord<'_, [u8], [u8]> =
                        BaseRecord::to(&dl.topic).payload(payload).headers(headers);
                    if let Some(key) = &m.key {
                        record = record.key(&batch.bytes[key.clone()]);
                    }
                    if let Err((e, _)) = dl.producer.send(record) {
                        error!(error = %e, "dead-letter send failed");
                    }
                }
            }
        }
        let _ = give_back.try_send(batch);
    }
}

/// Runs the consumer until `shutdown`, then snapshots and commits
/// everything it owns. Blocking: call it from a thread of its own.
///
/// This thread polls and copies each message into a batch of its
/// partition; `kafka.workers` threads apply the batches.
pub fn run(
    config: &Config,
    timing: Timing,
    published: Arc<Published>,
    shutdown: CancellationToken,
) -> Result<(), SourceError> {
    let kafka = config.kafka.as_ref().ok_or(SourceError::NotConfigured)?;
    // Held until the source ends: one process a group's directory.
    let state_dir = checkpoint::group_dir(&config.state_dir, &kafka.group_id);
    let _lock = checkpoint::lock(&state_dir)?;
    let client = client_config(kafka);
    let reset = match client.get("auto.offset.reset") {
        Some("latest" | "largest" | "end") => Offset::End,
        _ => Offset::Beginning,
    };
    let dead_letters = match &kafka.dead_letter_topic {
        Some(topic) => {
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
            Some(DeadLetters { producer: p.create()?, topic: topic.clone() })
        }
        None => None,
    };
    let shared = Arc::new(Shared {
        cfg: Arc::new(config.engine.clone()),
        topics: kafka.topics.clone(),
        warnings: LogLimiter::new(Duration::from_secs(10)),
        group: kafka.group_id.clone(),
        state_dir: state_dir.clone(),
        reset,
        shards: Mutex::new(BTreeMap::new()),
        dead_letters,
        rebalances: AtomicU64::new(0),
        brokers_down: AtomicBool::new(false),
        joined: AtomicBool::new(false),
        snapshot_failures: AtomicU64::new(0),
        last_snapshot: Mutex::new(None),
        writing: Mutex::new(None),
        fetch: OnceLock::new(),
    });
    // The fetch queue before the subscription, so that every assigned
    // partition is forwarded to it.
    let (consumer, fetch_queue) = FetchQueue::new(client.create_with_context(Context { shared: shared.clone() })?);
    let fetch_queue = fetch_queue.map(Arc::new);
    match &fetch_queue {
        Some(queue) => {
            let _ = shared.fetch.set(Arc::downgrade(queue));
        }
        None => warn!("no fetch queue: messages read one at a time"),
    }
    let topics: Vec<&str> = kafka.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let workers = Workers::start(kafka.workers, &shared).map_err(SourceError::Thread)?;
    info!(topics = ?kafka.topics, group = %kafka.group_id, workers = kafka.workers, "consuming");

    let mut last_snapshot = Instant::now();
    let mut last_publish = last_snapshot - timing.publish_interval;
    let mut last_probe = last_snapshot;
    let mut next_tick = last_snapshot;
    let mut lags: HashMap<Tp, i64> = HashMap::new();
    let mut filling = Filling {
        shared: &shared,
        workers: &workers,
        pending: Vec::new(),
        last: 0,
        one_topic: kafka.topics.len() == 1,
    };
    let mut seen_rebalances = shared.rebalances.load(Ordering::Relaxed);
    // Messages since the clock was last read.
    let mut unclocked = 0usize;
    let result = loop {
        // Events (rebalances, errors, commits), and messages only where no
        // fetch queue took their partition. With a fetch queue the wait is
        // on it, which an event coming to the consumer's queue ends; none
        // while one is waiting there already.
        let polled = consumer.poll(if fetch_queue.is_some() { Duration::ZERO } else { filling.wait() });
        let rebalances = shared.rebalances.load(Ordering::Relaxed);
        if rebalances != seen_rebalances {
            seen_rebalances = rebalances;
            if let Err(e) = filling.restart() {
                break Err(e);
            }
        }
        let mut came = 0;
        match polled {
            None => {}
            Some(Err(e)) => consume_error(&shared, &e),
            Some(Ok(msg)) => {
                came += 1;
                if let Err(e) = filling.accept(&msg) {
                    break Err(e);
                }
            }
        }
        if let Some(queue) = &fetch_queue {
            // The consumer queue's length (a lock) is read only before a
            // wait.
            let wait = match filling.wait() {
                wait if wait.is_zero() || queue.events_waiting() => Duration::ZERO,
                wait => wait,
            };
            let fetched = queue.consume(wait, FETCH_MESSAGES);
            if let Err(e) = fetched.iter().try_for_each(|m| match m {
                Ok(m) => {
                    came += 1;
                    filling.accept(&m)
                }
                Err(e) => {
                    consume_error(&shared, &e);
                    Ok(())
                }
            }) {
                break Err(e);
            }
        }
        if came == 0 {
            if let Err(e) = filling.hand_over() {
                break Err(e);
            }
        } else if shared.brokers_down.load(Ordering::Relaxed) {
            // Read first: a store for every batch would dirty a line the
            // other threads read (not measured apart).
            shared.brokers_down.store(false, Ordering::Relaxed);
        }

        // Shutdown and timers: the token (a lock) and the clock are read
        // once every 64 messages or more (or when none came), the rest
        // once a tick.
        unclocked += came;
        if came > 0 && unclocked < 64 {
            continue;
        }
        unclocked = 0;
        if shutdown.is_cancelled() {
            break Ok(());
        }
        let now = Instant::now();
        if now < next_tick {
            continue;
        }
        next_tick = now + TICK;
        if let Some(offsets) = shared.finish_round(false) {
            commit(&consumer, &offsets);
        }
        if now.duration_since(last_snapshot) >= timing.snapshot_interval {
            last_snapshot = now;
            if let Some(offsets) = shared.start_round() {
                commit(&consumer, &offsets);
            }
        }
        if now.duration_since(last_probe) >= Duration::from_secs(2) {
            last_probe = now;
            lags = probe_lag(&consumer, &shared);
        }
        if now.duration_since(last_publish) >= timing.publish_interval {
            last_publish = now;
            publish(&shared, &published, &lags);
        }
    };
    info!("shutting down: final snapshot and commit");
    let handed = filling.hand_over();
    drop(filling);
    workers.finish();
    checkpoint_all(&consumer, &shared);
    publish(&shared, &published, &lags);
    result.and(handed)
}

/// What the consumer thread reads of a message, from either queue.
trait Incoming {
    fn partition(&self) -> i32;
    fn topic(&self) -> &str;
    fn offset(&self) -> i64;
    fn timestamp_ms(&self) -> Option<i64>;
    fn payload(&self) -> &[u8];
    fn key(&self) -> Option<&[u8]>;
}

impl Incoming for FetchedMessage<'_> {
    fn partition(&self) -> i32 {
        FetchedMessage::partition(self)
    }
    fn topic(&self) -> &str {
        FetchedMessage::topic(self)
    }
    fn offset(&self) -> i64 {
        FetchedMessage::offset(self)
    }
    fn timestamp_ms(&self) -> Option<i64> {
        FetchedMessage::timestamp_ms(self)
    }
    fn payload(&self) -> &[u8] {
        FetchedMessage::payload(self)
    }
    fn key(&self) -> Option<&[u8]> {
        FetchedMessage::key(self)
    }
}

impl Incoming for BorrowedMessage<'_> {
    fn partition(&self) -> i32 {
        Message::partition(self)
    }
    fn topic(&self) -> &str {
        Message::topic(self)
    }
    fn offset(&self) -> i64 {
        Message::offset(self)
    }
    fn timestamp_ms(&self) -> Option<i64> {
        Message::timestamp(self).to_millis()
    }
    fn payload(&self) -> &[u8] {
        Message::payload(self).unwrap_or_default()
    }
    fn key(&self) -> Option<&[u8]> {
        Message::key(self)
    }
}

/// The consumer thread's batches being filled: one for each partition
/// read since the last rebalance.
struct Filling<'a> {
    shared: &'a Shared,
    workers: &'a Workers,
    pending: Vec<Pending>,
    /// The batch the last message went to: messages come in runs of one
    /// partition.
    last: usize,
    /// With one topic, a message's partition alone finds its batch
    /// (reading a message's topic name costs a string length and a UTF-8
    /// check).
    one_topic: bool,
}

impl Filling<'_> {
    /// How long to wait for a message: not at all while a batch is
    /// filling, which is handed over as soon as nothing more is waiting.
    fn wait(&self) -> Duration {
        let filling = self.pending.iter().any(|p| !p.batch.messages.is_empty());
        if filling { Duration::ZERO } else { Duration::from_millis(100) }
    }

    /// Hands every batch that holds a message over.
    fn hand_over(&mut self) -> Result<(), SourceError> {
        let workers = self.workers;
        self.pending.iter_mut().try_for_each(|p| workers.send(p))
    }

    /// After a rebalance: hands the batches over and looks each
    /// partition's shard up again at its next message (batches of revoked
    /// partitions are dropped by their shards).
    fn restart(&mut self) -> Result<(), SourceError> {
        let handed = self.hand_over();
        self.pending.clear();
        handed
    }

    /// Copies a message into its partition's batch, handing the batch
    /// over when it is full. A message of a partition this member does
    /// not hold is dropped.
    fn accept(&mut self, msg: &impl Incoming) -> Result<(), SourceError> {
        let partition = msg.partition();
        let one_topic = self.one_topic;
        let holds = |p: &Pending| p.tp.partition == partition && (one_topic || p.tp.topic == msg.topic());
        let at = match self.pending.get(self.last) {
            Some(p) if holds(p) => self.last,
            _ => match self.pending.iter().position(holds) {
                Some(at) => at,
                None => {
                    let tp = Tp { topic: msg.topic().to_owned(), partition };
                    let shard = match self.shared.lock().get(&tp) {
                        Some(Slot::Live(shard)) => shard.clone(),
                        _ => return Ok(()),
                    };
                    let worker = (tp.partition.unsigned_abs() as usize) % self.workers.queues.len();
                    self.pending.push(Pending { tp, shard, worker, batch: self.workers.batch() });
                    self.pending.len() - 1
                }
            },
        };
        self.last = at;
        let p = &mut self.pending[at];
        let payload = msg.payload();
        let from = p.batch.bytes.len();
        p.batch.bytes.extend_from_slice(payload);
        let key = msg.key().map(|k| {
            let at = p.batch.bytes.len();
            p.batch.bytes.extend_from_slice(k);
            at..at + k.len()
        });
        p.batch.messages.push(Queued {
            offset: msg.offset(),
            timestamp_ms: msg.timestamp_ms(),
            payload: from..from + payload.len(),
            key,
        });
        if p.batch.full() { self.workers.send(p) } else { Ok(()) }
    }
}

/// The last snapshots, written here and now (at shutdown).
fn checkpoint_all(consumer: &BaseConsumer<Context>, shared: &Shared) {
    if let Some(offsets) = shared.finish_round(true) {
        commit(consumer, &offsets);
    }
    let shards = shared.lock();
    let offsets = shared.snapshot(&shards, None, true);
    drop(shards);
    if let Some(offsets) = offsets {
        commit(consumer, &offsets);
    }
}

fn commit(consumer: &BaseConsumer<Context>, offsets: &TopicPartitionList) {
    if offsets.count() > 0
        && let Err(e) = consumer.commit(offsets, CommitMode::Async)
    {
        debug!(error = %e, "commit failed (the snapshot holds the offsets)");
    }
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
            Slot::Live(s) => Some((tp.clone(), lock_shard(s).next_offset)),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(payload: std::ops::Range<usize>) -> Queued {
        Queued { offset: 0, timestamp_ms: None, payload, key: None }
    }

    #[test]
    fn a_batch_is_full_at_its_messages_or_its_bytes() {
        let mut b = Batch::default();
        for _ in 0..BATCH_MESSAGES - 1 {
            b.bytes.extend_from_slice(b"{}");
            b.messages.push(queued(0..2));
        }
        assert!(!b.full());
        b.messages.push(queued(0..2));
        assert!(b.full());

        let mut b = Batch::default();
        b.bytes.resize(BATCH_BYTES - 1, b' ');
        b.messages.push(queued(0..BATCH_BYTES - 1));
        assert!(!b.full());
        b.bytes.push(b' ');
        assert!(b.full());
    }

    #[test]
    fn an_emptied_batch_gives_back_the_room_of_a_large_message() {
        let mut b = Batch::default();
        b.bytes.resize(8 * BATCH_BYTES, b' ');
        b.messages.push(queued(0..8 * BATCH_BYTES));
        let b = b.emptied();
        assert!(b.bytes.is_empty() && b.messages.is_empty());
        assert!(b.bytes.capacity() <= BATCH_BYTES, "{}", b.bytes.capacity());
    }
}
