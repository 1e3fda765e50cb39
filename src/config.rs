//! Configuration: the TOML file and `COHORTFLOW_*` environment overrides,
//! read into raw serde structs (unknown keys refused) and then validated
//! into a [`Config`] that can no longer be wrong. Every error names the key.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use jiff::SignedDuration;
use jiff::tz::TimeZone;
use serde::Deserialize;

use crate::event::FieldNames;
use crate::export::http::Limits as HttpLimits;

/// Prefix of the environment variables that override config keys:
/// `COHORTFLOW_HISTORY_DAYS=40`, `COHORTFLOW_HTTP__LISTEN=0.0.0.0:9464`.
pub const ENV_PREFIX: &str = "COHORTFLOW_";

/// The most funnel steps (ClickHouse's `windowFunnel` allows 32 too).
pub const MAX_STEPS: usize = 32;
/// The most shard worker threads `kafka.workers` may ask for.
pub const MAX_WORKERS: usize = 256;
/// The longest `max_user_id_bytes` may allow.
pub const MAX_USER_ID_BYTES: u64 = 65_536;
/// The most `[[retention]]` definitions: the engine classifies each event
/// name once into a 64-bit mask of the definitions it is a cohort or a
/// return event of, one bit a definition.
pub const MAX_RETENTION: usize = 64;

/// A configuration error; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an override could not be read or has the wrong shape.
    #[error("{0}")]
    Load(String),
    /// A value that parses but is impossible.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// The dotted key, e.g. `funnel[0].window`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.into() }
}

// ---------------------------------------------------------------------------
// Raw shape, as written in the file.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// IANA time zone in which business days are counted.
    #[serde(default = "default_timezone")]
    timezone: String,
    /// Where snapshots live (used by `run`).
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    /// How far behind the newest event time the watermark trails.
    #[serde(default = "default_lateness")]
    allowed_lateness: String,
    /// How many days of state are kept behind the watermark.
    #[serde(default = "default_history_days")]
    history_days: u32,
    /// How far ahead of the wall clock an event may be.
    #[serde(default = "default_future_skew")]
    max_future_skew: String,
    /// How many business days of dated series are exported.
    #[serde(default = "default_export_days")]
    export_days: u32,
    /// The most users remembered; beyond it new users are not tracked.
    #[serde(default = "default_max_users")]
    max_users: u64,
    /// The most funnel events kept per user; past it, a user's funnel
    /// events are left out of the funnels.
    #[serde(default = "default_max_funnel_events_per_user")]
    max_funnel_events_per_user: u64,
    /// The longest user id accepted, in bytes; longer ones are rejected.
    #[serde(default = "default_max_user_id_bytes")]
    max_user_id_bytes: u64,
    /// Use the Kafka message timestamp when an event has no `ts` field.
    #[serde(default)]
    use_message_timestamp: bool,
    /// How often the state of each partition is snapshotted.
    #[serde(default = "default_snapshot_interval")]
    snapshot_interval: String,
    /// How long shutdown (final snapshot and commit) may take.
    #[serde(default = "default_shutdown_timeout")]
    shutdown_timeout: String,
    #[serde(default)]
    fields: RawFields,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    kafka: Option<RawKafka>,
    #[serde(default)]
    retention: Vec<RawRetention>,
    #[serde(default)]
    funnel: Vec<RawFunnel>,
}

fn default_timezone() -> String {
    "UTC".into()
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/cohortflow")
}
fn default_lateness() -> String {
    "10m".into()
}
fn default_history_days() -> u32 {
    35
}
fn default_future_skew() -> String {
    "5m".into()
}
fn default_export_days() -> u32 {
    31
}
fn default_snapshot_interval() -> String {
    "30s".into()
}
fn default_shutdown_timeout() -> String {
    "30s".into()
}
fn default_max_users() -> u64 {
    50_000_000
}
fn default_max_user_id_bytes() -> u64 {
    crate::event::DEFAULT_MAX_USER_ID_BYTES as u64
}
fn default_max_funnel_events_per_user() -> u64 {
    10_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFields {
    #[serde(default = "d_user_id")]
    user_id: String,
    #[serde(default = "d_event")]
    event: String,
    #[serde(default = "d_ts")]
    ts: String,
    #[serde(default = "d_props")]
    props: String,
}
fn d_user_id() -> String {
    "user_id".into()
}
fn d_event() -> String {
    "event".into()
}
fn d_ts() -> String {
    "ts".into()
}
fn d_props() -> String {
    "props".into()
}
impl Default for RawFields {
    fn default() -> Self {
        RawFields { user_id: d_user_id(), event: d_event(), ts: d_ts(), props: d_props() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    #[serde(default = "default_listen")]
    listen: String,
    /// Connections open at once; the last eighth is kept for probes.
    #[serde(default = "default_max_connections")]
    max_connections: u64,
    /// How long a client may take to send a request's headers.
    #[serde(default = "default_header_read_timeout")]
    header_read_timeout: String,
}
fn default_max_connections() -> u64 {
    HttpLimits::default().max_connections as u64
}
fn default_header_read_timeout() -> String {
    "10s".into()
}
fn default_listen() -> String {
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
struct RawLog {
    #[serde(default = "default_log_format")]
    format: String,
    #[serde(default = "default_log_level")]
    level: String,
}
fn default_log_format() -> String {
    "human".into()
}
fn default_log_level() -> String {
    "info".into()
}
impl Default for RawLog {
    fn default() -> Self {
        RawLog { format: default_log_format(), level: default_log_level() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKafka {
    #[serde(default = "default_brokers")]
    brokers: String,
    topics: Vec<String>,
    #[serde(default = "default_group")]
    group_id: String,
    #[serde(default)]
    dead_letter_topic: Option<String>,
    /// Static membership: `group.instance.id`, e.g. the pod name.
    #[serde(default)]
    instance_id: Option<String>,
    /// Threads applying messages to partitions' shards.
    #[serde(default)]
    workers: Option<usize>,
    #[serde(default)]
    options: BTreeMap<String, toml::Value>,
}
fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}
fn default_group() -> String {
    "cohortflow".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    name: String,
    #[serde(default = "star")]
    cohort_event: String,
    #[serde(default = "star")]
    return_event: String,
    #[serde(default = "default_days")]
    days: Vec<u32>,
    #[serde(default = "default_mode")]
    mode: String,
}
fn star() -> String {
    "*".into()
}
fn default_days() -> Vec<u32> {
    vec![1, 3, 7, 14, 30]
}
fn default_mode() -> String {
    "on".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFunnel {
    name: String,
    window: String,
    #[serde(default = "default_funnel_mode")]
    mode: String,
    steps: Vec<RawStep>,
}
fn default_funnel_mode() -> String {
    "default".into()
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawStep {
    Name(String),
    Full(RawStepFull),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStepFull {
    event: String,
    #[serde(default, rename = "where")]
    filter: BTreeMap<String, toml::Value>,
}

// ---------------------------------------------------------------------------
// Validated shape.

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// What the engine needs.
    pub engine: EngineConfig,
    /// Where `/metrics` and the JSON API are served.
    pub listen: SocketAddr,
    /// What one client can hold of the HTTP listener.
    pub http_limits: HttpLimits,
    /// Where snapshots are written.
    pub state_dir: PathBuf,
    /// How often snapshots are taken.
    pub snapshot_interval_ms: i64,
    /// Deadline for the final snapshot and commit on SIGTERM.
    pub shutdown_timeout_ms: i64,
    /// Log output format.
    pub log_json: bool,
    /// Log filter (tracing `EnvFilter` syntax).
    pub log_level: String,
    /// The Kafka source, when configured.
    pub kafka: Option<KafkaConfig>,
    /// `COHORTFLOW_*` variables that name no config key and were left
    /// out, to be logged once.
    pub ignored_env: Vec<String>,
}

/// Kafka settings (used by `run`).
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Bootstrap brokers.
    pub brokers: String,
    /// Topics to consume.
    pub topics: Vec<String>,
    /// Consumer group id.
    pub group_id: String,
    /// Where rejected messages are forwarded, if anywhere.
    pub dead_letter_topic: Option<String>,
    /// Passed to librdkafka unchanged.
    pub options: BTreeMap<String, String>,
    /// Threads applying messages to partitions' shards (a partition is
    /// always on the same one).
    pub workers: usize,
}

/// Everything the engine's definitions and time semantics depend on.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Names of the event fields.
    pub fields: FieldNames,
    /// Use the Kafka message timestamp when `ts` is absent.
    pub use_message_timestamp: bool,
    /// The business-day time zone.
    pub timezone: TimeZone,
    /// Its IANA name, for display.
    pub timezone_name: String,
    /// Watermark = newest event time minus this.
    pub allowed_lateness_ms: i64,
    /// Events older than watermark minus this many days are too late.
    pub history_days: u32,
    /// Events further ahead of the wall clock are too early.
    pub max_future_skew_ms: i64,
    /// Dated series exported, counted back from the watermark's day.
    pub export_days: u32,
    /// Cap on remembered users.
    pub max_users: u64,
    /// Cap on the funnel events one user keeps in a funnel store: each of
    /// a user's funnel events costs a pass over the ones kept, so without
    /// it one synthetic user's cost grows with the square of their rate.
    pub max_funnel_events_per_user: u32,
    /// Retention definitions.
    pub retention: Vec<RetentionDef>,
    /// Funnel definitions.
    pub funnels: Vec<FunnelDef>,
}

/// An event selector: a name, or any event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventMatch {
    /// Any event (`"*"`).
    Any,
    /// One event name, exactly.
    Named(String),
}

impl EventMatch {
    fn parse(s: &str) -> Self {
        if s == "*" { EventMatch::Any } else { EventMatch::Named(s.to_owned()) }
    }

    /// Whether an event of this name matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            EventMatch::Any => true,
            EventMatch::Named(n) => n == name,
        }
    }

    /// The text form (`*` or the name).
    pub fn as_str(&self) -> &str {
        match self {
            EventMatch::Any => "*",
            EventMatch::Named(n) => n,
        }
    }
}

/// How a return on day N is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionMode {
    /// A return event on business day D+N exactly.
    On,
    /// A return event on any business day ≥ D+N (unbounded retention).
    OnOrAfter,
}

impl RetentionMode {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RetentionMode::On => "on",
            RetentionMode::OnOrAfter => "on_or_after",
        }
    }
}

/// One named retention definition.
#[derive(Debug, Clone)]
pub struct RetentionDef {
    /// Label value `retention`.
    pub name: String,
    /// The event whose first occurrence sets the cohort day.
    pub cohort_event: EventMatch,
    /// The event that counts as a return.
    pub return_event: EventMatch,
    /// The N of each DN figure, ascending, distinct, ≥ 1.
    pub days: Vec<u32>,
    /// How returns are counted.
    pub mode: RetentionMode,
}

/// How a funnel chains its steps (ClickHouse `windowFunnel` modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FunnelMode {
    /// Steps at equal timestamps chain; one event may fill several steps.
    Default,
    /// One event fills at most one step.
    StrictOnce,
    /// Each step strictly later than the one before.
    StrictIncrease,
}

impl FunnelMode {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FunnelMode::Default => "default",
            FunnelMode::StrictOnce => "strict_once",
            FunnelMode::StrictIncrease => "strict_increase",
        }
    }
}

/// A property value a step filter compares with.
#[derive(Debug, Clone, PartialEq)]
pub enum FilterValue {
    /// Equal to a string prop.
    Str(String),
    /// Equal to a numeric prop.
    Num(f64),
    /// Equal to a boolean prop.
    Bool(bool),
}

/// One funnel step.
#[derive(Debug, Clone)]
pub struct StepDef {
    /// The event that fills it.
    pub event: EventMatch,
    /// Property equalities that must all hold.
    pub filter: Vec<(String, FilterValue)>,
}

impl StepDef {
    /// The label value `step_name`.
    pub fn label(&self) -> &str {
        self.event.as_str()
    }
}

/// One named funnel.
#[derive(Debug, Clone)]
pub struct FunnelDef {
    /// Label value `funnel`.
    pub name: String,
    /// Conversion window, milliseconds, end included.
    pub window_ms: i64,
    /// Chaining mode.
    pub mode: FunnelMode,
    /// Ordered steps (1..=32).
    pub steps: Vec<StepDef>,
}

impl Config {
    /// Reads `path` (if any) with environment overrides and validates it.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let vars = Env::prefixed(ENV_PREFIX).iter().map(|(key, value)| (key.into_string(), value)).collect();
        Self::load_with(path, vars)
    }

    /// Reads `path` (if any) with the overrides `vars` (names without the
    /// prefix, values as set) and validates it.
    ///
    /// A variable that names no key is left out, and said in
    /// [`Config::ignored_env`]: platforms set variables of their own under
    /// the same prefix (Kubernetes gives every pod `COHORTFLOW_PORT` and
    /// `COHORTFLOW_SERVICE_HOST` when a Service is named cohortflow). A
    /// string key takes the variable's text as it is (`12345`, `007`); any
    /// other key takes it read as TOML reads a value.
    pub fn load_with(path: Option<&Path>, vars: Vec<(String, String)>) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError::Load(format!("config file {} does not exist", path.display())));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let mut ignored = Vec::new();
        for (name, text) in vars {
            let var = EnvVar::new(&name, &text);
            // The variable alone: whether it names a key, and of what type.
            match Figment::from(&var).extract::<RawConfig>() {
                Err(e) if e.clone().into_iter().any(|e| matches!(e.kind, figment::error::Kind::UnknownField(..))) => {
                    ignored.push(var.name);
                }
                Err(e)
                    if e.clone().into_iter().any(|e| {
                        matches!(&e.kind, figment::error::Kind::InvalidType(_, expected) if expected.contains("string"))
                    }) =>
                {
                    figment = figment.merge(var.into_text(&text));
                }
                _ => figment = figment.merge(var),
            }
        }
        let mut config = Self::from_figment(figment)?;
        config.ignored_env = ignored;
        Ok(config)
    }

    /// Parses TOML text without environment overrides (tests, `check-config` of a string).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(text)))
    }

    fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
        let raw: RawConfig = figment.extract().map_err(|e| {
            // figment prefixes every key with its profile; users never see profiles.
            let text = e.to_string().replace("key \"default.", "key \"");
            ConfigError::Load(text)
        })?;
        raw.validate()
    }
}

/// One `COHORTFLOW_*` variable as a source of config values.
struct EnvVar {
    /// The variable's name, as users set it.
    name: String,
    /// The dotted key it sets (`__` separates the levels).
    key: String,
    value: figment::value::Value,
}

impl EnvVar {
    fn new(name: &str, text: &str) -> Self {
        let key = name.to_ascii_lowercase().replace("__", ".");
        // Infallible: a text that reads as nothing else is a string.
        let value = text.parse().unwrap_or_else(|_| figment::value::Value::from(text.to_owned()));
        EnvVar { name: format!("{ENV_PREFIX}{}", name.to_ascii_uppercase()), key, value }
    }

    /// The same variable, its value taken as text.
    fn into_text(self, text: &str) -> Self {
        EnvVar { value: figment::value::Value::from(text.to_owned()), ..self }
    }
}

impl figment::Provider for EnvVar {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(format!("environment variable {}", self.name))
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        match figment::util::nest(&self.key, self.value.clone()) {
            figment::value::Value::Dict(_, dict) => Ok(figment::Profile::Default.collect(dict)),
            _ => Err(figment::Error::from(format!("{} names no config key", self.name))),
        }
    }
}

fn duration_ms(key: &str, text: &str) -> Result<i64, ConfigError> {
    // Days are taken as 24 hours: windows and lateness are spans of time.
    let d: SignedDuration = text
        .parse::<jiff::Span>()
        .and_then(|span| span.to_duration(jiff::SpanRelativeTo::days_are_24_hours()))
        .map_err(|e| invalid(key, format!("`{text}` is not a duration such as \"10m\", \"1h\" or \"1d\": {e}")))?;
    if d.is_negative() {
        return Err(invalid(key, "must not be negative"));
    }
    i64::try_from(d.as_millis()).map_err(|_| invalid(key, "is too large"))
}

const DAY_MS: i64 = 86_400_000;

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        let timezone = TimeZone::get(&self.timezone)
            .map_err(|e| invalid("timezone", format!("`{}` is not a known IANA time zone: {e}", self.timezone)))?;
        let allowed_lateness_ms = duration_ms("allowed_lateness", &self.allowed_lateness)?;
        if allowed_lateness_ms > DAY_MS {
            return Err(invalid("allowed_lateness", "must be at most 1d"));
        }
        let max_future_skew_ms = duration_ms("max_future_skew", &self.max_future_skew)?;
        let snapshot_interval_ms = duration_ms("snapshot_interval", &self.snapshot_interval)?;
        if snapshot_interval_ms < 100 {
            return Err(invalid("snapshot_interval", "must be at least 100ms"));
        }
        let shutdown_timeout_ms = duration_ms("shutdown_timeout", &self.shutdown_timeout)?;
        // Per-user activity is a bitmap of at most 128 days: the horizon, a
        // 30-day MAU window behind it and the lateness must fit (see
        // engine::days::DaySets).
        if !(2..=90).contains(&self.history_days) {
            return Err(invalid("history_days", "must be between 2 and 90"));
        }
        if !(1..=400).contains(&self.export_days) {
            return Err(invalid("export_days", "must be between 1 and 400"));
        }
        let most_users = crate::engine::store::MAX_USERS as u64;
        if !(1..=most_users).contains(&self.max_users) {
            // A shard's funnel stores index users in 31 bits.
            return Err(invalid("max_users", format!("must be between 1 and {most_users} (2^31)")));
        }
        let max_funnel_events_per_user = u32::try_from(self.max_funnel_events_per_user)
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| invalid("max_funnel_events_per_user", format!("must be between 1 and {}", u32::MAX)))?;
        let listen: SocketAddr = self.http.listen.parse().map_err(|e| {
            invalid("http.listen", format!("`{}` is not an address such as 127.0.0.1:9464: {e}", self.http.listen))
        })?;
        let most = HttpLimits::MOST_CONNECTIONS as u64;
        if !(2..=most).contains(&self.http.max_connections) {
            return Err(invalid("http.max_connections", format!("must be between 2 and {most}")));
        }
        let header_read_timeout_ms = duration_ms("http.header_read_timeout", &self.http.header_read_timeout)?;
        if !(100..=600_000).contains(&header_read_timeout_ms) {
            return Err(invalid("http.header_read_timeout", "must be between 100ms and 10m"));
        }
        let http_limits = HttpLimits {
            max_connections: self.http.max_connections as usize,
            header_read_timeout: std::time::Duration::from_millis(header_read_timeout_ms as u64),
        };
        let log_json = match self.log.format.as_str() {
            "human" => false,
            "json" => true,
            other => {
                return Err(invalid("log.format", format!("`{other}` is not one of \"human\", \"json\"")));
            }
        };
        // Ids are kept for every tracked user: their bound is what makes
        // max_users a bound on memory.
        if !(1..=MAX_USER_ID_BYTES).contains(&self.max_user_id_bytes) {
            return Err(invalid("max_user_id_bytes", format!("must be between 1 and {MAX_USER_ID_BYTES}")));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid(
                "log.level",
                format!(
                    "`{}` is not a level such as \"info\" or a filter such as \"info,cohortflow=debug\": {e}",
                    self.log.level
                ),
            ));
        }
        let fields = FieldNames {
            max_user_id_bytes: self.max_user_id_bytes as usize,
            user_id: self.fields.user_id,
            event: self.fields.event,
            ts: self.fields.ts,
            props: self.fields.props,
        };
        for (key, v) in [
            ("fields.user_id", &fields.user_id),
            ("fields.event", &fields.event),
            ("fields.ts", &fields.ts),
            ("fields.props", &fields.props),
        ] {
            if v.is_empty() {
                return Err(invalid(key, "must not be empty"));
            }
        }
        let distinct: HashSet<&String> =
            [&fields.user_id, &fields.event, &fields.ts, &fields.props].into_iter().collect();
        if distinct.len() != 4 {
            return Err(invalid("fields", "the four field names must differ"));
        }

        let mut retention = Vec::new();
        let mut names = HashSet::new();
        let raw_retention = if self.retention.is_empty() {
            vec![RawRetention {
                name: "new_users".into(),
                cohort_event: star(),
                return_event: star(),
                days: default_days(),
                mode: default_mode(),
            }]
        } else {
            self.retention
        };
        if raw_retention.len() > MAX_RETENTION {
            return Err(invalid(
                "retention",
                format!("{} definitions; at most {MAX_RETENTION} are supported", raw_retention.len()),
            ));
        }
        for (i, r) in raw_retention.into_iter().enumerate() {
            let key = |k: &str| format!("retention[{i}].{k}");
            if r.name.is_empty() {
                return Err(invalid(key("name"), "must not be empty"));
            }
            if !names.insert(r.name.clone()) {
                return Err(invalid(key("name"), format!("`{}` is defined twice", r.name)));
            }
            for (k, v) in [("cohort_event", &r.cohort_event), ("return_event", &r.return_event)] {
                if v.is_empty() {
                    return Err(invalid(key(k), "must not be empty (use \"*\" for any event)"));
                }
            }
            let mode = match r.mode.as_str() {
                "on" => RetentionMode::On,
                "on_or_after" => RetentionMode::OnOrAfter,
                "rolling_24h" => {
                    return Err(invalid(
                        key("mode"),
                        "\"rolling_24h\" is not supported yet; use \"on\" or \"on_or_after\"",
                    ));
                }
                other => {
                    return Err(invalid(key("mode"), format!("`{other}` is not one of \"on\", \"on_or_after\"")));
                }
            };
            let mut days = r.days.clone();
            days.sort_unstable();
            days.dedup();
            if days.is_empty() || days.len() != r.days.len() || days[0] == 0 {
                return Err(invalid(key("days"), "must be a non-empty list of distinct days ≥ 1"));
            }
            // A return on day N must still be in the history when the
            // cohort day leaves it: N + 2 days at most. Computed wide, so
            // that no day can wrap round (a day of 2^32 − 1 once did).
            let max = days[days.len() - 1];
            if u64::from(max) + 2 > u64::from(self.history_days) {
                return Err(invalid(
                    key("days"),
                    format!(
                        "day {max} needs history_days ≥ {} (history_days is {}, at most 90)",
                        u64::from(max) + 2,
                        self.history_days
                    ),
                ));
            }
            retention.push(RetentionDef {
                name: r.name,
                cohort_event: EventMatch::parse(&r.cohort_event),
                return_event: EventMatch::parse(&r.return_event),
                days,
                mode,
            });
        }

        let mut funnels = Vec::new();
        let mut names = HashSet::new();
        for (i, f) in self.funnel.into_iter().enumerate() {
            let key = |k: &str| format!("funnel[{i}].{k}");
            if f.name.is_empty() {
                return Err(invalid(key("name"), "must not be empty"));
            }
            if !names.insert(f.name.clone()) {
                return Err(invalid(key("name"), format!("`{}` is defined twice", f.name)));
            }
            let window_ms = duration_ms(&key("window"), &f.window)?;
            if window_ms == 0 || window_ms > 30 * DAY_MS {
                return Err(invalid(key("window"), "must be more than 0 and at most 30d"));
            }
            let mode = match f.mode.as_str() {
                "default" => FunnelMode::Default,
                "strict_once" => FunnelMode::StrictOnce,
                "strict_increase" => FunnelMode::StrictIncrease,
                other => {
                    return Err(invalid(
                        key("mode"),
                        format!("`{other}` is not one of \"default\", \"strict_once\", \"strict_increase\""),
                    ));
                }
            };
            if f.steps.is_empty() || f.steps.len() > MAX_STEPS {
                return Err(invalid(key("steps"), format!("must have 1 to {MAX_STEPS} steps")));
            }
            let mut steps = Vec::new();
            for (j, s) in f.steps.into_iter().enumerate() {
                let skey = format!("funnel[{i}].steps[{j}]");
                let (event, raw_filter) = match s {
                    RawStep::Name(n) => (n, BTreeMap::new()),
                    RawStep::Full(full) => (full.event, full.filter),
                };
                if event.is_empty() {
                    return Err(invalid(format!("{skey}.event"), "must not be empty"));
                }
                let mut filter = Vec::new();
                for (prop, value) in raw_filter {
                    let v = match value {
                        toml::Value::String(s) => FilterValue::Str(s),
                        toml::Value::Integer(n) => FilterValue::Num(n as f64),
                        // A NaN equals nothing: a step that could never match.
                        toml::Value::Float(x) if !x.is_finite() => {
                            return Err(invalid(format!("{skey}.where.{prop}"), "must be a finite number"));
                        }
                        toml::Value::Float(x) => FilterValue::Num(x),
                        toml::Value::Boolean(b) => FilterValue::Bool(b),
                        _ => {
                            return Err(invalid(
                                format!("{skey}.where.{prop}"),
                                "must be a string, a number or a boolean",
                            ));
                        }
                    };
                    filter.push((prop, v));
                }
                steps.push(StepDef { event: EventMatch::parse(&event), filter });
            }
            funnels.push(FunnelDef { name: f.name, window_ms, mode, steps });
        }

        let kafka = match self.kafka {
            None => None,
            Some(k) => {
                if k.topics.is_empty() || k.topics.iter().any(String::is_empty) {
                    return Err(invalid("kafka.topics", "must list at least one non-empty topic"));
                }
                if k.group_id.is_empty() {
                    return Err(invalid("kafka.group_id", "must not be empty"));
                }
                if k.brokers.is_empty() {
                    return Err(invalid("kafka.brokers", "must not be empty"));
                }
                let mut options = BTreeMap::new();
                for (name, v) in k.options {
                    let text = match v {
                        toml::Value::String(s) => s,
                        toml::Value::Integer(n) => n.to_string(),
                        toml::Value::Float(x) => x.to_string(),
                        toml::Value::Boolean(b) => b.to_string(),
                        _ => {
                            return Err(invalid(
                                format!("kafka.options.\"{name}\""),
                                "must be a string, a number or a boolean",
                            ));
                        }
                    };
                    options.insert(name, text);
                }
                if let Some(id) = k.instance_id.filter(|i| !i.is_empty()) {
                    options.insert("group.instance.id".into(), id);
                }
                let workers = match k.workers {
                    Some(0) => return Err(invalid("kafka.workers", "must be at least 1")),
                    Some(n) if n > MAX_WORKERS => {
                        return Err(invalid("kafka.workers", format!("must be at most {MAX_WORKERS}")));
                    }
                    Some(n) => n,
                    // One a core: partitions beyond that share them.
                    None => std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS)),
                };
                Some(KafkaConfig {
                    workers,
                    brokers: k.brokers,
                    topics: k.topics,
                    group_id: k.group_id,
                    dead_letter_topic: k.dead_letter_topic.filter(|t| !t.is_empty()),
                    options,
                })
            }
        };

        Ok(Config {
            engine: EngineConfig {
                fields,
                use_message_timestamp: self.use_message_timestamp,
                timezone,
                timezone_name: self.timezone,
                allowed_lateness_ms,
                history_days: self.history_days,
                max_future_skew_ms,
                export_days: self.export_days,
                max_users: self.max_users,
                max_funnel_events_per_user,
                retention,
                funnels,
            },
            listen,
            http_limits,
            state_dir: self.state_dir,
            snapshot_interval_ms,
            shutdown_timeout_ms,
            log_json,
            log_level: self.log.level,
            kafka,
            ignored_env: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match Config::from_toml_str(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_issue_example_works() {
        let c = Config::from_toml_str(
            r#"
            timezone = "UTC"
            [[retention]]
            name = "new_users"
            cohort_event = "*"
            return_event = "*"
            days = [1, 7, 30]
            [[funnel]]
            name = "checkout"
            window = "1h"
            steps = ["view", "add_to_cart", { event = "order", where = { channel = "ads" } }]
            [http]
            listen = "127.0.0.1:9464"
            "#,
        )
        .expect("valid");
        assert_eq!(c.engine.retention[0].days, vec![1, 7, 30]);
        assert_eq!(c.engine.funnels[0].window_ms, 3_600_000);
        assert_eq!(c.engine.funnels[0].steps[2].filter, vec![("channel".into(), FilterValue::Str("ads".into()))]);
        assert_eq!(c.engine.history_days, 35);
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err("colour = 1").contains("colour"), "{}", err("colour = 1"));
        assert!(err("[http]\nlisten = 5").contains("http.listen"));
        assert!(err("timezone = \"Mars/Olympus\"").contains("`timezone`"));
        assert!(err("[http]\nlisten = \"nowhere\"").contains("`http.listen`"));
        assert!(err("history_days = 1").contains("`history_days`"));
        assert!(err("max_users = 0").contains("`max_users`"));
        let e = err("max_users = 2147483649");
        assert!(e.contains("`max_users`") && e.contains("2147483648"), "{e}");
        assert!(err("max_funnel_events_per_user = 0").contains("`max_funnel_events_per_user`"));
        let e = err("max_funnel_events_per_user = 4294967296");
        assert!(e.contains("`max_funnel_events_per_user`") && e.contains("4294967295"), "{e}");
        assert!(err("allowed_lateness = \"soon\"").contains("`allowed_lateness`"));
        let e = err("[[retention]]\nname = \"r\"\ndays = [1, 40]");
        assert!(e.contains("`retention[0].days`"), "{e}");
        let e = err("[[retention]]\nname = \"r\"\nmode = \"sometimes\"");
        assert!(e.contains("`retention[0].mode`"), "{e}");
        let e = err("[[funnel]]\nname = \"f\"\nwindow = \"0s\"\nsteps = [\"a\"]");
        assert!(e.contains("`funnel[0].window`"), "{e}");
        let e = err("[[funnel]]\nname = \"f\"\nwindow = \"1h\"\nsteps = [{ event = \"a\", where = { x = [1] } }]");
        assert!(e.contains("`funnel[0].steps[0].where.x`"), "{e}");
        let e = err(
            "[[funnel]]\nname = \"f\"\nwindow = \"1h\"\nsteps = [\"a\"]\n[[funnel]]\nname = \"f\"\nwindow = \"1h\"\nsteps = [\"a\"]",
        );
        assert!(e.contains("`funnel[1].name`"), "{e}");
        let e = err("[kafka]\ntopics = []");
        assert!(e.contains("`kafka.topics`"), "{e}");
        let e = err("[kafka]\ntopics = [\"t\"]\nworkers = 0");
        assert!(e.contains("`kafka.workers`"), "{e}");
        let e = err("[log]\nlevel = \"!!!\"");
        assert!(e.contains("`log.level`"), "{e}");
        for x in ["nan", "inf", "-inf"] {
            let e = err(&format!(
                "[[funnel]]\nname = \"f\"\nwindow = \"1h\"\nsteps = [{{ event = \"a\", where = {{ x = {x} }} }}]"
            ));
            assert!(e.contains("`funnel[0].steps[0].where.x`"), "{e}");
        }
        let e = err("[http]\nmax_connections = 1");
        assert!(e.contains("`http.max_connections`"), "{e}");
        let e = err("[http]\nheader_read_timeout = \"0s\"");
        assert!(e.contains("`http.header_read_timeout`"), "{e}");
        let e = err("max_user_id_bytes = 0");
        assert!(e.contains("`max_user_id_bytes`"), "{e}");
    }

    #[test]
    fn bounds_are_checked_without_wrapping() {
        // max + 2 once wrapped round to 1 and passed.
        let e = err("[[retention]]\nname = \"r\"\ndays = [1, 4294967295]");
        assert!(e.contains("`retention[0].days`") && e.contains("4294967297"), "{e}");
        let e = err("history_days = 4294967295");
        assert!(e.contains("`history_days`"), "{e}");
        let many = |n: usize| (0..n).map(|i| format!("[[retention]]\nname = \"r{i}\"\n")).collect::<String>();
        assert!(Config::from_toml_str(&many(MAX_RETENTION)).is_ok());
        let e = err(&many(MAX_RETENTION + 1));
        assert!(e.contains("`retention`") && e.contains("at most 64"), "{e}");
    }

    #[test]
    fn variables_that_name_no_key_are_left_out_and_string_keys_take_text() {
        let vars = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let file = tempfile::NamedTempFile::new().expect("temp");
        std::fs::write(file.path(), "[kafka]\ntopics = [\"events\"]\n").expect("write");
        let c = Config::load_with(
            Some(file.path()),
            vars(&[
                ("PORT", "tcp://10.0.0.1:9464"),
                ("SERVICE_HOST", "10.0.0.1"),
                ("PORT_9464_TCP_PROTO", "tcp"),
                ("HTTP__NO_SUCH_KEY", "1"),
                ("KAFKA__GROUP_ID", "12345"),
                ("KAFKA__INSTANCE_ID", "007"),
                ("TIMEZONE", "Asia/Shanghai"),
                ("HISTORY_DAYS", "40"),
            ]),
        )
        .expect("valid");
        let kafka = c.kafka.as_ref().expect("kafka");
        assert_eq!(kafka.group_id, "12345");
        assert_eq!(kafka.options.get("group.instance.id").map(String::as_str), Some("007"));
        assert_eq!(c.engine.timezone_name, "Asia/Shanghai");
        assert_eq!(c.engine.history_days, 40);
        let mut ignored = c.ignored_env.clone();
        ignored.sort();
        assert_eq!(
            ignored,
            [
                "COHORTFLOW_HTTP__NO_SUCH_KEY",
                "COHORTFLOW_PORT",
                "COHORTFLOW_PORT_9464_TCP_PROTO",
                "COHORTFLOW_SERVICE_HOST"
            ]
        );
        // A key that exists still takes only values of its type.
        let e = Config::load_with(None, vars(&[("HISTORY_DAYS", "many")])).expect_err("refused").to_string();
        assert!(e.contains("history_days"), "{e}");
        let e = Config::load_with(None, vars(&[("HISTORY_DAYS", "4294967295")])).expect_err("refused").to_string();
        assert!(e.contains("`history_days`"), "{e}");
        // And an unknown key in the file is refused as before.
        std::fs::write(file.path(), "colour = 1\n").expect("write");
        assert!(Config::load_with(Some(file.path()), Vec::new()).is_err());
    }

    #[test]
    fn defaults_give_one_retention_definition() {
        let c = Config::from_toml_str("").expect("valid");
        assert_eq!(c.engine.retention.len(), 1);
        assert_eq!(c.engine.retention[0].days, vec![1, 3, 7, 14, 30]);
        assert!(c.engine.funnels.is_empty());
        assert_eq!(c.engine.max_funnel_events_per_user, 10_000);
    }
}
