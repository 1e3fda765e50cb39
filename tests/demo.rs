//! `cohortflow demo` as a user runs it: a real process serving HTTP on
//! 127.0.0.1, scraped over a real socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A plain HTTP/1.1 GET; returns (status, body).
fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

fn sum(metrics: &str, prefix: &str) -> f64 {
    metrics.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[test]
fn demo_serves_cohorts_retention_and_funnels() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cohortflow"))
        .args(["demo", "--listen", "127.0.0.1:0", "--backfill-days", "12", "--users-per-day", "800"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start demo");
    let stderr = child.stderr.take().expect("stderr");
    let _daemon = Daemon(child);

    // The daemon logs the address it bound (port 0 = any free port).
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("demo exited early").expect("read stderr");
        if let Some(rest) = line.split("http://").nth(1) {
            break rest.split('/').next().expect("address").to_owned();
        }
    };
    // Keep draining stderr so the daemon never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok((200, _)) = get(&addr, "/readyz") {
            break;
        }
        assert!(Instant::now() < deadline, "demo never became ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(get(&addr, "/healthz").expect("healthz").0, 200);

    let (status, metrics) = get(&addr, "/metrics").expect("scrape");
    assert_eq!(status, 200);
    assert!(sum(&metrics, "cohortflow_cohort_users{retention=\"new_users\"") > 1000.0);
    assert!(sum(&metrics, "cohortflow_retained_users{retention=\"new_users\"") > 100.0);
    let d1: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("cohortflow_retained_users{") && l.contains("day=\"1\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(d1 > 100.0, "D1 retention series are empty");
    assert!(sum(&metrics, "cohortflow_funnel_users{funnel=\"checkout\",step=\"3\"") > 10.0);
    assert!(sum(&metrics, "cohortflow_active_users{window=\"30d\"") > 1000.0);
    assert!(sum(&metrics, "cohortflow_events_rejected_total") > 0.0);
    assert!(sum(&metrics, "cohortflow_events_ingested_total") > 10_000.0);
    assert!(metrics.contains("cohortflow_retention_latest_ratio{retention=\"new_users\",day=\"1\"}"));
    assert!(metrics.contains("# TYPE cohortflow_funnel_time_to_convert_seconds summary"));

    let (status, body) = get(&addr, "/api/v1/retention").expect("api");
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).expect("json");
    let cohorts = json["retention"][0]["cohorts"].as_array().expect("cohorts");
    assert!(cohorts.len() >= 10, "{}", cohorts.len());
    assert!(cohorts.iter().all(|c| c["retained"].as_array().map(Vec::len) == Some(5)));
    let (status, body) = get(&addr, "/api/v1/funnels").expect("api");
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(json["funnels"][0]["name"], "checkout");
    assert!(!json["funnels"][0]["entries"].as_array().expect("entries").is_empty());
}
