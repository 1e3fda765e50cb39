//! The baseline for the Kafka path's throughput: a bare librdkafka consumer
//! (rdkafka `BaseConsumer`, same client settings as `cohortflow run`) that
//! reads a topic until it has seen N messages and touches every payload.
//!
//!     cargo run --release --example bare_consumer -- BROKERS TOPIC N

use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, brokers, topic, n] = &args[..] else {
        return Err("usage: bare_consumer BROKERS TOPIC N".into());
    };
    let n: u64 = n.parse()?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bare-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut seen = 0u64;
    let mut bytes = 0u64;
    let mut started = None;
    while seen < n {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                started.get_or_insert_with(Instant::now);
                seen += 1;
                bytes += m.payload().map_or(0, |p| p.iter().map(|&b| u64::from(b)).sum::<u64>() & 1);
            }
            Some(Err(e)) => eprintln!("consume error: {e}"),
            None => {}
        }
    }
    let secs = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    println!("{seen} messages in {secs:.3} s: {:.0} msg/s (checksum {bytes})", seen as f64 / secs);
    Ok(())
}
