#!/usr/bin/env bash
# One heavy user (a bot, a load test, a synthetic monitor) and the cap on
# the funnel events a user keeps (`max_funnel_events_per_user`): N `view`
# events of one user, one a second, replayed with config/bench.toml at the
# default cap and with none (the largest the key takes), side by side. Each
# of a user's funnel events costs a pass over the ones the user keeps, so
# without the cap the time grows with the square of N. Also printed: the
# events the cap left out, and the funnel series that differ between the
# two runs because of it.
# Then the same at the default cap with the checkout funnel in strict_once
# mode, whose levels a bot's many step-1 events of a day made cost the
# cube of their number before the strict modes' chains jumped (BENCHMARKS.md).
# Usage: scripts/bench_heavy_user.sh [EVENTS ...]   (default 20000 40000 80000)
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$#" -gt 0 ] || set -- 20000 40000 80000
cargo build --release --locked -q --bin cohortflow
bin=target/release/cohortflow
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed 's/^steps = \["view", "add_to_cart", "order"\]$/&\nmode = "strict_once"/' config/bench.toml > "$work/strict.toml"
grep -q strict_once "$work/strict.toml" || { echo "config/bench.toml has no checkout funnel to make strict" >&2; exit 1; }

replay() { # CAP FILE OUT [CONFIG]; prints the seconds it took
    local start end
    start=$(date +%s.%N)
    COHORTFLOW_MAX_FUNNEL_EVENTS_PER_USER=$1 "$bin" replay --config "${4:-config/bench.toml}" "$2" > "$3" 2> /dev/null
    end=$(date +%s.%N)
    awk -v s="$start" -v e="$end" 'BEGIN { printf "%.2f", e - s }'
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
printf '%8s %12s %12s %8s %14s %16s %18s\n' events "cap 10000" "no cap" ratio "events capped" "series changed" "strict, cap 10000"
for n in "$@"; do
    awk -v n="$n" 'BEGIN {
        for (i = 0; i < n; i++)
            # Whole seconds, then "000": integers in awk may stop at 2^31.
            printf "{\"user_id\":\"bot\",\"event\":\"view\",\"ts\":%d000}\n", 1785000000 + i
    }' > "$work/bot.ndjson"
    capped=$(replay 10000 "$work/bot.ndjson" "$work/capped.prom")
    open=$(replay 4294967295 "$work/bot.ndjson" "$work/open.prom")
    strict=$(replay 10000 "$work/bot.ndjson" "$work/strict.prom" "$work/strict.toml")
    left_out=$(awk '/^cohortflow_funnel_events_capped_total/ { print $2 }' "$work/capped.prom")
    # The funnel series (of `cohortflow_funnel_users`) the cap changed:
    # past the cap the bot's views are left out, so it no longer enters the
    # funnel on the days after.
    differ=$(comm -13 <(grep '^cohortflow_funnel_users' "$work/capped.prom" | sort) \
        <(grep '^cohortflow_funnel_users' "$work/open.prom" | sort) | wc -l)
    printf '%8s %11ss %11ss %7.1fx %14s %16s %17ss\n' "$n" "$capped" "$open" \
        "$(awk -v a="$open" -v b="$capped" 'BEGIN { print a / b }')" "$left_out" "$differ" "$strict"
done
