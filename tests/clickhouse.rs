//! Cross-check against ClickHouse itself: a generated dataset of more than
//! 100 000 lines (hostile lines, out-of-order arrival and replayed
//! duplicates mixed in) goes through `cohortflow replay` in three time
//! zones; `tests/reference/clickhouse_check.py` validates the same lines on
//! its own, computes every figure with ClickHouse's `retention()`,
//! `windowFunnel()` and `uniqExact()` (chdb, from PyPI), and compares.
//! Zero differing figures is the only pass.
//!
//! Needs tools from outside the crate: built with the `integration-tests`
//! feature only (`scripts/test.sh` installs the tools and turns it on).
#![cfg(feature = "integration-tests")]

use std::io::Write;
use std::path::Path;
use std::process::Command;

use cohortflow::event::{FieldNames, decode};
use cohortflow::source::demo::Generator;

const DAY: i64 = 86_400_000;
/// 2026-10-28T00:00:00Z: the data spans New York's return to standard time.
const START: i64 = 1_793_145_600_000;

/// The definitions, which the Python reference reads too.
const CONFIG: &str = include_str!("fixtures/definitions.toml");

/// Lines that break a rule, and lines that look odd but are valid.
fn hostile(ts: i64) -> Vec<Vec<u8>> {
    let iso = "2026-10-30T10:00:00Z";
    let mut v: Vec<Vec<u8>> = [
        // invalid_json
        r#"{"user_id":"h1","event":"view""#.to_owned(),
        r#"{"user_id":"h1","event":"view","ts":0} x"#.to_owned(),
        r#"{"user_id":"h1","event":"view","ts":NaN}"#.to_owned(),
        "{'user_id':'h1'}".to_owned(),
        "{\"user_id\":\"h\u{1}\",\"event\":\"view\",\"ts\":0}".to_owned(),
        r#"{"user_id":"h1","event":"view","ts":1,}"#.to_owned(),
        // not_object
        r#"["h1","view",1]"#.to_owned(),
        r#""h1""#.to_owned(),
        "42".to_owned(),
        "null".to_owned(),
        // duplicate_key
        format!(r#"{{"user_id":"h1","user_id":"h2","event":"view","ts":{ts}}}"#),
        format!(r#"{{"user_id":"h1","event":"view","ts":{ts},"ts":{ts}}}"#),
        // bad_user_id
        format!(r#"{{"user_id":"","event":"view","ts":{ts}}}"#),
        format!(r#"{{"user_id":1.5,"event":"view","ts":{ts}}}"#),
        format!(r#"{{"user_id":true,"event":"view","ts":{ts}}}"#),
        format!(r#"{{"user_id":null,"event":"view","ts":{ts}}}"#),
        format!(r#"{{"event":"view","ts":{ts}}}"#),
        format!(r#"{{"user_id":"\ud800","event":"view","ts":{ts}}}"#),
        // bad_event
        format!(r#"{{"user_id":"h1","event":"","ts":{ts}}}"#),
        format!(r#"{{"user_id":"h1","event":7,"ts":{ts}}}"#),
        format!(r#"{{"user_id":"h1","ts":{ts}}}"#),
        // bad_timestamp
        r#"{"user_id":"h1","event":"view","ts":"2026-10-30T10:00:00"}"#.to_owned(),
        r#"{"user_id":"h1","event":"view","ts":"2026-13-01T10:00:00Z"}"#.to_owned(),
        r#"{"user_id":"h1","event":"view","ts":"2026-10-30T10:00:00+0800"}"#.to_owned(),
        r#"{"user_id":"h1","event":"view","ts":-1}"#.to_owned(),
        r#"{"user_id":"h1","event":"view","ts":4102444800000}"#.to_owned(),
        r#"{"user_id":"h1","event":"view","ts":1.7e12}"#.to_owned(),
        r#"{"user_id":"h1","event":"view","ts":"2100-01-01T00:00:00Z"}"#.to_owned(),
        r#"{"user_id":"h1","event":"view"}"#.to_owned(),
        // too_late and too_early
        r#"{"user_id":"h1","event":"view","ts":"2001-01-01T00:00:00Z"}"#.to_owned(),
        r#"{"user_id":"h1","event":"view","ts":"2099-01-01T00:00:00Z"}"#.to_owned(),
        // Valid, if odd: integer ids, escapes, offsets, weird props and fields.
        format!(r#"{{"user_id":12345,"event":"view","ts":{ts},"props":{{"channel":"ads"}}}}"#),
        format!(r#"{{"user_id":"h\u0031","event":"vi\u0065w","ts":{ts}}}"#),
        format!(
            r#"{{"user_id":"h1","event":"add_to_cart","ts":{},"props":{{"amount":1e999,"channel":"\udfff"}}}}"#,
            ts + 60_000
        ),
        format!(
            r#"{{"user_id":"h1","event":"order","ts":{},"props":[1,2],"extra":{}{}}}"#,
            ts + 120_000,
            "[".repeat(200),
            "]".repeat(200)
        ),
        format!(r#"{{"\u0075ser_id":"h2","event":"signup","ts":"{iso}","\ud800":1}}"#),
        r#"{"user_id":"h2","event":"verify","ts":"2026-10-30t18:00:00.123456+08:00"}"#.to_owned(),
        r#"{"user_id":"h2","event":"pay","ts":"2026-10-31 01:00:00.9z","props":{"channel":"ads"}}"#.to_owned(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    // invalid_utf8: a stray byte, an overlong slash, an encoded surrogate.
    v.push(b"{\"user_id\":\"h\xff\",\"event\":\"view\",\"ts\":0}".to_vec());
    v.push(b"{\"user_id\":\"h\xc0\xaf\",\"event\":\"view\",\"ts\":0}".to_vec());
    v.push(b"{\"user_id\":\"h\xed\xa0\x80\",\"event\":\"view\",\"ts\":0}".to_vec());
    // too_large: valid JSON, one byte over 1 MiB.
    let head = format!(r#"{{"user_id":"h1","event":"view","ts":{ts},"pad":""#);
    let mut big = head.into_bytes();
    big.resize((1 << 20) - 1, b'x');
    big.extend_from_slice(b"\"}");
    v.push(big);
    v
}

/// The events of users whose channel a late event moves.
fn twists() -> Vec<Vec<u8>> {
    const MIN: i64 = 60_000;
    let long = format!("\"{}\"", "a".repeat(300));
    let mut out = Vec::new();
    for i in 0..300i64 {
        let t = START + (i % 5) * DAY + (i * 7919 % 86_400) * 1000;
        let earlier = match i % 5 {
            0 => "\"referral\"".to_owned(),
            1 => "7".to_owned(),
            2 => "true".to_owned(),
            3 => long.clone(),
            _ => "\"organic\"".to_owned(),
        };
        let mut events = vec![
            ("signup", t, None),
            ("view", t + 10 * MIN, Some("\"ads\"".to_owned())),
            ("add_to_cart", t + 20 * MIN, Some("\"organic\"".to_owned())),
            ("view", t + 5 * MIN, Some(earlier)),
            ("order", t + 25 * MIN, None),
            ("view", t + (1 + i % 3) * DAY + 60 * MIN, Some("\"organic\"".to_owned())),
        ];
        if i % 3 == 0 {
            events.push(("view", t + 5 * MIN, Some("\"ads\"".to_owned())));
        }
        if i % 4 == 0 {
            events.push(("view", t - MIN, Some("null".to_owned())));
        }
        if i % 6 == 0 {
            events.push(("view", t - 2 * MIN, Some("\"\\udfff\"".to_owned())));
        }
        for (event, ts, channel) in events {
            let props = channel.map_or(String::new(), |c| format!(r#","props":{{"channel":{c}}}"#));
            out.push(format!(r#"{{"user_id":"bd{i}","event":"{event}","ts":{ts}{props}}}"#).into_bytes());
        }
    }
    out
}

fn dataset(path: &Path) -> usize {
    let mut g = Generator::new(2026, START, 2500.0);
    let mut lines = Vec::new();
    g.advance_to(START + 7 * DAY, &mut lines);
    let names = FieldNames::default();
    let mut rng = fastrand::Rng::with_seed(99);

    // Out of order: shuffle within blocks of ~4 minutes.
    let mut out: Vec<Vec<u8>> = Vec::with_capacity(lines.len() + 1000);
    let mut block: Vec<Vec<u8>> = Vec::new();
    let mut block_start = None;
    for line in lines {
        if let Ok(ts) = decode(&line, &names, None).map(|e| e.ts_ms) {
            match block_start {
                Some(s) if ts - s > 4 * 60_000 => {
                    rng.shuffle(&mut block);
                    out.append(&mut block);
                    block_start = Some(ts);
                }
                None => block_start = Some(ts),
                _ => {}
            }
        }
        block.push(line);
    }
    rng.shuffle(&mut block);
    out.append(&mut block);

    // Replayed duplicates (at-least-once delivery), a few hundred lines late.
    let n = out.len();
    for i in (500..n).step_by(97).rev() {
        let again = out[i - 300].clone();
        out.insert(i, again);
    }
    // Breakdown twists, at random places: users whose earliest event
    // carries no channel, whose channel changes, and late events with an
    // earlier channel (a string, a number, a boolean, one too long, a tie
    // at one millisecond, a null and a lone surrogate, which are none).
    for line in twists() {
        let at = rng.usize(1000..out.len());
        out.insert(at, line);
    }
    // Hostile lines, several rounds, at random places.
    for round in 0..5 {
        let ts = START + DAY + round * 3 * 3_600_000;
        for line in hostile(ts) {
            let at = rng.usize(1000..out.len());
            out.insert(at, line);
        }
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    for line in &out {
        f.write_all(line).expect("write");
        f.write_all(b"\n").expect("write");
    }
    f.flush().expect("flush");
    out.len()
}

#[test]
fn figures_equal_clickhouse_in_three_time_zones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = dir.path().join("events.ndjson");
    let n = dataset(&events);
    assert!(n >= 100_000, "{n} lines");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/clickhouse_check.py");

    // Weeks start on Monday (toMonday), Sunday (toStartOfWeek's mode 0)
    // and Saturday.
    for (tz, week_start) in [("UTC", "monday"), ("Asia/Shanghai", "sunday"), ("America/New_York", "saturday")] {
        let config = dir.path().join("config.toml");
        let top = format!(
            "timezone = \"{tz}\"\nweek_start = \"{week_start}\"\nhistory_days = 63\nactivity_breakdowns = [\"channel\"]\n"
        );
        std::fs::write(&config, format!("{top}{CONFIG}")).expect("config");
        let replay = Command::new(env!("CARGO_BIN_EXE_cohortflow"))
            .args(["replay", "--config"])
            .arg(&config)
            .arg(&events)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run replay");
        assert!(replay.status.success(), "replay failed: {}", String::from_utf8_lossy(&replay.stderr));
        let metrics = dir.path().join(format!("metrics-{}.txt", tz.replace('/', "_")));
        std::fs::write(&metrics, &replay.stdout).expect("metrics");

        let check = Command::new("python3")
            .arg(&script)
            .args(["--tz", tz, "--week-start", week_start, "--events"])
            .arg(&events)
            .arg("--metrics")
            .arg(&metrics)
            .output()
            .expect("python3 with chdb is needed: scripts/test.sh installs it");
        let stdout = String::from_utf8_lossy(&check.stdout);
        println!("{stdout}");
        assert!(
            check.status.success(),
            "differences from ClickHouse in {tz}:\n{stdout}\n{}",
            String::from_utf8_lossy(&check.stderr)
        );
        assert!(stdout.contains(" 0 differ"), "{stdout}");
    }
}
