//! The engine's definitions: what it counts (retention, funnels, the
//! events they match) and the limits it counts within. The engine is built
//! from these alone; `crate::config` reads the TOML file and the
//! environment into them.

use jiff::civil::Weekday;
use jiff::tz::TimeZone;

use crate::event::FieldNames;

/// The most funnel steps (ClickHouse's `windowFunnel` allows 32 too).
pub const MAX_STEPS: usize = 32;
/// The most `[[retention]]` definitions: the engine classifies each event
/// name once into a 64-bit mask of the definitions it is a cohort or a
/// return event of, one bit a definition.
pub const MAX_RETENTION: usize = 64;
/// The most users one shard tracks (`max_users`): a compact funnel store
/// threads a user's index with a garbage flag that must stay clear.
pub const MAX_USERS: usize = 1 << 31;
/// The most values a `[[breakdown]]` lists (besides `other` and `none`):
/// a user's value and its rank among them fit in a byte.
pub const MAX_BREAKDOWN_VALUES: usize = 32;
/// The most `[[breakdown]]` definitions.
pub const MAX_BREAKDOWNS: usize = 16;
/// Prop values longer than this count as `other`.
pub const MAX_BREAKDOWN_VALUE_BYTES: usize = 256;

/// Everything the engine's definitions and time semantics depend on.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Names of the event fields.
    pub fields: FieldNames,
    /// Use the Kafka message timestamp when `ts` is absent.
    pub use_message_timestamp: bool,
    /// The business-day time zone.
    pub timezone: TimeZone,
    /// The first day of a calendar week.
    pub week_start: Weekday,
    /// The windows, in days, of the stickiness figures (7, 30).
    pub stickiness_windows: Vec<u32>,
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
    /// Trend definitions.
    pub trends: Vec<TrendDef>,
    /// Payments, if configured.
    pub revenue: Option<RevenueDef>,
    /// Breakdowns (`[[breakdown]]`): the user properties figures can be
    /// split by.
    pub breakdowns: Vec<BreakdownDef>,
    /// The breakdowns (indices into `breakdowns`) of new and active users
    /// (`activity_breakdowns`).
    pub activity_breakdowns: Vec<usize>,
}

/// `[[breakdown]]`: a user property fixed at first touch, and the values
/// figures are split by.
#[derive(Debug, Clone)]
pub struct BreakdownDef {
    /// Label value `breakdown`.
    pub name: String,
    /// The prop whose value on a user's earliest event carrying it is the
    /// user's value.
    pub prop: String,
    /// The values with a series of their own (at most
    /// [`MAX_BREAKDOWN_VALUES`]); the rest are `other`, users without the
    /// prop `none`.
    pub values: Vec<String>,
}

impl BreakdownDef {
    /// Label values a figure is split into: the listed values, `other`,
    /// `none`.
    pub fn slots(&self) -> usize {
        self.values.len() + 2
    }

    /// The slot of `other`.
    pub fn other(&self) -> usize {
        self.values.len()
    }

    /// The slot of `none`.
    pub fn none(&self) -> usize {
        self.values.len() + 1
    }

    /// The label value of slot `slot`.
    pub fn label(&self, slot: usize) -> &str {
        match self.values.get(slot) {
            Some(v) => v,
            None if slot == self.other() => "other",
            None => "none",
        }
    }
}

/// `[revenue]`: the payment events and where their amount is.
#[derive(Debug, Clone)]
pub struct RevenueDef {
    /// Events that are payments.
    pub events: Vec<String>,
    /// The prop holding the amount (a JSON number or a decimal string).
    pub amount_prop: String,
    /// Decimals kept: amounts are integers of 10^-scale units.
    pub scale: u32,
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
    /// `"*"` for any event, else the name.
    pub fn parse(s: &str) -> Self {
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

/// How a return in period N is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionMode {
    /// A return event in period D+N exactly (a business day, week or month).
    On,
    /// A return event in any period ≥ D+N (unbounded retention).
    OnOrAfter,
    /// A return event in the N-th 24 hours after the user's first cohort
    /// event, `[t0 + N·24 h, t0 + (N+1)·24 h)`; cohorts by day.
    Rolling24h,
}

impl RetentionMode {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RetentionMode::On => "on",
            RetentionMode::OnOrAfter => "on_or_after",
            RetentionMode::Rolling24h => "rolling_24h",
        }
    }
}

/// The calendar period a retention definition's cohorts and returns are
/// counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// Business days.
    Day,
    /// Calendar weeks starting on `week_start`.
    Week,
    /// Calendar months.
    Month,
}

impl Granularity {
    /// The config spelling, which is also the name of the label that
    /// names N (`day="7"`, `week="1"`, `month="1"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Day => "day",
            Granularity::Week => "week",
            Granularity::Month => "month",
        }
    }
}

/// One figure of a retention definition: period N (`from == to`), or a
/// bracket of periods, a return in any of which counts (`"8-14"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bracket {
    /// The first period, ≥ 1.
    pub from: u32,
    /// The last period, ≥ `from`.
    pub to: u32,
}

impl Bracket {
    /// Period N alone.
    pub fn one(n: u32) -> Self {
        Bracket { from: n, to: n }
    }

    /// Whether this is one period, not a range of them.
    pub fn is_one(self) -> bool {
        self.from == self.to
    }
}

impl std::fmt::Display for Bracket {
    /// The label value: `7`, or `8-14` for a bracket.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_one() { write!(f, "{}", self.from) } else { write!(f, "{}-{}", self.from, self.to) }
    }
}

/// One named retention definition.
#[derive(Debug, Clone)]
pub struct RetentionDef {
    /// Label value `retention`.
    pub name: String,
    /// The event whose first occurrence sets the cohort.
    pub cohort_event: EventMatch,
    /// The event that counts as a return.
    pub return_event: EventMatch,
    /// The period cohorts and returns are counted in.
    pub granularity: Granularity,
    /// The figures: periods N and brackets, ascending, not overlapping,
    /// from 1 on (`days` or `periods` in the config).
    pub periods: Vec<Bracket>,
    /// How returns are counted.
    pub mode: RetentionMode,
    /// Whether the cohorts' revenue and payers through day N are counted
    /// too (`revenue = true`, with `[revenue]`; day definitions).
    pub revenue: bool,
    /// The breakdowns (indices into `EngineConfig::breakdowns`) its
    /// cohorts are split by.
    pub breakdowns: Vec<usize>,
}

impl RetentionDef {
    /// A definition by business day, of periods N (no brackets), for
    /// tests and examples.
    pub fn daily(name: &str, cohort_event: &str, return_event: &str, days: &[u32], mode: RetentionMode) -> Self {
        RetentionDef {
            name: name.into(),
            cohort_event: EventMatch::parse(cohort_event),
            return_event: EventMatch::parse(return_event),
            granularity: Granularity::Day,
            periods: days.iter().map(|&n| Bracket::one(n)).collect(),
            mode,
            revenue: false,
            breakdowns: Vec::new(),
        }
    }

    /// How many days after a cohort's day a return can still count: to
    /// the last day of its last period (the last 24-hour window ends up
    /// to a day after day D+N; a month has up to 31 days).
    pub fn reach_days(&self) -> u64 {
        let max = u64::from(self.periods.iter().map(|b| b.to).max().unwrap_or(0));
        match (self.granularity, self.mode) {
            (Granularity::Day, RetentionMode::Rolling24h) => max + 1,
            (Granularity::Day, _) => max,
            (Granularity::Week, _) => 7 * max + 6,
            (Granularity::Month, _) => 31 * (max + 1) - 1,
        }
    }
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
    /// The breakdowns (indices into `EngineConfig::breakdowns`) its entry
    /// days are split by.
    pub breakdowns: Vec<usize>,
}

/// One named trend: the events of a name, filtered as a funnel step is.
#[derive(Debug, Clone)]
pub struct TrendDef {
    /// Label value `trend`.
    pub name: String,
    /// The events it counts.
    pub step: StepDef,
    /// The breakdowns (indices into `EngineConfig::breakdowns`) its days
    /// are split by.
    pub breakdowns: Vec<usize>,
}

#[cfg(test)]
impl EngineConfig {
    /// A configuration for the engine's own tests, built without the
    /// config reader: UTC, `history_days` of history, 10 minutes of
    /// lateness, and `retention` and `funnels`.
    pub(crate) fn for_tests(history_days: u32, retention: Vec<RetentionDef>, funnels: Vec<FunnelDef>) -> Self {
        EngineConfig {
            fields: FieldNames::default(),
            use_message_timestamp: false,
            timezone: TimeZone::UTC,
            week_start: Weekday::Monday,
            stickiness_windows: vec![7],
            timezone_name: "UTC".into(),
            allowed_lateness_ms: 600_000,
            history_days,
            max_future_skew_ms: 300_000,
            export_days: 31,
            max_users: 1 << 31,
            max_funnel_events_per_user: 10_000,
            retention,
            funnels,
            trends: Vec::new(),
            revenue: None,
            breakdowns: Vec::new(),
            activity_breakdowns: Vec::new(),
        }
    }
}

#[cfg(test)]
impl FunnelDef {
    /// A funnel of plain steps (no filters), for tests.
    pub(crate) fn of_steps(name: &str, window_ms: i64, mode: FunnelMode, steps: &[&str]) -> Self {
        let steps = steps.iter().map(|s| StepDef { event: EventMatch::parse(s), filter: Vec::new() }).collect();
        FunnelDef { name: name.into(), window_ms, mode, steps, breakdowns: Vec::new() }
    }
}
