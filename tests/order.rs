//! Long runs: 60 days of generated traffic, so the horizon moves, old state
//! is dropped and dated series roll off; arrival order shuffled within the
//! allowed lateness and events replayed must still give identical figures.

use std::sync::Arc;

use cohortflow::config::Config;
use cohortflow::engine::Engine;
use cohortflow::engine::figures::Figures;
use cohortflow::event::{FieldNames, decode};
use cohortflow::source::demo::{DEMO_CONFIG, Generator};

const DAY: i64 = 86_400_000;
const START: i64 = 1_785_000_000_000; // 2026-07-25

fn lines(days: i64) -> Vec<Vec<u8>> {
    let mut g = Generator::new(11, START, 400.0);
    let mut out = Vec::new();
    g.advance_to(START + days * DAY, &mut out);
    out
}

fn run(cfg: &Config, lines: &[Vec<u8>]) -> Figures {
    let mut engine = Engine::new(Arc::new(cfg.engine.clone()));
    let now = START + 100 * DAY;
    for l in lines {
        let _ = engine.apply(l, None, now);
    }
    engine.figures()
}

fn without_counters(mut f: Figures) -> Figures {
    f.counters = Default::default();
    // Amounts not counted are counted as read, replays included, as
    // rejected messages are.
    if let Some(r) = &mut f.revenue {
        r.rejected = [0; 4];
    }
    f.state_bytes = 0;
    f.funnel_store_fill = 0.0;
    for t in &mut f.funnels {
        t.time_to_convert.clear();
        t.histograms.clear();
    }
    f
}

#[test]
fn order_within_lateness_and_replays_do_not_change_figures() {
    let cfg = Config::from_toml_str(&format!("history_days = 32\nexport_days = 20\n{DEMO_CONFIG}")).expect("config");
    let sorted_lines = {
        let mut l = lines(60);
        let names = FieldNames::default();
        l.sort_by_key(|line| decode(line, &names, None).map(|e| e.ts_ms).unwrap_or(0));
        l
    };
    let reference = run(&cfg, &sorted_lines);
    assert_eq!(reference.activity.len(), 20);
    assert!(reference.counters.ingested > 100_000, "{}", reference.counters.ingested);
    assert!(reference.counters.rejected.iter().sum::<u64>() > 0);

    // Shuffle inside blocks of consecutive lines spanning less than the
    // allowed lateness (10 min): any order within a block is legal.
    let names = FieldNames::default();
    let mut rng = fastrand::Rng::with_seed(5);
    let mut shuffled = Vec::with_capacity(sorted_lines.len());
    let mut block: Vec<Vec<u8>> = Vec::new();
    let mut block_start = None;
    for line in &sorted_lines {
        let ts = decode(line, &names, None).map(|e| e.ts_ms).ok();
        if let (Some(ts), Some(start)) = (ts, block_start) {
            if ts - start >= 9 * 60_000 {
                rng.shuffle(&mut block);
                shuffled.append(&mut block);
                block_start = Some(ts);
            }
        } else if block_start.is_none() {
            block_start = ts;
        }
        block.push(line.clone());
    }
    rng.shuffle(&mut block);
    shuffled.append(&mut block);
    assert_ne!(shuffled, sorted_lines);
    let got = run(&cfg, &shuffled);
    assert_eq!(got.counters, reference.counters);
    assert_eq!(without_counters(got), without_counters(reference.clone()));

    // Every 7th line delivered twice, a little later.
    let mut replayed = Vec::with_capacity(shuffled.len() * 8 / 7);
    for (i, line) in shuffled.iter().enumerate() {
        replayed.push(line.clone());
        if i % 7 == 0 && i >= 50 {
            replayed.push(shuffled[i - 50].clone());
        }
    }
    assert_eq!(without_counters(run(&cfg, &replayed)), without_counters(reference));
}

#[test]
fn shards_keyed_by_user_merge_to_the_single_engine_figures() {
    let cfg = Config::from_toml_str(DEMO_CONFIG).expect("config");
    let all = lines(45);
    let single = run(&cfg, &all);
    let names = FieldNames::default();
    let mut shards: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 4];
    for line in all {
        // Hostile lines have no user: any shard will do.
        let shard = decode(&line, &names, None)
            .map(|e| e.user_id.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize)) % 4)
            .unwrap_or(0);
        shards[shard].push(line);
    }
    let parts = shards
        .iter()
        .map(|lines| {
            let mut engine = Engine::new(Arc::new(cfg.engine.clone()));
            for l in lines {
                let _ = engine.apply(l, None, START + 100 * DAY);
            }
            engine.figures_all()
        })
        .collect();
    let mut merged = cohortflow::engine::merge(parts, &cfg.engine);
    let mut single = single;
    (merged.state_bytes, merged.funnel_store_fill) = (0, 0.0);
    (single.state_bytes, single.funnel_store_fill) = (0, 0.0);
    assert_eq!(merged.counters, single.counters);
    assert!(!merged.funnels[0].entries.is_empty());
    assert_eq!(merged, single);
}

/// A late event at the edge of the horizon: the entry day it reaches is
/// recomputed from the hits kept for it, which must include that day's
/// earlier chain (here a → b at 03:00 and 04:00, long before the horizon
/// minus the window), or the day's users would be counted twice.
#[test]
fn late_event_at_the_horizon_counts_its_entry_day_once() {
    let cfg = Config::from_toml_str(
        "history_days = 3\nallowed_lateness = \"0s\"\nexport_days = 10\n\
         [[retention]]\nname = \"r\"\ndays = [1]\n\
         [[funnel]]\nname = \"f\"\nwindow = \"1d\"\nsteps = [\"a\", \"b\"]\n",
    )
    .expect("config");
    let d0 = 20_660 * DAY;
    let h = 3_600_000;
    let event = |user: &str, name: &str, ts: i64| format!(r#"{{"user_id":"{user}","event":"{name}","ts":{ts}}}"#);
    let lines: Vec<Vec<u8>> = [
        event("u", "a", d0 + 3 * h),
        event("u", "b", d0 + 4 * h),
        event("u", "a", d0 + 20 * h),
        // The watermark moves to day 4, 09:00: the horizon is day 1, 09:00.
        event("v", "x", d0 + 4 * DAY + 9 * h),
        // Accepted (at the horizon or after), and within a day of day 0's
        // 20:00 step 1.
        event("u", "b", d0 + DAY + 9 * h + h / 2),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    let figures = run(&cfg, &lines);
    assert_eq!(figures.counters.ingested, 5);
    let rows = &figures.funnels[0].entries;
    let day0 = rows.iter().find(|r| r.date == "2026-07-26").expect("day 0 row");
    assert_eq!(day0.users, vec![1, 1], "{rows:?}");
    assert_eq!(figures.funnels[0].conversions_total, vec![1, 1]);
}

/// A late event at the horizon must still see the user's active day 29
/// days before it, or its day would be counted as joining a 30-day (MAU)
/// window the user was already in: per-user day sets span `history_days`
/// plus 32 days (64 days up to 32 days of history, else 128). Same figures
/// in time order and with that event last, for histories on both sides of
/// the switch, in UTC and across a spring DST change (a 23-hour day puts
/// the horizon a calendar day further back: the tightest case).
#[test]
fn late_event_at_the_horizon_sees_the_month_behind_it() {
    // 2026-03-20, 00:00:30 in New York (UTC-4 since the change of March 8).
    let first_second = 20_532 * DAY + 4 * 3_600_000 + 30_000;
    for history in [3u32, 32, 33, 60, 90] {
        for zone in ["UTC", "America/New_York"] {
            let cfg = Config::from_toml_str(&format!(
                "timezone = \"{zone}\"\nhistory_days = {history}\nallowed_lateness = \"1d\"\nexport_days = 400\n\
                 [[retention]]\nname = \"ab\"\ncohort_event = \"a\"\nreturn_event = \"b\"\ndays = [1]\n"
            ))
            .expect("config");
            let newest = first_second;
            // Just inside the horizon: the newest time minus the lateness
            // minus the history.
            let late = newest - DAY - i64::from(history) * DAY + 60_000;
            let event = |user: &str, name: &str, ts: i64| {
                format!(r#"{{"user_id":"{user}","event":"{name}","ts":{ts}}}"#).into_bytes()
            };
            let before = event("u", "a", late - 29 * DAY);
            // The same user's latest day: what its day set is anchored at.
            let newest = event("u", "x", newest);
            let late = event("u", "b", late);
            let feed = |lines: [&Vec<u8>; 3]| {
                let mut engine = Engine::new(Arc::new(cfg.engine.clone()));
                for l in lines {
                    engine.apply(l, None, first_second + DAY).expect("accepted");
                }
                without_counters(engine.figures_all())
            };
            assert_eq!(
                feed([&before, &late, &newest]),
                feed([&before, &newest, &late]),
                "history_days = {history} in {zone}"
            );
        }
    }
}
