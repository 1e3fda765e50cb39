//! Prometheus metrics: a custom collector that turns the latest published
//! [`Figures`] into metric families at scrape time, registered in an
//! explicit registry (never a global one), and rendered by the
//! `prometheus` crate's text encoder.
//!
//! A module per metric family declares its metric families (a `FAMILIES`
//! table: name, help, type, labels) and builds them from the figures:
//! `retention`, `activity`, `funnel`, `breakdown`, `trend`, `revenue`; `shard` has what every
//! shard reports, `source` the Kafka source's status. `docs/metrics.md`
//! is generated from the tables ([`reference()`]).
//!
//! Label values are bounded: definition names come from the config, dates
//! from the `export_days` window, reasons and windows from fixed sets.

mod activity;
mod breakdown;
mod family;
mod funnel;
mod retention;
mod revenue;
mod shard;
mod source;
mod trend;

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{MetricFamily, MetricType};
use prometheus::{Encoder, Registry, TextEncoder};

use super::Published;
use crate::engine::figures::Figures;
use family::Family;
pub use retention::TRAILING_COHORTS;

const NS: &str = "cohortflow_";

/// A metric family's declaration: (name without prefix, help, type,
/// variable labels).
type Def = (&'static str, &'static str, MetricType, &'static [&'static str]);

/// The families the process itself reports besides its figures.
const PROCESS: &[Def] = &[
    ("ready", "1 when /readyz answers 200, else 0.", MetricType::GAUGE, &[]),
    ("http_connections", "HTTP connections open now.", MetricType::GAUGE, &[]),
    (
        "http_connections_refused_total",
        "HTTP connections closed as soon as accepted because http.max_connections were open.",
        MetricType::COUNTER,
        &[],
    ),
];

/// Every declared family, in the order of the reference.
fn all() -> impl Iterator<Item = &'static Def> {
    [
        retention::FAMILIES,
        activity::FAMILIES,
        funnel::FAMILIES,
        breakdown::FAMILIES,
        trend::FAMILIES,
        revenue::FAMILIES,
        shard::FAMILIES,
        source::FAMILIES,
        PROCESS,
    ]
    .into_iter()
    .flatten()
}

/// Reads the latest figures at scrape time.
#[derive(Debug)]
pub struct FiguresCollector {
    published: Arc<Published>,
    max_users: u64,
    descs: Vec<Desc>,
}

impl FiguresCollector {
    /// A collector over `published`.
    pub fn new(published: Arc<Published>, max_users: u64) -> prometheus::Result<Self> {
        let descs = all()
            .map(|(name, help, _, labels)| {
                Desc::new(
                    format!("{NS}{name}"),
                    (*help).to_owned(),
                    labels.iter().map(|l| (*l).to_owned()).collect(),
                    Default::default(),
                )
            })
            .collect::<prometheus::Result<Vec<_>>>()?;
        Ok(FiguresCollector { published, max_users, descs })
    }
}

/// Metric families for a set of figures.
pub fn families(f: &Figures, max_users: u64) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    retention::families(f, &mut out);
    activity::families(f, &mut out);
    funnel::families(f, &mut out);
    breakdown::families(f, &mut out);
    trend::families(f, &mut out);
    revenue::families(f, &mut out);
    shard::families(f, max_users, &mut out);
    out
}

impl Collector for FiguresCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut out = families(&self.published.figures(), self.max_users);
        let mut ready = Family::new("ready");
        ready.value(&[], f64::from(u8::from(self.published.is_ready())));
        out.push(ready.mf);
        let mut open = Family::new("http_connections");
        open.value(&[], self.published.http.open.load(std::sync::atomic::Ordering::Relaxed) as f64);
        let mut refused = Family::new("http_connections_refused_total");
        refused.value(&[], self.published.http.refused.load(std::sync::atomic::Ordering::Relaxed) as f64);
        out.extend([open, refused].map(|f| f.mf));
        if let Some(source) = self.published.source().as_ref() {
            out.extend(source::families(source));
            if let Some(max) = self.published.figures().max_event_ms {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                let mut g = Family::new("event_lag_seconds");
                g.value(&[], (now - max) as f64 / 1000.0);
                out.push(g.mf);
            }
        }
        out
    }
}

/// A registry with the figures collector (and, on Linux, process metrics).
pub fn registry(published: Arc<Published>, max_users: u64) -> prometheus::Result<Registry> {
    let registry = Registry::new();
    registry.register(Box::new(FiguresCollector::new(published, max_users)?))?;
    // Memory and CPU of the process itself, for the operations dashboard.
    #[cfg(target_os = "linux")]
    registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
    Ok(registry)
}

/// The Prometheus text exposition of everything in `registry`.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    // Encoding into a Vec cannot fail for well-formed families.
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut buf) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// The metric reference, as the table of `docs/metrics.md`: every family
/// a process can export, with its type, labels and help text (a test
/// checks the file against it).
pub fn reference() -> String {
    let mut out = String::from("| metric | type | labels | what it is |\n| --- | --- | --- | --- |\n");
    for (name, help, kind, labels) in all() {
        let kind = match kind {
            MetricType::COUNTER => "counter",
            MetricType::SUMMARY => "summary",
            MetricType::HISTOGRAM => "histogram",
            _ => "gauge",
        };
        let labels = labels.iter().map(|l| format!("`{l}`")).collect::<Vec<_>>().join(", ");
        out.push_str(&format!("| `{NS}{name}` | {kind} | {labels} | {} |\n", help.replace('|', "\\|")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::{PartitionStatus, SourceStatus};

    #[test]
    fn every_family_renders_and_is_declared() {
        let published = Published::new();
        let cfg = std::sync::Arc::new(
            crate::config::Config::from_toml_str(crate::source::demo::DEMO_CONFIG).expect("config").engine,
        );
        let mut engine = crate::engine::Engine::new(cfg);
        let mut g = crate::source::demo::Generator::new(1, 1_790_000_000_000, 300.0);
        let mut lines = Vec::new();
        g.advance_to(1_790_000_000_000 + 10 * 86_400_000, &mut lines);
        for l in &lines {
            let _ = engine.apply(l, None, 1_800_000_000_000);
        }
        published.publish(engine.figures());
        published.publish_source(SourceStatus {
            partitions: vec![PartitionStatus {
                topic: "events".into(),
                partition: 0,
                lag: Some(3),
                next_offset: Some(10),
                watermark_ms: Some(1_000),
                snapshot_error: Some("corrupt"),
            }],
            brokers_up: true,
            last_snapshot_seconds: Some(1.0),
            last_snapshot_duration_seconds: Some(0.1),
            last_snapshot_bytes: Some(100),
            snapshot_failures: 0,
        });
        let text = render(&registry(published, 10).expect("registry"));
        for (name, _, _, _) in all() {
            assert!(text.contains(&format!("# TYPE cohortflow_{name} ")), "{name} missing");
        }
    }
}
