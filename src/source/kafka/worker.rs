//! From the consumer thread to the shards: messages copied into batches
//! per partition, handed to `kafka.workers` threads (a partition always on
//! the same one) that apply them, and dead-letter what the engine rejects.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use tracing::error;

use super::shard::{ShardRef, Shared, Slot, lock_shard};
use super::{SourceError, Tp, now_ms};
use crate::source::fetch::FetchedMessage;

/// Messages of one partition on their way from the consumer thread to a
/// worker, in one buffer.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) bytes: Vec<u8>,
    pub(super) messages: Vec<Queued>,
}

impl Batch {
    /// Whether the batch is to be handed over.
    pub(super) fn full(&self) -> bool {
        self.messages.len() >= BATCH_MESSAGES || self.bytes.len() >= BATCH_BYTES
    }

    /// The batch emptied for reuse, without the room a large message left
    /// in it.
    pub(super) fn emptied(mut self) -> Batch {
        self.bytes.clear();
        self.bytes.shrink_to(BATCH_BYTES);
        self.messages.clear();
        self
    }
}

pub(super) struct Queued {
    pub(super) offset: i64,
    pub(super) timestamp_ms: Option<i64>,
    pub(super) payload: std::ops::Range<usize>,
    pub(super) key: Option<std::ops::Range<usize>>,
}

/// A batch and the shard it was read for.
pub(super) struct Job {
    pub(super) tp: Tp,
    pub(super) shard: ShardRef,
    pub(super) batch: Batch,
}

/// A batch being filled for one partition.
pub(super) struct Pending {
    pub(super) tp: Tp,
    pub(super) shard: ShardRef,
    pub(super) worker: usize,
    pub(super) batch: Batch,
}

/// Messages a batch takes before it is handed over.
pub(super) const BATCH_MESSAGES: usize = 512;
/// Payload bytes a batch takes before it is handed over (some 7 000
/// typical events, so for those the message count comes first): with
/// [`WORKER_QUEUE`] this bounds what a worker has waiting when messages
/// are large (a run of oversized ones on their way to the dead-letter
/// topic, say) to 64 MiB and one message a batch.
pub(super) const BATCH_BYTES: usize = 1 << 20;
/// Messages taken from the fetch queue a call.
pub(super) const FETCH_MESSAGES: usize = 512;
/// How often the consumer thread looks at its timers (snapshots, lag
/// probes, publishing).
pub(super) const TICK: Duration = Duration::from_millis(10);
/// Batches a worker may have waiting before the consumer thread waits.
/// librdkafka hands over a fetch a partition at a time (up to 1 MiB, some
/// 9 000 small messages), so a queue shorter than a few such runs stops
/// the consumer thread on one worker while the others run dry; 64
/// batches of 512 messages cut that wait (BENCHMARKS-HISTORY.md); the
/// cost is up to 64 batches of memory a worker.
pub(super) const WORKER_QUEUE: usize = 64;

/// The worker threads: each owns the partitions hashed to it, so a
/// partition's messages are applied in order, and distinct partitions'
/// shards on several cores.
pub(super) struct Workers {
    pub(super) queues: Vec<SyncSender<Job>>,
    pub(super) threads: Vec<JoinHandle<()>>,
    /// Emptied batches come back for reuse.
    pub(super) free: Receiver<Batch>,
}

impl Workers {
    pub(super) fn start(n: usize, shared: &Arc<Shared>) -> std::io::Result<Self> {
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
    pub(super) fn batch(&self) -> Batch {
        match self.free.try_recv() {
            Ok(b) => b.emptied(),
            Err(_) => Batch::default(),
        }
    }

    /// Hands the pending batch over (blocking while the worker is busy).
    pub(super) fn send(&self, pending: &mut Pending) -> Result<(), SourceError> {
        if pending.batch.messages.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut pending.batch, self.batch());
        let job = Job { tp: pending.tp.clone(), shard: pending.shard.clone(), batch };
        self.queues[pending.worker].send(job).map_err(|_| SourceError::WorkerStopped)
    }

    /// Lets every worker finish what it was given.
    pub(super) fn finish(self) {
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
pub(super) fn work(shared: &Shared, jobs: Receiver<Job>, give_back: SyncSender<Batch>) {
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
            let users = shard.engine.tracked_users();
            shard.trim.observe(users);
        }
        let _ = give_back.try_send(batch);
    }
}

/// What the consumer thread reads of a message, from either queue.
pub(super) trait Incoming {
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
pub(super) struct Filling<'a> {
    pub(super) shared: &'a Shared,
    pub(super) workers: &'a Workers,
    pub(super) pending: Vec<Pending>,
    /// The batch the last message went to: messages come in runs of one
    /// partition.
    pub(super) last: usize,
    /// With one topic, a message's partition alone finds its batch
    /// (reading a message's topic name costs a string length and a UTF-8
    /// check).
    pub(super) one_topic: bool,
}

impl Filling<'_> {
    /// How long to wait for a message: not at all while a batch is
    /// filling, which is handed over as soon as nothing more is waiting.
    pub(super) fn wait(&self) -> Duration {
        let filling = self.pending.iter().any(|p| !p.batch.messages.is_empty());
        if filling { Duration::ZERO } else { Duration::from_millis(100) }
    }

    /// Hands every batch that holds a message over.
    pub(super) fn hand_over(&mut self) -> Result<(), SourceError> {
        let workers = self.workers;
        self.pending.iter_mut().try_for_each(|p| workers.send(p))
    }

    /// After a rebalance: hands the batches over and looks each
    /// partition's shard up again at its next message (batches of revoked
    /// partitions are dropped by their shards).
    pub(super) fn restart(&mut self) -> Result<(), SourceError> {
        let handed = self.hand_over();
        self.pending.clear();
        handed
    }

    /// Copies a message into its partition's batch, handing the batch
    /// over when it is full. A message of a partition this member does
    /// not hold is dropped.
    pub(super) fn accept(&mut self, msg: &impl Incoming) -> Result<(), SourceError> {
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
                        Some(Slot::Live(shard, _)) => shard.clone(),
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
