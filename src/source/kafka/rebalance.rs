//! The rebalance callback: assigned partitions are locked and restored
//! from their snapshots before they are read, revoked ones snapshotted and
//! committed before they are given up.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tracing::{error, info, info_span, warn};

use super::Tp;
use super::shard::{Shard, Shared, Slot, lock_shard};
use crate::checkpoint;
use crate::engine::Engine;

pub(super) struct Context {
    pub(super) shared: Arc<Shared>,
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
                        let lock_path = checkpoint::lock_path_for(&self.shared.state_dir, &tp.topic, tp.partition);
                        let lock = match checkpoint::lock(&lock_path) {
                            Ok(lock) => lock,
                            Err(e) => {
                                shards.remove(&tp);
                                error!(error = %e, "partition paused until the next assignment");
                                let _ = paused.add_partition(&tp.topic, tp.partition);
                                shards.insert(tp, Slot::Refused(e));
                                continue;
                            }
                        };
                        if let Some(Slot::Detached(old)) = shards.remove(&tp) {
                            let mut old = lock_shard(&old);
                            if let Some(next) = old.next_offset {
                                // Back after a lost session: the shard is exactly its
                                // snapshot. It moves to a new shard, so that nothing
                                // sent to the old one before the loss reaches it.
                                info!(next_offset = next, "resumed detached shard");
                                let _ = tpl.set_partition_offset(&tp.topic, tp.partition, Offset::Offset(next));
                                let engine = std::mem::replace(&mut old.engine, Engine::new(self.shared.cfg.clone()));
                                shards.insert(tp, Slot::Live(Shard::start(engine, Some(next)), lock));
                                continue;
                            }
                        }
                        let path = checkpoint::path_for(&self.shared.state_dir, &tp.topic, tp.partition);
                        let (slot, offset) = match checkpoint::read(&path, &self.shared.group, &self.shared.cfg) {
                            Ok(Some(r)) => {
                                info!(next_offset = r.next_offset, "restored snapshot");
                                let offset = Offset::Offset(r.next_offset);
                                (Slot::Live(Shard::start(r.engine, Some(r.next_offset)), lock), offset)
                            }
                            Ok(None) => {
                                info!(start = ?self.shared.reset, "no snapshot; starting from the reset policy");
                                let engine = Engine::new(self.shared.cfg.clone());
                                (Slot::Live(Shard::start(engine, None), lock), self.shared.reset)
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
                        // The slot goes, and the partition's lock with it.
                        if let Some(Slot::Live(shard, _lock)) = shards.remove(tp) {
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
