//! Fuzzing, for a bounded time: the event decoder (and the engine behind
//! it) and the config loader (file and environment) get generated hostile
//! input and must never panic. Each target runs for
//! `COHORTFLOW_FUZZ_SECONDS` (default 3; `scripts/test.sh` gives each 20)
//! and prints the input that broke it, with the seed to find it again
//! (`COHORTFLOW_FUZZ_SEED`).
//!
//! The inputs come from grammars that know the shapes the code reads (the
//! event fields and their near misses, every config key and value type),
//! mutated byte by byte, so that most of them reach deep into the code
//! rather than fail at the first byte.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cohortflow::config::Config;
use cohortflow::engine::Engine;
use cohortflow::event::{FieldNames, MAX_MESSAGE_BYTES, decode};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};

fn budget() -> Duration {
    let secs = std::env::var("COHORTFLOW_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    Duration::from_secs_f64(secs)
}

fn seed() -> u64 {
    std::env::var("COHORTFLOW_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..))
}

/// Draws inputs from `strategy` until the time budget is spent, feeding
/// each to `target`; a panic fails the test with the input that caused it.
fn fuzz<S: Strategy>(name: &str, strategy: S, mut target: impl FnMut(&S::Value))
where
    S::Value: std::fmt::Debug,
{
    let seed = seed();
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        proptest::test_runner::Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
    );
    let deadline = Instant::now() + budget();
    let mut runs = 0u64;
    while Instant::now() < deadline {
        let input = strategy.new_tree(&mut runner).expect("a strategy that always draws").current();
        if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
            panic!("{name}: panicked on {input:?} (COHORTFLOW_FUZZ_SEED={seed}, input {runs})");
        }
        runs += 1;
    }
    eprintln!("{name}: {runs} inputs, seed {seed}");
    assert!(runs > 0);
}

/// Byte-level damage: flips, cuts, insertions of bytes that matter to a
/// JSON or TOML reader.
fn mutate(text: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = text.len().max(1);
    prop::collection::vec(
        (
            0..len,
            prop_oneof![any::<u8>(), prop::sample::select(b"{}[]\",:\\\n\r=#'.-0eE \x00\xff\xc3\xa9".to_vec())],
            0..4u8,
        ),
        0..4,
    )
    .prop_map(move |edits| {
        let mut out = text.clone();
        for (at, byte, kind) in edits {
            let at = at.min(out.len());
            match kind {
                0 => out.insert(at, byte),
                1 if at < out.len() => out[at] = byte,
                2 => out.truncate(at),
                _ => {
                    if at < out.len() {
                        out.remove(at);
                    }
                }
            }
        }
        out
    })
}

fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_]{0,8}".prop_map(|s| format!("\"{s}\"")),
        prop::sample::select(vec![
            r#""""#,
            r#""\u0000""#,
            r#""\ud800""#,
            r#""\udc00\ud800""#,
            r#""\uD83D\uDE00""#,
            r#""\"\\\/\b\f\n\r\t""#,
            r#""é ü 中""#,
            r#""\u00e9""#,
        ])
        .prop_map(str::to_owned),
    ]
}

fn json_number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|x| format!("{x:e}")),
        prop::sample::select(vec![
            "-0",
            "0",
            "1e999",
            "-1e999",
            "1790000000000",
            "4102444800000",
            "4102444799999",
            "-1",
            "1.5e3",
            "00",
            "1.",
            ".5",
            "18446744073709551616",
            "99999999999999999999999",
        ])
        .prop_map(str::to_owned),
    ]
}

fn timestamp() -> impl Strategy<Value = String> {
    prop_oneof![
        json_number(),
        prop::sample::select(vec![
            r#""2026-11-20T08:15:00.123Z""#,
            r#""2026-11-20t08:15:00z""#,
            r#""2026-11-20 08:15:00+08:00""#,
            r#""2026-11-20T08:15:60Z""#,
            r#""2026-11-20T08:15:00.123456789123-23:59""#,
            r#""2026-02-30T00:00:00Z""#,
            r#""2099-12-31T23:59:59.999Z""#,
            r#""2100-01-01T00:00:00Z""#,
            r#""1969-12-31T23:59:59Z""#,
            r#""2026-11-20T08:15:00""#,
            r#""2026-11-20T24:00:00Z""#,
            r#""2026-11-20T08:15:00+24:00""#,
        ])
        .prop_map(str::to_owned),
    ]
}

/// A JSON value of any shape, nested up to `depth`.
fn json_value(depth: u32) -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        json_string(),
        json_number(),
        prop::sample::select(vec!["true", "false", "null"]).prop_map(str::to_owned),
    ];
    leaf.prop_recursive(depth, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((json_string(), inner), 0..4).prop_map(|v| format!(
                "{{{}}}",
                v.into_iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(",")
            )),
        ]
    })
    .boxed()
}

/// An event-like object: the fields the decoder reads, their near misses
/// and repeats, anything as their values.
fn event_text() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "\"user_id\"",
        "\"event\"",
        "\"ts\"",
        "\"props\"",
        "\"user_\\u0069d\"",
        "\"USER_ID\"",
        "\"other\"",
        "\"\"",
    ]);
    let value = prop_oneof![json_string(), json_number(), timestamp(), json_value(3)];
    (prop::collection::vec((key, value), 0..7), prop::sample::select(vec!["", " ", "\u{feff}", "\n\t "])).prop_map(
        |(fields, lead)| {
            let body: Vec<String> = fields.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
            format!("{lead}{{{}}}", body.join(","))
        },
    )
}

fn decoder_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => event_text().prop_flat_map(|t| mutate(t.into_bytes())),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        1 => (1usize..2000).prop_map(|depth| {
            let mut t = String::from(r#"{"user_id":"u","event":"e","ts":0,"x":"#);
            t.push_str(&"[".repeat(depth));
            t.into_bytes()
        }),
    ]
}

#[test]
fn the_decoder_and_the_engine_never_panic() {
    let names = FieldNames::default();
    let cfg = Config::from_toml_str(cohortflow::source::demo::DEMO_CONFIG).expect("demo config");
    let mut engine = Engine::new(Arc::new(cfg.engine));
    let now = 1_800_000_000_000;
    let mut applied = 0u64;
    fuzz("decoder", decoder_input(), |bytes| {
        applied += 1;
        match decode(bytes, &names, Some(1_790_000_000_000)) {
            Ok(e) => {
                assert!(!e.user_id.is_empty() && e.user_id.len() <= names.max_user_id_bytes);
                assert!(!e.name.is_empty());
                assert!((cohortflow::event::MIN_TS_MS..cohortflow::event::END_TS_MS).contains(&e.ts_ms));
                let _ = e.props(&["channel", "platform", "amount"]);
            }
            Err(reason) => assert!(bytes.len() <= MAX_MESSAGE_BYTES || reason.as_str() == "too_large"),
        }
        // Accepted or not, the engine takes it without harm.
        let _ = engine.apply(bytes, Some(1_790_000_000_000), now);
    });
    // Every message counted once, as ingested or by its reason.
    assert_eq!(engine.figures().counters.read(), applied);
}

const KEYS: &[&str] = &[
    "timezone",
    "state_dir",
    "allowed_lateness",
    "history_days",
    "max_future_skew",
    "snapshot_interval",
    "shutdown_timeout",
    "export_days",
    "max_users",
    "max_user_id_bytes",
    "max_funnel_events_per_user",
    "use_message_timestamp",
    "colour",
];
const SECTION_KEYS: &[(&str, &[&str])] = &[
    ("[fields]", &["user_id", "event", "ts", "props"]),
    ("[http]", &["listen", "max_connections", "header_read_timeout"]),
    ("[log]", &["format", "level"]),
    ("[kafka]", &["brokers", "topics", "group_id", "dead_letter_topic", "instance_id", "workers"]),
    ("[kafka.options]", &["\"auto.offset.reset\"", "\"fetch.min.bytes\""]),
    ("[[retention]]", &["name", "cohort_event", "return_event", "days", "periods", "granularity", "mode"]),
    ("[[funnel]]", &["name", "window", "mode", "steps"]),
    ("[[trend]]", &["name", "event"]),
    ("[revenue]", &["events", "amount_prop", "scale"]),
];

fn toml_value() -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        prop::sample::select(vec![
            "\"\"",
            "\"*\"",
            "\"1h\"",
            "\"0s\"",
            "\"-1m\"",
            "\"99999999999d\"",
            "\"Asia/Shanghai\"",
            "\"Mars/Base\"",
            "\"on\"",
            "\"on_or_after\"",
            "\"rolling_24h\"",
            "\"week\"",
            "\"month\"",
            "\"2-7\"",
            "\"8-2\"",
            "\"strict_once\"",
            "\"127.0.0.1:0\"",
            "\"!!!\"",
            "\"info,cohortflow=debug\"",
            "\"json\"",
            "nan",
            "inf",
            "-inf",
            "true",
            "1979-05-27T07:32:00Z",
        ])
        .prop_map(str::to_owned),
        any::<i64>().prop_map(|n| n.to_string()),
        (0u32..100).prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|x| format!("{x:?}")),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec((prop::sample::select(vec!["event", "where", "x", "channel"]), inner), 0..3)
                .prop_map(|v| format!(
                    "{{ {} }}",
                    v.into_iter().map(|(k, v)| format!("{k} = {v}")).collect::<Vec<_>>().join(", ")
                )),
        ]
    })
    .boxed()
}

fn config_text() -> impl Strategy<Value = String> {
    let top = prop::collection::vec((prop::sample::select(KEYS.to_vec()), toml_value()), 0..6);
    let section = (0..SECTION_KEYS.len(), prop::collection::vec((any::<prop::sample::Index>(), toml_value()), 0..5));
    (top, prop::collection::vec(section, 0..5)).prop_map(|(top, sections)| {
        let mut text = String::new();
        for (k, v) in top {
            text.push_str(&format!("{k} = {v}\n"));
        }
        for (s, fields) in sections {
            let (header, keys) = SECTION_KEYS[s];
            text.push_str(header);
            text.push('\n');
            for (k, v) in fields {
                text.push_str(&format!("{} = {v}\n", k.get(keys)));
            }
        }
        text
    })
}

fn config_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => config_text().prop_flat_map(|t| mutate(t.into_bytes())),
        1 => mutate(include_bytes!("../config/cohortflow.toml").to_vec()),
    ]
}

#[test]
fn the_config_loader_never_panics() {
    fuzz("config file", config_input(), |bytes| {
        if let Ok(text) = std::str::from_utf8(bytes)
            && let Err(e) = Config::from_toml_str(text)
        {
            assert!(!e.to_string().is_empty());
        }
    });
    let var = (
        prop::sample::select(vec![
            "HISTORY_DAYS",
            "HTTP__LISTEN",
            "KAFKA__GROUP_ID",
            "KAFKA__TOPICS",
            "KAFKA__OPTIONS",
            "PORT",
            "HTTP",
            "RETENTION",
            "HTTP__LISTEN__DEEPER",
            "",
            "__",
            "LOG__LEVEL",
            "MAX_USERS",
        ]),
        prop_oneof![toml_value(), "[ -~]{0,12}"],
    );
    fuzz("config environment", prop::collection::vec(var, 0..5), |vars| {
        let vars = vars.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        let _ = Config::load_with(None, vars);
    });
}
