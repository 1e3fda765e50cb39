//! The shipped Prometheus rules and Grafana dashboards against the real
//! thing: `promtool check rules` and `promtool test rules` (one firing and
//! one quiet case per alert), then a real Prometheus server on 127.0.0.1
//! scraping `cohortflow demo` with the project's rules loaded, where every
//! PromQL expression of the rules and dashboards must evaluate without
//! error, and those that describe the engine's figures must return data.
//!
//! Needs tools from outside the crate: built with the `integration-tests`
//! feature only (`scripts/test.sh` installs the tools and turns it on).
#![cfg(feature = "integration-tests")]

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Process;

const BIN: &str = env!("CARGO_BIN_EXE_cohortflow");

/// promtool's week-long rule test is heavy: the two tests take turns.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn promtool_checks_and_unit_tests_the_rules() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let rules = root().join("deploy/prometheus/rules.yml");
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .expect("promtool (scripts/test.sh installs it)");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(root().join("deploy/prometheus/tests/rules_test.yml"))
        .output()
        .expect("promtool");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let (status, body) = common::get(addr, path)?;
    // Prometheus answers in chunks; keep the JSON object only.
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) => body[a..=b].to_owned(),
        _ => body,
    };
    Some((status, body))
}

/// (status, number of series or samples) of an instant query.
fn query(prom: &str, expr: &str) -> (String, usize, String) {
    let (_, body) = get(prom, &format!("/api/v1/query?query={}", encode(expr))).expect("prometheus answers");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let n = v["data"]["result"].as_array().map_or(0, Vec::len);
    (v["status"].as_str().unwrap_or("none").to_owned(), n, v["error"].as_str().unwrap_or("").to_owned())
}

fn exprs_in_json(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => exprs_in_json(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| exprs_in_json(x, out)),
        _ => {}
    }
}

fn rule_exprs(rules: &str) -> Vec<(String, bool)> {
    // (expr, is a recording rule): the YAML is ours, so a line scan is enough.
    let mut out = Vec::new();
    let mut lines = rules.lines().peekable();
    let mut recording = false;
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("- record:") {
            recording = true;
        } else if t.starts_with("- alert:") {
            recording = false;
        } else if let Some(rest) = t.strip_prefix("expr:") {
            let rest = rest.trim();
            if rest == "|" {
                let indent = lines.peek().map_or(0, |l| l.len() - l.trim_start().len());
                let mut text = String::new();
                while let Some(l) = lines.peek() {
                    if l.trim().is_empty() || l.len() - l.trim_start().len() < indent {
                        break;
                    }
                    text.push_str(l.trim());
                    text.push(' ');
                    lines.next();
                }
                out.push((text, recording));
            } else {
                out.push((rest.to_owned(), recording));
            }
        }
    }
    out
}

#[test]
fn every_rule_and_dashboard_query_works_on_a_real_prometheus() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().expect("tmp");
    let mut cmd = Command::new(BIN);
    cmd.args(["demo", "--listen", "127.0.0.1:0", "--backfill-days", "35", "--users-per-day", "300"]);
    let (demo, target) = common::spawn_serving(cmd);
    let _demo = Process(demo);

    // The project's rules, evaluated every 2 s instead of 30 s.
    let rules_text = std::fs::read_to_string(root().join("deploy/prometheus/rules.yml")).expect("rules");
    let rules = dir.path().join("rules.yml");
    std::fs::write(&rules, rules_text.replace("interval: 30s", "interval: 2s")).expect("write rules");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 2s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: cohortflow\n    static_configs:\n      - targets: ['{target}']\n",
            rules.display()
        ),
    )
    .expect("config");
    let prom = format!("127.0.0.1:{}", free_port());
    let prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--web.listen-address={prom}"))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (scripts/test.sh installs it)");
    let _prometheus = Process(prometheus);

    // Wait for scrapes and a couple of rule evaluations.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let up = get(&prom, "/-/ready").is_some_and(|(status, _)| status == 200);
        let ready = up
            && query(&prom, "cohortflow:retention_trailing_ratio").1 > 0
            && query(&prom, "cohortflow:funnel_conversion_ratio:1h").1 > 0
            && query(&prom, r#"up{job="cohortflow"} == 1"#).1 == 1;
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "prometheus never got the recorded series");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Only `run` (Kafka) exports these; the demo has none.
    let kafka_only = ["consumer_lag", "event_lag", "checkpoint", "kafka_up"];
    let mut checked = 0;
    for (expr, recording) in rule_exprs(&rules_text) {
        let (status, n, error) = query(&prom, &expr);
        assert_eq!(status, "success", "{expr}: {error}");
        if recording && !kafka_only.iter().any(|k| expr.contains(k)) {
            assert!(n > 0, "recording rule returned no data: {expr}");
        }
        checked += 1;
    }
    for name in ["retention", "funnels", "trends", "revenue", "operations"] {
        let path = root().join(format!("deploy/grafana/dashboards/{name}.json"));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard")).expect("valid JSON");
        assert_eq!(json["schemaVersion"], 39, "{name}");
        let mut exprs = Vec::new();
        exprs_in_json(&json, &mut exprs);
        assert!(!exprs.is_empty());
        for expr in exprs {
            // The demo has no monthly definition: month 1 needs 63 days of
            // history, the demo keeps 35.
            let monthly = expr.contains("$monthly");
            // A Prometheus started for the test holds no yesterday.
            let past = expr.contains(" offset ");
            let expr = expr
                .replace("$retention", "new_users")
                .replace("$funnel", "checkout")
                .replace("$weekly", "weekly")
                .replace("$monthly", "monthly")
                .replace("$trend", "orders")
                .replace("$ltv", "payers")
                .replace("$active_by", "channel")
                .replace("$entry_by", "channel")
                .replace("$by", "channel")
                .replace("$step", "2");
            let (status, n, error) = query(&prom, &expr);
            assert_eq!(status, "success", "{name}: {expr}: {error}");
            if !kafka_only.iter().any(|k| expr.contains(k)) && !monthly && !past {
                assert!(n > 0, "{name}: no data for {expr}");
            }
            checked += 1;
        }
        // Data sources by uid, never by name or instance.
        let text = std::fs::read_to_string(&path).expect("dashboard");
        assert!(!text.contains("localhost") && !text.contains("127.0.0.1"), "{name} names an instance");
    }
    assert!(checked > 30, "{checked}");
}
