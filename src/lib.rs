//! cohortflow: exact, continuously updated retention, activity and funnel
//! figures from a stream of user-action events, served as Prometheus
//! metrics.
//!
//! The data flows through the modules in this order:
//!
//! ```text
//!  source/  ──bytes──▶  event  ──Event──▶  engine/  ──Figures──▶  export/
//!  (NDJSON files,       (decode,           (per-shard state       (Prometheus text,
//!   stdin, demo          validate,          machine: retention,    JSON tables, HTTP)
//!   generator)           reject reason)     activity, funnels)
//! ```
//!
//! - [`config`] turns the TOML file and `COHORTFLOW_*` variables into a
//!   validated [`config::Config`]; every error names its key.
//! - [`event`] decodes one message into an [`event::Event`] or a
//!   [`event::Reject`] reason. Pure.
//! - [`engine`] holds the state of one shard and knows nothing of Kafka,
//!   files or HTTP; its clock is passed in. It publishes
//!   [`engine::figures::Figures`], a plain value.
//! - [`export`] renders figures: Prometheus text through the `prometheus`
//!   crate's registry (a collector reads the latest figures at scrape
//!   time), the JSON API, and the HTTP server.
//! - [`source`] feeds the engine: NDJSON files and stdin for `replay`, the
//!   built-in traffic generator for `demo`.
//! - [`allocator`] fixes the C allocator's mmap threshold at start and
//!   gives the heap's free pages back as the state grows, which keeps the
//!   state's memory a user down.

pub mod allocator;
pub mod checkpoint;
pub mod config;
pub mod engine;
pub mod event;
pub mod export;
pub mod ratelimit;
pub mod source;
