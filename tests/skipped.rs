//! Plain `cargo test` needs nothing but Rust: the suites that talk to
//! outside tools are compiled only with the `integration-tests` feature,
//! which `scripts/test.sh` (the README's test command, and CI) turns on
//! after installing the tools. This checks that split, so that a suite
//! cannot drop out of the full run, nor break a plain one.

/// The suites that need a tool from outside the crate, and the tool.
const GATED: &[(&str, &str)] = &[
    ("tests/kafka.rs", "a Kafka-protocol broker"),
    ("tests/clickhouse.rs", "chdb"),
    ("tests/prometheus.rs", "Prometheus and promtool"),
    ("tests/deploy.rs", "hadolint"),
];

#[test]
fn suites_that_need_outside_tools_are_gated_and_the_full_run_turns_them_on() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |path: &str| std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    for (suite, tool) in GATED {
        assert!(
            read(suite).contains("\n#![cfg(feature = \"integration-tests\")]\n"),
            "{suite} needs {tool}: it must be built with the integration-tests feature only"
        );
    }
    let full = read("scripts/test.sh");
    assert!(full.contains("--features integration-tests"), "scripts/test.sh must run the gated suites");
    assert!(read("Cargo.toml").contains("integration-tests = []"), "the feature is declared");
    if cfg!(not(feature = "integration-tests")) {
        let left_out: Vec<String> = GATED.iter().map(|(s, t)| format!("{s} ({t})")).collect();
        eprintln!("left out of this run: {}; ./scripts/test.sh runs them", left_out.join(", "));
    }
}
