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
. scripts/bench_lib.sh

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

data=$(bench_dataset "$bin/cohortflow" "$events" "$data_dir")
lines=$(wc -l < "$data")
a_rates=() b_rates=()
for _ in $(seq "$runs"); do
    a_rates+=("$(bench_rate "$bin/cohortflow" "$a" "$data" /dev/null)")
    b_rates+=("$(bench_rate "$bin/cohortflow" "$b" "$data" /dev/null)")
done
a_rate=$(printf '%s\n' "${a_rates[@]}" | bench_median)
b_rate=$(printf '%s\n' "${b_rates[@]}" | bench_median)
a_bytes=$(bench_bytes_per_user "$bin/examples/state_scale" "$users" "$a")
b_bytes=$(bench_bytes_per_user "$bin/examples/state_scale" "$users" "$b")

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "build: work tree at $(git rev-parse --short HEAD); A $a, B $b; $lines events; replay pinned to core 0, median of $runs alternating runs"
printf '%-16s %14s %14s %8s\n' "" A B B/A
printf '%-16s %14.0f %14.0f %8.3f\n' "replay events/s" "$a_rate" "$b_rate" "$(echo "$b_rate / $a_rate" | bc -l)"
printf '%-16s %14s %14s %8.3f\n' "bytes per user" "$a_bytes" "$b_bytes" "$(echo "$b_bytes / $a_bytes" | bc -l)"
