//! The baseline for the Kafka path's throughput: a bare librdkafka consumer
//! (rdkafka `BaseConsumer`, the client settings of `cohortflow run`) that
//! reads a topic until it has seen N messages and touches every payload.
//!
//! It is timed from its first assignment to the last message, as
//! `scripts/bench_kafka.sh` times `cohortflow run`, and also, for
//! reference, from its first message: librdkafka may have fetched much of
//! the topic before that one, so the second figure is often a drain of
//! local memory.
//!
//! With `--batch` it reads as `cohortflow run` does: each assigned
//! partition forwarded to a queue of its own, read with librdkafka's batch
//! call (`cohortflow::source::fetch`), the consumer's queue polled for
//! events between calls.
//!
//!     cargo run --release --example bare_consumer -- BROKERS TOPIC N [--batch]

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};

use cohortflow::source::fetch::FetchQueue;

/// Notes when partitions are first assigned, and forwards them to the
/// fetch queue, if any.
struct Timer {
    assigned: Mutex<Option<Instant>>,
    fetch: OnceLock<Weak<FetchQueue<Timer>>>,
}

impl ClientContext for Timer {}

impl ConsumerContext for Timer {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let (Rebalance::Assign(tpl), Some(queue)) = (rebalance, self.fetch.get().and_then(Weak::upgrade)) {
            queue.take_partitions(tpl);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let (Rebalance::Assign(_), Ok(mut assigned)) = (rebalance, self.assigned.lock()) {
            assigned.get_or_insert_with(Instant::now);
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (brokers, topic, n, batch) = match &args[..] {
        [_, brokers, topic, n] => (brokers, topic, n, false),
        [_, brokers, topic, n, flag] if flag == "--batch" => (brokers, topic, n, true),
        _ => return Err("usage: bare_consumer BROKERS TOPIC N [--batch]".into()),
    };
    let n: u64 = n.parse()?;
    let consumer: BaseConsumer<Timer> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bare-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("fetch.queue.backoff.ms", "20")
        .set("fetch.wait.max.ms", "100")
        .create_with_context(Timer { assigned: Mutex::new(None), fetch: OnceLock::new() })?;
    let (consumer, queue) = if batch {
        let (consumer, queue) = FetchQueue::new(consumer);
        (consumer, Some(Arc::new(queue.ok_or("no fetch queue")?)))
    } else {
        (Arc::new(consumer), None)
    };
    if let Some(queue) = &queue {
        let _ = consumer.context().fetch.set(Arc::downgrade(queue));
    }
    consumer.subscribe(&[topic])?;
    let mut seen = 0u64;
    let mut bytes = 0u64;
    let mut first = None;
    while seen < n {
        if let Some(queue) = &queue {
            // Events; a message here only if its partition was not forwarded.
            if let Some(Ok(_)) = consumer.poll(Duration::ZERO) {
                seen += 1;
            }
            for m in queue.consume(Duration::from_millis(100), 512).iter() {
                match m {
                    Ok(m) => {
                        first.get_or_insert_with(Instant::now);
                        seen += 1;
                        bytes += m.payload().iter().map(|&b| u64::from(b)).sum::<u64>() & 1;
                    }
                    Err(e) => eprintln!("consume error: {e}"),
                }
            }
            continue;
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                seen += 1;
                bytes += m.payload().map_or(0, |p| p.iter().map(|&b| u64::from(b)).sum::<u64>() & 1);
            }
            Some(Err(e)) => eprintln!("consume error: {e}"),
            None => {}
        }
    }
    let end = Instant::now();
    let assigned = consumer.context().assigned.lock().ok().and_then(|a| *a).ok_or("never assigned")?;
    let rate = |from: Instant| seen as f64 / end.duration_since(from).as_secs_f64();
    println!(
        "{seen} messages: {:.0} msg/s from the assignment, {:.0} msg/s from the first message (checksum {bytes})",
        rate(assigned),
        first.map_or(0.0, rate)
    );
    let (librdkafka, own) = thread_ticks()?;
    println!("CPU ticks: librdkafka's threads {librdkafka}, the others {own}");
    Ok(())
}

/// CPU time (user and system, in clock ticks) of this process's threads:
/// librdkafka's (named `rdk:...`) and the others (the polling thread).
fn thread_ticks() -> std::io::Result<(u64, u64)> {
    let (mut librdkafka, mut own) = (0, 0);
    for task in std::fs::read_dir("/proc/self/task")? {
        let stat = std::fs::read_to_string(task?.path().join("stat"))?;
        // `pid (name) state ...`: the name may hold spaces, so the fields
        // after it are counted from its closing parenthesis.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks: u64 = fields.get(11..13).into_iter().flatten().filter_map(|f| f.parse::<u64>().ok()).sum();
        if stat[open + 1..close].starts_with("rdk:") {
            librdkafka += ticks;
        } else {
            own += ticks;
        }
    }
    Ok((librdkafka, own))
}
