#!/usr/bin/env bash
# `cohortflow replay` next to ClickHouse (chdb, one thread), side by side on
# the same generated NDJSON files, both pinned to one core, parsing
# included; the figures of both are compared series by series. Then memory
# per tracked user and snapshot write/restore at the given user counts.
#
# Usage: scripts/bench.sh [EVENTS ...]      (default: 1000000 10000000)
# Environment: RUNS (cohortflow runs per size, median; default 3),
#              USERS (user counts for the state benchmark; default
#              "1000000 10000000"), BENCH_DIR (dataset cache).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench_lib.sh

sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000000 10000000)
runs=${RUNS:-3}
user_counts=${USERS:-"1000000 10000000"}
data_dir=${BENCH_DIR:-$HOME/.cache/cohortflow-bench}
config=config/bench.toml
mkdir -p "$data_dir"

cargo build --release --locked -q --bin cohortflow --example state_scale
bin=${CARGO_TARGET_DIR:-target}/release/cohortflow
examples=${CARGO_TARGET_DIR:-target}/release/examples
python3 -c 'import chdb' 2> /dev/null || { echo "chdb is missing: pip install chdb" >&2; exit 1; }
"$bin" check-config "$config" > /dev/null

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "definitions: $config; both sides pinned with taskset -c 0"
printf '%-10s %12s %16s %16s %14s %8s %12s\n' events MiB cohortflow/s clickhouse/s "ratio" agree "peak RSS"
for events in "${sizes[@]}"; do
    # 30 simulated days; sign-ups per day chosen for about $events lines.
    data=$(bench_dataset "$bin" "$events" "$data_dir")
    lines=$(wc -l < "$data")
    mib=$(( $(stat -c %s "$data") / 1048576 ))
    rates=()
    for _ in $(seq "$runs"); do
        start=$(date +%s.%N)
        taskset -c 0 "$bin" replay --config "$config" "$data" > "$data_dir/replay.prom" 2> /dev/null
        end=$(date +%s.%N)
        rates+=("$(echo "$lines / ($end - $start)" | bc -l)")
    done
    ours=$(printf '%s\n' "${rates[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    /usr/bin/time -o "$data_dir/time.txt" -f '%M' taskset -c 0 "$bin" replay --config "$config" "$data" > /dev/null 2>&1
    rss=$(( $(tail -1 "$data_dir/time.txt") / 1024 ))
    ch=$(taskset -c 0 python3 scripts/bench_clickhouse.py --config "$config" --events "$data" --metrics "$data_dir/replay.prom")
    ch_seconds=$(echo "$ch" | sed -E 's/.*clickhouse_seconds=([0-9.]+).*/\1/')
    load_seconds=$(echo "$ch" | sed -E 's/.*load_seconds=([0-9.]+).*/\1/')
    series=$(echo "$ch" | sed -E 's/.*series=([0-9]+).*/\1/')
    differ=$(echo "$ch" | sed -E 's/.*differ=([0-9]+).*/\1/')
    theirs=$(echo "$lines / $ch_seconds" | bc -l)
    printf '%-10s %12s %16.0f %16.0f %13.2fx %8s %9s MiB\n' "$lines" "$mib" "$ours" "$theirs" \
        "$(echo "$ours / $theirs" | bc -l)" "$([ "$differ" = 0 ] && echo "$series" || echo "NO:$differ")" "$rss"
    printf '%-10s ClickHouse: %.2f s in all, of which %.2f s parsing and loading (cohortflow: %.2f s in all)\n' \
        "" "$ch_seconds" "$load_seconds" "$(echo "$lines / $ours" | bc -l)"
    [ "$differ" = 0 ] || { echo "figures differ from ClickHouse's" >&2; exit 1; }
done

# The example fixes the allocator's mmap threshold as the daemon does
# (src/allocator.rs) unless GLIBC_TUNABLES sets one.
echo
echo "state at scale ($config; examples/state_scale.rs):"
for users in $user_counts; do
    "$examples/state_scale" "$users" "$config"
done
