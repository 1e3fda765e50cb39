#!/usr/bin/env bash
# One build, two configs side by side in one run: what configuring a metric
# family costs. `replay` speed on one core (the runs alternate, A then B)
# and bytes per tracked user (examples/state_scale.rs), as ratios B/A, on
# the dataset scripts/bench_compare.sh uses.
#
# Usage: scripts/bench_configs.sh CONFIG_A CONFIG_B
# Environment: RUNS (replay runs per side, median; default 7), EVENTS
#              (about how many events; default 3000000), USERS (for the
#              state benchmark; default 1000000), BENCH_DIR (dataset cache).
set -euo pipefail
cd "$(dirname "$0")/.."

a=${1:?usage: scripts/bench_configs.sh CONFIG_A CONFIG_B}
b=${2:?usage: scripts/bench_configs.sh CONFIG_A CONFIG_B}
runs=${RUNS:-7}
events=${EVENTS:-3000000}
users=${USERS:-1000000}
data_dir=${BENCH_DIR:-$HOME/.cache/cohortflow-bench}
target=${CARGO_TARGET_DIR:-target}
mkdir -p "$data_dir"
cargo build --release --locked -q --bin cohortflow --example state_scale
bin=$target/release

per_day=$(( events / 397 ))
data="$data_dir/clean-30d-$per_day.ndjson"
if [ ! -s "$data" ]; then
    "$bin/cohortflow" generate --clean --days 30 --users-per-day "$per_day" --start-ms 1785000000000 > "$data.tmp"
    mv "$data.tmp" "$data"
fi
lines=$(wc -l < "$data")

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
rate() { # CONFIG
    local start end
    start=$(date +%s.%N)
    taskset -c 0 "$bin/cohortflow" replay --config "$1" "$data" > /dev/null 2>&1
    end=$(date +%s.%N)
    echo "$lines / ($end - $start)" | bc -l
}
a_rates=() b_rates=()
for _ in $(seq "$runs"); do
    a_rates+=("$(rate "$a")")
    b_rates+=("$(rate "$b")")
done
a_rate=$(printf '%s\n' "${a_rates[@]}" | median)
b_rate=$(printf '%s\n' "${b_rates[@]}" | median)
per_user() { "$bin/examples/state_scale" "$users" "$1" | sed -n -E 's/.*bytes_per_user=([0-9.]+).*/\1/p' | head -1; }
a_bytes=$(per_user "$a")
b_bytes=$(per_user "$b")

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "build: work tree at $(git rev-parse --short HEAD); A $a, B $b; $lines events; replay pinned to core 0, median of $runs alternating runs"
printf '%-16s %14s %14s %8s\n' "" A B B/A
printf '%-16s %14.0f %14.0f %8.3f\n' "replay events/s" "$a_rate" "$b_rate" "$(echo "$b_rate / $a_rate" | bc -l)"
printf '%-16s %14s %14s %8.3f\n' "bytes per user" "$a_bytes" "$b_bytes" "$(echo "$b_bytes / $a_bytes" | bc -l)"
