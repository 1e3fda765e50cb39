//! Fetched messages read many at a call: librdkafka's batch read, on a
//! queue of the consumer's own that holds its partitions' messages apart
//! from its events.
//!
//! rdkafka's [`BaseConsumer::poll`] hands over one message a call, and
//! each call reads the clock three times (once in rdkafka, twice in
//! librdkafka's poll accounting), takes the queue's lock and allocates a
//! reference count for the message's event: a quarter of the Kafka path's
//! consumer thread went to the clock alone (BENCHMARKS-HISTORY.md).
//! `rd_kafka_consume_batch_queue` hands over every message waiting, up to
//! a slice, at one call's cost. It cannot read the consumer's own queue,
//! though: a rebalance waiting there would be served by librdkafka itself
//! (a plain assignment, without the application's callback, so without
//! the snapshot restore). So each partition's queue is forwarded, before
//! the partition is assigned, to a [`FetchQueue`], which then holds
//! messages only (and a partition's consumption errors); rebalances,
//! errors and commits stay on the consumer's queue, served by rdkafka's
//! poll.
//!
//! The wait for messages is on the fetch queue, so an event arriving on
//! the consumer's queue meanwhile would wait for it to end. The consumer
//! queue's non-empty callback, set when the fetch queue is made, ends the
//! wait at once.
//!
//! rdkafka has no safe interface for these calls, so this module has
//! `unsafe` code (as `allocator` does, for `mallopt` and `malloc_trim`),
//! each block with the contract it relies on. librdkafka's queues and
//! messages are safe to use from any thread. A queue must go before its
//! consumer, and so must the messages taken from it: the consumer's close
//! would otherwise wait for ever on the partitions they hold (checked: it
//! does). Here the queue keeps its consumer alive, and the messages borrow
//! the queue, so no order of drops can get that wrong.

#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaRespErr;

/// A queue of fetched messages, fed by the partitions forwarded to it.
///
/// It keeps its consumer alive: when the last reference to the queue
/// goes, the queue stops taking messages and destroys those it holds,
/// then lets the consumer go. A context that needs the queue (to forward
/// partitions in its rebalance callback) holds a [`Weak`](std::sync::Weak)
/// reference, or the two would keep each other alive.
pub struct FetchQueue<C: ConsumerContext + 'static> {
    queue: NonNull<rd::rd_kafka_queue_t>,
    /// A reference to the consumer's own queue (the group's), if it has
    /// one: where its events wait.
    events: Option<NonNull<rd::rd_kafka_queue_t>>,
    waker: Waker,
    consumer: Arc<BaseConsumer<C>>,
}

/// Ends a [`FetchQueue`]'s wait for messages, from any thread (rdkafka's
/// non-empty callback runs on librdkafka's), for as long as the queue
/// lives; after, it does nothing. Made before its queue, so that the
/// callback can hold it while the consumer can still be set up.
#[derive(Clone, Default)]
struct Waker {
    /// The queue's handle, while the queue lives: its drop takes it out,
    /// under the lock, before destroying the queue.
    queue: Arc<Mutex<Option<Handle>>>,
}

/// A queue handle that may cross threads.
struct Handle(NonNull<rd::rd_kafka_queue_t>);

// SAFETY: a librdkafka queue handle may be used from any thread: every
// operation on it takes the queue's own lock.
unsafe impl Send for Handle {}

impl Waker {
    /// Ends the queue's current wait, or its next one if none is under
    /// way: it returns what it holds, if anything, at once.
    fn wake(&self) {
        let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(Handle(queue)) = &*queue {
            // SAFETY: the handle is live while it is held here (see the
            // field), and yielding only sets a flag and signals under the
            // queue's lock. rdkafka calls this with the consumer's queue
            // locked; nothing locks the two the other way round (the
            // fetch queue is forwarded nowhere).
            unsafe { rd::rd_kafka_queue_yield(queue.as_ptr()) }
        }
    }
}

// SAFETY: a librdkafka queue handle may be used from any thread: every
// operation on it takes the queue's own lock. The consumer is Send.
unsafe impl<C: ConsumerContext> Send for FetchQueue<C> {}
// SAFETY: as above; no method needs exclusive access. The consumer is Sync.
unsafe impl<C: ConsumerContext> Sync for FetchQueue<C> {}

impl<C: ConsumerContext> FetchQueue<C> {
    /// Takes `consumer` and makes a new, empty queue of its client: the
    /// consumer, now shared (the queue holds it too), and the queue, or
    /// `None` if librdkafka cannot make one. From now on an event coming
    /// to the consumer's own queue ends a wait for messages at once (the
    /// consumer's non-empty callback).
    pub fn new(mut consumer: BaseConsumer<C>) -> (Arc<BaseConsumer<C>>, Option<FetchQueue<C>>) {
        let waker = Waker::default();
        let wake = waker.clone();
        consumer.set_nonempty_callback(move || wake.wake());
        let consumer = Arc::new(consumer);
        let client = consumer.client().native_ptr();
        // SAFETY: the client pointer is live while `consumer` is; the
        // returned handle is owned here and destroyed in `drop`, while
        // the consumer is still held.
        let Some(queue) = NonNull::new(unsafe { rd::rd_kafka_queue_new(client) }) else {
            return (consumer, None);
        };
        // SAFETY: as above; the reference returned (null without a group)
        // is destroyed in `drop`.
        let events = NonNull::new(unsafe { rd::rd_kafka_queue_get_consumer(client) });
        *waker.queue.lock().unwrap_or_else(PoisonError::into_inner) = Some(Handle(queue));
        let queue = FetchQueue { queue, events, waker, consumer: consumer.clone() };
        (consumer, Some(queue))
    }

    /// Whether an event waits on the consumer's own queue (for its poll):
    /// then the wait for messages had better not start.
    pub fn events_waiting(&self) -> bool {
        // SAFETY: the reference is live until `drop`; reading the length
        // takes the queue's lock.
        self.events.is_some_and(|events| unsafe { rd::rd_kafka_queue_length(events.as_ptr()) } > 0)
    }

    /// Forwards a partition's fetched messages to this queue from now on,
    /// for as long as the consumer lives (a partition assigned again
    /// keeps it). Call it before the partition is assigned, so that none
    /// of its messages goes to the consumer's queue first. False when the
    /// partition's queue cannot be had (a topic name holding a NUL byte):
    /// its messages then come through the consumer's poll.
    pub fn take_partition(&self, topic: &str, partition: i32) -> bool {
        let Ok(topic) = CString::new(topic) else {
            return false;
        };
        let client = self.consumer.client().native_ptr();
        // SAFETY: the client is live while the consumer is held, and
        // `topic` is a NUL-terminated string that outlives the call.
        let source = unsafe { rd::rd_kafka_queue_get_partition(client, topic.as_ptr(), partition) };
        if source.is_null() {
            return false;
        }
        // SAFETY: both handles are live. The forwarding holds a reference
        // to this queue of its own, so the partition's handle (a reference,
        // not the owner) can be destroyed at once.
        unsafe {
            rd::rd_kafka_queue_forward(source, self.queue.as_ptr());
            rd::rd_kafka_queue_destroy(source);
        }
        true
    }

    /// [`FetchQueue::take_partition`] for each partition of a list (an
    /// assignment); false if any was not taken.
    pub fn take_partitions(&self, partitions: &TopicPartitionList) -> bool {
        let elements = partitions.elements();
        // Every one is tried, whatever came before.
        let taken = elements.iter().filter(|e| self.take_partition(e.topic(), e.partition())).count();
        taken == elements.len()
    }

    /// The messages waiting here, up to `room` (at least one); when none
    /// is waiting, waits up to `timeout` for the first (and returns as
    /// soon as it comes, with whatever came with it), or until the waker
    /// is called (if it was called since the last wait, returns at once).
    pub fn consume(&self, timeout: Duration, room: usize) -> Fetched<'_> {
        let room = room.max(1);
        let mut into = Fetched { messages: Vec::with_capacity(room), _queue: PhantomData };
        let buffer = into.messages.as_mut_ptr();
        // librdkafka's batch call, given a timeout, waits until the slice is
        // full or the time is up: one message is waited for, then the rest
        // taken without waiting.
        let first = if timeout.is_zero() {
            0
        } else {
            let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
            // SAFETY: the queue is live and `buffer` has room for `room` (at
            // least one) message pointers, of which librdkafka writes at
            // most 1 and returns how many (or -1 on error).
            let got = unsafe { rd::rd_kafka_consume_batch_queue(self.queue.as_ptr(), ms, buffer, 1) };
            usize::try_from(got).unwrap_or(0)
        };
        let rest = if room > first {
            // SAFETY: as above, writing after the `first` pointers already
            // there, at most the room left.
            unsafe { rd::rd_kafka_consume_batch_queue(self.queue.as_ptr(), 0, buffer.add(first), room - first) }
        } else {
            0
        };
        let got = first + usize::try_from(rest).unwrap_or(0);
        // SAFETY: librdkafka wrote `got` valid message pointers, each now
        // owned by `into`, which destroys them.
        unsafe { into.messages.set_len(got) };
        into
    }
}

impl<C: ConsumerContext> Drop for FetchQueue<C> {
    fn drop(&mut self) {
        // The waker's use of the handle ends here, under its lock.
        self.waker.queue.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(events) = self.events {
            // SAFETY: a reference owned here, used no more.
            unsafe { rd::rd_kafka_queue_destroy(events.as_ptr()) }
        }
        // SAFETY: the handle is owned here and used no more, and no message
        // taken from it is left (they borrow the queue). As its owner this
        // disables the queue and destroys the messages it holds, before
        // the consumer (a field) goes; the partitions still forwarded to it
        // keep what is left of it alive.
        unsafe { rd::rd_kafka_queue_destroy(self.queue.as_ptr()) }
    }
}

/// Messages taken from a [`FetchQueue`], destroyed when dropped.
pub struct Fetched<'q> {
    /// Each pointer is a live message owned by this value.
    messages: Vec<*mut rd::rd_kafka_message_t>,
    /// The queue (and so the consumer) outlives the messages.
    _queue: PhantomData<&'q ()>,
}

impl Fetched<'_> {
    /// How many messages are held.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether no message is held.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The messages, in the order they were fetched (a partition's in
    /// offset order); `Err` for a partition's consumption error.
    pub fn iter(&self) -> impl Iterator<Item = Result<FetchedMessage<'_>, KafkaError>> {
        self.messages.iter().map(|&m| {
            // SAFETY: every held pointer is a live message until `drop`,
            // so while this borrow lasts.
            let m = unsafe { &*m };
            match m.err {
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR => Ok(FetchedMessage { m }),
                RDKafkaRespErr::RD_KAFKA_RESP_ERR__PARTITION_EOF => Err(KafkaError::PartitionEOF(m.partition)),
                e => Err(KafkaError::MessageConsumption(e.into())),
            }
        })
    }
}

impl Drop for Fetched<'_> {
    fn drop(&mut self) {
        for &m in &self.messages {
            // SAFETY: each pointer is a live message owned here, destroyed
            // once, here.
            unsafe { rd::rd_kafka_message_destroy(m) }
        }
    }
}

/// One fetched message, borrowed from [`Fetched`].
pub struct FetchedMessage<'a> {
    m: &'a rd::rd_kafka_message_t,
}

impl<'a> FetchedMessage<'a> {
    /// The partition it was read from.
    pub fn partition(&self) -> i32 {
        self.m.partition
    }

    /// Its offset in the partition.
    pub fn offset(&self) -> i64 {
        self.m.offset
    }

    /// Its topic's name (empty if it is not UTF-8, which Kafka's topic
    /// names always are).
    pub fn topic(&self) -> &'a str {
        // SAFETY: a fetched message's topic handle is live while the
        // message is, and its name is a NUL-terminated string.
        let name = unsafe { CStr::from_ptr(rd::rd_kafka_topic_name(self.m.rkt)) };
        name.to_str().unwrap_or_default()
    }

    /// Its payload (empty for none).
    pub fn payload(&self) -> &'a [u8] {
        // SAFETY: librdkafka's payload is `len` bytes, live while the
        // message is; null only when there is none.
        unsafe { bytes(self.m.payload, self.m.len) }.unwrap_or_default()
    }

    /// Its key, if it has one.
    pub fn key(&self) -> Option<&'a [u8]> {
        // SAFETY: as for the payload.
        unsafe { bytes(self.m.key, self.m.key_len) }
    }

    /// Its timestamp (create or log-append time), in epoch milliseconds,
    /// if it has one.
    pub fn timestamp_ms(&self) -> Option<i64> {
        let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: the message is live; librdkafka only reads it and writes
        // the type.
        let ms = unsafe { rd::rd_kafka_message_timestamp(self.m, &mut kind) };
        let none = ms == -1 || kind == rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        (!none).then_some(ms)
    }
}

/// The `len` bytes at `ptr`, or `None` for a null pointer.
///
/// # Safety
///
/// A non-null `ptr` must point to `len` initialised bytes that live and
/// stay unchanged for `'a`.
unsafe fn bytes<'a>(ptr: *const std::ffi::c_void, len: usize) -> Option<&'a [u8]> {
    // SAFETY: the caller's contract.
    (!ptr.is_null()).then(|| unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
}
