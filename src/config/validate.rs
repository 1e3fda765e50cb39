//! From the raw shape to a [`Config`] that can no longer be wrong, one
//! section at a time; every error names its key.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;

use jiff::SignedDuration;
use jiff::civil::Weekday;
use jiff::tz::TimeZone;

use super::raw::{
    RawBreakdown, RawConfig, RawFields, RawFunnel, RawHttp, RawKafka, RawLog, RawRetention, RawRevenue, RawStep,
    RawTrend, default_days, default_granularity, default_mode, star,
};
use super::{Config, ConfigError, KafkaConfig, MAX_USER_ID_BYTES, MAX_WORKERS, invalid};
use crate::engine::def::{
    Bracket, BreakdownDef, EngineConfig, EventMatch, FilterValue, FunnelDef, FunnelMode, Granularity,
    MAX_BREAKDOWN_VALUE_BYTES, MAX_BREAKDOWN_VALUES, MAX_BREAKDOWNS, MAX_RETENTION, MAX_STEPS, MAX_USERS, RetentionDef,
    RetentionMode, RevenueDef, StepDef, TrendDef,
};
use crate::engine::trend::MAX_TRENDS;
use crate::event::FieldNames;
use crate::export::http::Limits as HttpLimits;

pub(super) fn duration_ms(key: &str, text: &str) -> Result<i64, ConfigError> {
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

fn weekday(name: &str) -> Result<Weekday, ConfigError> {
    use Weekday::*;
    let days = [
        ("monday", Monday),
        ("tuesday", Tuesday),
        ("wednesday", Wednesday),
        ("thursday", Thursday),
        ("friday", Friday),
        ("saturday", Saturday),
        ("sunday", Sunday),
    ];
    days.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name.trim()))
        .map(|&(_, d)| d)
        .ok_or_else(|| invalid("week_start", format!("`{name}` is not a day of the week: say \"monday\" … \"sunday\"")))
}

impl RawConfig {
    pub(super) fn validate(self) -> Result<Config, ConfigError> {
        let timezone = TimeZone::get(&self.timezone)
            .map_err(|e| invalid("timezone", format!("`{}` is not a known IANA time zone: {e}", self.timezone)))?;
        let week_start = weekday(&self.week_start)?;
        let mut stickiness_windows = self.stickiness_windows.clone();
        if stickiness_windows.iter().any(|w| ![7, 30].contains(w)) {
            return Err(invalid("stickiness_windows", "takes the windows 7 and 30 (days), e.g. [7, 30]"));
        }
        stickiness_windows.sort_unstable();
        if stickiness_windows.windows(2).any(|p| p[0] == p[1]) {
            return Err(invalid("stickiness_windows", "names a window twice"));
        }
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
        let most_users = MAX_USERS as u64;
        if !(1..=most_users).contains(&self.max_users) {
            // A shard's funnel stores index users in 31 bits.
            return Err(invalid("max_users", format!("must be between 1 and {most_users} (2^31)")));
        }
        let max_funnel_events_per_user = u32::try_from(self.max_funnel_events_per_user)
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| invalid("max_funnel_events_per_user", format!("must be between 1 and {}", u32::MAX)))?;
        let (listen, http_limits) = http(&self.http)?;
        let (log_json, log_level) = log(self.log)?;
        let fields = fields(self.fields, self.max_user_id_bytes)?;
        let breakdowns = breakdowns(self.breakdown)?;
        let retention = retention(self.retention, self.history_days, &breakdowns)?;
        let funnels = funnels(self.funnel, &breakdowns)?;
        let activity_breakdowns = breakdown_refs("activity_breakdowns", &self.activity_breakdowns, &breakdowns)?;
        let trends = trends(self.trend, &breakdowns)?;
        let revenue = self.revenue.map(revenue).transpose()?;
        if revenue.is_none()
            && let Some(i) = retention.iter().position(|r| r.revenue)
        {
            return Err(invalid(format!("retention[{i}].revenue"), "needs a [revenue] section (its payment events)"));
        }
        let kafka = self.kafka.map(kafka).transpose()?;

        Ok(Config {
            engine: EngineConfig {
                fields,
                use_message_timestamp: self.use_message_timestamp,
                timezone,
                week_start,
                stickiness_windows,
                timezone_name: self.timezone,
                allowed_lateness_ms,
                history_days: self.history_days,
                max_future_skew_ms,
                export_days: self.export_days,
                max_users: self.max_users,
                max_funnel_events_per_user,
                retention,
                funnels,
                trends,
                revenue,
                breakdowns,
                activity_breakdowns,
            },
            listen,
            http_limits,
            state_dir: self.state_dir,
            snapshot_interval_ms,
            shutdown_timeout_ms,
            log_json,
            log_level,
            kafka,
            ignored_env: Vec::new(),
        })
    }
}

/// `[http]`: the address and what one client can hold.
fn http(h: &RawHttp) -> Result<(SocketAddr, HttpLimits), ConfigError> {
    let listen: SocketAddr = h
        .listen
        .parse()
        .map_err(|e| invalid("http.listen", format!("`{}` is not an address such as 127.0.0.1:9464: {e}", h.listen)))?;
    let most = HttpLimits::MOST_CONNECTIONS as u64;
    if !(2..=most).contains(&h.max_connections) {
        return Err(invalid("http.max_connections", format!("must be between 2 and {most}")));
    }
    let header_read_timeout_ms = duration_ms("http.header_read_timeout", &h.header_read_timeout)?;
    if !(100..=600_000).contains(&header_read_timeout_ms) {
        return Err(invalid("http.header_read_timeout", "must be between 100ms and 10m"));
    }
    let http_limits = HttpLimits {
        max_connections: h.max_connections as usize,
        header_read_timeout: std::time::Duration::from_millis(header_read_timeout_ms as u64),
    };
    Ok((listen, http_limits))
}

/// `[log]`: the format, and a level or filter `tracing` reads.
fn log(l: RawLog) -> Result<(bool, String), ConfigError> {
    let log_json = match l.format.as_str() {
        "human" => false,
        "json" => true,
        other => {
            return Err(invalid("log.format", format!("`{other}` is not one of \"human\", \"json\"")));
        }
    };
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&l.level) {
        return Err(invalid(
            "log.level",
            format!("`{}` is not a level such as \"info\" or a filter such as \"info,cohortflow=debug\": {e}", l.level),
        ));
    }
    Ok((log_json, l.level))
}

/// `[fields]` and `max_user_id_bytes`: how events are read.
fn fields(f: RawFields, max_user_id_bytes: u64) -> Result<FieldNames, ConfigError> {
    // Ids are kept for every tracked user: their bound is what makes
    // max_users a bound on memory.
    if !(1..=MAX_USER_ID_BYTES).contains(&max_user_id_bytes) {
        return Err(invalid("max_user_id_bytes", format!("must be between 1 and {MAX_USER_ID_BYTES}")));
    }
    let fields = FieldNames {
        max_user_id_bytes: max_user_id_bytes as usize,
        user_id: f.user_id,
        event: f.event,
        ts: f.ts,
        props: f.props,
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
    let distinct: HashSet<&String> = [&fields.user_id, &fields.event, &fields.ts, &fields.props].into_iter().collect();
    if distinct.len() != 4 {
        return Err(invalid("fields", "the four field names must differ"));
    }

    Ok(fields)
}

/// `[[retention]]`: one definition by default; days that the history holds.
fn retention(
    raw: Vec<RawRetention>,
    history_days: u32,
    known: &[BreakdownDef],
) -> Result<Vec<RetentionDef>, ConfigError> {
    let mut retention = Vec::new();
    let mut names = HashSet::new();
    let raw_retention = if raw.is_empty() {
        vec![RawRetention {
            name: "new_users".into(),
            cohort_event: star(),
            return_event: star(),
            days: None,
            periods: None,
            granularity: default_granularity(),
            mode: default_mode(),
            revenue: false,
            breakdowns: Vec::new(),
        }]
    } else {
        raw
    };
    if raw_retention.len() > MAX_RETENTION {
        return Err(invalid(
            "retention",
            format!("{} definitions; at most {MAX_RETENTION} are supported", raw_retention.len()),
        ));
    }
    for (i, r) in raw_retention.into_iter().enumerate() {
        let key = |k: &str| format!("retention[{i}].{k}");
        new_name(&mut names, key("name"), &r.name)?;
        for (k, v) in [("cohort_event", &r.cohort_event), ("return_event", &r.return_event)] {
            if v.is_empty() {
                return Err(invalid(key(k), "must not be empty (use \"*\" for any event)"));
            }
        }
        let mode = match r.mode.as_str() {
            "on" => RetentionMode::On,
            "on_or_after" => RetentionMode::OnOrAfter,
            "rolling_24h" => RetentionMode::Rolling24h,
            other => {
                return Err(invalid(
                    key("mode"),
                    format!("`{other}` is not one of \"on\", \"on_or_after\", \"rolling_24h\""),
                ));
            }
        };
        let granularity = match r.granularity.as_str() {
            "day" => Granularity::Day,
            "week" => Granularity::Week,
            "month" => Granularity::Month,
            other => {
                return Err(invalid(
                    key("granularity"),
                    format!("`{other}` is not one of \"day\", \"week\", \"month\""),
                ));
            }
        };
        if mode == RetentionMode::Rolling24h && granularity != Granularity::Day {
            return Err(invalid(key("mode"), "\"rolling_24h\" groups cohorts by day: it takes granularity = \"day\""));
        }
        // `days` for a day definition, `periods` for a week or month one.
        let (list_key, list, other) = match granularity {
            Granularity::Day => ("days", r.days.unwrap_or_else(default_days), r.periods.map(|_| "periods")),
            _ => (
                "periods",
                r.periods.ok_or_else(|| {
                    invalid(key("periods"), "is needed for a week or month definition, e.g. [1, 2, 4]")
                })?,
                r.days.map(|_| "days"),
            ),
        };
        if let Some(other) = other {
            return Err(invalid(
                key(other),
                format!("does not apply to granularity = \"{}\"; use `{list_key}`", granularity.as_str()),
            ));
        }
        let periods = brackets(&key(list_key), &list)?;
        if mode == RetentionMode::OnOrAfter && periods.iter().any(|b| !b.is_one()) {
            return Err(invalid(key(list_key), "brackets (\"2-7\") take mode = \"on\" or \"rolling_24h\""));
        }
        // A return in the last period must still be in the history when
        // the cohort's first day leaves it. Computed wide, so that no day
        // can wrap round (a day of 2^32 − 1 once did).
        let max = u64::from(periods.iter().map(|b| b.to).max().unwrap_or(0));
        let (needed, what) = match (granularity, mode) {
            // The 24 hours of window N end up to a day after day D+N.
            (Granularity::Day, RetentionMode::Rolling24h) => (max + 3, format!("a 24-hour window {max}")),
            (Granularity::Day, _) => (max + 2, format!("day {max}")),
            // From a week's first day to the last day of week N.
            (Granularity::Week, _) => (7 * max + 8, format!("week {max}")),
            // From a month's first day to the last day of month N, months
            // of 31 days.
            (Granularity::Month, _) => (31 * (max + 1) + 1, format!("month {max}")),
        };
        if needed > u64::from(history_days) {
            return Err(invalid(
                key(list_key),
                format!("{what} needs history_days ≥ {needed} (history_days is {history_days}, at most 90)"),
            ));
        }
        if r.revenue && (granularity != Granularity::Day || periods.iter().any(|b| !b.is_one())) {
            return Err(invalid(
                key("revenue"),
                "cohort revenue is counted by day N: granularity = \"day\", no brackets",
            ));
        }
        let breakdowns = breakdown_refs(&key("breakdowns"), &r.breakdowns, known)?;
        retention.push(RetentionDef {
            breakdowns,
            name: r.name,
            cohort_event: EventMatch::parse(&r.cohort_event),
            return_event: EventMatch::parse(&r.return_event),
            granularity,
            periods,
            mode,
            revenue: r.revenue,
        });
    }

    Ok(retention)
}

/// A list of periods N (`7`) and brackets (`"8-14"`, both ends
/// included): each ≥ 1, ascending once sorted, none overlapping another.
fn brackets(key: &str, list: &[toml::Value]) -> Result<Vec<Bracket>, ConfigError> {
    let number = |text: &str| text.trim().parse::<u32>().ok().filter(|&n| n >= 1);
    let mut out = Vec::with_capacity(list.len());
    for v in list {
        let b = match v {
            toml::Value::Integer(n) => {
                u32::try_from(*n).ok().filter(|&n| n >= 1).map(Bracket::one).ok_or_else(|| {
                    invalid(key, format!("{n} is not a period: periods are whole numbers from 1 to {}", u32::MAX))
                })?
            }
            toml::Value::String(text) => {
                let parsed = match text.split_once('-') {
                    Some((a, b)) => number(a).zip(number(b)).map(|(from, to)| Bracket { from, to }),
                    None => number(text).map(Bracket::one),
                };
                let b = parsed.ok_or_else(|| {
                    invalid(key, format!("\"{text}\" is not a period or a bracket like \"8-14\" (whole numbers ≥ 1)"))
                })?;
                if b.from > b.to {
                    return Err(invalid(key, format!("the bracket \"{text}\" ends before it starts")));
                }
                b
            }
            other => return Err(invalid(key, format!("{other} is not a period or a bracket like \"8-14\""))),
        };
        out.push(b);
    }
    if out.is_empty() {
        return Err(invalid(key, "must be a non-empty list of periods ≥ 1, e.g. [1, 7, \"8-14\"]"));
    }
    out.sort_unstable();
    if let Some(p) = out.windows(2).find(|p| p[1].from <= p[0].to) {
        return Err(invalid(
            key,
            if p[0] == p[1] { format!("names {} twice", p[0]) } else { format!("{} and {} overlap", p[0], p[1]) },
        ));
    }
    Ok(out)
}

/// `[[breakdown]]`: names, props and at most [`MAX_BREAKDOWN_VALUES`]
/// distinct values each.
fn breakdowns(raw: Vec<RawBreakdown>) -> Result<Vec<BreakdownDef>, ConfigError> {
    if raw.len() > MAX_BREAKDOWNS {
        return Err(invalid("breakdown", format!("{} definitions; at most {MAX_BREAKDOWNS}", raw.len())));
    }
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, b) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("breakdown[{i}].{k}");
        new_name(&mut names, key("name"), &b.name)?;
        if b.prop.is_empty() {
            return Err(invalid(key("prop"), "must not be empty"));
        }
        if b.values.is_empty() || b.values.len() > MAX_BREAKDOWN_VALUES {
            return Err(invalid(
                key("values"),
                format!("lists {} values; 1 to {MAX_BREAKDOWN_VALUES} are supported", b.values.len()),
            ));
        }
        let mut seen = HashSet::new();
        for (j, v) in b.values.iter().enumerate() {
            let vkey = format!("breakdown[{i}].values[{j}]");
            if v.is_empty() || v.len() > MAX_BREAKDOWN_VALUE_BYTES {
                return Err(invalid(vkey, format!("must be 1 to {MAX_BREAKDOWN_VALUE_BYTES} bytes")));
            }
            if v == "other" || v == "none" {
                return Err(invalid(vkey, format!("`{v}` is the label of values not listed or absent")));
            }
            if !seen.insert(v) {
                return Err(invalid(vkey, format!("`{v}` is listed twice")));
            }
        }
        out.push(BreakdownDef { name: b.name, prop: b.prop, values: b.values });
    }
    Ok(out)
}

/// A definition's `breakdowns` (under `key`): indices of known breakdowns,
/// each named once.
fn breakdown_refs(key: &str, names: &[String], known: &[BreakdownDef]) -> Result<Vec<usize>, ConfigError> {
    let mut out = Vec::new();
    for (j, name) in names.iter().enumerate() {
        let Some(b) = known.iter().position(|d| &d.name == name) else {
            let defined: Vec<&str> = known.iter().map(|d| d.name.as_str()).collect();
            return Err(invalid(
                format!("{key}[{j}]"),
                format!("`{name}` is not a [[breakdown]] name (defined: {defined:?})"),
            ));
        };
        if out.contains(&b) {
            return Err(invalid(format!("{key}[{j}]"), format!("`{name}` is named twice")));
        }
        out.push(b);
    }
    Ok(out)
}

/// A definition's `name`, under `key`: not empty, and not one an earlier
/// definition of its kind took (`names`).
fn new_name(names: &mut HashSet<String>, key: String, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(invalid(key, "must not be empty"));
    }
    if !names.insert(name.to_owned()) {
        return Err(invalid(key, format!("`{name}` is defined twice")));
    }
    Ok(())
}

/// `[[funnel]]`: names, windows, modes and steps with their filters.
fn funnels(raw: Vec<RawFunnel>, known: &[BreakdownDef]) -> Result<Vec<FunnelDef>, ConfigError> {
    let mut funnels = Vec::new();
    let mut names = HashSet::new();
    for (i, f) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("funnel[{i}].{k}");
        new_name(&mut names, key("name"), &f.name)?;
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
            steps.push(step(&skey, s)?);
        }
        let breakdowns = breakdown_refs(&key("breakdowns"), &f.breakdowns, known)?;
        funnels.push(FunnelDef { name: f.name, window_ms, mode, steps, breakdowns });
    }

    Ok(funnels)
}

/// A funnel step or a trend's event (`skey` names it in errors): an event
/// name, or `{ event, where }` with property equalities.
fn step(skey: &str, s: RawStep) -> Result<StepDef, ConfigError> {
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
                return Err(invalid(format!("{skey}.where.{prop}"), "must be a string, a number or a boolean"));
            }
        };
        filter.push((prop, v));
    }
    Ok(StepDef { event: EventMatch::parse(&event), filter })
}

/// `[revenue]`: the payment events, the amount's prop and its decimals.
fn revenue(r: RawRevenue) -> Result<RevenueDef, ConfigError> {
    if r.events.is_empty() || r.events.iter().any(|e| e.is_empty() || e == "*") {
        return Err(invalid("revenue.events", "must list at least one event name (not \"*\")"));
    }
    if r.amount_prop.is_empty() {
        return Err(invalid("revenue.amount_prop", "must not be empty"));
    }
    // 64-bit units: up to 9.2e12 currency units at 6 decimals.
    let scale = u32::try_from(r.scale)
        .ok()
        .filter(|&s| s <= 6)
        .ok_or_else(|| invalid("revenue.scale", "must be between 0 and 6"))?;
    Ok(RevenueDef { events: r.events, amount_prop: r.amount_prop, scale })
}

/// `[[trend]]`: names and the events each counts.
fn trends(raw: Vec<RawTrend>, known: &[BreakdownDef]) -> Result<Vec<TrendDef>, ConfigError> {
    if raw.len() > MAX_TRENDS {
        return Err(invalid("trend", format!("{} trends; at most {MAX_TRENDS} are supported", raw.len())));
    }
    let mut names = HashSet::new();
    let mut trends = Vec::new();
    for (i, t) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("trend[{i}].{k}");
        new_name(&mut names, key("name"), &t.name)?;
        // A plain name's key is `event`; a table's own event is `event.event`.
        let step = match t.event {
            RawStep::Name(n) if n.is_empty() => return Err(invalid(key("event"), "must not be empty")),
            s => step(&key("event"), s)?,
        };
        let breakdowns = breakdown_refs(&key("breakdowns"), &t.breakdowns, known)?;
        trends.push(TrendDef { name: t.name, step, breakdowns });
    }
    Ok(trends)
}

/// `[kafka]`: topics, group, brokers, librdkafka's options, workers.
fn kafka(k: RawKafka) -> Result<KafkaConfig, ConfigError> {
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
                return Err(invalid(format!("kafka.options.\"{name}\""), "must be a string, a number or a boolean"));
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
    Ok(KafkaConfig {
        workers,
        brokers: k.brokers,
        topics: k.topics,
        group_id: k.group_id,
        dead_letter_topic: k.dead_letter_topic.filter(|t| !t.is_empty()),
        options,
    })
}
