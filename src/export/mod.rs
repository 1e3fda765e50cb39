//! Export: the latest published figures, rendered as Prometheus text and as
//! JSON tables, served over HTTP.
//!
//! The engine's owner publishes a fresh [`Figures`] value every so often
//! (per batch, never per event); scrapes read the latest one without
//! touching the engine, so a scrape never stalls ingestion.

pub mod http;
pub mod metrics;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;

use crate::engine::figures::Figures;

/// One owned partition, as the Kafka source sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PartitionStatus {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Messages between the next offset and the high watermark.
    pub lag: Option<i64>,
    /// Next offset to apply.
    pub next_offset: Option<i64>,
    /// This shard's watermark, epoch ms.
    pub watermark_ms: Option<i64>,
    /// Why the snapshot was refused (`corrupt`, `incompatible`, `io`).
    pub snapshot_error: Option<&'static str>,
}

/// The Kafka source's health, for metrics and readiness.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceStatus {
    /// Owned partitions.
    pub partitions: Vec<PartitionStatus>,
    /// Whether a broker answered lately.
    pub brokers_up: bool,
    /// When the last snapshot round finished, epoch seconds.
    pub last_snapshot_seconds: Option<f64>,
    /// How long it took.
    pub last_snapshot_duration_seconds: Option<f64>,
    /// Bytes it wrote.
    pub last_snapshot_bytes: Option<u64>,
    /// Snapshot writes that failed, ever.
    pub snapshot_failures: u64,
}

/// The HTTP listener's connection counts.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections closed at once because the listener was full.
    pub refused: AtomicU64,
}

/// What the exporters read: the latest figures and readiness.
#[derive(Debug, Default)]
pub struct Published {
    /// The HTTP listener's connection counts.
    pub http: HttpStats,
    figures: ArcSwap<Figures>,
    /// The Kafka source's status; `None` for replay and demo.
    source: ArcSwap<Option<SourceStatus>>,
    /// False until the source has caught up enough to serve true figures
    /// (and, for Kafka, while the broker is unreachable).
    ready: AtomicBool,
}

impl Published {
    /// Empty figures, not ready.
    pub fn new() -> Arc<Self> {
        Arc::new(Published::default())
    }

    /// Replaces the figures.
    pub fn publish(&self, figures: Figures) {
        self.figures.store(Arc::new(figures));
    }

    /// Replaces the source status.
    pub fn publish_source(&self, status: SourceStatus) {
        self.source.store(Arc::new(Some(status)));
    }

    /// The latest source status, if there is a Kafka source.
    pub fn source(&self) -> Arc<Option<SourceStatus>> {
        self.source.load_full()
    }

    /// The latest figures.
    pub fn figures(&self) -> Arc<Figures> {
        self.figures.load_full()
    }

    /// Sets readiness.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Readiness.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}
