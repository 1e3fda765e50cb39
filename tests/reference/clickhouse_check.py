#!/usr/bin/env python3
"""Independent reference for cohortflow's figures: ClickHouse itself (chdb).

Reads the NDJSON that was replayed, validates every line with its own
implementation of the event contract and the watermark rules
(docs/semantics.md),
loads the accepted events into ClickHouse, computes every figure with
retention(), windowFunnel(), uniqExact() and min(), and compares them with
the Prometheus text that `cohortflow replay` printed. Prints every
difference; exits 1 if there is any.

The definitions checked are tests/fixtures/definitions.toml, which
tests/clickhouse.rs gives cohortflow too.
"""

import argparse
import datetime as dt
import decimal
import json
import math
import os
import re
import sys
import tempfile
import time
import tomllib
import zoneinfo

import chdb

MAX_BYTES = 1 << 20
END_MS = 4102444800000
LATENESS_MS = 10 * 60 * 1000
HISTORY_DAYS = 63  # as tests/clickhouse.rs sets it: the fixture's monthly definition needs it
FUTURE_SKEW_MS = 5 * 60 * 1000

UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "definitions.toml")


def duration_ms(text):
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", text)
    if not m:
        raise SystemExit(f"unsupported duration {text!r}")
    return int(m.group(1)) * UNITS_MS[m.group(2)]


LTV = []  # (name, cohort event or None, days) of the revenue = true definitions


def definitions(config):
    """A config's retention definitions, as (name, cohort event or None for
    any, return event or None, granularity, periods as (from, to), mode),
    and funnels, as (name, window ms, mode, steps as (event, channel filter
    or None))."""
    def event(name):
        return None if name == "*" else name

    def bracket(p):
        if isinstance(p, int):
            return (p, p)
        lo, _, hi = p.partition("-")
        return (int(lo), int(hi or lo))

    retention = []
    for r in config.get("retention", []):
        granularity = r.get("granularity", "day")
        periods = r.get("days", [1, 3, 7, 14, 30]) if granularity == "day" else r["periods"]
        retention.append((r["name"], event(r.get("cohort_event", "*")), event(r.get("return_event", "*")),
                          granularity, sorted(bracket(p) for p in periods), r.get("mode", "on")))
        if r.get("revenue"):
            LTV.append((r["name"], event(r.get("cohort_event", "*")), [lo for lo, _ in sorted(bracket(p) for p in periods)]))
    funnels = []
    for f in config.get("funnel", []):
        steps = []
        for step in f["steps"]:
            if isinstance(step, str) and step != "*":
                steps.append((step, None))
            elif isinstance(step, dict) and set(step.get("where", {})) <= {"channel"} and step["event"] != "*":
                steps.append((step["event"], step.get("where", {}).get("channel")))
            else:
                raise SystemExit(f"funnel {f['name']}: the reference takes event names and channel filters only")
        funnels.append((f["name"], duration_ms(f["window"]), f.get("mode", "default"), steps))
    return retention, funnels


def revenue_def(config):
    """A config's [revenue], as (events, amount prop, scale), or None."""
    r = config.get("revenue")
    return None if r is None else (r["events"], r.get("amount_prop", "amount"), r.get("scale", 2))


NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


def amount_text(raw, prop, scale):
    """The amount of a payment line as exact decimal text with `scale`
    decimals, or the reason it is not counted (docs/semantics.md)."""
    def literal(v):
        return v

    top = json.loads(raw.decode("utf-8"), object_pairs_hook=Obj, parse_float=literal, parse_int=literal,
                     parse_constant=no_constants)
    props = None
    for k, v in top:
        if k == "props":
            props = v
    value = dict(props).get(prop) if isinstance(props, Obj) else None
    if value is None and not (isinstance(props, Obj) and prop in dict(props)):
        return None, "absent"
    if not isinstance(value, str) or not NUMBER.fullmatch(value):
        return None, "not_a_number"
    d = decimal.Decimal(value).normalize()
    if d.as_tuple().exponent < -scale:
        return None, "too_many_decimals"
    units = int(d.scaleb(scale))
    if not -(1 << 63) <= units < (1 << 63):
        return None, "out_of_range"
    return str(decimal.Decimal(units).scaleb(-scale)), None


def trends(config):
    """A config's trends, as (name, event, channel filter or None)."""
    out = []
    for t in config.get("trend", []):
        ev = t["event"]
        if isinstance(ev, str):
            out.append((t["name"], ev, None))
        elif set(ev.get("where", {})) <= {"channel"} and ev["event"] != "*":
            out.append((t["name"], ev["event"], ev.get("where", {}).get("channel")))
        else:
            raise SystemExit(f"trend {t['name']}: the reference takes event names and channel filters only")
    return out


def breakdowns(config):
    """A config's breakdowns, as (name, prop, values), and which retention
    definitions and funnels each splits, by name."""
    defs = [(b["name"], b["prop"], b["values"]) for b in config.get("breakdown", [])]
    split = {name: {r["name"] for r in config.get("retention", []) + config.get("funnel", []) + config.get("trend", [])
                    if name in r.get("breakdowns", [])} for name, _, _ in defs}
    return defs, split


with open(FIXTURE, "rb") as fixture:
    _FIXTURE = tomllib.load(fixture)
    RETENTION, FUNNELS = definitions(_FIXTURE)
    TRENDS = trends(_FIXTURE)
    REVENUE = revenue_def(_FIXTURE)
    BREAKDOWNS, SPLIT = breakdowns(_FIXTURE)
# As tests/clickhouse.rs sets it.
ACTIVITY_BREAKDOWNS = ["channel"]


class Num(str):
    """A JSON number, as its text."""


def prop_text(raw, prop):
    """A breakdown's value of an event line (docs/semantics.md): a string
    as it is, a number or boolean as its JSON text; null, a string with a
    lone surrogate, or no such prop: None."""
    top = json.loads(raw.decode("utf-8"), object_pairs_hook=Obj, parse_float=Num, parse_int=Num,
                     parse_constant=no_constants)
    props = None
    for k, v in top:
        if k == "props":
            props = v
    if not isinstance(props, Obj):
        return None
    v = dict(props).get(prop)
    if v is None:
        return None
    if isinstance(v, Num):
        return str.__str__(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v if valid_unicode(v) else None
    raise SystemExit(f"the reference takes no object or array as a breakdown value: {raw[:200]!r}")


def sql_str(s):
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"

RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$"
)


class Obj(list):
    """A JSON object as its list of (key, value) pairs, duplicates kept."""


def no_constants(name):
    raise ValueError(f"not JSON: {name}")


def valid_unicode(s):
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def parse_ts(v):
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v if 0 <= v < END_MS else None
    if not isinstance(v, str) or not valid_unicode(v):
        return None
    m = RFC3339.match(v)
    if not m:
        return None
    y, mo, d, h, mi, s, frac, off = m.groups()
    if int(h) > 23 or int(mi) > 59 or int(s) > 60:
        return None
    if off in ("Z", "z"):
        offset = 0
    else:
        oh, om = int(off[1:3]), int(off[4:6])
        if oh > 23 or om > 59:
            return None
        offset = (oh * 60 + om) * 60 * (1 if off[0] == "+" else -1)
    try:
        civil = dt.datetime(int(y), int(mo), int(d), int(h), int(mi), min(int(s), 59), tzinfo=dt.timezone.utc)
    except ValueError:
        return None
    ms = int(civil.timestamp()) * 1000 - offset * 1000 + int(((frac or "") + "000")[:3])
    return ms if 0 <= ms < END_MS else None


def validate(raw):
    """(reason, None) or (None, (user_id, event, ts_ms, props dict or None))."""
    if len(raw) > MAX_BYTES:
        return "too_large", None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8", None
    try:
        top = json.loads(text, object_pairs_hook=Obj, parse_constant=no_constants)
    except (ValueError, RecursionError):
        return "invalid_json", None
    if not isinstance(top, Obj):
        return "not_object", None
    # Field names of the event object must be valid Unicode.
    if any(not valid_unicode(k) for k, _ in top):
        return "invalid_json", None
    fields = {}
    for k, v in top:
        if k in ("user_id", "event", "ts"):
            if k in fields:
                return "duplicate_key", None
            fields[k] = v
        elif k == "props":
            fields["props"] = v
    uid = fields.get("user_id")
    if isinstance(uid, bool) or uid is None:
        return "bad_user_id", None
    if isinstance(uid, int):
        uid = str(uid)
    if not isinstance(uid, str) or uid == "" or not valid_unicode(uid):
        return "bad_user_id", None
    ev = fields.get("event")
    if not isinstance(ev, str) or ev == "" or not valid_unicode(ev):
        return "bad_event", None
    ts = parse_ts(fields.get("ts"))
    if ts is None:
        return "bad_timestamp", None
    props = fields.get("props")
    props = dict(props) if isinstance(props, Obj) else None
    return None, (uid, ev, ts, props)


def usable_str(v):
    return v if isinstance(v, str) and valid_unicode(v) else None


def canonical(props):
    def clean(v):
        if isinstance(v, Obj):
            return {k: clean(x) for k, x in v}
        if isinstance(v, list):
            return [clean(x) for x in v]
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, str) and not valid_unicode(v):
            return v.encode("utf-8", "surrogatepass").hex()
        return v

    return json.dumps(clean(Obj(props.items())) if props is not None else None, sort_keys=True)


def parse_metrics(path):
    out = {}
    line_re = re.compile(r'^(cohortflow_[a-z_]+)(?:\{(.*)\})? (\S+)$')
    label_re = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            m = line_re.match(line.strip())
            if not m:
                continue
            name, labels, value = m.groups()
            key = (name, tuple(sorted(label_re.findall(labels or ""))))
            out[key] = float(value)
    return out


WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


def week_sql(day, week_start):
    """ClickHouse's first day of the week holding `day` (an SQL
    expression), weeks starting on `week_start`: toMonday, toStartOfWeek's
    mode 0 for Sunday, else toMonday shifted by the start's offset."""
    k = WEEKDAYS.index(week_start)
    if k == 0:
        return f"toMonday({day})"
    if k == 6:
        return f"toStartOfWeek({day}, 0)"
    return f"addDays(toMonday(subtractDays({day}, {k})), {k})"


def clickhouse_figures(q, base, wm_day, retention=RETENTION, funnels=FUNNELS, week_start="monday", tz="UTC",
                       trend_defs=TRENDS):
    """Every figure cohortflow exports, computed by ClickHouse over `base`
    (a subquery of distinct events with user_id, event, ts_ms, channel and
    day), for the business days up to `wm_day`: {(metric, labels): value},
    and the keys where cohortflow may be above ClickHouse (strict_increase,
    see the module docs). `q` runs a query and returns its rows as dicts."""
    def date(s):
        return dt.date.fromisoformat(s)

    expected = {}
    # Activity and new users.
    new = {date(r["first"]): int(r["c"]) for r in q(
        f"SELECT toString(first) AS first, count() AS c FROM "
        f"(SELECT user_id, min(day) AS first FROM {base} GROUP BY user_id) GROUP BY first")}
    windows = {}
    for label, n in (("1d", 1), ("7d", 7), ("30d", 30)):
        windows[label] = {date(r["d"]): int(r["c"]) for r in q(
            f"SELECT toString(day + k) AS d, uniqExact(user_id) AS c FROM (SELECT DISTINCT user_id, day FROM {base}) "
            f"ARRAY JOIN range(0, {n}) AS k GROUP BY d")}
    for d, mau in windows["30d"].items():
        if d > wm_day or mau == 0:
            continue
        ds = str(d)
        expected[("cohortflow_new_users", (("date", ds),))] = new.get(d, 0)
        for label in ("1d", "7d", "30d"):
            expected[("cohortflow_active_users", (("date", ds), ("window", label)))] = windows[label].get(d, 0)

    # Calendar weeks (from week_start) and months (toStartOfMonth), known
    # users, lifecycle, stickiness of 7 days.
    one = dt.timedelta(days=1)
    week = week_sql("day", week_start)
    week_of = {date(r["d"]): date(r["w"]) for r in q(
        f"SELECT DISTINCT toString(day) AS d, toString({week}) AS w FROM {base}")}
    for unit, period in (("week", week), ("month", "toStartOfMonth(day)")):
        for r in q(f"SELECT toString({period}) AS p, uniqExact(user_id) AS c FROM {base} GROUP BY p"):
            if date(r["p"]) <= wm_day:
                expected[("cohortflow_active_users", (("date", r["p"]), ("window", unit)))] = int(r["c"])
    active = {}  # user -> set of days
    for r in q(f"SELECT user_id, groupUniqArray(toString(day)) AS days FROM {base} GROUP BY user_id"):
        active[r["user_id"]] = {date(d) for d in r["days"]}
    weeks_of = {u: {week_of[d] for d in days} for u, days in active.items()}
    first = {u: min(days) for u, days in active.items()}

    def lifecycle(granularity, period, before, is_active, first_in):
        counts = {"new": 0, "returning": 0, "resurrecting": 0, "dormant": 0}
        for u in active:
            now, then = is_active(u, period), is_active(u, before)
            if now and then:
                counts["returning"] += 1
            elif now and first_in(u, period):
                counts["new"] += 1
            elif now:
                counts["resurrecting"] += 1
            elif then:
                counts["dormant"] += 1
        for status, n in counts.items():
            expected[("cohortflow_lifecycle_users",
                      (("date", str(period)), ("granularity", granularity), ("status", status)))] = n

    for d, mau in windows["30d"].items():
        if d > wm_day or mau == 0:
            continue
        expected[("cohortflow_known_users", (("date", str(d)),))] = sum(1 for f in first.values() if f <= d)
        lifecycle("day", d, d - one, lambda u, p: p in active[u], lambda u, p: first[u] == p)
        by_k = [0] * 7
        for days in active.values():
            k = sum(1 for i in range(7) if d - i * one in days)
            if k:
                by_k[k - 1] += 1
        for k, n in enumerate(by_k, 1):
            expected[("cohortflow_stickiness_users", (("date", str(d)), ("days", str(k)), ("window", "7d")))] = n
    # Months: exported with a history of 33 to 64 days (this check's 63).
    month_of = {date(r["d"]): date(r["m"]) for r in q(
        f"SELECT DISTINCT toString(day) AS d, toString(toStartOfMonth(day)) AS m FROM {base}")}
    months_of = {u: {month_of[d] for d in days} for u, days in active.items()}
    if 33 <= HISTORY_DAYS <= 64:
        month = month_of[min(first.values())]
        while month <= wm_day:
            before = (month - one).replace(day=1)
            if any(month in m or before in m for m in months_of.values()):
                lifecycle("month", month, before, lambda u, p: p in months_of[u],
                          lambda u, p: month_of[first[u]] == p)
            month = (month + 32 * one).replace(day=1)
    week = week_of[min(first.values())]
    while week <= wm_day:
        before = week - 7 * one
        if any(week in w or before in w for w in weeks_of.values()):
            lifecycle("week", week, before, lambda u, p: p in weeks_of[u],
                      lambda u, p: week_of[first[u]] == p)
        week += 7 * one

    # Retention: by day, week (from week_start) or month, brackets, and
    # 24-hour windows from the first cohort event (rolling_24h).
    for name, cohort_ev, return_ev, granularity, periods, mode in retention:
        cohort_cond = f"event = '{cohort_ev}'" if cohort_ev else "1"
        return_cond = f"event = '{return_ev}'" if return_ev else "1"
        if mode == "rolling_24h":
            first = f"ts_ms = t0 AND ({cohort_cond})"
            conds = [f"({return_cond}) AND ts_ms >= t0 + {lo} * 86400000 AND ts_ms < t0 + {hi + 1} * 86400000"
                     for lo, hi in periods]
            cohort_of = f"toDate(fromUnixTimestamp64Milli(t0, '{tz}'))"
        else:
            period_of, after = {
                "day": (lambda d: d, lambda p, n: f"addDays({p}, {n})"),
                "week": (lambda d: week_sql(d, week_start), lambda p, n: f"addDays({p}, {7 * n})"),
                "month": (lambda d: f"toStartOfMonth({d})", lambda p, n: f"addMonths({p}, {n})"),
            }[granularity]
            period, cohort_period = period_of("day"), period_of("cohort_day")
            first = f"day = cohort_day AND ({cohort_cond})"
            if mode == "on":
                conds = [f"({return_cond}) AND {period} BETWEEN {after(cohort_period, lo)} AND {after(cohort_period, hi)}"
                         for lo, hi in periods]
            else:
                conds = [f"({return_cond}) AND {period} >= {after(cohort_period, lo)}" for lo, _ in periods]
            cohort_of = cohort_period
        sums = ", ".join(f"sum(r[{i + 2}]) AS r{i}" for i in range(len(periods)))
        rows = q(
            f"SELECT toString(cohort) AS cohort, count() AS users, {sums} FROM ("
            f" SELECT user_id, any({cohort_of}) AS cohort, retention({first}, {', '.join(conds)}) AS r"
            f" FROM {base} AS e INNER JOIN (SELECT user_id, min(day) AS cohort_day, min(ts_ms) AS t0"
            f"  FROM {base} WHERE {cohort_cond} GROUP BY user_id) AS c USING user_id"
            f" GROUP BY user_id) GROUP BY cohort")
        for r in rows:
            if date(r["cohort"]) > wm_day:
                continue
            expected[("cohortflow_cohort_users", (("cohort_date", r["cohort"]), ("retention", name)))] = int(r["users"])
            for i, (lo, hi) in enumerate(periods):
                label = str(lo) if lo == hi else f"{lo}-{hi}"
                key = ("cohortflow_retained_users",
                       tuple(sorted((("cohort_date", r["cohort"]), (granularity, label), ("retention", name)))))
                expected[key] = int(r[f"r{i}"])

    # Trends: uniqExact((user_id, ts)) and uniqExact(user_id) per day.
    for name, ev, channel in trend_defs:
        cond = f"event = '{ev}'" + (f" AND channel = '{channel}'" if channel else "")
        total = 0
        for r in q(f"SELECT toString(day) AS d, uniqExact((user_id, ts_ms)) AS e, uniqExact(user_id) AS u "
                   f"FROM {base} WHERE {cond} GROUP BY d"):
            total += int(r["e"])
            if date(r["d"]) <= wm_day:
                expected[("cohortflow_trend_events", (("date", r["d"]), ("trend", name)))] = int(r["e"])
                expected[("cohortflow_trend_users", (("date", r["d"]), ("trend", name)))] = int(r["u"])
        expected[("cohortflow_trend_events_total", (("trend", name),))] = total

    # Funnels.
    at_least = set()
    for name, window, mode, steps in funnels:
        def cond(step):
            ev, channel = step
            return f"event = '{ev}'" + (f" AND channel = '{channel}'" if channel else "")
        params = f"{window}" + (f", '{mode}'" if mode != "default" else "")
        step_conds = ", ".join([f"({cond(steps[0])}) AND day = d"] + [cond(s) for s in steps[1:]])
        rows = q(
            f"SELECT toString(d) AS d, lvl, count() AS c FROM ("
            f" SELECT user_id, d, windowFunnel({params})(toUInt64(ts_ms), {step_conds}) AS lvl"
            f" FROM {base} AS e INNER JOIN (SELECT user_id, groupUniqArray(day) AS ds FROM {base} WHERE {cond(steps[0])} GROUP BY user_id) AS x USING user_id"
            f" ARRAY JOIN ds AS d GROUP BY user_id, d) GROUP BY d, lvl")
        per_day = {}
        for r in rows:
            per_day.setdefault(r["d"], [0] * (len(steps) + 1))[int(r["lvl"])] += int(r["c"])
        for d, by_level in per_day.items():
            if date(d) > wm_day:
                continue
            for k in range(1, len(steps) + 1):
                key = ("cohortflow_funnel_users", (("entry_date", d), ("funnel", name), ("step", str(k)), ("step_name", steps[k - 1][0])))
                expected[key] = sum(by_level[k:])
                if mode == "strict_increase":
                    at_least.add(key)
    return expected, at_least


SPLIT_OF = {
    "cohortflow_cohort_users": "cohortflow_breakdown_cohort_users",
    "cohortflow_retained_users": "cohortflow_breakdown_retained_users",
    "cohortflow_funnel_users": "cohortflow_breakdown_funnel_users",
    "cohortflow_new_users": "cohortflow_breakdown_new_users",
    "cohortflow_active_users": "cohortflow_breakdown_active_users",
    "cohortflow_trend_events": "cohortflow_breakdown_trend_events",
    "cohortflow_trend_users": "cohortflow_breakdown_trend_users",
}


def split_sums(got):
    """Where the values of a breakdown do not sum to the figure itself in
    cohortflow's output, as (key, the figure, the sum); every series of a
    split definition is compared, and at least one."""
    total_of = {v: k for k, v in SPLIT_OF.items()}
    sums = {}
    for (name, labels), v in got.items():
        if name in total_of:
            d = dict(labels)
            b = d.pop("breakdown")
            d.pop("value")
            key = (total_of[name], tuple(sorted(d.items())), b)
            sums[key] = sums.get(key, 0) + v
    diffs = []
    compared = 0
    for bname, _, _ in BREAKDOWNS:
        for (name, labels), v in got.items():
            d = dict(labels)
            split = (name in ("cohortflow_new_users", "cohortflow_active_users")
                     and bname in ACTIVITY_BREAKDOWNS and d.get("window", "1d") in ("1d", "7d", "30d")) or (
                name in SPLIT_OF and d.get("retention", d.get("funnel", d.get("trend"))) in SPLIT[bname])
            if not split:
                continue
            compared += 1
            s = sums.get((name, labels, bname), 0)
            if s != v:
                diffs.append(((name, labels + (("breakdown", bname),)), f"sum {s} over values", v))
    if compared == 0:
        diffs.append((("split sums", ()), "some series", None))
    return diffs


def differences(expected, at_least, got):
    """The series where ClickHouse's figure and cohortflow's differ, as
    (key, clickhouse, cohortflow), and how many `at_least` series
    cohortflow has above ClickHouse."""
    diffs = []
    above = 0
    for key in sorted(set(expected) | set(got)):
        want, have = expected.get(key), got.get(key)
        if key in at_least and want is not None and have is not None and have >= want:
            above += have > want
            continue
        if want is None or have is None or float(want) != have:
            diffs.append((key, want, have))
    return diffs, above


def date_of(s):
    return dt.date.fromisoformat(s)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tz", required=True)
    ap.add_argument("--week-start", default="monday", choices=WEEKDAYS)
    ap.add_argument("--events", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args()
    sys.setrecursionlimit(20000)
    tz = zoneinfo.ZoneInfo(args.tz)
    now_ms = int(time.time() * 1000)

    counts = {}
    amount_rejects = {}
    accepted = []
    max_ts = None
    with open(args.events, "rb") as f:
        for raw in f:
            raw = raw.rstrip(b"\n")
            if raw.strip(b" \t\r\n\x0b\x0c") == b"":
                continue
            reason, ev = validate(raw)
            if ev is not None:
                ts = ev[2]
                if ts > now_ms + FUTURE_SKEW_MS:
                    reason = "too_early"
                elif max_ts is not None and ts < max_ts - LATENESS_MS - HISTORY_DAYS * 86400_000:
                    reason = "too_late"
            if reason:
                counts[reason] = counts.get(reason, 0) + 1
                continue
            counts["ingested"] = counts.get("ingested", 0) + 1
            max_ts = ts if max_ts is None else max(max_ts, ts)
            amount = None
            if REVENUE and ev[1] in REVENUE[0]:
                amount, why = amount_text(raw, REVENUE[1], REVENUE[2])
                if why:
                    amount_rejects[why] = amount_rejects.get(why, 0) + 1
            accepted.append(ev + (amount, [prop_text(raw, prop) for _, prop, _ in BREAKDOWNS]))

    wm_day = dt.datetime.fromtimestamp((max_ts - LATENESS_MS) / 1000, tz).date()

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "events.jsonl")
        with open(path, "w") as f:
            for uid, ev, ts, props, amount, values in accepted:
                channel = usable_str(props.get("channel")) if props else None
                row = {"user_id": uid, "event": ev, "ts_ms": ts, "channel": channel, "props": canonical(props),
                       "amount": amount}
                row.update({f"b{i}": v for i, v in enumerate(values)})
                f.write(json.dumps(row) + "\n")
        bcols = "".join(f", b{i} Nullable(String)" for i in range(len(BREAKDOWNS)))
        bnames = "".join(f", b{i}" for i in range(len(BREAKDOWNS)))
        src = (f"file('{path}', 'JSONEachRow', 'user_id String, event String, ts_ms Int64, channel Nullable(String), "
               f"props String, amount Nullable(String){bcols}')")
        base = (f"(SELECT DISTINCT user_id, event, ts_ms, channel, props, amount{bnames}, "
                f"toDate(fromUnixTimestamp64Milli(ts_ms, '{args.tz}')) AS day FROM {src})")

        def q(sql):
            res = chdb.query(sql, "JSONEachRow")
            return [json.loads(l) for l in str(res).splitlines() if l.strip()]

        expected, at_least = clickhouse_figures(q, base, wm_day, week_start=args.week_start, tz=args.tz)
        # Breakdowns: each user's value is argMin of the prop by (time,
        # value); a value's figures are those of its users alone.
        for i, (bname, _, values) in enumerate(BREAKDOWNS):
            col = f"assumeNotNull(b{i})"
            users_v = (f"(SELECT user_id, argMin({col}, (ts_ms, {col})) AS v FROM {base} "
                       f"WHERE b{i} IS NOT NULL GROUP BY user_id)")
            listed = ", ".join(sql_str(v) for v in values)
            groups = [(v, f"user_id IN (SELECT user_id FROM {users_v} WHERE v = {sql_str(v)})") for v in values]
            groups += [("other", f"user_id IN (SELECT user_id FROM {users_v} WHERE v NOT IN ({listed}))"),
                       ("none", f"user_id NOT IN (SELECT user_id FROM {users_v})")]
            rdefs = [r for r in RETENTION if r[0] in SPLIT[bname]]
            fdefs = [f for f in FUNNELS if f[0] in SPLIT[bname]]
            tdefs = [t for t in TRENDS if t[0] in SPLIT[bname]]
            for label, cond in groups:
                sub = f"(SELECT * FROM {base} WHERE {cond})"
                if int(q(f"SELECT count() AS c FROM {sub}")[0]["c"]) == 0:
                    continue
                part, part_at_least = clickhouse_figures(q, sub, wm_day, retention=rdefs, funnels=fdefs,
                                                         week_start=args.week_start, tz=args.tz, trend_defs=tdefs)
                for (metric, labels), v in part.items():
                    target = SPLIT_OF.get(metric)
                    if target is None:
                        continue
                    if metric in ("cohortflow_new_users", "cohortflow_active_users"):
                        if bname not in ACTIVITY_BREAKDOWNS or dict(labels).get("window", "1d") not in ("1d", "7d", "30d"):
                            continue
                    key = (target, tuple(sorted(labels + (("breakdown", bname), ("value", label)))))
                    expected[key] = v
                    if (metric, labels) in part_at_least:
                        at_least.add(key)
        if REVENUE:
            # Payments: one per user, event, time and amount; sums in
            # Decimal128 of the configured scale.
            events, _, scale = REVENUE
            names = ", ".join(f"'{e}'" for e in events)
            pays = (f"(SELECT DISTINCT user_id, event, ts_ms, day, toDecimal128(ifNull(amount, '0'), {scale}) AS amount "
                    f"FROM {base} WHERE event IN ({names}) AND amount IS NOT NULL)")
            for r in q(f"SELECT toString(day) AS d, toString(sum(amount)) AS s, "
                       f"uniqExactIf(user_id, amount > 0) AS p FROM {pays} GROUP BY d"):
                if date_of(r["d"]) <= wm_day:
                    expected[("cohortflow_revenue", (("date", r["d"]),))] = float(r["s"])
                    expected[("cohortflow_paying_users", (("date", r["d"]),))] = int(r["p"])
            for r in q(f"SELECT toString(first) AS d, count() AS c FROM (SELECT user_id, min(day) AS first "
                       f"FROM {pays} WHERE amount > 0 GROUP BY user_id) GROUP BY d"):
                if date_of(r["d"]) <= wm_day:
                    expected[("cohortflow_new_paying_users", (("date", r["d"]),))] = int(r["c"])
            [t] = q(f"SELECT toString(sumIf(amount, amount > 0)) AS paid, toString(-sumIf(amount, amount < 0)) AS refunded "
                    f"FROM {pays}")
            expected[("cohortflow_revenue_total", ())] = float(t["paid"])
            expected[("cohortflow_refunds_total", ())] = float(t["refunded"])
            # N-day LTV: the cohort's payments from its day through D+N.
            for name, cohort_ev, days in LTV:
                cohort_cond = f"event = '{cohort_ev}'" if cohort_ev else "1"
                cells = {}  # cohort date -> {n: (sum, payers)}
                for n in days:
                    for r in q(f"SELECT toString(c.cohort) AS d, toString(sum(p.amount)) AS s, "
                               f"uniqExactIf(p.user_id, p.amount > 0) AS u FROM {pays} AS p INNER JOIN "
                               f"(SELECT user_id, min(day) AS cohort FROM {base} WHERE {cohort_cond} GROUP BY user_id) AS c "
                               f"USING user_id WHERE p.day >= c.cohort AND p.day <= addDays(c.cohort, {n}) GROUP BY d"):
                        cells.setdefault(r["d"], {})[n] = (float(r["s"]), int(r["u"]))
                # A cohort row is exported, every N of it, once a cell is not zero.
                for d, by_n in cells.items():
                    if date_of(d) > wm_day or all(s == 0 and u == 0 for s, u in by_n.values()):
                        continue
                    for n in days:
                        s, u = by_n.get(n, (0.0, 0))
                        labels = (("cohort_date", d), ("day", str(n)), ("retention", name))
                        expected[("cohortflow_cohort_revenue", labels)] = s
                        expected[("cohortflow_cohort_paying_users", labels)] = u
            for why in ("absent", "not_a_number", "too_many_decimals", "out_of_range"):
                expected[("cohortflow_revenue_amounts_rejected_total", (("reason", why),))] = amount_rejects.get(why, 0)

    for reason in ("too_large", "invalid_utf8", "invalid_json", "not_object", "duplicate_key", "bad_user_id",
                   "bad_event", "bad_timestamp", "too_late", "too_early"):
        expected[("cohortflow_events_rejected_total", (("reason", reason),))] = counts.get(reason, 0)
    expected[("cohortflow_events_ingested_total", ())] = counts.get("ingested", 0)

    got = parse_metrics(args.metrics)
    # In the same run: over the values of a breakdown, each split figure
    # sums to the figure itself.
    sum_diffs = split_sums(got)
    checked = set(SPLIT_OF.values()) | {"cohortflow_new_users", "cohortflow_active_users", "cohortflow_cohort_users", "cohortflow_retained_users",
               "cohortflow_funnel_users", "cohortflow_events_rejected_total", "cohortflow_events_ingested_total",
               "cohortflow_known_users", "cohortflow_lifecycle_users", "cohortflow_stickiness_users",
               "cohortflow_trend_events", "cohortflow_trend_users", "cohortflow_trend_events_total",
               "cohortflow_revenue", "cohortflow_paying_users", "cohortflow_new_paying_users",
               "cohortflow_revenue_total", "cohortflow_refunds_total", "cohortflow_revenue_amounts_rejected_total",
               "cohortflow_cohort_revenue", "cohortflow_cohort_paying_users"}
    got = {k: v for k, v in got.items() if k[0] in checked}
    diffs, above = differences(expected, at_least, got)
    diffs += sum_diffs
    # Every definition is compared on something it retained: a check of
    # empty figures would pass whatever the engine did.
    for name, *_ in RETENTION:
        retained = [v for k, v in expected.items() if k[0] == "cohortflow_retained_users" and ("retention", name) in k[1]]
        if not any(retained):
            diffs.append((("cohortflow_retained_users", (("retention", name),)), "some retained users", None))
    # Every breakdown value, other and none included, is compared on users.
    for bname, _, values in BREAKDOWNS:
        for label in values + ["other", "none"]:
            if not any(k[0] == "cohortflow_breakdown_cohort_users" and ("value", label) in k[1]
                       and ("breakdown", bname) in k[1] and v for k, v in expected.items()):
                diffs.append((("cohortflow_breakdown_cohort_users", (("breakdown", bname), ("value", label))),
                              "some users", None))
    # The data has refunds, string amounts and bad ones: all compared.
    if REVENUE:
        for key in (("cohortflow_refunds_total", ()),
                    ("cohortflow_revenue_amounts_rejected_total", (("reason", "not_a_number"),)),
                    ("cohortflow_revenue_amounts_rejected_total", (("reason", "too_many_decimals"),))):
            if not expected.get(key):
                diffs.append((key, "more than 0", expected.get(key)))
    for key, want, have in diffs[:50]:
        print(f"DIFF {key[0]}{dict(key[1])}: clickhouse={want} cohortflow={have}")
    print(f"{args.tz}: {len(accepted)} accepted, rejected {dict(sorted((k, v) for k, v in counts.items() if k != 'ingested'))}")
    print(f"{args.tz}: compared {len(set(expected) | set(got))} series, {len(diffs)} differ; "
          f"strict_increase above ClickHouse's latest-chain figure in {above} series")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
