//! A partition's shard (its engine and next offset), the map of owned
//! partitions, and the snapshot rounds that write them: copies taken under
//! the shards' locks, written on a thread of their own.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tracing::{debug, error, warn};

use super::rebalance::Context;
use super::{Tp, list_offset, now_ms};
use crate::allocator::GrowthTrim;
use crate::checkpoint::{self, CheckpointError, FileLock};
use crate::engine::Engine;
use crate::engine::def::EngineConfig;
use crate::ratelimit::LogLimiter;
use crate::source::fetch::FetchQueue;

pub(super) struct Shard {
    pub(super) engine: Engine,
    /// The next offset to apply; `None` until the first message when the
    /// partition started from the reset policy.
    pub(super) next_offset: Option<i64>,
    /// Changed since the last snapshot.
    pub(super) dirty: bool,
    /// Cleared for good when the partition is revoked: batches still on
    /// their way to this shard are dropped. A partition assigned again
    /// gets a new shard.
    pub(super) live: bool,
    /// Gives the heap's free pages back as the engine's columns grow.
    pub(super) trim: GrowthTrim,
}

/// A shard as the map, the workers and the publisher share it.
pub(super) type ShardRef = Arc<Mutex<Shard>>;

impl Shard {
    /// A live, unchanged shard holding `engine`, to be read from `next_offset`.
    pub(super) fn start(engine: Engine, next_offset: Option<i64>) -> ShardRef {
        Arc::new(Mutex::new(Shard { engine, next_offset, dirty: false, live: true, trim: GrowthTrim::default() }))
    }
}

pub(super) fn lock_shard(shard: &ShardRef) -> MutexGuard<'_, Shard> {
    // Each update is a complete move between states: a panic mid-batch
    // leaves a whole shard.
    shard.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) enum Slot {
    /// Owned, with the lock on its snapshot file, let go when the slot is.
    Live(ShardRef, FileLock),
    /// The snapshot could not be read, or another process holds its lock:
    /// the partition is paused until the next assignment.
    Refused(CheckpointError),
    /// Lost with the group session (brokers unreachable): snapshotted, not
    /// consumed, but its figures are still served until the group decides
    /// where the partition goes. Its lock is let go: the new owner may
    /// well be another process.
    Detached(ShardRef),
}

/// Where rejected messages go.
pub(super) struct DeadLetters {
    pub(super) producer: ThreadedProducer<DefaultProducerContext>,
    pub(super) topic: String,
}

/// What the consumer thread, the rebalance callback, the workers and the
/// publisher share.
pub(super) struct Shared {
    pub(super) cfg: Arc<EngineConfig>,
    pub(super) topics: Vec<String>,
    /// Repeated warnings, one line per cause every 10 s.
    pub(super) warnings: LogLimiter,
    /// The consumer group: it is part of every snapshot's identity.
    pub(super) group: String,
    /// The group's snapshot directory (see [`checkpoint::group_dir`]).
    pub(super) state_dir: PathBuf,
    /// Where a partition without a snapshot starts.
    pub(super) reset: Offset,
    pub(super) shards: Mutex<BTreeMap<Tp, Slot>>,
    pub(super) dead_letters: Option<DeadLetters>,
    /// Bumped by every rebalance: the consumer thread then looks its
    /// partitions' shards up again.
    pub(super) rebalances: AtomicU64,
    /// Set by librdkafka's error callback when no broker can be reached;
    /// cleared by the next successful poll or probe.
    pub(super) brokers_down: AtomicBool,
    /// Set at the first assignment: not ready before the group is joined.
    pub(super) joined: AtomicBool,
    pub(super) snapshot_failures: AtomicU64,
    /// (epoch seconds, duration seconds, bytes) of the last snapshot round.
    pub(super) last_snapshot: Mutex<Option<(f64, f64, u64)>>,
    /// The snapshot round being written in the background, if any.
    pub(super) writing: Mutex<Option<JoinHandle<Round>>>,
    /// Where assigned partitions' messages go (see [`crate::source::fetch`]).
    /// `run` owns the queue, which holds the consumer; this is a weak
    /// reference, for the rebalance callback.
    pub(super) fetch: OnceLock<Weak<FetchQueue<Context>>>,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, BTreeMap<Tp, Slot>> {
        self.shards.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn fetch_queue(&self) -> Option<Arc<FetchQueue<Context>>> {
        self.fetch.get().and_then(Weak::upgrade)
    }

    /// Locks the given live shards (all when `only` is None), then
    /// flushes the dead letters already sent; `None` when they could not
    /// be flushed and `need_flush` says to wait for them. With the shards
    /// locked no worker applies a message, so a snapshot taken under these
    /// locks never holds an offset whose dead letter a crash could lose.
    pub(super) fn lock_for_snapshot<'s>(
        &self,
        shards: &'s BTreeMap<Tp, Slot>,
        only: Option<&[Tp]>,
        need_flush: bool,
    ) -> Option<Vec<(&'s Tp, &'s ShardRef, MutexGuard<'s, Shard>)>> {
        let locked: Vec<_> = shards
            .iter()
            .filter(|(tp, _)| only.is_none_or(|o| o.contains(tp)))
            .filter_map(|(tp, slot)| match slot {
                Slot::Live(shard, _) => Some((tp, shard, lock_shard(shard))),
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
    pub(super) fn snapshot(
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
    pub(super) fn write(&self, tp: &Tp, engine: &Engine, next: i64) -> Option<u64> {
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

    pub(super) fn record_round(&self, secs: f64, bytes: u64) {
        if let Ok(mut last) = self.last_snapshot.lock() {
            *last = Some((now_ms() as f64 / 1000.0, secs, bytes));
        }
        debug!(bytes, secs, "snapshot round done");
    }

    /// Starts a snapshot round written on a thread of its own: the changed
    /// shards are copied while locked (the only pause the workers see),
    /// then written from the copies. Offsets of unchanged shards, already
    /// in their snapshots, are returned to commit now.
    pub(super) fn start_round(self: &Arc<Self>) -> Option<TopicPartitionList> {
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
    pub(super) fn finish_round(&self, wait: bool) -> Option<TopicPartitionList> {
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
pub(super) struct Round {
    pub(super) written: Vec<(Tp, ShardRef, i64)>,
    pub(super) failed: Vec<ShardRef>,
    pub(super) bytes: u64,
    pub(super) secs: f64,
}
