#!/usr/bin/env python3
"""ClickHouse (chdb, one thread) computing cohortflow's figures from the same
NDJSON file, timed, and checked against what `cohortflow replay` printed.

ClickHouse parses the file itself (JSONEachRow, RFC 3339 timestamps),
keeps the distinct events in a Memory table, then computes new users,
active users, every retention definition with retention() and every funnel
with windowFunnel(), as tests/reference/clickhouse_check.py does (the same
SQL: it is imported from there). Settings keep it to one thread; run it
under `taskset -c 0` to hold it to one core as well.

The file must hold only valid events (`cohortflow generate --clean`): this
measures the computation, not either side's validation. Prints one line
`clickhouse_seconds=<s> load_seconds=<s> series=<n> differ=<n>` and exits 1
when any figure differs.
"""

import argparse
import datetime as dt
import json
import os
import sys
import time
import tomllib
import zoneinfo

from chdb import session

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "reference"))
from clickhouse_check import clickhouse_figures, definitions, differences, duration_ms, parse_metrics, trends  # noqa: E402

ONE_THREAD = "SETTINGS max_threads = 1, max_insert_threads = 1, input_format_parallel_parsing = 0"
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--events", required=True)
    ap.add_argument("--metrics", required=True, help="the Prometheus text `cohortflow replay` printed")
    args = ap.parse_args()
    with open(args.config, "rb") as f:
        config = tomllib.load(f)
    tz_name = config.get("timezone", "UTC")
    tz = zoneinfo.ZoneInfo(tz_name)
    lateness = duration_ms(config.get("allowed_lateness", "10m"))
    retention, funnels = definitions(config)
    events = os.path.abspath(args.events)

    sess = session.Session()

    def q(sql):
        res = sess.query(f"{sql} {ONE_THREAD}", "JSONEachRow")
        return [json.loads(line) for line in str(res).splitlines() if line.strip()]

    start = time.perf_counter()
    sess.query("CREATE DATABASE IF NOT EXISTS bench")
    sess.query("DROP TABLE IF EXISTS bench.events")
    sess.query(
        "CREATE TABLE bench.events ENGINE = Memory AS "
        "SELECT DISTINCT user_id, event, ts_ms, props, "
        f"toDate(fromUnixTimestamp64Milli(ts_ms, '{tz_name}')) AS day FROM ("
        "SELECT user_id, event, toUnixTimestamp64Milli(parseDateTime64BestEffort(ts, 3, 'UTC')) AS ts_ms, props "
        f"FROM file('{events}', 'JSONEachRow', 'user_id String, event String, ts String, props String')) "
        f"{ONE_THREAD}, input_format_allow_errors_num = 0"
    )
    loaded = time.perf_counter()
    max_ts = q("SELECT max(ts_ms) AS m FROM bench.events")[0]["m"]
    wm_day = dt.datetime.fromtimestamp((int(max_ts) - lateness) / 1000, tz).date()
    expected, at_least = clickhouse_figures(q, "bench.events", wm_day, retention, funnels, trend_defs=trends(config))
    done = time.perf_counter()

    figures = {"cohortflow_new_users", "cohortflow_active_users", "cohortflow_cohort_users",
               "cohortflow_retained_users", "cohortflow_funnel_users"}
    got = {k: v for k, v in parse_metrics(args.metrics).items() if k[0] in figures}
    diffs, _ = differences(expected, at_least, got)
    for key, want, have in diffs[:20]:
        print(f"DIFF {key[0]}{dict(key[1])}: clickhouse={want} cohortflow={have}", file=sys.stderr)
    print(f"clickhouse_seconds={done - start:.3f} load_seconds={loaded - start:.3f} "
          f"series={len(set(expected) | set(got))} differ={len(diffs)}")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
