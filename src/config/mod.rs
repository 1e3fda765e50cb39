//! Configuration: the TOML file and `COHORTFLOW_*` environment overrides,
//! read into raw serde structs (unknown keys refused) and then validated
//! into a [`Config`] that can no longer be wrong. Every error names the key.

mod env;
mod raw;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};

use crate::engine::def::EngineConfig;
use crate::export::http::Limits as HttpLimits;
use env::EnvVar;
use raw::RawConfig;

/// Prefix of the environment variables that override config keys:
/// `COHORTFLOW_HISTORY_DAYS=40`, `COHORTFLOW_HTTP__LISTEN=0.0.0.0:9464`.
pub const ENV_PREFIX: &str = "COHORTFLOW_";

/// The most shard worker threads `kafka.workers` may ask for.
pub const MAX_WORKERS: usize = 256;
/// The longest `max_user_id_bytes` may allow.
pub const MAX_USER_ID_BYTES: u64 = 65_536;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::def::{Bracket, Granularity, RetentionMode};
    use crate::engine::def::{FilterValue, MAX_RETENTION};

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
        assert_eq!(c.engine.retention[0].periods, [1, 7, 30].map(Bracket::one));
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
        let e = err("week_start = \"someday\"");
        assert!(e.contains("`week_start`") && e.contains("someday"), "{e}");
        assert!(err("stickiness_windows = [14]").contains("`stickiness_windows`"));
        assert!(err("stickiness_windows = [7, 7]").contains("`stickiness_windows`"));
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
    fn periods_brackets_and_granularities_are_read_or_refused_by_key() {
        let c = Config::from_toml_str(
            "history_days = 63\nweek_start = \"sunday\"\n[[retention]]\nname = \"w\"\ngranularity = \"week\"\nperiods = [4, 1, \"2-3\"]\n\
             [[retention]]\nname = \"r\"\nmode = \"rolling_24h\"\ndays = [1, \"2-7\", \" 8 - 14 \"]\n\
             [[retention]]\nname = \"m\"\ngranularity = \"month\"\nperiods = [1]\nmode = \"on_or_after\"",
        )
        .expect("config");
        let r = &c.engine.retention;
        assert_eq!(r[0].granularity, Granularity::Week);
        assert_eq!(r[0].periods, [Bracket::one(1), Bracket { from: 2, to: 3 }, Bracket::one(4)]);
        assert_eq!(r[1].mode, RetentionMode::Rolling24h);
        assert_eq!(r[1].periods.iter().map(ToString::to_string).collect::<Vec<_>>(), ["1", "2-7", "8-14"]);
        assert_eq!(r[2].granularity, Granularity::Month);

        let one = |body: &str| err(&format!("history_days = 40\n[[retention]]\nname = \"x\"\n{body}"));
        for (body, key, says) in [
            ("granularity = \"fortnight\"", "granularity", "fortnight"),
            ("granularity = \"week\"", "periods", "is needed"),
            ("granularity = \"week\"\nperiods = []", "periods", "non-empty"),
            ("granularity = \"week\"\nperiods = [5]", "periods", "history_days ≥ 43"),
            ("granularity = \"week\"\nperiods = [1]\ndays = [1]", "days", "use `periods`"),
            ("periods = [1]", "periods", "use `days`"),
            ("granularity = \"month\"\nperiods = [1]", "periods", "history_days ≥ 63"),
            ("days = [\"8-2\"]", "days", "ends before it starts"),
            ("days = [\"x\"]", "days", "\"x\" is not a period"),
            ("days = [\"2-\"]", "days", "is not a period"),
            ("days = [0]", "days", "0 is not a period"),
            ("days = [-3]", "days", "-3 is not a period"),
            ("days = [1.5]", "days", "is not a period"),
            ("days = [1, \"1-3\"]", "days", "overlap"),
            ("days = [\"2-7\", \"5-9\"]", "days", "2-7 and 5-9 overlap"),
            ("days = [3, 3]", "days", "names 3 twice"),
            ("days = [1, \"2-7\"]\nmode = \"on_or_after\"", "days", "brackets"),
            ("mode = \"rolling_24h\"\ndays = [38]", "days", "history_days ≥ 41"),
            ("mode = \"rolling_24h\"\ngranularity = \"week\"\nperiods = [1]", "mode", "granularity = \"day\""),
        ] {
            let e = one(body);
            assert!(e.contains(&format!("`retention[0].{key}`")) && e.contains(says), "{body}: {e}");
        }
        // Just inside the history: day 37 of a rolling window with 40 days.
        assert!(
            Config::from_toml_str(
                "history_days = 40\n[[retention]]\nname = \"x\"\nmode = \"rolling_24h\"\ndays = [37]"
            )
            .is_ok()
        );
    }

    #[test]
    fn revenue_is_read_or_refused_by_key() {
        let c = Config::from_toml_str("[revenue]\nevents = [\"pay\", \"renew\"]").expect("config");
        let r = c.engine.revenue.expect("revenue");
        assert_eq!((r.events.len(), r.amount_prop.as_str(), r.scale), (2, "amount", 2));
        for (body, key) in [
            ("[revenue]\nevents = []", "revenue.events"),
            ("[revenue]\nevents = [\"\"]", "revenue.events"),
            ("[revenue]\nevents = [\"*\"]", "revenue.events"),
            ("[revenue]\nevents = [\"pay\"]\namount_prop = \"\"", "revenue.amount_prop"),
            ("[revenue]\nevents = [\"pay\"]\nscale = 7", "revenue.scale"),
            ("[revenue]\nevents = [\"pay\"]\nscale = -1", "revenue.scale"),
        ] {
            let e = err(body);
            assert!(e.contains(&format!("`{key}`")), "{body}: {e}");
        }
        assert!(err("[revenue]\namount_prop = \"a\"").contains("events"));
        let e = err("[[retention]]\nname = \"r\"\nrevenue = true");
        assert!(e.contains("`retention[0].revenue`") && e.contains("[revenue]"), "{e}");
        let e = err(
            "[revenue]\nevents = [\"pay\"]\n[[retention]]\nname = \"r\"\ngranularity = \"week\"\nperiods = [1]\nrevenue = true",
        );
        assert!(e.contains("`retention[0].revenue`"), "{e}");
    }

    #[test]
    fn trends_are_read_or_refused_by_key() {
        let c = Config::from_toml_str(
            "[[trend]]\nname = \"orders\"\nevent = \"order\"\n\
             [[trend]]\nname = \"ads\"\nevent = { event = \"order\", where = { channel = \"ads\", paid = true } }",
        )
        .expect("config");
        let t = &c.engine.trends;
        assert_eq!((t[0].name.as_str(), t[0].step.event.as_str(), t[0].step.filter.len()), ("orders", "order", 0));
        assert_eq!((t[1].step.event.as_str(), t[1].step.filter.len()), ("order", 2));
        for (body, key, says) in [
            ("[[trend]]\nname = \"\"\nevent = \"a\"", "trend[0].name", "empty"),
            ("[[trend]]\nname = \"t\"\nevent = \"\"", "trend[0].event", "empty"),
            ("[[trend]]\nname = \"t\"\nevent = { event = \"\" }", "trend[0].event.event", "empty"),
            (
                "[[trend]]\nname = \"t\"\nevent = \"a\"\n[[trend]]\nname = \"t\"\nevent = \"b\"",
                "trend[1].name",
                "twice",
            ),
            (
                "[[trend]]\nname = \"t\"\nevent = { event = \"a\", where = { x = [1] } }",
                "trend[0].event.where.x",
                "string",
            ),
            (
                "[[trend]]\nname = \"t\"\nevent = { event = \"a\", where = { x = nan } }",
                "trend[0].event.where.x",
                "finite",
            ),
        ] {
            let e = err(body);
            assert!(e.contains(&format!("`{key}`")) && e.contains(says), "{body}: {e}");
        }
        let e = err("[[trend]]\nname = \"t\"");
        assert!(e.contains("event"), "{e}");
        let many = (0..23).map(|i| format!("[[trend]]\nname = \"t{i}\"\nevent = \"e\"\n")).collect::<String>();
        let e = err(&many);
        assert!(e.contains("`trend`") && e.contains("at most 22"), "{e}");
    }

    #[test]
    fn breakdowns_are_read_or_refused_by_key() {
        let channel = "[[breakdown]]\nname = \"channel\"\nprop = \"ch\"\nvalues = [\"ads\", \"organic\"]\n";
        let c = Config::from_toml_str(&format!(
            "activity_breakdowns = [\"channel\"]\n{channel}[[retention]]\nname = \"r\"\nbreakdowns = [\"channel\"]\n\
             [[funnel]]\nname = \"f\"\nwindow = \"1h\"\nsteps = [\"a\"]\nbreakdowns = [\"channel\"]"
        ))
        .expect("config");
        let e = &c.engine;
        assert_eq!((e.breakdowns[0].prop.as_str(), e.breakdowns[0].values.len()), ("ch", 2));
        assert_eq!(
            (&e.activity_breakdowns[..], &e.retention[0].breakdowns[..], &e.funnels[0].breakdowns[..]),
            (&[0][..], &[0][..], &[0][..])
        );
        let values = |n: usize| (0..n).map(|i| format!("\"v{i}\"")).collect::<Vec<_>>().join(", ");
        let long = "x".repeat(257);
        for (body, key, says) in [
            ("[[breakdown]]\nname = \"\"\nprop = \"p\"\nvalues = [\"a\"]".to_owned(), "breakdown[0].name", "empty"),
            ("[[breakdown]]\nname = \"b\"\nprop = \"\"\nvalues = [\"a\"]".to_owned(), "breakdown[0].prop", "empty"),
            ("[[breakdown]]\nname = \"b\"\nprop = \"p\"\nvalues = []".to_owned(), "breakdown[0].values", "1 to 32"),
            (
                format!("[[breakdown]]\nname = \"b\"\nprop = \"p\"\nvalues = [{}]", values(33)),
                "breakdown[0].values",
                "1 to 32",
            ),
            (
                "[[breakdown]]\nname = \"b\"\nprop = \"p\"\nvalues = [\"a\", \"a\"]".to_owned(),
                "breakdown[0].values[1]",
                "twice",
            ),
            (
                "[[breakdown]]\nname = \"b\"\nprop = \"p\"\nvalues = [\"other\"]".to_owned(),
                "breakdown[0].values[0]",
                "label",
            ),
            (
                format!("[[breakdown]]\nname = \"b\"\nprop = \"p\"\nvalues = [\"{long}\"]"),
                "breakdown[0].values[0]",
                "256",
            ),
            (format!("{channel}{channel}"), "breakdown[1].name", "twice"),
            (
                format!("{channel}[[retention]]\nname = \"r\"\nbreakdowns = [\"platform\"]"),
                "retention[0].breakdowns[0]",
                "platform",
            ),
            (
                format!("{channel}[[retention]]\nname = \"r\"\nbreakdowns = [\"channel\", \"channel\"]"),
                "retention[0].breakdowns[1]",
                "twice",
            ),
            (
                format!("{channel}[[funnel]]\nname = \"f\"\nwindow = \"1h\"\nsteps = [\"a\"]\nbreakdowns = [\"x\"]"),
                "funnel[0].breakdowns[0]",
                "not a [[breakdown]]",
            ),
            (format!("activity_breakdowns = [\"x\"]\n{channel}"), "activity_breakdowns[0]", "not a [[breakdown]]"),
        ] {
            let e = err(&body);
            assert!(e.contains(&format!("`{key}`")) && e.contains(says), "{body}: {e}");
        }
        let many = (0..17)
            .map(|i| format!("[[breakdown]]\nname = \"b{i}\"\nprop = \"p\"\nvalues = [\"a\"]\n"))
            .collect::<String>();
        let e = err(&many);
        assert!(e.contains("`breakdown`") && e.contains("at most 16"), "{e}");
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
        assert_eq!(c.engine.retention[0].periods, [1, 3, 7, 14, 30].map(Bracket::one));
        assert!(c.engine.funnels.is_empty());
        assert_eq!(c.engine.max_funnel_events_per_user, 10_000);
        assert_eq!((c.engine.week_start, c.engine.stickiness_windows.clone()), (jiff::civil::Weekday::Monday, vec![7]));
        let c = Config::from_toml_str("week_start = \"Sunday\"\nstickiness_windows = [30, 7]").expect("valid");
        assert_eq!((c.engine.week_start, c.engine.stickiness_windows), (jiff::civil::Weekday::Sunday, vec![7, 30]));
    }
}
