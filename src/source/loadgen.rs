//! The load generator: produces events to a topic keyed by user id (so a
//! user's events stay in one partition), from the demo's generator or from
//! NDJSON files, at a given rate or as fast as the broker takes them.

use std::io::{self, BufRead, BufReader};
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use tracing::{info, warn};

use super::demo::Generator;
use super::file::{Line, LineReader};
use crate::event::{FieldNames, decode};

/// Errors of the load generator.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// The producer failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A `--option` is not `KEY=VALUE`.
    #[error("--option `{0}` is not KEY=VALUE")]
    BadOption(String),
    /// Input could not be read.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A rate-limited, keyed producer.
pub struct Loadgen {
    producer: ThreadedProducer<DefaultProducerContext>,
    topic: String,
    /// Seconds between messages; 0 = no limit.
    interval: f64,
    started: Instant,
    sent: u64,
    names: FieldNames,
}

impl Loadgen {
    /// A producer to `topic` on `brokers`, with extra librdkafka `options`.
    pub fn new(brokers: &str, topic: &str, options: &[String], rate: f64) -> Result<Self, LoadgenError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", brokers)
            .set("linger.ms", "20")
            .set("queue.buffering.max.messages", "1000000")
            .set("enable.idempotence", "true");
        for o in options {
            let (k, v) = o.split_once('=').ok_or_else(|| LoadgenError::BadOption(o.clone()))?;
            c.set(k, v);
        }
        Ok(Loadgen {
            producer: c.create()?,
            topic: topic.to_owned(),
            interval: if rate > 0.0 { 1.0 / rate } else { 0.0 },
            started: Instant::now(),
            sent: 0,
            names: FieldNames::default(),
        })
    }

    /// Sends one message, waiting for the rate limit and for queue room.
    pub fn send(&mut self, line: &[u8]) -> Result<(), LoadgenError> {
        if self.interval > 0.0 {
            let due = self.started + Duration::from_secs_f64(self.sent as f64 * self.interval);
            let now = Instant::now();
            if due > now {
                sleep(due - now);
            }
        }
        // Keyed by user id so that each partition owns its users; a line
        // without one (hostile input) goes wherever the partitioner says.
        let key = decode(line, &self.names, None).ok().map(|e| e.user_id.into_owned());
        loop {
            let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(&self.topic).payload(line);
            if let Some(k) = &key {
                record = record.key(k.as_str());
            }
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        self.sent += 1;
        if self.sent.is_multiple_of(100_000) {
            info!(sent = self.sent, "producing");
        }
        Ok(())
    }

    /// Produces the traffic of `g` up to its simulated time `end` (epoch ms).
    pub fn generated(&mut self, mut g: Generator, end: i64, count: Option<u64>) -> Result<(), LoadgenError> {
        let mut lines = Vec::new();
        while g.clock_ms() < end {
            lines.clear();
            g.advance_to((g.clock_ms() + 60_000).min(end), &mut lines);
            for line in &lines {
                if count.is_some_and(|c| self.sent >= c) {
                    return Ok(());
                }
                self.send(line)?;
            }
        }
        Ok(())
    }

    /// Produces the lines of an NDJSON file (`-` = stdin), unchanged.
    pub fn file(&mut self, path: &Path, count: Option<u64>) -> Result<(), LoadgenError> {
        let input: Box<dyn BufRead> = if path == Path::new("-") {
            Box::new(io::stdin().lock())
        } else {
            Box::new(BufReader::with_capacity(1 << 20, std::fs::File::open(path)?))
        };
        let mut reader = LineReader::new(input);
        while let Some(line) = reader.next_line()? {
            if count.is_some_and(|c| self.sent >= c) {
                break;
            }
            match line {
                Line::Message(m) => {
                    let bytes = m.to_vec();
                    self.send(&bytes)?;
                }
                // Brokers refuse such messages anyway (message.max.bytes).
                Line::TooLarge => warn!("skipped a line over 1 MiB"),
            }
        }
        Ok(())
    }

    /// Waits until every message is delivered.
    pub fn finish(self) -> Result<(), LoadgenError> {
        self.producer.flush(Duration::from_secs(60))?;
        info!(sent = self.sent, seconds = self.started.elapsed().as_secs_f64(), "done");
        Ok(())
    }
}
