//! Times a running `cohortflow run` through a topic, for
//! `scripts/bench_kafka.sh`: from the moment `/readyz` turns 200 (group
//! joined, partitions restored) to the first scrape of `/metrics` that
//! counts N messages, ingested or rejected. It prints the seconds.
//!
//! One process with one kept-alive connection polls, so that the poller
//! costs the machine little: a `curl` and an `awk` started every 20 ms
//! (the script's poller before) took about a third of a core, 11 ms of CPU
//! a scrape (measured once, see BENCHMARKS-HISTORY.md), from the run being
//! measured. It polls every POLL_MS only near the end: before, it sleeps
//! through half the time the rate so far says is left (at most 0.5 s).
//!
//!     cargo run --release --example wait_ingested -- ADDR N [POLL_MS]

use std::thread;
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, n, rest @ ..] = args.as_slice() else {
        return Err("usage: wait_ingested ADDR N [POLL_MS]".into());
    };
    let n: u64 = n.parse()?;
    let poll = Duration::from_millis(rest.first().map(|p| p.parse()).transpose()?.unwrap_or(50));
    // Statuses are read, not turned into errors, so that a 503 from
    // `/readyz` (read whole) leaves the connection for the next poll: a new
    // connection every 10 ms while the group forms cost the daemon 0.1 to
    // 0.2 s of CPU (before the timed part, but in its CPU a message).
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let deadline = Instant::now() + Duration::from_secs(600);

    let ready = format!("http://{addr}/readyz");
    let start = loop {
        if let Ok(mut response) = agent.get(&ready).call() {
            let ok = response.status() == 200;
            response.body_mut().read_to_string()?;
            if ok {
                break Instant::now();
            }
        }
        if Instant::now() > deadline {
            return Err("the daemon never became ready".into());
        }
        thread::sleep(Duration::from_millis(10));
    };

    let url = format!("http://{addr}/metrics");
    loop {
        let body = agent.get(&url).call()?.body_mut().read_to_string()?;
        let seen = counted(&body)?;
        let elapsed = start.elapsed();
        if seen >= n {
            println!("{:.3}", elapsed.as_secs_f64());
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("fewer than {n} messages counted after 600 s").into());
        }
        // Each scrape renders the whole text (some 3 ms of the daemon's
        // CPU, taken from the run being timed): while the end is far, sleep
        // through half the time the rate so far says is left, at most half
        // a second (a slow start makes the rate so far too low).
        let left = match seen {
            0 => Duration::ZERO,
            _ => elapsed.mul_f64((n - seen) as f64 / seen as f64 / 2.0),
        };
        thread::sleep(poll.max(left.min(Duration::from_millis(500))));
    }
}

/// Messages counted in a scrape: ingested plus rejected, every reason.
fn counted(body: &str) -> Result<u64, Box<dyn std::error::Error>> {
    let mut total = 0.0;
    for line in body.lines() {
        if line.starts_with("cohortflow_events_ingested_total") || line.starts_with("cohortflow_events_rejected_total")
        {
            total += line.rsplit(' ').next().ok_or("malformed line")?.parse::<f64>()?;
        }
    }
    Ok(total as u64)
}
