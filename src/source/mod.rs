//! Sources that feed the engine: the Kafka consumer of `run` ([`kafka`],
//! reading through [`fetch`]), NDJSON files and stdin for `replay`
//! ([`mod@file`]), the built-in traffic generator of `demo` ([`demo`]) and the
//! producer of `loadgen` ([`loadgen`]).

pub mod demo;
pub mod fetch;
pub mod file;
pub mod kafka;
pub mod loadgen;
