//! The engine against a naive reference model, on random event sets:
//! every figure recomputed from scratch by brute force (sets of days per
//! user, exhaustive search over funnel chains), for random time zones,
//! windows and modes; then shuffled arrival orders and replayed duplicates,
//! which must change nothing. The definitions here are the model's own
//! (short names, every mode and window drawn at random); the fixture the
//! other cross-checks share (`tests/fixtures/definitions.toml`) is run
//! against the model too.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use cohortflow::config::Config;
use cohortflow::engine::Engine;
use cohortflow::engine::def::{Bracket, FilterValue, FunnelMode, Granularity, RetentionMode};
use cohortflow::engine::figures::{
    CohortRow, Figures, LifecycleRow, PeriodRow, Split, SplitActivityRow, StickinessRow, StickinessTable, ValueRows,
};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use proptest::prelude::*;

const HOUR: i64 = 3_600_000;
// 2026-09-27T09:06:40Z: the ~9 days drawn span a month's end and a week's.
const START: i64 = 1_790_500_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Ev {
    user: u8,
    name: &'static str,
    ts: i64,
    channel: Option<&'static str>,
    /// The JSON text of its `amount` prop, if any.
    amount: Option<&'static str>,
}

/// Amounts as payment events carry them, and what they are in cents
/// (`None`: not counted).
const AMOUNTS: &[(&str, Option<i64>)] = &[
    ("12.30", Some(1230)),
    ("\"0.10\"", Some(10)),
    ("0.2", Some(20)),
    ("-5", Some(-500)),
    ("1e2", Some(10_000)),
    ("1.005", None),
    ("\"x\"", None),
];

impl Ev {
    fn json(&self) -> String {
        let mut props: Vec<String> = Vec::new();
        if let Some(c) = self.channel {
            props.push(format!(r#""channel":"{c}""#));
        }
        if let Some(a) = self.amount {
            props.push(format!(r#""amount":{a}"#));
        }
        let props = if props.is_empty() { String::new() } else { format!(r#","props":{{{}}}"#, props.join(",")) };
        format!(r#"{{"user_id":"u{}","event":"{}","ts":{}{props}}}"#, self.user, self.name, self.ts)
    }
}

fn event() -> impl Strategy<Value = Ev> {
    event_of(vec!["a", "b", "c", "d"], vec!["x", "y", "w", "z"])
}

/// An event named from `names`, its channel (when it has one) from
/// `channels`.
fn event_of(names: Vec<&'static str>, channels: Vec<&'static str>) -> impl Strategy<Value = Ev> {
    (
        0u8..6,
        prop::sample::select(names),
        // Coarse times over ~9 days, so that equal timestamps are common.
        0i64..(9 * 24 * 4),
        prop::option::of(prop::sample::select(channels)),
        prop::option::of(prop::sample::select(AMOUNTS.iter().map(|a| a.0).collect::<Vec<_>>())),
    )
        .prop_map(|(user, name, quarter, channel, amount)| Ev {
            user,
            name,
            ts: START + quarter * HOUR / 4,
            channel,
            amount,
        })
}

fn config(tz: &str, window: &str, mode: FunnelMode) -> String {
    format!(
        r#"
        timezone = "{tz}"
        week_start = "{week_start}"
        stickiness_windows = [7, 30]
        history_days = 63
        activity_breakdowns = ["ch2", "channel"]
        # "y" is other in one, listed in the other: ties at one time
        # between a listed and an unlisted value go both ways.
        [[breakdown]]
        name = "channel"
        prop = "channel"
        values = ["x"]
        [[breakdown]]
        name = "ch2"
        prop = "channel"
        values = ["z", "y"]
        [[retention]]
        name = "all"
        days = [1, 2, 3]
        breakdowns = ["channel", "ch2"]
        [[retention]]
        name = "ab"
        cohort_event = "a"
        return_event = "b"
        days = [1, 2]
        mode = "on_or_after"
        breakdowns = ["channel"]
        [[retention]]
        name = "ca"
        cohort_event = "c"
        return_event = "a"
        days = [1, 4]
        breakdowns = ["ch2"]
        [[retention]]
        name = "any_b"
        cohort_event = "*"
        return_event = "b"
        days = [1, 2]
        [[retention]]
        name = "b_any"
        cohort_event = "b"
        return_event = "*"
        days = [1, 3]
        mode = "on_or_after"
        # Cohort columns shared with "ab" and "b_any", one of them
        # returning on its own cohort event.
        [[retention]]
        name = "aa"
        cohort_event = "a"
        return_event = "a"
        days = [1, 2]
        [[retention]]
        name = "bc"
        cohort_event = "b"
        return_event = "c"
        days = [1, 2]
        mode = "on_or_after"
        # Weeks, months, brackets and 24-hour windows.
        [[retention]]
        name = "weekly"
        granularity = "week"
        periods = [1]
        [[retention]]
        name = "weekly_ab"
        cohort_event = "a"
        return_event = "b"
        granularity = "week"
        periods = [1]
        mode = "on_or_after"
        breakdowns = ["channel"]
        [[retention]]
        name = "monthly_ca"
        cohort_event = "c"
        return_event = "a"
        granularity = "month"
        periods = [1]
        [[retention]]
        name = "monthly"
        granularity = "month"
        periods = [1]
        mode = "on_or_after"
        [[retention]]
        name = "brackets"
        cohort_event = "a"
        return_event = "*"
        days = [1, "2-4", "5-6"]
        breakdowns = ["ch2"]
        [[retention]]
        name = "brackets_b"
        cohort_event = "*"
        return_event = "b"
        days = ["1-2", 3]
        [[retention]]
        name = "rolling"
        mode = "rolling_24h"
        days = [1, "2-3"]
        [[retention]]
        name = "rolling_ab"
        cohort_event = "a"
        return_event = "b"
        mode = "rolling_24h"
        days = [1, 2, "3-5"]
        breakdowns = ["channel"]
        # N-day LTV of the cohorts of "a" and of first-seen users.
        [[retention]]
        name = "ltv"
        cohort_event = "a"
        return_event = "c"
        days = [1, 3]
        revenue = true
        [[retention]]
        name = "ltv_all"
        days = [2]
        revenue = true
        [revenue]
        events = ["c", "d"]
        [[trend]]
        name = "ta"
        event = "a"
        breakdowns = ["ch2", "channel"]
        [[trend]]
        name = "tb_x"
        event = {{ event = "b", where = {{ channel = "x" }} }}
        [[trend]]
        name = "tall"
        event = "*"
        [[funnel]]
        name = "abc"
        window = "{window}"
        mode = "{mode}"
        steps = ["a", "b", "c"]
        breakdowns = ["channel", "ch2"]
        [[funnel]]
        name = "filtered"
        window = "{window}"
        mode = "{mode}"
        steps = [{{ event = "a", where = {{ channel = "x" }} }}, "a", "b"]
        "#,
        mode = mode.as_str(),
        // Weeks start on a different day in each zone drawn.
        week_start = match tz {
            "UTC" => "monday",
            "Asia/Shanghai" => "sunday",
            _ => "wednesday",
        },
    )
}

fn run(cfg: &Config, events: &[Ev]) -> Figures {
    let mut engine = Engine::new(Arc::new(cfg.engine.clone()));
    let now = START + 30 * 24 * HOUR;
    for e in events {
        assert!(engine.apply(e.json().as_bytes(), None, now).is_ok(), "{e:?}");
    }
    engine.figures()
}

/// Figures from scratch. Returns only what the engine exports (dates up
/// to the watermark's day), in the same shape.
fn model(cfg: &Config, events: &[Ev]) -> Figures {
    let max_ts = events.iter().map(|e| e.ts).max().expect("events");
    let mut out = model_at(cfg, events, max_ts);
    // Breakdowns: a user's value is the prop of their earliest event
    // carrying it (at equal times the smallest value); each value's
    // figures are those of its users alone.
    for (b, def) in cfg.engine.breakdowns.iter().enumerate() {
        let mut value: BTreeMap<u8, (i64, &str)> = BTreeMap::new();
        for e in events {
            if let Some(c) = e.channel {
                let v = value.entry(e.user).or_insert((e.ts, c));
                *v = (*v).min((e.ts, c));
            }
        }
        let label = |u: u8| match value.get(&u) {
            None => "none",
            Some((_, v)) if def.values.iter().any(|l| l == v) => v,
            Some(_) => "other",
        };
        let labels: Vec<String> = def.values.iter().cloned().chain(["other".into(), "none".into()]).collect();
        let parts: Vec<Option<Figures>> = labels
            .iter()
            .map(|l| {
                let mine: Vec<Ev> = events.iter().filter(|e| label(e.user) == l).cloned().collect();
                (!mine.is_empty()).then(|| model_at(cfg, &mine, max_ts))
            })
            .collect();
        /// Per value, the rows `rows` takes from that value's figures.
        fn split<T>(
            name: &str,
            labels: &[String],
            parts: &[Option<Figures>],
            rows: impl Fn(&Figures) -> Vec<T>,
        ) -> Split<T> {
            let values = labels
                .iter()
                .zip(parts)
                .map(|(l, p)| ValueRows { value: l.clone(), rows: p.as_ref().map(&rows).unwrap_or_default() })
                .collect();
            Split { breakdown: name.to_owned(), values }
        }
        let name = def.name.as_str();
        for (r, rdef) in cfg.engine.retention.iter().enumerate() {
            if rdef.breakdowns.contains(&b) {
                out.retention[r].breakdowns.push(split(name, &labels, &parts, |f| f.retention[r].cohorts.clone()));
            }
        }
        for (f, fdef) in cfg.engine.funnels.iter().enumerate() {
            if fdef.breakdowns.contains(&b) {
                out.funnels[f].breakdowns.push(split(name, &labels, &parts, |p| p.funnels[f].entries.clone()));
            }
        }
        for (t, tdef) in cfg.engine.trends.iter().enumerate() {
            if tdef.breakdowns.contains(&b) {
                out.trends[t].breakdowns.push(split(name, &labels, &parts, |p| p.trends[t].rows.clone()));
            }
        }
        if cfg.engine.activity_breakdowns.contains(&b) {
            out.activity_breakdowns.push(split(name, &labels, &parts, |p| {
                p.activity
                    .iter()
                    .map(|a| SplitActivityRow {
                        date: a.date.clone(),
                        new_users: a.new_users,
                        dau: a.dau,
                        wau: a.wau,
                        mau: a.mau,
                    })
                    .collect()
            }));
        }
    }
    // In the order the engine publishes them: by the definitions'
    // breakdown lists.
    let order =
        |list: &[usize]| -> Vec<String> { list.iter().map(|&b| cfg.engine.breakdowns[b].name.clone()).collect() };
    fn sort<T>(splits: &mut [Split<T>], names: &[String]) {
        splits.sort_by_key(|s| names.iter().position(|n| *n == s.breakdown));
    }
    for (t, def) in out.retention.iter_mut().zip(&cfg.engine.retention) {
        sort(&mut t.breakdowns, &order(&def.breakdowns));
    }
    for (t, def) in out.funnels.iter_mut().zip(&cfg.engine.funnels) {
        sort(&mut t.breakdowns, &order(&def.breakdowns));
    }
    for (t, def) in out.trends.iter_mut().zip(&cfg.engine.trends) {
        sort(&mut t.breakdowns, &order(&def.breakdowns));
    }
    sort(&mut out.activity_breakdowns, &order(&cfg.engine.activity_breakdowns));
    out
}

/// The figures of `events` alone, with the watermark of `max_ts`.
fn model_at(cfg: &Config, events: &[Ev], max_ts: i64) -> Figures {
    let tz: &TimeZone = &cfg.engine.timezone;
    let day =
        |ts: i64| -> jiff::civil::Date { Timestamp::from_millisecond(ts).expect("ts").to_zoned(tz.clone()).date() };
    let events: BTreeSet<Ev> = events.iter().cloned().collect();
    let wm = max_ts - cfg.engine.allowed_lateness_ms;
    let wm_day = day(wm);
    let mut out = Figures { watermark_ms: Some(wm), watermark_date: Some(wm_day.to_string()), ..Figures::default() };

    let users: BTreeSet<u8> = events.iter().map(|e| e.user).collect();
    let days_of = |u: u8, pred: &dyn Fn(&Ev) -> bool| -> BTreeSet<jiff::civil::Date> {
        events.iter().filter(|e| e.user == u && pred(e)).map(|e| day(e.ts)).collect()
    };

    // Activity.
    let mut activity: BTreeMap<jiff::civil::Date, [u64; 4]> = BTreeMap::new();
    for &u in &users {
        let active = days_of(u, &|_| true);
        let first = *active.iter().next().expect("active");
        activity.entry(first).or_default()[0] += 1;
        let mut d = first;
        while d <= wm_day {
            let back = |n: i64| active.iter().any(|a| *a <= d && *a > d - jiff::Span::new().days(n));
            let row = activity.entry(d).or_default();
            row[1] += u64::from(active.contains(&d));
            row[2] += u64::from(back(7));
            row[3] += u64::from(back(30));
            d = d.tomorrow().expect("date");
        }
    }
    let firsts: BTreeMap<u8, jiff::civil::Date> =
        users.iter().map(|&u| (u, *days_of(u, &|_| true).iter().next().expect("active"))).collect();
    let active_on = |u: u8, from: jiff::civil::Date, to: jiff::civil::Date| {
        events.iter().any(|e| e.user == u && day(e.ts) >= from && day(e.ts) < to)
    };
    // Lifecycle of the period [from, to), the one before being [before, from).
    let status = |date: jiff::civil::Date, before: jiff::civil::Date, to: jiff::civil::Date| {
        let mut row = LifecycleRow { date: date.to_string(), new: 0, returning: 0, resurrecting: 0, dormant: 0 };
        for &u in &users {
            let (now, then) = (active_on(u, date, to), active_on(u, before, date));
            match (now, then) {
                (true, true) => row.returning += 1,
                (true, false) if firsts[&u] >= date => row.new += 1,
                (true, false) => row.resurrecting += 1,
                (false, true) => row.dormant += 1,
                (false, false) => {}
            }
        }
        row
    };
    let days = |n: i64| jiff::Span::new().days(n);
    out.stickiness =
        cfg.engine.stickiness_windows.iter().map(|&window| StickinessTable { window, rows: Vec::new() }).collect();
    for (d, [new, dau, wau, mau]) in activity {
        if d <= wm_day && mau > 0 {
            out.activity.push(cohortflow::engine::figures::ActivityRow {
                date: d.to_string(),
                new_users: new,
                dau,
                wau,
                mau,
                known_users: firsts.values().filter(|f| **f <= d).count() as u64,
            });
            out.lifecycle.day.push(status(d, d - days(1), d + days(1)));
            for (t, &window) in out.stickiness.iter_mut().zip(&cfg.engine.stickiness_windows) {
                let mut users_by_k = vec![0u64; window as usize];
                for &u in &users {
                    let from = d - days(i64::from(window) - 1);
                    let k = days_of(u, &|_| true).iter().filter(|a| **a >= from && **a <= d).count();
                    if k > 0 {
                        users_by_k[k - 1] += 1;
                    }
                }
                t.rows.push(StickinessRow { date: d.to_string(), users: users_by_k });
            }
        }
    }
    // Calendar weeks (from the configured start) and months.
    let week_start = cfg.engine.week_start;
    let first_day = *firsts.values().min().expect("users");
    let mut week = first_day.nth_weekday_of_month(1, week_start).expect("weekday");
    while week > first_day {
        week -= days(7);
    }
    loop {
        let active = users.iter().filter(|&&u| active_on(u, week, week + days(7))).count() as u64;
        let before = users.iter().filter(|&&u| active_on(u, week - days(7), week)).count() as u64;
        if week > wm_day {
            break;
        }
        if active > 0 {
            out.weeks.push(PeriodRow { date: week.to_string(), active_users: active });
        }
        if active > 0 || before > 0 {
            out.lifecycle.week.push(status(week, week - days(7), week + days(7)));
        }
        week += days(7);
    }
    let mut month = first_day.first_of_month();
    while month <= wm_day {
        let next = month + jiff::Span::new().months(1);
        let active = users.iter().filter(|&&u| active_on(u, month, next)).count() as u64;
        let previous = month - jiff::Span::new().months(1);
        let before = users.iter().filter(|&&u| active_on(u, previous, month)).count() as u64;
        if active > 0 {
            out.months.push(PeriodRow { date: month.to_string(), active_users: active });
        }
        // Exported where the users' active days reach the month before.
        if (active > 0 || before > 0) && cohortflow::engine::activity::monthly_lifecycle(cfg.engine.history_days) {
            out.lifecycle.month.push(status(month, previous, next));
        }
        month = next;
    }

    // Retention: by day, week or month, brackets, 24-hour windows.
    let week_start = cfg.engine.week_start;
    for def in &cfg.engine.retention {
        let start = |d: jiff::civil::Date| match def.granularity {
            Granularity::Day => d,
            Granularity::Week => {
                let back = (d.weekday().to_monday_zero_offset() - week_start.to_monday_zero_offset()).rem_euclid(7);
                d - days(i64::from(back))
            }
            Granularity::Month => d.first_of_month(),
        };
        // Periods `b.from..=b.to` after the one starting on `p`: first and
        // last day.
        let window = |p: jiff::civil::Date, b: &Bracket| {
            let after = |k: u32| match def.granularity {
                Granularity::Day => p + days(i64::from(k)),
                Granularity::Week => p + days(7 * i64::from(k)),
                Granularity::Month => p + jiff::Span::new().months(i64::from(k)),
            };
            (after(b.from), after(b.to + 1) - days(1))
        };
        let midnight = |d: jiff::civil::Date| d.to_zoned(tz.clone()).expect("zoned").timestamp().as_millisecond();
        let mut rows: BTreeMap<jiff::civil::Date, (u64, Vec<u64>)> = BTreeMap::new();
        for &u in &users {
            let cohort_events = || events.iter().filter(|e| e.user == u && def.cohort_event.matches(e.name));
            let Some(t0) = cohort_events().map(|e| e.ts).min() else {
                continue;
            };
            let cohort = day(t0);
            let returns: Vec<&Ev> = events.iter().filter(|e| e.user == u && def.return_event.matches(e.name)).collect();
            let row = rows.entry(start(cohort)).or_insert_with(|| (0, vec![0; def.periods.len()]));
            row.0 += 1;
            for (i, b) in def.periods.iter().enumerate() {
                let (from, to) = window(start(cohort), b);
                let hit = match def.mode {
                    RetentionMode::On => returns.iter().any(|r| (from..=to).contains(&day(r.ts))),
                    RetentionMode::OnOrAfter => returns.iter().any(|r| day(r.ts) >= from),
                    RetentionMode::Rolling24h => returns.iter().any(|r| {
                        r.ts >= t0 + i64::from(b.from) * 24 * HOUR && r.ts < t0 + i64::from(b.to + 1) * 24 * HOUR
                    }),
                };
                row.1[i] += u64::from(hit);
            }
        }
        out.retention.push(cohortflow::engine::figures::RetentionTable {
            name: def.name.clone(),
            granularity: def.granularity.as_str(),
            mode: def.mode.as_str(),
            periods: def.periods.iter().map(ToString::to_string).collect(),
            breakdowns: Vec::new(),
            cohorts: rows
                .into_iter()
                .filter(|(d, _)| *d <= wm_day)
                .map(|(d, (users, retained))| cohortflow::engine::figures::CohortRow {
                    date: d.to_string(),
                    users,
                    retained,
                    mature: def
                        .periods
                        .iter()
                        .map(|b| match def.mode {
                            RetentionMode::Rolling24h => wm >= midnight(d + days(1)) + i64::from(b.to + 1) * 24 * HOUR,
                            _ => wm >= midnight(window(d, b).1 + days(1)),
                        })
                        .collect(),
                })
                .collect(),
        });
    }

    // Trends: distinct (user, time) and distinct users per day.
    for def in &cfg.engine.trends {
        let matches = |e: &Ev| {
            def.step.event.matches(e.name)
                && def.step.filter.iter().all(|(key, v)| {
                    key == "channel" && matches!(v, FilterValue::Str(s) if Some(s.as_str()) == e.channel)
                })
        };
        // Per day: the (user, time) pairs and the users.
        type Day = (BTreeSet<(u8, i64)>, BTreeSet<u8>);
        let mut by_day: BTreeMap<jiff::civil::Date, Day> = BTreeMap::new();
        for e in events.iter().filter(|e| matches(e)) {
            let (times, who) = by_day.entry(day(e.ts)).or_default();
            times.insert((e.user, e.ts));
            who.insert(e.user);
        }
        out.trends.push(cohortflow::engine::figures::TrendTable {
            name: def.name.clone(),
            events_total: by_day.values().map(|(times, _)| times.len() as u64).sum(),
            rows: by_day
                .iter()
                .filter(|(d, _)| **d <= wm_day)
                .map(|(d, (times, who))| cohortflow::engine::figures::TrendRow {
                    date: d.to_string(),
                    events: times.len() as u64,
                    users: who.len() as u64,
                })
                .collect(),
            breakdowns: Vec::new(),
        });
    }

    // Revenue: distinct (user, event, time, amount) payments.
    if let Some(def) = &cfg.engine.revenue {
        let units = |e: &Ev| e.amount.and_then(|a| AMOUNTS.iter().find(|x| x.0 == a)).and_then(|x| x.1);
        let payments: BTreeSet<(u8, &str, i64, i64)> = events
            .iter()
            .filter(|e| def.events.iter().any(|p| p == e.name))
            .filter_map(|e| Some((e.user, e.name, e.ts, units(e)?)))
            .collect();
        let mut rows: BTreeMap<jiff::civil::Date, (i128, BTreeSet<u8>)> = BTreeMap::new();
        let mut first: BTreeMap<u8, jiff::civil::Date> = BTreeMap::new();
        for &(user, _, ts, units) in &payments {
            let row = rows.entry(day(ts)).or_default();
            row.0 += i128::from(units);
            if units > 0 {
                row.1.insert(user);
                let d = first.entry(user).or_insert(day(ts));
                *d = (*d).min(day(ts));
            }
        }
        // N-day LTV: per cohort and N, the payments from the cohort day
        // through day D+N, and the users with a positive one.
        let mut cohorts = Vec::new();
        for r in cfg.engine.retention.iter().filter(|r| r.revenue) {
            let days: Vec<u32> = r.periods.iter().map(|b| b.from).collect();
            let mut rows: BTreeMap<jiff::civil::Date, (Vec<i128>, Vec<u64>)> = BTreeMap::new();
            for &u in &users {
                let Some(c) =
                    events.iter().filter(|e| e.user == u && r.cohort_event.matches(e.name)).map(|e| day(e.ts)).min()
                else {
                    continue;
                };
                let mine: Vec<_> = payments.iter().filter(|p| p.0 == u).collect();
                let cells: Vec<(i128, bool)> = days
                    .iter()
                    .map(|&n| {
                        let within = mine
                            .iter()
                            .filter(|p| day(p.2) >= c && day(p.2) <= c + jiff::Span::new().days(i64::from(n)));
                        within.fold((0, false), |(s, paid), p| (s + i128::from(p.3), paid || p.3 > 0))
                    })
                    .collect();
                if cells.iter().all(|&(s, paid)| s == 0 && !paid) {
                    continue;
                }
                let row = rows.entry(c).or_insert_with(|| (vec![0; days.len()], vec![0; days.len()]));
                for (i, (s, paid)) in cells.into_iter().enumerate() {
                    row.0[i] += s;
                    row.1[i] += u64::from(paid);
                }
            }
            cohorts.push(cohortflow::engine::figures::CohortRevenueTable {
                name: r.name.clone(),
                days,
                rows: rows
                    .into_iter()
                    .filter(|(d, (units, paying))| {
                        *d <= wm_day && (units.iter().any(|&x| x != 0) || paying.iter().any(|&x| x != 0))
                    })
                    .map(|(d, (units, paying_users))| cohortflow::engine::figures::CohortRevenueRow {
                        date: d.to_string(),
                        units,
                        paying_users,
                    })
                    .collect(),
            });
        }
        let paid = payments.iter().filter(|p| p.3 > 0).map(|p| i128::from(p.3)).sum();
        let refunded = payments.iter().filter(|p| p.3 < 0).map(|p| -i128::from(p.3)).sum();
        out.revenue = Some(cohortflow::engine::figures::RevenueFigures {
            scale: def.scale,
            rows: rows
                .iter()
                .filter(|(d, _)| **d <= wm_day)
                .map(|(d, (units, paying))| cohortflow::engine::figures::RevenueRow {
                    date: d.to_string(),
                    units: *units,
                    paying_users: paying.len() as u64,
                    new_paying_users: first.values().filter(|f| *f == d).count() as u64,
                })
                .filter(|r| r.units != 0 || r.paying_users != 0 || r.new_paying_users != 0)
                .collect(),
            paid_units: paid,
            refunded_units: refunded,
            rejected: [0; 4],
            cohorts,
        });
    }

    // Funnels: exhaustive search over chains.
    for def in &cfg.engine.funnels {
        let k_steps = def.steps.len();
        let matches = |e: &Ev, k: usize| {
            let step = &def.steps[k];
            step.event.matches(e.name)
                && step.filter.iter().all(|(key, v)| {
                    key == "channel" && matches!(v, FilterValue::Str(s) if Some(s.as_str()) == e.channel)
                })
        };
        let mut rows: BTreeMap<jiff::civil::Date, Vec<u64>> = BTreeMap::new();
        let mut conversions = vec![0u64; k_steps];
        for &u in &users {
            let evs: Vec<&Ev> = events.iter().filter(|e| e.user == u).collect();
            let entry_days: BTreeSet<_> = evs.iter().filter(|e| matches(e, 0)).map(|e| day(e.ts)).collect();
            for d in entry_days {
                let mut best = 0;
                for (i, e1) in evs.iter().enumerate() {
                    if matches(e1, 0) && day(e1.ts) == d {
                        let mut used = vec![i];
                        best = best.max(extend(
                            &evs,
                            &matches,
                            def.mode,
                            def.window_ms,
                            e1.ts,
                            e1.ts,
                            1,
                            k_steps,
                            &mut used,
                        ));
                    }
                }
                let row = rows.entry(d).or_insert_with(|| vec![0; k_steps]);
                for k in 0..best {
                    row[k] += 1;
                    conversions[k] += 1;
                }
            }
        }
        out.funnels.push(cohortflow::engine::figures::FunnelTable {
            name: def.name.clone(),
            steps: def.steps.iter().map(|s| s.label().to_owned()).collect(),
            window_seconds: def.window_ms as f64 / 1000.0,
            mode: def.mode.as_str(),
            entries: rows
                .into_iter()
                .filter(|(d, _)| *d <= wm_day)
                .map(|(d, users)| cohortflow::engine::figures::FunnelRow { date: d.to_string(), users })
                .collect(),
            conversions_total: conversions,
            time_to_convert: Vec::new(),
            histograms: Vec::new(),
            breakdowns: Vec::new(),
        });
    }
    out
}

/// The longest chain continuing from step `k` (0-based) after an event at
/// `prev`, started at `start`.
#[allow(clippy::too_many_arguments)]
fn extend(
    evs: &[&Ev],
    matches: &dyn Fn(&Ev, usize) -> bool,
    mode: FunnelMode,
    window: i64,
    start: i64,
    prev: i64,
    k: usize,
    steps: usize,
    used: &mut Vec<usize>,
) -> usize {
    if k == steps {
        return k;
    }
    let mut best = k;
    for (j, e) in evs.iter().enumerate() {
        let time_ok = match mode {
            FunnelMode::StrictIncrease => e.ts > prev,
            _ => e.ts >= prev,
        } && e.ts <= start + window;
        if !time_ok || !matches(e, k) {
            continue;
        }
        if mode == FunnelMode::StrictOnce && used.contains(&j) {
            continue;
        }
        used.push(j);
        best = best.max(extend(evs, matches, mode, window, start, e.ts, k + 1, steps, used));
        used.pop();
        if best == steps {
            break;
        }
    }
    best
}

/// Over the values of each breakdown, every split figure sums to the
/// figure itself (so no user is under two values), row by row.
fn splits_sum_to_totals(f: &Figures) -> Result<(), TestCaseError> {
    fn sums<T, K: Ord, V: Default + std::ops::AddAssign + Copy>(
        rows: impl Iterator<Item = T>,
        key: impl Fn(&T) -> K,
        counts: impl Fn(&T) -> Vec<V>,
    ) -> BTreeMap<K, Vec<V>> {
        let mut out: BTreeMap<K, Vec<V>> = BTreeMap::new();
        for r in rows {
            let c = counts(&r);
            let sum = out.entry(key(&r)).or_insert_with(|| vec![V::default(); c.len()]);
            for (s, x) in sum.iter_mut().zip(c) {
                *s += x;
            }
        }
        out
    }
    let cohort = |r: &&CohortRow| std::iter::once(r.users).chain(r.retained.iter().copied()).collect::<Vec<u64>>();
    for t in &f.retention {
        let total = sums(t.cohorts.iter(), |r| r.date.clone(), cohort);
        for split in &t.breakdowns {
            let parts = sums(split.values.iter().flat_map(|v| &v.rows), |r| r.date.clone(), cohort);
            prop_assert_eq!(&parts, &total, "retention {} by {}", &t.name, &split.breakdown);
        }
    }
    for t in &f.funnels {
        let total = sums(t.entries.iter(), |r| r.date.clone(), |r| r.users.clone());
        for split in &t.breakdowns {
            let parts = sums(split.values.iter().flat_map(|v| &v.rows), |r| r.date.clone(), |r| r.users.clone());
            prop_assert_eq!(&parts, &total, "funnel {} by {}", &t.name, &split.breakdown);
        }
    }
    for t in &f.trends {
        let total = sums(t.rows.iter(), |r| r.date.clone(), |r| vec![r.events, r.users]);
        for split in &t.breakdowns {
            let parts =
                sums(split.values.iter().flat_map(|v| &v.rows), |r| r.date.clone(), |r| vec![r.events, r.users]);
            prop_assert_eq!(&parts, &total, "trend {} by {}", &t.name, &split.breakdown);
        }
    }
    let total = sums(f.activity.iter(), |r| r.date.clone(), |r| vec![r.new_users, r.dau, r.wau, r.mau]);
    for split in &f.activity_breakdowns {
        let parts = sums(
            split.values.iter().flat_map(|v| &v.rows),
            |r| r.date.clone(),
            |r| vec![r.new_users, r.dau, r.wau, r.mau],
        );
        prop_assert_eq!(&parts, &total, "activity by {}", &split.breakdown);
    }
    Ok(())
}

/// What must agree: everything but the counters (duplicates are counted as
/// read) and the time-to-convert quantiles (approximate by design).
fn comparable(mut f: Figures) -> Figures {
    f.counters = Default::default();
    f.max_event_ms = None;
    f.tracked_users = 0;
    f.state_bytes = 0;
    f.funnel_store_fill = 0.0;
    // Counted as read, duplicates included, like the counters.
    if let Some(r) = &mut f.revenue {
        r.rejected = [0; 4];
    }
    for t in &mut f.funnels {
        t.time_to_convert.clear();
        t.histograms.clear();
    }
    f
}

/// Events, a third of which take the user and time of an earlier one: the
/// same millisecond arriving in any order of steps.
fn events() -> impl Strategy<Value = Vec<Ev>> {
    events_of(event())
}

fn events_of(event: impl Strategy<Value = Ev>) -> impl Strategy<Value = Vec<Ev>> {
    prop::collection::vec((event, prop::option::weighted(0.3, any::<prop::sample::Index>())), 1..40).prop_map(|drawn| {
        let mut out: Vec<Ev> = Vec::with_capacity(drawn.len());
        for (mut ev, same_as) in drawn {
            if let Some(i) = same_as.filter(|_| !out.is_empty()) {
                let earlier = &out[i.index(out.len())];
                (ev.user, ev.ts) = (earlier.user, earlier.ts);
            }
            out.push(ev);
        }
        out
    })
}

fn scenario() -> impl Strategy<Value = (Vec<Ev>, &'static str, &'static str, FunnelMode)> {
    (
        events(),
        prop::sample::select(vec!["UTC", "Asia/Shanghai", "America/New_York"]),
        prop::sample::select(vec!["15m", "1h", "6h", "1d"]),
        prop::sample::select(vec![FunnelMode::Default, FunnelMode::StrictOnce, FunnelMode::StrictIncrease]),
    )
}

/// The definitions the ClickHouse and Kafka cross-checks run, the one
/// fixture they share.
const FIXTURE: &str = include_str!("fixtures/definitions.toml");

/// Events over the fixture's names and channels.
fn fixture_events() -> impl Strategy<Value = Vec<Ev>> {
    events_of(event_of(
        vec!["signup", "verify", "pay", "view", "add_to_cart", "order"],
        vec!["ads", "organic", "referral"],
    ))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn the_cross_checks_definitions_equal_the_naive_model(events in fixture_events()) {
        let cfg = Config::from_toml_str(&format!("history_days = 63\nweek_start = \"tuesday\"\n{FIXTURE}")).expect("fixture");
        let mut sorted = events.clone();
        sorted.sort_by_key(|e| e.ts);
        prop_assert_eq!(comparable(run(&cfg, &sorted)), comparable(model(&cfg, &events)));
    }

    #[test]
    fn engine_equals_the_naive_model((events, tz, window, mode) in scenario()) {
        let cfg = Config::from_toml_str(&config(tz, window, mode)).expect("config");
        let mut sorted = events.clone();
        sorted.sort_by_key(|e| e.ts);
        let got = comparable(run(&cfg, &sorted));
        splits_sum_to_totals(&got)?;
        let want = comparable(model(&cfg, &events));
        prop_assert_eq!(got, want);
    }

    #[test]
    fn arrival_order_and_replays_change_nothing(
        (events, tz, window, mode) in scenario(),
        seed in any::<u64>(),
        dup_every in 1usize..5,
    ) {
        let cfg = Config::from_toml_str(&config(tz, window, mode)).expect("config");
        let mut sorted = events.clone();
        sorted.sort_by_key(|e| e.ts);
        let reference = run(&cfg, &sorted);

        // Any permutation: all events are within the horizon of each other.
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut shuffled = events.clone();
        rng.shuffle(&mut shuffled);
        let shuffled_figures = run(&cfg, &shuffled);
        prop_assert_eq!(&shuffled_figures.counters, &reference.counters);
        prop_assert_eq!(comparable(shuffled_figures), comparable(reference.clone()));

        // At-least-once delivery: some events again, anywhere.
        let mut replayed = shuffled.clone();
        for (i, e) in shuffled.iter().enumerate() {
            if i % dup_every == 0 {
                let at = rng.usize(..=replayed.len());
                replayed.insert(at, e.clone());
            }
        }
        prop_assert_eq!(comparable(run(&cfg, &replayed)), comparable(reference));
    }
}

/// One funnel and one retention definition, with a cap of `cap` funnel
/// events a user.
fn capped_config(window: &str, mode: FunnelMode, cap: usize) -> String {
    format!(
        r#"
        timezone = "UTC"
        max_funnel_events_per_user = {cap}
        [[retention]]
        name = "all"
        days = [1, 2]
        [[funnel]]
        name = "abc"
        window = "{window}"
        mode = "{mode}"
        steps = ["a", "b", "c"]
        "#,
        mode = mode.as_str()
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// With a cap, the engine keeps each user's first `cap` distinct
    /// funnel events in arrival order (a replay of one kept changes
    /// nothing, and once the user is at the cap is counted as left out)
    /// and leaves out and counts the others: its funnels are the model's
    /// over the kept events alone, with no trace of the others, and every
    /// other figure the model's over all of them.
    #[test]
    fn a_cap_keeps_each_users_first_funnel_events(
        events in events(),
        window in prop::sample::select(vec!["15m", "1h", "1d"]),
        mode in prop::sample::select(vec![FunnelMode::Default, FunnelMode::StrictOnce, FunnelMode::StrictIncrease]),
        cap in 1usize..6,
        seed in any::<u64>(),
    ) {
        // Without props, an event's name and time tell it from another.
        let mut arrived: Vec<Ev> = events.into_iter().map(|e| Ev { channel: None, amount: None, ..e }).collect();
        fastrand::Rng::with_seed(seed).shuffle(&mut arrived);
        let mut kept: BTreeMap<u8, BTreeSet<(i64, &str)>> = BTreeMap::new();
        let mut left_out = 0;
        // Left out, an event becomes one no funnel step matches ("d"), so
        // that the times, hence the watermark, stay the same.
        let as_kept: Vec<Ev> = arrived
            .iter()
            .map(|e| {
                let hits = kept.entry(e.user).or_default();
                if e.name == "d" {
                    e.clone()
                } else if hits.len() < cap {
                    hits.insert((e.ts, e.name));
                    e.clone()
                } else {
                    left_out += 1;
                    Ev { name: "d", ..e.clone() }
                }
            })
            .collect();
        let cfg = Config::from_toml_str(&capped_config(window, mode, cap)).expect("config");
        let mut got = run(&cfg, &arrived);
        prop_assert_eq!(got.funnel_capped, left_out);
        got.funnel_capped = 0;
        let want = Figures { funnels: model(&cfg, &as_kept).funnels, ..model(&cfg, &arrived) };
        prop_assert_eq!(comparable(got), comparable(want));
    }
}

#[test]
fn model_sanity_on_a_known_case() {
    // u1: a on day 0 and b on days 1, 2; funnel a->b->c within 1h.
    let cfg = Config::from_toml_str(&config("UTC", "1h", FunnelMode::Default)).expect("config");
    let day = 24 * HOUR;
    let ev = |user, name, ts| Ev { user, name, ts: START + ts, channel: None, amount: None };
    let events = vec![
        ev(1, "a", 0),
        ev(1, "b", day + 10),
        ev(1, "b", 2 * day),
        ev(2, "a", day),
        ev(2, "b", day + HOUR),
        ev(2, "c", day + HOUR),
    ];
    let f = model(&cfg, &events);
    assert_eq!(f.funnels[0].conversions_total, vec![2, 1, 1]);
    assert_eq!(f.retention[0].cohorts[0].retained, vec![1, 1, 0]);
    assert_eq!(comparable(run(&cfg, &events)), comparable(f));
    let seen: HashSet<_> = events.iter().map(|e| e.user).collect();
    assert_eq!(seen.len(), 2);
}

#[test]
fn model_sanity_on_weeks_brackets_and_windows() {
    let cfg = Config::from_toml_str(&config("UTC", "1h", FunnelMode::Default)).expect("config");
    let day = 24 * HOUR;
    let ev = |user, name, ts| Ev { user, name, ts: START + ts, channel: None, amount: None };
    // Sunday 2026-09-27, Monday 09-28, Wednesday 09-30, Friday 10-02.
    let events = vec![ev(1, "a", 0), ev(1, "b", day), ev(1, "b", 3 * day + HOUR), ev(1, "c", 5 * day)];
    let f = model(&cfg, &events);
    let table = |name: &str| f.retention.iter().find(|t| t.name == name).expect("definition");
    let row = |name: &str| (table(name).cohorts[0].date.clone(), table(name).cohorts[0].retained.clone());
    // A return at t0 + 24 h exactly is in window 1; at t0 + 73 h in 3-5.
    assert_eq!(row("rolling_ab"), ("2026-09-27".into(), vec![1, 0, 1]));
    assert_eq!(row("brackets"), ("2026-09-27".into(), vec![1, 1, 1]));
    assert_eq!(table("brackets").periods, ["1", "2-4", "5-6"]);
    assert_eq!(row("weekly"), ("2026-09-21".into(), vec![1]));
    assert_eq!(row("monthly"), ("2026-09-01".into(), vec![1]));
    assert_eq!(row("monthly_ca"), ("2026-10-01".into(), vec![0]));
    // Active in September (first seen) and October (returning).
    let months: Vec<_> = f.lifecycle.month.iter().map(|r| (r.date.as_str(), r.new, r.returning)).collect();
    assert_eq!(months, [("2026-09-01", 1, 0), ("2026-10-01", 0, 1)]);
    assert_eq!(comparable(run(&cfg, &events)), comparable(f));
}

#[test]
fn trends_count_a_users_events_at_one_time_once() {
    let cfg = Config::from_toml_str(&config("UTC", "1h", FunnelMode::Default)).expect("config");
    let ev = |user, name, ts, channel| Ev { user, name, ts: START + ts, channel, amount: None };
    let events = vec![
        ev(1, "a", 0, None),
        ev(1, "a", 0, None),
        ev(1, "a", HOUR, Some("x")),
        ev(2, "a", HOUR, None),
        ev(1, "b", 2 * HOUR, Some("x")),
        ev(1, "b", 2 * HOUR, Some("y")),
    ];
    let f = model(&cfg, &events);
    let row = |name: &str| {
        let t = f.trends.iter().find(|t| t.name == name).expect("trend");
        (t.rows[0].events, t.rows[0].users, t.events_total)
    };
    assert_eq!(row("ta"), (3, 2, 3));
    assert_eq!(row("tb_x"), (1, 1, 1));
    assert_eq!(row("tall"), (4, 2, 4));
    assert_eq!(comparable(run(&cfg, &events)), comparable(f));
}

#[test]
fn revenue_counts_each_payment_once_exactly() {
    let cfg = Config::from_toml_str(&config("UTC", "1h", FunnelMode::Default)).expect("config");
    let pay = |user, name, ts, amount| Ev { user, name, ts: START + ts, channel: None, amount: Some(amount) };
    let events = vec![
        pay(1, "c", 0, "12.30"),
        pay(1, "c", 0, "12.30"),
        pay(1, "d", 0, "\"0.10\""),
        pay(2, "c", HOUR, "-5"),
        pay(2, "c", 2 * HOUR, "1.005"),
        pay(2, "c", 3 * HOUR, "\"x\""),
    ];
    let f = model(&cfg, &events);
    let r = f.revenue.as_ref().expect("revenue");
    assert_eq!((r.rows[0].units, r.rows[0].paying_users, r.rows[0].new_paying_users), (740, 1, 1));
    assert_eq!((r.paid_units, r.refunded_units), (1240, 500));
    // Both first seen that day: the 2-day LTV of the day's cohort.
    let all = r.cohorts.iter().find(|t| t.name == "ltv_all").expect("ltv_all");
    assert_eq!((all.rows[0].units.clone(), all.rows[0].paying_users.clone()), (vec![740], vec![1]));
    let got = run(&cfg, &events);
    let g = got.revenue.as_ref().expect("revenue");
    // absent, not_a_number, too_many_decimals, out_of_range
    assert_eq!(g.rejected, [0, 1, 1, 0]);
    assert_eq!(comparable(got), comparable(f));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// The days' revenue adds up to what the counters grew by: payments
    /// less refunds, every day held counted.
    #[test]
    fn the_days_revenue_sums_to_the_counters((events, tz, window, mode) in scenario()) {
        let cfg = Config::from_toml_str(&config(tz, window, mode)).expect("config");
        let mut engine = Engine::new(Arc::new(cfg.engine.clone()));
        for e in &events {
            prop_assert!(engine.apply(e.json().as_bytes(), None, START + 30 * 24 * HOUR).is_ok());
        }
        let f = engine.figures_all();
        let r = f.revenue.expect("revenue");
        let days: i128 = r.rows.iter().map(|row| row.units).sum();
        prop_assert_eq!(days, r.paid_units - r.refunded_units);
    }
}

/// A random configuration in TOML: any number of retention definitions
/// (past the most the engine takes), a day anywhere in `u32` (the largest
/// ones once wrapped round to −1), any `history_days`.
fn any_config() -> impl Strategy<Value = String> {
    let def = (
        prop::sample::select(vec!["*", "a", "b", "c", "d"]),
        prop::sample::select(vec!["*", "a", "b", "c", "d"]),
        prop::collection::btree_set(1u32..5, 1..4),
        prop::sample::select(vec!["on", "on_or_after", "rolling_24h"]),
        prop::sample::select(vec!["day", "week", "month"]),
        // A bracket from a drawn day on, maybe overlapping the next one.
        prop::option::weighted(0.3, 0u32..3),
    );
    (
        prop_oneof![4 => 11u32..=90, 1 => prop::sample::select(vec![0, 1, 91, 4_294_967_295])],
        prop_oneof![1 => prop::collection::vec(def.clone(), 1..6), 1 => prop::collection::vec(def, 63..70)],
        prop::option::weighted(
            0.3,
            prop::sample::select(vec![30, 87, 88, 89, 2_147_483_647, 4_294_967_294, 4_294_967_295]),
        ),
    )
        .prop_map(|(history, defs, far_day)| {
            let mut text = format!("history_days = {history}\n");
            for (i, (cohort, ret, mut days, mode, granularity, bracket)) in defs.into_iter().enumerate() {
                if i == 0 {
                    days.extend(far_day);
                }
                let mut days: Vec<String> = days.into_iter().map(|d| d.to_string()).collect();
                if let Some(width) = bracket {
                    let first = days[0].parse::<u64>().unwrap_or(1);
                    days[0] = format!("\"{first}-{}\"", first + u64::from(width));
                }
                let key = if granularity == "day" { "days" } else { "periods" };
                text.push_str(&format!(
                    "[[retention]]\nname = \"r{i}\"\ncohort_event = \"{cohort}\"\nreturn_event = \"{ret}\"\n\
                     {key} = [{}]\nmode = \"{mode}\"\ngranularity = \"{granularity}\"\n",
                    days.join(", ")
                ));
            }
            text
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// No configuration that passes validation gives figures other than
    /// the naive model's: a value the engine cannot hold is refused with
    /// its key named, never wrapped or aliased.
    #[test]
    fn any_accepted_config_gives_the_models_figures(text in any_config(), events in events()) {
        let cfg = match Config::from_toml_str(&text) {
            Ok(cfg) => cfg,
            Err(e) => {
                let message = e.to_string();
                prop_assert!(message.contains("`history_days`") || message.contains("`retention"), "{}", message);
                return Ok(());
            }
        };
        let mut sorted = events.clone();
        sorted.sort_by_key(|e| e.ts);
        prop_assert_eq!(comparable(run(&cfg, &sorted)), comparable(model(&cfg, &events)));
    }
}
