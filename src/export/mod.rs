//! Export: the latest published figures, rendered as Prometheus text and as
//! JSON tables, served over HTTP.
//!
//! The engine's owner publishes a fresh [`Figures`] value every so often
//! (per batch, never per event); scrapes read the latest one without
//! touching the engine, so a scrape never stalls ingestion.

pub mod http;
pub mod metrics;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;

use crate::engine::figures::Figures;

/// What the exporters read: the latest figures and readiness.
#[derive(Debug, Default)]
pub struct Published {
    figures: ArcSwap<Figures>,
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
