//! Prometheus metrics: a custom collector that turns the latest published
//! [`Figures`] into metric families at scrape time, registered in an
//! explicit registry (never a global one), and rendered by the
//! `prometheus` crate's text encoder.
//!
//! Label values are bounded: definition names come from the config, dates
//! from the `export_days` window, reasons and windows from fixed sets.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};
use prometheus::{Encoder, Registry, TextEncoder};

use super::Published;
use crate::engine::figures::Figures;
use crate::event::Reject;

const NS: &str = "cohortflow_";

/// How many mature cohorts before the latest one make the trailing
/// baseline that alerts compare the latest one with.
pub const TRAILING_COHORTS: usize = 7;

/// (name without prefix, help, type, variable labels)
const FAMILIES: &[(&str, &str, MetricType, &[&str])] = &[
    ("cohort_users", "Users in each cohort (by cohort date).", MetricType::GAUGE, &["retention", "cohort_date"]),
    (
        "retained_users",
        "Users of the cohort with a return event on day N (or from day N on, in on_or_after mode).",
        MetricType::GAUGE,
        &["retention", "cohort_date", "day"],
    ),
    ("retention_ratio", "retained_users / cohort_users.", MetricType::GAUGE, &["retention", "cohort_date", "day"]),
    (
        "retention_mature",
        "1 once the watermark has passed the end of day D+N (the cell is final), else 0.",
        MetricType::GAUGE,
        &["retention", "cohort_date", "day"],
    ),
    (
        "retention_latest_ratio",
        "Retention ratio of the latest mature cohort for each N: what alerts use.",
        MetricType::GAUGE,
        &["retention", "day"],
    ),
    (
        "retention_latest_cohort_timestamp_seconds",
        "Start of the cohort day behind retention_latest_ratio, as a date in UTC seconds.",
        MetricType::GAUGE,
        &["retention", "day"],
    ),
    (
        "retention_latest_cohort_users",
        "Size of the latest mature cohort for each N (sums across instances for the global ratio).",
        MetricType::GAUGE,
        &["retention", "day"],
    ),
    (
        "retention_latest_retained_users",
        "Retained users of the latest mature cohort for each N.",
        MetricType::GAUGE,
        &["retention", "day"],
    ),
    (
        "retention_trailing_cohort_users",
        "Users of the 7 mature cohorts before the latest one, for each N: the alerting baseline.",
        MetricType::GAUGE,
        &["retention", "day"],
    ),
    (
        "retention_trailing_retained_users",
        "Retained users of the 7 mature cohorts before the latest one, for each N.",
        MetricType::GAUGE,
        &["retention", "day"],
    ),
    ("ready", "1 when /readyz answers 200, else 0.", MetricType::GAUGE, &[]),
    ("new_users", "Users first seen on each business day.", MetricType::GAUGE, &["date"]),
    (
        "active_users",
        "Distinct users active on the day (1d) or in the 7 or 30 days ending on it.",
        MetricType::GAUGE,
        &["window", "date"],
    ),
    (
        "funnel_users",
        "Users who entered the funnel on the day and reached at least this step.",
        MetricType::GAUGE,
        &["funnel", "step", "step_name", "entry_date"],
    ),
    (
        "funnel_conversion_ratio",
        "funnel_users of the step / funnel_users of step 1.",
        MetricType::GAUGE,
        &["funnel", "step", "step_name", "entry_date"],
    ),
    (
        "funnel_conversions_total",
        "(user, entry day) pairs that reached the step, ever.",
        MetricType::COUNTER,
        &["funnel", "step"],
    ),
    (
        "funnel_time_to_convert_seconds",
        "Time from step 1 to the step, over conversions seen.",
        MetricType::SUMMARY,
        &["funnel", "step"],
    ),
    ("events_ingested_total", "Events accepted into the engine.", MetricType::COUNTER, &[]),
    ("events_rejected_total", "Messages rejected, by reason.", MetricType::COUNTER, &["reason"]),
    (
        "events_untracked_total",
        "Accepted events of new users not tracked because max_users was reached.",
        MetricType::COUNTER,
        &[],
    ),
    (
        "funnel_events_refused_total",
        "Funnel events left out of the funnels because a shard's funnel store was full (2^32 units), counted since each shard started (not kept in snapshots).",
        MetricType::COUNTER,
        &[],
    ),
    (
        "funnel_events_capped_total",
        "Funnel events left out of the funnels because their user already kept max_funnel_events_per_user of the history window, counted since each shard started (not kept in snapshots).",
        MetricType::COUNTER,
        &[],
    ),
    (
        "funnel_store_fill_ratio",
        "The fullest funnel store of any shard: its arena's units over the 2^32 it can address (at 1, funnel events are refused).",
        MetricType::GAUGE,
        &[],
    ),
    ("watermark_timestamp_seconds", "Newest accepted event time minus the allowed lateness.", MetricType::GAUGE, &[]),
    ("max_event_timestamp_seconds", "Newest accepted event time.", MetricType::GAUGE, &[]),
    ("tracked_users", "Users remembered by the engine.", MetricType::GAUGE, &[]),
    ("max_tracked_users", "The configured cap on remembered users.", MetricType::GAUGE, &[]),
    ("state_bytes", "Estimated bytes of engine state.", MetricType::GAUGE, &[]),
    ("event_lag_seconds", "Wall clock minus the newest accepted event time.", MetricType::GAUGE, &[]),
    (
        "consumer_lag_messages",
        "Messages between the next offset to apply and the partition's high watermark.",
        MetricType::GAUGE,
        &["topic", "partition"],
    ),
    (
        "partition_watermark_timestamp_seconds",
        "Watermark of one partition's shard.",
        MetricType::GAUGE,
        &["topic", "partition"],
    ),
    (
        "snapshot_refused",
        "1 while a partition's snapshot is refused (the partition is paused), by reason.",
        MetricType::GAUGE,
        &["topic", "partition", "reason"],
    ),
    ("owned_partitions", "Partitions this instance owns.", MetricType::GAUGE, &[]),
    ("kafka_up", "1 when a broker answered lately, else 0.", MetricType::GAUGE, &[]),
    ("last_checkpoint_timestamp_seconds", "When the last snapshot round finished.", MetricType::GAUGE, &[]),
    ("checkpoint_duration_seconds", "How long the last snapshot round took.", MetricType::GAUGE, &[]),
    ("checkpoint_bytes", "Bytes written by the last snapshot round.", MetricType::GAUGE, &[]),
    (
        "checkpoint_failures_total",
        "Snapshot writes that failed (their offsets were not committed).",
        MetricType::COUNTER,
        &[],
    ),
    ("http_connections", "HTTP connections open now.", MetricType::GAUGE, &[]),
    (
        "http_connections_refused_total",
        "HTTP connections closed as soon as accepted because http.max_connections were open.",
        MetricType::COUNTER,
        &[],
    ),
];

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
        let descs = FAMILIES
            .iter()
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

/// Builds one metric family at a time.
struct Family {
    mf: MetricFamily,
    labels: &'static [&'static str],
}

impl Family {
    fn new(name: &'static str) -> Family {
        let (n, help, kind, labels) = FAMILIES
            .iter()
            .find(|f| f.0 == name)
            .copied()
            .unwrap_or_else(|| unreachable!("family {name} is declared in FAMILIES"));
        let mut mf = MetricFamily::default();
        mf.set_name(format!("{NS}{n}"));
        mf.set_help(help.to_owned());
        mf.set_field_type(kind);
        Family { mf, labels }
    }

    fn labelled(&self, values: &[&str]) -> proto::Metric {
        debug_assert_eq!(values.len(), self.labels.len());
        let pairs = self
            .labels
            .iter()
            .zip(values)
            .map(|(n, v)| {
                let mut p = LabelPair::default();
                p.set_name((*n).to_owned());
                p.set_value((*v).to_owned());
                p
            })
            .collect();
        let mut m = proto::Metric::default();
        m.set_label(pairs);
        m
    }

    fn value(&mut self, values: &[&str], v: f64) {
        let mut m = self.labelled(values);
        match self.mf.get_field_type() {
            MetricType::COUNTER => {
                let mut c = proto::Counter::default();
                c.set_value(v);
                m.set_counter(c);
            }
            _ => {
                let mut g = proto::Gauge::default();
                g.set_value(v);
                m.set_gauge(g);
            }
        }
        self.mf.mut_metric().push(m);
    }

    fn summary(&mut self, values: &[&str], quantiles: &[(f64, f64)], sum: f64, count: u64) {
        let mut m = self.labelled(values);
        let mut s = proto::Summary::default();
        s.set_sample_count(count);
        s.set_sample_sum(sum);
        s.set_quantile(
            quantiles
                .iter()
                .map(|&(q, v)| {
                    let mut p = proto::Quantile::default();
                    p.set_quantile(q);
                    p.set_value(v);
                    p
                })
                .collect(),
        );
        m.set_summary(s);
        self.mf.mut_metric().push(m);
    }
}

/// Metric families for a set of figures.
pub fn families(f: &Figures, max_users: u64) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    let mut cohort_users = Family::new("cohort_users");
    let mut retained = Family::new("retained_users");
    let mut ratio = Family::new("retention_ratio");
    let mut mature = Family::new("retention_mature");
    let mut latest = Family::new("retention_latest_ratio");
    let mut latest_cohort = Family::new("retention_latest_cohort_timestamp_seconds");
    let mut latest_users = Family::new("retention_latest_cohort_users");
    let mut latest_retained = Family::new("retention_latest_retained_users");
    let mut trailing_users = Family::new("retention_trailing_cohort_users");
    let mut trailing_retained = Family::new("retention_trailing_retained_users");
    for table in &f.retention {
        let days: Vec<String> = table.days.iter().map(u32::to_string).collect();
        for row in &table.cohorts {
            cohort_users.value(&[&table.name, &row.date], row.users as f64);
            for (i, day) in days.iter().enumerate() {
                let labels = [table.name.as_str(), row.date.as_str(), day.as_str()];
                retained.value(&labels, row.retained[i] as f64);
                ratio.value(&labels, row.retained[i] as f64 / row.users as f64);
                mature.value(&labels, f64::from(u8::from(row.mature[i])));
            }
        }
        for (i, day) in days.iter().enumerate() {
            // Mature cohorts, newest first: the latest one, then the 7 before it.
            let mut matured = table.cohorts.iter().rev().filter(|r| r.mature[i]);
            if let Some(row) = matured.next() {
                let labels = [table.name.as_str(), day.as_str()];
                latest.value(&labels, row.retained[i] as f64 / row.users as f64);
                latest_users.value(&labels, row.users as f64);
                latest_retained.value(&labels, row.retained[i] as f64);
                if let Ok(date) = row.date.parse::<jiff::civil::Date>()
                    && let Ok(z) = date.to_zoned(jiff::tz::TimeZone::UTC)
                {
                    latest_cohort.value(&labels, z.timestamp().as_second() as f64);
                }
                let (users, kept) =
                    matured.take(TRAILING_COHORTS).fold((0u64, 0u64), |(u, k), r| (u + r.users, k + r.retained[i]));
                if users > 0 {
                    trailing_users.value(&labels, users as f64);
                    trailing_retained.value(&labels, kept as f64);
                }
            }
        }
    }
    out.extend(
        [
            cohort_users,
            retained,
            ratio,
            mature,
            latest,
            latest_cohort,
            latest_users,
            latest_retained,
            trailing_users,
            trailing_retained,
        ]
        .map(|f| f.mf),
    );

    let mut new_users = Family::new("new_users");
    let mut active = Family::new("active_users");
    for row in &f.activity {
        new_users.value(&[&row.date], row.new_users as f64);
        active.value(&["1d", &row.date], row.dau as f64);
        active.value(&["7d", &row.date], row.wau as f64);
        active.value(&["30d", &row.date], row.mau as f64);
    }
    out.extend([new_users, active].map(|f| f.mf));

    let mut users = Family::new("funnel_users");
    let mut conversion = Family::new("funnel_conversion_ratio");
    let mut conversions = Family::new("funnel_conversions_total");
    let mut ttc = Family::new("funnel_time_to_convert_seconds");
    for table in &f.funnels {
        let steps: Vec<String> = (1..=table.steps.len()).map(|k| k.to_string()).collect();
        for row in &table.entries {
            let entered = row.users.first().copied().unwrap_or(0);
            for (k, name) in table.steps.iter().enumerate() {
                let labels = [table.name.as_str(), steps[k].as_str(), name.as_str(), row.date.as_str()];
                users.value(&labels, row.users[k] as f64);
                if entered > 0 {
                    conversion.value(&labels, row.users[k] as f64 / entered as f64);
                }
            }
        }
        for (k, step) in steps.iter().enumerate() {
            conversions.value(&[&table.name, step], table.conversions_total[k] as f64);
            if k > 0 {
                let t = &table.time_to_convert[k];
                ttc.summary(&[&table.name, step], &t.quantiles, t.sum_seconds, t.count);
            }
        }
    }
    out.extend([users, conversion, conversions, ttc].map(|f| f.mf));

    let mut ingested = Family::new("events_ingested_total");
    ingested.value(&[], f.counters.ingested as f64);
    let mut rejected = Family::new("events_rejected_total");
    for reason in Reject::ALL {
        rejected.value(&[reason.as_str()], f.counters.rejected[reason.index()] as f64);
    }
    let mut untracked = Family::new("events_untracked_total");
    untracked.value(&[], f.counters.untracked as f64);
    let mut refused = Family::new("funnel_events_refused_total");
    refused.value(&[], f.funnel_refused as f64);
    let mut capped = Family::new("funnel_events_capped_total");
    capped.value(&[], f.funnel_capped as f64);
    let mut fill = Family::new("funnel_store_fill_ratio");
    fill.value(&[], f.funnel_store_fill);
    out.extend([ingested, rejected, untracked, refused, capped, fill].map(|f| f.mf));

    if let Some(w) = f.watermark_ms {
        let mut g = Family::new("watermark_timestamp_seconds");
        g.value(&[], w as f64 / 1000.0);
        out.push(g.mf);
    }
    if let Some(m) = f.max_event_ms {
        let mut g = Family::new("max_event_timestamp_seconds");
        g.value(&[], m as f64 / 1000.0);
        out.push(g.mf);
    }
    for (name, v) in
        [("tracked_users", f.tracked_users), ("max_tracked_users", max_users), ("state_bytes", f.state_bytes)]
    {
        let mut g = Family::new(name);
        g.value(&[], v as f64);
        out.push(g.mf);
    }
    out
}

/// Metric families of the Kafka source's status.
pub fn source_families(s: &crate::export::SourceStatus) -> Vec<MetricFamily> {
    let mut lag = Family::new("consumer_lag_messages");
    let mut watermark = Family::new("partition_watermark_timestamp_seconds");
    let mut refused = Family::new("snapshot_refused");
    for p in &s.partitions {
        let partition = p.partition.to_string();
        if let Some(l) = p.lag {
            lag.value(&[&p.topic, &partition], l as f64);
        }
        if let Some(w) = p.watermark_ms {
            watermark.value(&[&p.topic, &partition], w as f64 / 1000.0);
        }
        if let Some(reason) = p.snapshot_error {
            refused.value(&[&p.topic, &partition, reason], 1.0);
        }
    }
    let mut out: Vec<MetricFamily> = [lag, watermark, refused].map(|f| f.mf).into();
    let mut owned = Family::new("owned_partitions");
    owned.value(&[], s.partitions.len() as f64);
    let mut up = Family::new("kafka_up");
    up.value(&[], f64::from(u8::from(s.brokers_up)));
    let mut failures = Family::new("checkpoint_failures_total");
    failures.value(&[], s.snapshot_failures as f64);
    out.extend([owned, up, failures].map(|f| f.mf));
    for (name, v) in [
        ("last_checkpoint_timestamp_seconds", s.last_snapshot_seconds),
        ("checkpoint_duration_seconds", s.last_snapshot_duration_seconds),
        ("checkpoint_bytes", s.last_snapshot_bytes.map(|b| b as f64)),
    ] {
        if let Some(v) = v {
            let mut g = Family::new(name);
            g.value(&[], v);
            out.push(g.mf);
        }
    }
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
            out.extend(source_families(source));
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
        for (name, _, _, _) in FAMILIES {
            assert!(text.contains(&format!("# TYPE cohortflow_{name} ")), "{name} missing");
        }
    }
}
