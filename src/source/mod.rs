//! Sources that feed the engine: NDJSON files and stdin (`replay`), and the
//! built-in traffic generator (`demo`).

pub mod demo;
pub mod fetch;
pub mod file;
pub mod kafka;
pub mod loadgen;
