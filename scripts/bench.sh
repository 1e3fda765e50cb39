#!/usr/bin/env bash
# End-to-end replay benchmark: generates a dataset once (cached), then runs
# `cohortflow replay` pinned to one core, several times, and prints the
# median throughput. Usage: scripts/bench.sh [DAYS] [USERS_PER_DAY] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."

days=${1:-40}
users_per_day=${2:-2000}
runs=${3:-5}
data_dir=${BENCH_DIR:-$HOME/.cache/cohortflow-bench}
mkdir -p "$data_dir"
data="$data_dir/demo-${days}d-${users_per_day}.ndjson"

cargo build --release --locked -q
bin=${CARGO_TARGET_DIR:-target}/release/cohortflow

if [ ! -s "$data" ]; then
    # A fixed start keeps the dataset identical from run to run.
    "$bin" generate --days "$days" --users-per-day "$users_per_day" --start-ms 1785000000000 > "$data.tmp"
    mv "$data.tmp" "$data"
fi
lines=$(wc -l < "$data")
bytes=$(stat -c %s "$data")
echo "dataset: $data ($lines lines, $((bytes / 1048576)) MiB)"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"

config=${BENCH_CONFIG:-config/demo.toml}
"$bin" check-config "$config" > /dev/null

rates=()
for i in $(seq "$runs"); do
    start=$(date +%s.%N)
    taskset -c 0 "$bin" replay --config "$config" "$data" > /dev/null 2>&1
    end=$(date +%s.%N)
    rate=$(echo "$lines / ($end - $start)" | bc -l)
    rates+=("$rate")
    printf 'run %d: %.0f lines/s\n' "$i" "$rate"
done
median=$(printf '%s\n' "${rates[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
/usr/bin/time -o "$data_dir/time.txt" -f '%M' taskset -c 0 "$bin" replay --config "$config" "$data" > /dev/null 2>&1
rss=$(tail -1 "$data_dir/time.txt")
printf 'replay, one core (taskset -c 0), median of %d: %.0f lines/s; peak RSS %d MiB\n' "$runs" "$median" "$((rss / 1024))"
