//! Event → `/metrics` latency of a running `cohortflow run`, under a steady
//! produced load: produces valid events to a one-partition topic the daemon
//! consumes, at RATE messages a second for SECONDS, while scraping the
//! daemon's /metrics every few milliseconds. When a scrape first shows
//! `cohortflow_events_ingested_total` ≥ n, messages up to the n-th are
//! visible (one partition keeps them in order), and each one's latency is
//! that scrape's time minus the time it was handed to the producer. The
//! first two seconds are warm-up and not recorded. Percentiles come from an
//! hdrhistogram.
//!
//!     cargo run --release --example latency -- BROKERS TOPIC METRICS_ADDR RATE SECONDS

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

const WARM_UP: Duration = Duration::from_secs(2);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, brokers, topic, addr, rate, seconds] = &args[..] else {
        return Err("usage: latency BROKERS TOPIC METRICS_ADDR RATE SECONDS".into());
    };
    let rate: f64 = rate.parse()?;
    let total = (rate * seconds.parse::<f64>()?) as usize;
    let url = format!("http://{addr}/metrics");
    let base = ingested(&url)?;

    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "1")
        .set("enable.idempotence", "true")
        .create()?;
    let sent: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let start = Instant::now();
    let sender = {
        let sent = Arc::clone(&sent);
        let topic = topic.clone();
        thread::spawn(move || -> Result<(), String> {
            for i in 0..total {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
                let ts = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?.as_millis();
                let line = format!(r#"{{"user_id":"lat-{}","event":"view","ts":{ts}}}"#, i % 50_000);
                let key = (i % 50_000).to_string();
                sent.lock().map_err(|e| e.to_string())?.push(Instant::now());
                producer
                    .send(BaseRecord::to(&topic).payload(line.as_bytes()).key(key.as_bytes()))
                    .map_err(|(e, _)| e.to_string())?;
            }
            producer.flush(Duration::from_secs(30)).map_err(|e| e.to_string())
        })
    };

    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut seen = 0usize;
    let deadline = start + Duration::from_secs_f64(total as f64 / rate) + Duration::from_secs(30);
    while seen < total && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
        let count = (ingested(&url)? - base) as usize;
        let now = Instant::now();
        let times = sent.lock().map_err(|e| e.to_string())?;
        for t in &times[seen..count.min(times.len())] {
            if t.duration_since(start) >= WARM_UP {
                hist.saturating_record(now.duration_since(*t).as_micros() as u64);
            }
        }
        seen = seen.max(count.min(times.len()));
    }
    sender.join().map_err(|_| "the producer thread panicked")??;
    if seen < total {
        return Err(format!("only {seen} of {total} messages became visible").into());
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "latency_ms p50={:.1} p90={:.1} p99={:.1} max={:.1} messages={} rate={rate}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        hist.max() as f64 / 1000.0,
        hist.len()
    );
    Ok(())
}

/// `cohortflow_events_ingested_total` from a scrape.
fn ingested(url: &str) -> Result<u64, Box<dyn std::error::Error>> {
    let body = ureq::get(url).call()?.body_mut().read_to_string()?;
    let line = body
        .lines()
        .find(|l| l.starts_with("cohortflow_events_ingested_total "))
        .ok_or("no cohortflow_events_ingested_total in /metrics")?;
    Ok(line.rsplit(' ').next().ok_or("malformed line")?.parse::<f64>()? as u64)
}
