//! cohortflow: exact, continuously updated retention, activity, funnel and
//! trend figures from a stream of user-action events, served as Prometheus
//! metrics.
//!
//! The data flows through the modules in this order:
//!
//! ```text
//!  source/  ──bytes──▶  event  ──Event──▶  engine/  ──Figures──▶  export/
//!  (Kafka consumer,     (decode,           (per-shard state       (Prometheus text,
//!   NDJSON files,        validate,          machine: a room per    JSON tables, HTTP)
//!   stdin, demo)         reject reason)     metric family)
//! ```
//!
//! - [`config`] turns the TOML file and `COHORTFLOW_*` variables into a
//!   validated [`config::Config`] holding the engine's definitions
//!   ([`engine::def`]); every error names its key.
//! - [`event`] decodes one message into an [`event::Event`] or a
//!   [`event::Reject`] reason. Pure.
//! - [`engine`] holds the state of one shard and knows nothing of Kafka,
//!   files, HTTP or the allocator: no side effects, its clock passed in.
//!   It publishes
//!   [`engine::figures::Figures`], a plain value.
//! - [`export`] renders figures: Prometheus text through the `prometheus`
//!   crate's registry (a collector reads the latest figures at scrape
//!   time), the JSON API, and the HTTP server.
//! - [`source`] feeds the engine: the Kafka consumer of `run` (a shard per
//!   partition, snapshots with offsets, rebalances), NDJSON files and
//!   stdin for `replay`, the traffic generator of `demo` and `loadgen`.
//! - [`checkpoint`] writes a shard's state with its next offset to a
//!   snapshot file atomically, reads it back checked, and locks each
//!   partition's snapshot for the process that owns it.
//! - [`ratelimit`] logs a repeated warning once per cause and interval.
//! - [`allocator`] fixes the C allocator's mmap threshold at start and
//!   gives the heap's free pages back as a shard's state grows (called by
//!   the engine's owners in `source/` and `main.rs`), which keeps the
//!   state's memory a user down.
//!
//! # Adding a metric family
//!
//! A metric family (retention, activity, funnels, trends and revenue today) is a room of
//! its own under `src/engine/`; the shard ([`engine::Engine`]) keeps only
//! what all of them read (users, first-seen and active days, calendar,
//! watermark). A new family touches these files and no others:
//!
//! 1. `src/engine/def.rs`: its definition (what the config describes),
//!    and a field of [`engine::def::EngineConfig`] for it.
//! 2. `src/engine/<family>.rs`: a type implementing
//!    [`engine::family::Family`]: its per-user columns (`push_user`), what
//!    an event does to them (`record`), what it drops as the watermark
//!    moves (`maintain`), its figures (`publish`), its snapshot section
//!    (`write_head`, `write_columns`, `read_head`, `read_columns`) and its
//!    bytes (`heap_bytes`); and, when it asks about event names, a part of
//!    [`engine::class::Class`] (`names`, `classify`).
//! 3. `src/engine/mod.rs`: the shard's list — a field, and a line in
//!    `Engine::new`, `Engine::ingest`, `families` and `families_mut` (a
//!    fixed list, so an event reaches each family by a direct call);
//!    `merge` when its figures are dated.
//! 4. `src/engine/figures.rs`: its rows in [`engine::figures::Figures`]
//!    and how they sum across shards.
//! 5. `src/export/`: its Prometheus families (`metrics.rs`: the table
//!    `docs/metrics.md` is generated from, and the rendering) and its JSON
//!    endpoint (`http.rs`).
//! 6. `src/config/`: its keys in `raw.rs`, their checks in `validate.rs`
//!    (errors name the key), and `config/cohortflow.toml`, which documents
//!    every key.
//! 7. Docs: its definition in `docs/semantics.md`, its cost in
//!    `docs/sizing.md`, and a bump of `checkpoint::FORMAT_VERSION`.
//!
//! A family whose figures can be split by a breakdown (`[[breakdown]]`,
//! [`engine::breakdown`]) keeps [`engine::breakdown::SplitRows`] beside its
//! own rows, adds to them wherever it adds to its own (the user's values
//! are [`engine::family::Touch::labels`]), and moves a user's share of them
//! in [`engine::family::Family::relabel`] when a late event changes the
//! user's value.
//!
//! A family that is not configured must cost nothing per event: return
//! from `record` before any work when its part of the event's class is
//! empty, and keep no per-user column.

pub mod allocator;
pub mod checkpoint;
pub mod config;
pub mod engine;
pub mod event;
pub mod export;
pub mod ratelimit;
pub mod source;
