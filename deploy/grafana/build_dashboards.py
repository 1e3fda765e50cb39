#!/usr/bin/env python3
"""Writes the Grafana dashboards (dashboards/*.json) from one description.

Run after changing a panel: python3 deploy/grafana/build_dashboards.py
Every expression here is evaluated against a real Prometheus by the test
suite (tests/prometheus.rs). Data source: the provisioned Prometheus, by uid.
"""
import json
import os

DS = {"type": "prometheus", "uid": "prometheus"}
SCHEMA_VERSION = 39  # Grafana 11


def target(expr, legend="", instant=False, fmt="time_series", ref="A"):
    t = {"datasource": DS, "expr": expr, "refId": ref, "legendFormat": legend}
    if instant:
        t.update({"instant": True, "range": False, "format": fmt})
    return t


def panel(pid, title, kind, targets, x, y, w=12, h=8, unit=None, transformations=None, description=""):
    p = {
        "id": pid,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": targets,
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {},
    }
    if unit:
        p["fieldConfig"]["defaults"]["unit"] = unit
    if transformations:
        p["transformations"] = transformations
    return p


def matrix(row, column):
    return [
        {"id": "groupingToMatrix", "options": {"rowField": row, "columnField": column, "valueField": "Value"}},
        {"id": "sortBy", "options": {"sort": [{"field": row, "desc": True}]}},
    ]


def variable(name, query):
    return {
        "name": name,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": name},
        "definition": query,
        "refresh": 2,
        "includeAll": False,
        "multi": False,
    }


def dashboard(uid, title, panels, variables=()):
    return {
        "uid": uid,
        "title": title,
        "tags": ["cohortflow"],
        "timezone": "browser",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-24h", "to": "now"},
        "templating": {"list": list(variables)},
        "annotations": {"list": []},
        "panels": panels,
    }


retention = dashboard(
    "cohortflow-retention",
    "cohortflow / Retention",
    [
        panel(1, "Cohort triangle: retention by cohort date and day N", "table",
              [target('cohortflow:retention_ratio{retention="$retention"}', instant=True, fmt="table")],
              0, 0, w=24, h=12, unit="percentunit", transformations=matrix("cohort_date", "day"),
              description="Share of each cohort back on day N. Immature cells (day N not over yet) grow during the day."),
        panel(2, "D1 retention: latest mature cohort vs the 7 before it", "timeseries",
              [target('cohortflow:retention_latest_ratio{retention="$retention",day="1"}', "latest mature cohort"),
               target('cohortflow:retention_trailing_ratio{retention="$retention",day="1"}', "7 cohorts before", ref="B")],
              0, 12, unit="percentunit"),
        panel(3, "Cohort size by date", "barchart",
              [target('cohortflow:cohort_users:sum{retention="$retention"}', instant=True, fmt="table")],
              12, 12, transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True, "retention": True}}}]),
        panel(4, "New users by day", "barchart",
              [target("cohortflow:new_users:sum", instant=True, fmt="table")],
              0, 20, transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True}}}]),
        panel(5, "DAU / WAU / MAU by day", "table",
              [target("cohortflow:active_users:sum", instant=True, fmt="table")],
              12, 20, transformations=matrix("date", "window"),
              description="1d, 7d, 30d: the day and the 7 and 30 days ending on it. week, month: the calendar "
                          "week (from week_start) or month starting on the date, the current one so far."),
        panel(6, "Lifecycle by week (dormant drawn below zero)", "barchart",
              [target('cohortflow:lifecycle_users:sum{granularity="week",status!="dormant"}'
                      ' or -1 * cohortflow:lifecycle_users:sum{granularity="week",status="dormant"}',
                      instant=True, fmt="table")],
              0, 28, transformations=matrix("date", "status"),
              description="new: first seen that week; returning: active the week before too; resurrecting: the "
                          "other active users; dormant: active the week before, not that week."),
        panel(7, "Active rate by day (DAU / known users)", "table",
              [target("cohortflow:active_rate:ratio", instant=True, fmt="table")],
              12, 28, unit="percentunit",
              transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True}}}]),
        panel(8, "Weekly cohorts (周报): retention by cohort week and week N", "table",
              [target('cohortflow:retention_ratio{retention="$weekly",week!=""}', instant=True, fmt="table")],
              0, 36, unit="percentunit", transformations=matrix("cohort_date", "week"),
              description="Cohorts by the calendar week (from week_start) of the first cohort event, dated by its "
                          "first day; week N is the N-th calendar week after it."),
        panel(9, "Monthly cohorts (月报): retention by cohort month and month N", "table",
              [target('cohortflow:retention_ratio{retention="$monthly",month!=""}', instant=True, fmt="table")],
              12, 36, unit="percentunit", transformations=matrix("cohort_date", "month")),
        panel(10, "Stickiness: users active on k of the 7 days ending on each day", "table",
              [target('sum by (days, date) (cohortflow_stickiness_users{window="7d"})', instant=True, fmt="table")],
              0, 44, w=24, transformations=matrix("date", "days"),
              description="A sticky product has weight at the high k; a product visited once a week at k = 1."),
        panel(11, "D1 retention by $by value, by cohort date", "table",
              [target('cohortflow:breakdown_retention_ratio{retention="$retention",breakdown="$by",day="1"}',
                      instant=True, fmt="table")],
              0, 52, unit="percentunit", transformations=matrix("cohort_date", "value"),
              description="Each user counts under one value: the prop on their earliest event carrying it "
                          "(other: a value not listed; none: never carried). Immature cells still grow."),
        panel(12, "D1 by $by value: latest mature cohort vs the 7 before it", "timeseries",
              [target('cohortflow:breakdown_retention_latest_ratio{retention="$retention",breakdown="$by",day="1"}',
                      "{{value}} latest"),
               target('cohortflow:breakdown_retention_trailing_ratio{retention="$retention",breakdown="$by",day="1"}',
                      "{{value}} 7 before", ref="B")],
              12, 52, unit="percentunit",
              description="The alert CohortflowBreakdownRetentionDrop fires when one value's latest falls under "
                          "half of its 7 before."),
        panel(13, "Cohort size by $by value", "table",
              [target('cohortflow:breakdown_cohort_users:sum{retention="$retention",breakdown="$by"}',
                      instant=True, fmt="table")],
              0, 60, transformations=matrix("cohort_date", "value")),
        panel(14, "DAU by $active_by value", "table",
              [target('cohortflow:breakdown_active_users:sum{breakdown="$active_by",window="1d"}',
                      instant=True, fmt="table")],
              12, 60, transformations=matrix("date", "value"),
              description="activity_breakdowns: new and active users (1d, 7d, 30d) per value."),
    ],
    [variable("retention", 'label_values(cohortflow_retained_users{day!=""}, retention)'),
     variable("weekly", 'label_values(cohortflow_retained_users{week!=""}, retention)'),
     variable("monthly", 'label_values(cohortflow_retained_users{month!=""}, retention)'),
     variable("by", 'label_values(cohortflow_breakdown_cohort_users{retention="$retention"}, breakdown)'),
     variable("active_by", "label_values(cohortflow_breakdown_active_users, breakdown)")],
)

funnels = dashboard(
    "cohortflow-funnels",
    "cohortflow / Funnels",
    [
        panel(1, "Users per step by entry day", "table",
              [target('cohortflow:funnel_users:sum{funnel="$funnel"}', instant=True, fmt="table")],
              0, 0, w=24, h=10, transformations=matrix("entry_date", "step_name")),
        panel(2, "Conversion from step 1 by entry day", "table",
              [target('cohortflow:funnel_conversion_ratio{funnel="$funnel"}', instant=True, fmt="table")],
              0, 10, w=24, h=10, unit="percentunit", transformations=matrix("entry_date", "step_name")),
        panel(3, "Conversion over the last hour, by step", "timeseries",
              [target('cohortflow:funnel_conversion_ratio:1h{funnel="$funnel"}', "step {{step}}")],
              0, 20, unit="percentunit"),
        panel(4, "Conversions per minute, by step", "timeseries",
              [target('sum by (step) (rate(cohortflow_funnel_conversions_total{funnel="$funnel"}[5m])) * 60', "step {{step}}")],
              12, 20),
        panel(5, "Time to convert from step 1", "timeseries",
              [target('max by (step, quantile) (cohortflow_funnel_time_to_convert_seconds{funnel="$funnel"})',
                      "step {{step}} p{{quantile}}")],
              0, 28, w=24, unit="s"),
        panel(6, "Conversion to step $step by $entry_by value, by entry day", "table",
              [target('cohortflow:breakdown_funnel_conversion_ratio{funnel="$funnel",breakdown="$entry_by",step="$step"}',
                      instant=True, fmt="table")],
              0, 36, w=24, h=10, unit="percentunit", transformations=matrix("entry_date", "value"),
              description="Each user counts under one value: the prop on their earliest event carrying it."),
    ],
    [variable("funnel", "label_values(cohortflow_funnel_users, funnel)"),
     variable("entry_by", 'label_values(cohortflow_breakdown_funnel_users{funnel="$funnel"}, breakdown)'),
     variable("step", 'label_values(cohortflow_funnel_users{funnel="$funnel"}, step)')],
)

def repeated(p, var):
    """A panel repeated for each value of `var`."""
    return dict(p, repeat=var, repeatDirection="h", maxPerRow=3)


def multi_variable(name, query):
    return dict(variable(name, query), multi=True, includeAll=True, current={"text": "All", "value": "$__all"})


trends = dashboard(
    "cohortflow-trends",
    "cohortflow / Trends",
    [
        repeated(panel(1, "$trend per hour: today, yesterday, the same day last week", "timeseries",
                       [target('cohortflow:trend_events:increase1h{trend="$trend"}', "today"),
                        target('cohortflow:trend_events:increase1h{trend="$trend"} offset 1d', "yesterday", ref="B"),
                        target('cohortflow:trend_events:increase1h{trend="$trend"} offset 1w', "a week ago", ref="C")],
                       0, 0, w=8,
                       description="Events in the hour up to each moment (a user's events at one time once)."),
                 "trend"),
        panel(2, "Events by day", "table",
              [target("cohortflow:trend_events:sum", instant=True, fmt="table")],
              0, 8, transformations=matrix("date", "trend")),
        panel(3, "Users by day", "table",
              [target("cohortflow:trend_users:sum", instant=True, fmt="table")],
              12, 8, transformations=matrix("date", "trend"),
              description="Distinct users with an event of the trend that day."),
    ],
    [multi_variable("trend", "label_values(cohortflow_trend_events_total, trend)")],
)

revenue = dashboard(
    "cohortflow-revenue",
    "cohortflow / Revenue",
    [
        panel(1, "Revenue by day", "barchart",
              [target("cohortflow:revenue:sum", instant=True, fmt="table")],
              0, 0, transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True}}}],
              description="Sum of the day's payments, refunds included, in currency units."),
        panel(2, "Paying and first-time paying users by day", "table",
              [target("cohortflow:paying_users:sum", instant=True, fmt="table"),
               target("sum by (date) (cohortflow_new_paying_users)", instant=True, fmt="table", ref="B")],
              12, 0, transformations=[{"id": "merge", "options": {}}]),
        panel(3, "ARPPU by day (revenue per paying user)", "table",
              [target("cohortflow:arppu:ratio", instant=True, fmt="table")],
              0, 8, transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True}}}]),
        panel(4, "Revenue per hour: now and a week ago", "timeseries",
              [target("cohortflow:revenue:increase1h", "last hour"),
               target("cohortflow:revenue:increase1h offset 1w", "a week ago", ref="B")],
              12, 8),
        panel(5, "N-day LTV: revenue per cohort through day N", "table",
              [target('cohortflow:cohort_revenue:sum{retention="$ltv"}', instant=True, fmt="table")],
              0, 16, w=24, transformations=matrix("cohort_date", "day"),
              description="What each cohort's users paid from the cohort day through day D+N (refunds included): "
                          "read along a row for the cohort's LTV curve."),
    ],
    [variable("ltv", "label_values(cohortflow_cohort_revenue, retention)")],
)

operations = dashboard(
    "cohortflow-operations",
    "cohortflow / Operations",
    [
        panel(1, "Events ingested per second", "timeseries",
              [target("cohortflow:events_ingested:rate5m", "ingested")], 0, 0, unit="ops"),
        panel(2, "Rejected per second, by reason", "timeseries",
              [target("cohortflow:events_rejected:rate5m", "{{reason}}")], 12, 0, unit="ops"),
        panel(3, "Consumer lag by partition", "timeseries",
              [target("sum by (topic, partition) (cohortflow_consumer_lag_messages)", "{{topic}}/{{partition}}")],
              0, 8),
        panel(4, "Event lag (wall clock - newest event)", "timeseries",
              [target("max by (instance) (cohortflow_event_lag_seconds)", "{{instance}}")], 12, 8, unit="s"),
        panel(5, "Snapshot age", "timeseries",
              [target("time() - cohortflow_last_checkpoint_timestamp_seconds", "{{instance}}")], 0, 16, unit="s"),
        panel(6, "Snapshot duration", "timeseries",
              [target("cohortflow_checkpoint_duration_seconds", "{{instance}}")], 12, 16, unit="s"),
        panel(7, "Tracked users", "timeseries",
              [target("sum by (instance) (cohortflow_tracked_users)", "{{instance}}"),
               target("sum by (instance) (cohortflow_max_tracked_users)", "cap {{instance}}", ref="B")], 0, 24),
        panel(8, "Memory", "timeseries",
              [target('process_resident_memory_bytes{job="cohortflow"}', "RSS {{instance}}"),
               target("sum by (instance) (cohortflow_state_bytes)", "state {{instance}}", ref="B")], 12, 24, unit="bytes"),
        panel(10, "Funnel store fill (fullest store)", "timeseries",
              [target("max by (instance) (cohortflow_funnel_store_fill_ratio)", "{{instance}}")], 0, 32,
              unit="percentunit", description="At 100 % funnel events are refused."),
        panel(11, "Funnel events left out per second", "timeseries",
              [target("sum by (instance) (rate(cohortflow_funnel_events_refused_total[5m]))", "store full {{instance}}"),
               target("sum by (instance) (rate(cohortflow_funnel_events_capped_total[5m]))",
                      "user past the cap {{instance}}", ref="B")],
              12, 32, unit="ops",
              description="Store full: the shard's funnel store has no room (alert CohortflowFunnelStoreFull). "
                          "User past the cap: a user already keeps max_funnel_events_per_user (a bot, a load test)."),
        panel(9, "Up and ready", "stat",
              [target('up{job="cohortflow"}', "up {{instance}}"),
               target("cohortflow_ready", "ready {{instance}}", ref="B"),
               target("cohortflow_kafka_up", "kafka {{instance}}", ref="C")], 0, 40, w=24, h=4),
    ],
)

here = os.path.dirname(os.path.abspath(__file__))
for name, d in (("retention", retention), ("funnels", funnels), ("trends", trends), ("revenue", revenue),
                ("operations", operations)):
    with open(os.path.join(here, "dashboards", f"{name}.json"), "w") as f:
        json.dump(d, f, indent=2)
        f.write("\n")
