//! Plain `cargo test` needs nothing but Rust: the suites that talk to
//! outside tools are compiled only with the `integration-tests` feature.
//! This names them once, as an ignored test, in every run that leaves
//! them out.

#[cfg(not(feature = "integration-tests"))]
#[test]
#[ignore = "left out: tests/kafka.rs (a Kafka-protocol broker), tests/clickhouse.rs (chdb), \
            tests/prometheus.rs (Prometheus, promtool), tests/deploy.rs (hadolint); \
            ./scripts/test.sh installs them and runs everything with --features integration-tests"]
fn integration_suites_need_outside_tools() {}
