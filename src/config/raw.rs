//! The configuration as written: serde structs that refuse unknown keys,
//! with the defaults of every key left out.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::export::http::Limits as HttpLimits;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    /// IANA time zone in which business days are counted.
    #[serde(default = "default_timezone")]
    pub(super) timezone: String,
    /// The first day of a calendar week: "monday" … "sunday".
    #[serde(default = "default_week_start")]
    pub(super) week_start: String,
    /// The windows, in days, of the stickiness figures.
    #[serde(default = "default_stickiness_windows")]
    pub(super) stickiness_windows: Vec<u32>,
    /// Where snapshots live (used by `run`).
    #[serde(default = "default_state_dir")]
    pub(super) state_dir: PathBuf,
    /// How far behind the newest event time the watermark trails.
    #[serde(default = "default_lateness")]
    pub(super) allowed_lateness: String,
    /// How many days of state are kept behind the watermark.
    #[serde(default = "default_history_days")]
    pub(super) history_days: u32,
    /// How far ahead of the wall clock an event may be.
    #[serde(default = "default_future_skew")]
    pub(super) max_future_skew: String,
    /// How many business days of dated series are exported.
    #[serde(default = "default_export_days")]
    pub(super) export_days: u32,
    /// The most users remembered; beyond it new users are not tracked.
    #[serde(default = "default_max_users")]
    pub(super) max_users: u64,
    /// The most funnel events kept per user; past it, a user's funnel
    /// events are left out of the funnels.
    #[serde(default = "default_max_funnel_events_per_user")]
    pub(super) max_funnel_events_per_user: u64,
    /// The longest user id accepted, in bytes; longer ones are rejected.
    #[serde(default = "default_max_user_id_bytes")]
    pub(super) max_user_id_bytes: u64,
    /// Use the Kafka message timestamp when an event has no `ts` field.
    #[serde(default)]
    pub(super) use_message_timestamp: bool,
    /// How often the state of each partition is snapshotted.
    #[serde(default = "default_snapshot_interval")]
    pub(super) snapshot_interval: String,
    /// How long shutdown (final snapshot and commit) may take.
    #[serde(default = "default_shutdown_timeout")]
    pub(super) shutdown_timeout: String,
    #[serde(default)]
    pub(super) fields: RawFields,
    #[serde(default)]
    pub(super) http: RawHttp,
    #[serde(default)]
    pub(super) log: RawLog,
    #[serde(default)]
    pub(super) kafka: Option<RawKafka>,
    #[serde(default)]
    pub(super) retention: Vec<RawRetention>,
    #[serde(default)]
    pub(super) funnel: Vec<RawFunnel>,
    #[serde(default)]
    pub(super) trend: Vec<RawTrend>,
    #[serde(default)]
    pub(super) revenue: Option<RawRevenue>,
    #[serde(default)]
    pub(super) breakdown: Vec<RawBreakdown>,
    /// The breakdowns of new and active users.
    #[serde(default)]
    pub(super) activity_breakdowns: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBreakdown {
    pub(super) name: String,
    pub(super) prop: String,
    pub(super) values: Vec<String>,
}

pub(super) fn default_timezone() -> String {
    "UTC".into()
}
pub(super) fn default_week_start() -> String {
    "monday".into()
}
pub(super) fn default_stickiness_windows() -> Vec<u32> {
    vec![7]
}
pub(super) fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/cohortflow")
}
pub(super) fn default_lateness() -> String {
    "10m".into()
}
pub(super) fn default_history_days() -> u32 {
    35
}
pub(super) fn default_future_skew() -> String {
    "5m".into()
}
pub(super) fn default_export_days() -> u32 {
    31
}
pub(super) fn default_snapshot_interval() -> String {
    "30s".into()
}
pub(super) fn default_shutdown_timeout() -> String {
    "30s".into()
}
pub(super) fn default_max_users() -> u64 {
    50_000_000
}
pub(super) fn default_max_user_id_bytes() -> u64 {
    crate::event::DEFAULT_MAX_USER_ID_BYTES as u64
}
pub(super) fn default_max_funnel_events_per_user() -> u64 {
    10_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFields {
    #[serde(default = "d_user_id")]
    pub(super) user_id: String,
    #[serde(default = "d_event")]
    pub(super) event: String,
    #[serde(default = "d_ts")]
    pub(super) ts: String,
    #[serde(default = "d_props")]
    pub(super) props: String,
}
pub(super) fn d_user_id() -> String {
    "user_id".into()
}
pub(super) fn d_event() -> String {
    "event".into()
}
pub(super) fn d_ts() -> String {
    "ts".into()
}
pub(super) fn d_props() -> String {
    "props".into()
}
impl Default for RawFields {
    fn default() -> Self {
        RawFields { user_id: d_user_id(), event: d_event(), ts: d_ts(), props: d_props() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    #[serde(default = "default_listen")]
    pub(super) listen: String,
    /// Connections open at once; the last eighth is kept for probes.
    #[serde(default = "default_max_connections")]
    pub(super) max_connections: u64,
    /// How long a client may take to send a request's headers.
    #[serde(default = "default_header_read_timeout")]
    pub(super) header_read_timeout: String,
}
pub(super) fn default_max_connections() -> u64 {
    HttpLimits::default().max_connections as u64
}
pub(super) fn default_header_read_timeout() -> String {
    "10s".into()
}
pub(super) fn default_listen() -> String {
    "127.0.0.1:9464".into()
}
impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            listen: default_listen(),
            max_connections: default_max_connections(),
            header_read_timeout: default_header_read_timeout(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    #[serde(default = "default_log_format")]
    pub(super) format: String,
    #[serde(default = "default_log_level")]
    pub(super) level: String,
}
pub(super) fn default_log_format() -> String {
    "human".into()
}
pub(super) fn default_log_level() -> String {
    "info".into()
}
impl Default for RawLog {
    fn default() -> Self {
        RawLog { format: default_log_format(), level: default_log_level() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKafka {
    #[serde(default = "default_brokers")]
    pub(super) brokers: String,
    pub(super) topics: Vec<String>,
    #[serde(default = "default_group")]
    pub(super) group_id: String,
    #[serde(default)]
    pub(super) dead_letter_topic: Option<String>,
    /// Static membership: `group.instance.id`, e.g. the pod name.
    #[serde(default)]
    pub(super) instance_id: Option<String>,
    /// Threads applying messages to partitions' shards.
    #[serde(default)]
    pub(super) workers: Option<usize>,
    #[serde(default)]
    pub(super) options: BTreeMap<String, toml::Value>,
}
pub(super) fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}
pub(super) fn default_group() -> String {
    "cohortflow".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetention {
    pub(super) name: String,
    #[serde(default = "star")]
    pub(super) cohort_event: String,
    #[serde(default = "star")]
    pub(super) return_event: String,
    /// Periods N and brackets (`7`, `"8-14"`) of a `day` definition.
    pub(super) days: Option<Vec<toml::Value>>,
    /// The same for `week` and `month` definitions.
    pub(super) periods: Option<Vec<toml::Value>>,
    #[serde(default = "default_granularity")]
    pub(super) granularity: String,
    #[serde(default = "default_mode")]
    pub(super) mode: String,
    #[serde(default)]
    pub(super) revenue: bool,
    #[serde(default)]
    pub(super) breakdowns: Vec<String>,
}
pub(super) fn star() -> String {
    "*".into()
}
pub(super) fn default_days() -> Vec<toml::Value> {
    [1, 3, 7, 14, 30].map(toml::Value::Integer).to_vec()
}
pub(super) fn default_granularity() -> String {
    "day".into()
}
pub(super) fn default_mode() -> String {
    "on".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFunnel {
    pub(super) name: String,
    pub(super) window: String,
    #[serde(default = "default_funnel_mode")]
    pub(super) mode: String,
    pub(super) steps: Vec<RawStep>,
    #[serde(default)]
    pub(super) breakdowns: Vec<String>,
}
pub(super) fn default_funnel_mode() -> String {
    "default".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRevenue {
    pub(super) events: Vec<String>,
    #[serde(default = "default_amount_prop")]
    pub(super) amount_prop: String,
    #[serde(default = "default_scale")]
    pub(super) scale: i64,
}
pub(super) fn default_amount_prop() -> String {
    "amount".into()
}
pub(super) fn default_scale() -> i64 {
    2
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrend {
    pub(super) name: String,
    /// An event name, or `{ event, where }` as a funnel step.
    pub(super) event: RawStep,
    #[serde(default)]
    pub(super) breakdowns: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawStep {
    Name(String),
    Full(RawStepFull),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStepFull {
    pub(super) event: String,
    #[serde(default, rename = "where")]
    pub(super) filter: BTreeMap<String, toml::Value>,
}
