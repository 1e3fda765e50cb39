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
//!
//! The parts: `shard` (a partition's engine, the map of them, snapshot
//! rounds), `rebalance` (assignment and revocation), `worker` (batches
//! and the threads that apply them), `status` (lag and what is
//! published); this module starts them and runs the consumer loop.

mod rebalance;
mod shard;
mod status;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::checkpoint::{self, CheckpointError};
use crate::config::{Config, KafkaConfig};
use crate::export::Published;
use crate::ratelimit::LogLimiter;
use crate::source::fetch::FetchQueue;

use rebalance::Context;
use shard::{DeadLetters, Shared};
use status::{probe_lag, publish};
use worker::{FETCH_MESSAGES, Filling, TICK, Workers};

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
        // consumer that does real work per message hits all the time, and
        // each pause stalls the partition (BENCHMARKS-HISTORY.md). A short pause keeps
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
    let state_dir = checkpoint::group_dir(&config.state_dir, &kafka.group_id);
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
