//! `cohortflow demo` as a user runs it: a real process serving HTTP on
//! 127.0.0.1, scraped over a real socket.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Process, get, spawn_serving};

fn sum(metrics: &str, prefix: &str) -> f64 {
    metrics.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// The JSON answer of `path`, which must be a 200.
fn api(addr: &str, path: &str) -> serde_json::Value {
    let (status, body) = get(addr, path).unwrap_or_else(|| panic!("{path}: no answer"));
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

#[test]
fn demo_serves_cohorts_retention_and_funnels() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cohortflow"));
    cmd.args(["demo", "--listen", "127.0.0.1:0", "--backfill-days", "12", "--users-per-day", "800"]);
    let (child, addr) = spawn_serving(cmd);
    let _daemon = Process(child);

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some((200, _)) = get(&addr, "/readyz") {
            break;
        }
        assert!(Instant::now() < deadline, "demo never became ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(get(&addr, "/healthz").expect("healthz").0, 200);

    let (status, metrics) = get(&addr, "/metrics").expect("scrape");
    assert_eq!(status, 200);
    assert!(sum(&metrics, "cohortflow_cohort_users{retention=\"new_users\"") > 1000.0);
    assert!(sum(&metrics, "cohortflow_retained_users{retention=\"new_users\"") > 100.0);
    let d1: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("cohortflow_retained_users{") && l.contains("day=\"1\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(d1 > 100.0, "D1 retention series are empty");
    assert!(sum(&metrics, "cohortflow_funnel_users{funnel=\"checkout\",step=\"3\"") > 10.0);
    assert!(sum(&metrics, "cohortflow_active_users{window=\"30d\"") > 1000.0);
    assert!(sum(&metrics, "cohortflow_events_rejected_total") > 0.0);
    assert!(sum(&metrics, "cohortflow_events_ingested_total") > 10_000.0);
    assert!(metrics.contains("cohortflow_retention_latest_ratio{retention=\"new_users\",day=\"1\"}"));
    assert!(metrics.contains("# TYPE cohortflow_funnel_time_to_convert_seconds summary"));

    let json = api(&addr, "/api/v1/retention");
    let cohorts = json["retention"][0]["cohorts"].as_array().expect("cohorts");
    assert!(cohorts.len() >= 10, "{}", cohorts.len());
    assert!(cohorts.iter().all(|c| c["retained"].as_array().map(Vec::len) == Some(5)));
    let json = api(&addr, "/api/v1/funnels");
    assert_eq!(json["funnels"][0]["name"], "checkout");
    assert!(!json["funnels"][0]["entries"].as_array().expect("entries").is_empty());

    // Calendar periods, lifecycle and stickiness, over HTTP as in the text.
    assert!(sum(&metrics, "cohortflow_active_users{window=\"week\"") > 1000.0);
    assert!(sum(&metrics, "cohortflow_known_users{") > 1000.0);
    assert!(sum(&metrics, "cohortflow_lifecycle_users{granularity=\"week\",status=\"returning\"") > 100.0);
    assert!(sum(&metrics, "cohortflow_stickiness_users{window=\"7d\",days=\"1\"") > 100.0);
    let json = api(&addr, "/api/v1/lifecycle");
    let weeks = json["lifecycle"]["week"].as_array().expect("weeks");
    assert!(weeks.len() >= 2, "{}", weeks.len()); // 12 days: two or three weeks
    assert!(weeks.iter().all(|w| ["new", "returning", "resurrecting", "dormant"].iter().all(|s| w[s].is_u64())));
    // The demo's 35 days of history hold the month before each day's.
    let months = json["lifecycle"]["month"].as_array().expect("months");
    assert!(!months.is_empty() && months.iter().all(|m| m["date"].as_str().is_some_and(|d| d.ends_with("-01"))));
    let json = api(&addr, "/api/v1/stickiness");
    assert_eq!(json["stickiness"][0]["window"], 7);
    let rows = json["stickiness"][0]["rows"].as_array().expect("rows");
    assert!(!rows.is_empty() && rows.iter().all(|r| r["users"].as_array().map(Vec::len) == Some(7)));

    // One calendar table at a time, and a clear refusal of an unknown one.
    let json = api(&addr, "/api/v1/activity?granularity=week");
    assert_eq!(json["granularity"], "week");
    assert!(json["rows"].as_array().is_some_and(|r| r.len() >= 2 && r.iter().all(|w| w["active_users"].is_u64())));
    let (status, body) = get(&addr, "/api/v1/activity?granularity=day").expect("api");
    assert_eq!(status, 200);
    assert!(body.contains("\"dau\""), "{body}");
    let (status, body) = get(&addr, "/api/v1/activity?granularity=fortnight").expect("api");
    assert_eq!(status, 400);
    assert!(body.contains("fortnight"), "{body}");

    // Trends: orders per day, from fewer users than orders, and the
    // filtered one under the whole.
    let orders = sum(&metrics, "cohortflow_trend_events{trend=\"orders\"");
    let buyers = sum(&metrics, "cohortflow_trend_users{trend=\"orders\"");
    let ads = sum(&metrics, "cohortflow_trend_events{trend=\"ads_orders\"");
    assert!(
        orders > 100.0 && buyers > 10.0 && buyers <= orders && ads > 0.0 && ads < orders,
        "{orders} {buyers} {ads}"
    );
    assert!(sum(&metrics, "cohortflow_trend_events_total{trend=\"payments\"}") > 0.0);
    let json = api(&addr, "/api/v1/trends");
    let names: Vec<&str> =
        json["trends"].as_array().expect("trends").iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["orders", "payments", "ads_orders"]);

    // Revenue: exact decimal sums over HTTP, paying users under the sum.
    assert!(sum(&metrics, "cohortflow_revenue{") > 1000.0);
    assert!(sum(&metrics, "cohortflow_paying_users{") > 10.0);
    assert!(sum(&metrics, "cohortflow_new_paying_users{") > 10.0);
    assert!(sum(&metrics, "cohortflow_revenue_total ") > 1000.0);
    let json = api(&addr, "/api/v1/revenue");
    let days = json["revenue"]["days"].as_array().expect("days");
    assert!(!days.is_empty());
    for day in days {
        let text = day["revenue"].as_str().expect("decimal text");
        let (_, cents) = text.split_once('.').expect("two decimals");
        assert_eq!(cents.len(), 2, "{text}");
    }

    // N-day LTV of the sign-up cohorts.
    assert!(sum(&metrics, "cohortflow_cohort_revenue{retention=\"payers\"") > 100.0);
    assert!(sum(&metrics, "cohortflow_cohort_paying_users{retention=\"payers\"") > 10.0);

    // Weekly cohorts labelled by week, 24-hour windows and brackets by day.
    assert!(sum(&metrics, "cohortflow_retained_users{retention=\"weekly\",cohort_date=") > 100.0);
    let week_one = metrics
        .lines()
        .filter(|l| l.starts_with("cohortflow_retained_users{retention=\"weekly\""))
        .all(|l| l.contains("week=\""));
    assert!(week_one, "weekly series are labelled week");
    assert!(metrics.contains("cohortflow_retention_mature{retention=\"weekly\""));
    assert!(sum(&metrics, "cohortflow_retained_users{retention=\"rolling\",") > 100.0);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("cohortflow_retained_users{retention=\"rolling\"") && l.contains("day=\"2-7\""))
    );
    let json = api(&addr, "/api/v1/retention");
    let weekly =
        json["retention"].as_array().expect("definitions").iter().find(|d| d["name"] == "weekly").expect("weekly");
    assert_eq!(weekly["granularity"], "week");
    assert_eq!(weekly["periods"], serde_json::json!(["1", "2", "3"]));
    let first = weekly["cohorts"][0]["date"].as_str().expect("date").parse::<jiff::civil::Date>().expect("a date");
    assert_eq!(first.weekday(), jiff::civil::Weekday::Monday, "a weekly cohort is dated by its week's first day");

    // Breakdowns: in one scrape, the values of a breakdown sum to the
    // figure itself, and every value has users.
    for (split, total) in [
        (
            "cohortflow_breakdown_cohort_users{retention=\"new_users\",breakdown=\"channel\"",
            "cohortflow_cohort_users{retention=\"new_users\"",
        ),
        (
            "cohortflow_breakdown_cohort_users{retention=\"new_users\",breakdown=\"platform\"",
            "cohortflow_cohort_users{retention=\"new_users\"",
        ),
        (
            "cohortflow_breakdown_retained_users{retention=\"weekly\",breakdown=\"channel\"",
            "cohortflow_retained_users{retention=\"weekly\"",
        ),
        (
            "cohortflow_breakdown_funnel_users{funnel=\"checkout\",breakdown=\"channel\"",
            "cohortflow_funnel_users{funnel=\"checkout\"",
        ),
        ("cohortflow_breakdown_new_users{breakdown=\"platform\"", "cohortflow_new_users{"),
    ] {
        let (a, b) = (sum(&metrics, split), sum(&metrics, total));
        assert!(b > 0.0 && a == b, "{split}: {a} against {b}");
    }
    for value in ["organic", "ads", "referral"] {
        let prefix = format!(
            "cohortflow_breakdown_cohort_users{{retention=\"new_users\",breakdown=\"channel\",value=\"{value}\""
        );
        assert!(sum(&metrics, &prefix) > 100.0, "{value}");
    }
    let json = api(&addr, "/api/v1/retention?breakdown=channel");
    let values: Vec<&str> =
        json["retention"][0]["values"].as_array().expect("values").iter().filter_map(|v| v["value"].as_str()).collect();
    assert_eq!(values, ["organic", "ads", "referral", "other", "none"]);
    let json = api(&addr, "/api/v1/activity?breakdown=platform");
    assert!(json["values"][0]["rows"].as_array().is_some_and(|r| !r.is_empty()), "{json}");
    let json = api(&addr, "/api/v1/trends?breakdown=channel");
    assert_eq!(json["trends"][0]["name"], "orders", "{json}");
    assert!(json["trends"][0]["values"][0]["rows"].as_array().is_some_and(|r| !r.is_empty()), "{json}");
    let (split, total) = (
        sum(&metrics, "cohortflow_breakdown_trend_events{trend=\"orders\",breakdown=\"channel\""),
        sum(&metrics, "cohortflow_trend_events{trend=\"orders\""),
    );
    assert!(total > 0.0 && split == total, "{split} against {total}");
    let (status, body) = get(&addr, "/api/v1/funnels?breakdown=device").expect("api");
    assert_eq!(status, 400);
    assert!(body.contains("device"), "{body}");
}
