#!/usr/bin/env bash
# Two commits side by side in one run: `replay` speed on one core (the
# runs alternate, old then new, so that a slow minute of the shared
# machine falls on both), the figures of both compared line by line, and
# bytes per tracked user (examples/state_scale.rs). Given as ratios new/old.
#
# Usage: scripts/bench_compare.sh OLD [NEW] [CONFIG]
#        (NEW defaults to the work tree, CONFIG to config/bench.toml)
# Environment: RUNS (replay runs per side, median; default 7), EVENTS
#              (about how many events; default 3000000), USERS (for the
#              state benchmark; default 1000000), BENCH_DIR (dataset cache).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench_lib.sh

old=${1:?usage: scripts/bench_compare.sh OLD [NEW] [CONFIG]}
new=${2:-}
config=${3:-config/bench.toml}
runs=${RUNS:-7}
events=${EVENTS:-3000000}
users=${USERS:-1000000}
data_dir=${BENCH_DIR:-$HOME/.cache/cohortflow-bench}
target=${CARGO_TARGET_DIR:-target}
mkdir -p "$data_dir"
work=$(mktemp -d)
trap 'git worktree remove --force "$work/old" > /dev/null 2>&1 || true; git worktree remove --force "$work/new" > /dev/null 2>&1 || true; rm -rf "$work"' EXIT

# Builds a commit (or the work tree) in a target directory of its own, so
# that neither side's build evicts the other's.
build() { # NAME COMMIT|"" -> prints the directory of its release binaries
    local name=$1 commit=$2 dir=. tdir="$target-compare-$1"
    if [ -n "$commit" ]; then
        git worktree add --detach "$work/$name" "$commit" > /dev/null 2>&1
        dir=$work/$name
    fi
    (cd "$dir" && CARGO_TARGET_DIR=$tdir cargo build --release --locked -q --bin cohortflow --example state_scale)
    echo "$tdir/release"
}
old_dir=$(build old "$old")
new_dir=$(build new "$new")

data=$(bench_dataset "$new_dir/cohortflow" "$events" "$data_dir")
lines=$(wc -l < "$data")
old_rates=() new_rates=()
for _ in $(seq "$runs"); do
    old_rates+=("$(bench_rate "$old_dir/cohortflow" "$config" "$data" "$work/old.prom")")
    new_rates+=("$(bench_rate "$new_dir/cohortflow" "$config" "$data" "$work/new.prom")")
done
old_rate=$(printf '%s\n' "${old_rates[@]}" | bench_median)
new_rate=$(printf '%s\n' "${new_rates[@]}" | bench_median)
# Every series the old side exports is in the new one with the same value;
# series the new side adds (a metric, or new label values of one) are
# counted, and a metric only one side has is named.
names() { sed -n -E 's/^(cohortflow_[a-z0-9_]+).*/\1/p' "$1" | sort -u; }
figures() { grep '^cohortflow_' "$1" | sort; }
comm -23 <(figures "$work/old.prom") <(figures "$work/new.prom") > "$work/lost.txt"
added=$(comm -13 <(figures "$work/old.prom") <(figures "$work/new.prom") | wc -l)
if [ ! -s "$work/lost.txt" ]; then
    agree="all $(figures "$work/old.prom" | wc -l) series of the old side agree; the new side adds $added"
else
    agree="FIGURES DIFFER: $(wc -l < "$work/lost.txt") series of the old side changed or missing"
    head -20 "$work/lost.txt" >&2
fi
only_new=$(comm -13 <(names "$work/old.prom") <(names "$work/new.prom") | tr '\n' ' ')
only_old=$(comm -23 <(names "$work/old.prom") <(names "$work/new.prom") | tr '\n' ' ')

old_bytes=$(bench_bytes_per_user "$old_dir/examples/state_scale" "$users" "$config")
new_bytes=$(bench_bytes_per_user "$new_dir/examples/state_scale" "$users" "$config")

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "old: $(git rev-parse --short "$old"), new: ${new:-work tree at $(git rev-parse --short HEAD)}; $config; $lines events; replay pinned to core 0, median of $runs alternating runs"
printf '%-16s %14s %14s %8s\n' "" old new new/old
printf '%-16s %14.0f %14.0f %8.3f\n' "replay events/s" "$old_rate" "$new_rate" "$(echo "$new_rate / $old_rate" | bc -l)"
printf '%-16s %14s %14s %8.3f\n' "bytes per user" "$old_bytes" "$new_bytes" "$(echo "$new_bytes / $old_bytes" | bc -l)"
echo "figures: $agree"
[ -z "$only_new" ] || echo "only new: $only_new"
[ -z "$only_old" ] || echo "only old: $only_old"
[ "${agree#FIGURES DIFFER}" = "$agree" ]
