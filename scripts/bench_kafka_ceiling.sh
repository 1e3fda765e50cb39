#!/usr/bin/env bash
# How fast `cohortflow run` could read the benchmark's topic if its shard
# workers cost less: bench_kafka.sh's comparison with the bare consumer
# that reads in batches, beside two builds of HEAD whose `Engine::apply`
# does less:
# - discard: counts each message and does nothing else, so that what is
#   left is the consumer thread, the hand-over to the workers, librdkafka
#   and the broker;
# - decode: decodes each message and drops the event, without the engine.
# The two builds come from a copy of HEAD (commit first) with the one
# line of `Engine::apply` that decodes and ingests replaced, built under
# target/ceiling; none of it is in cohortflow itself. The rounds alternate
# the four consumers; medians, and each one's ratio to the batch reader.
# Usage: scripts/bench_kafka_ceiling.sh [MESSAGES]
# Environment: RUNS (rounds; default 5).
set -euo pipefail
cd "$(dirname "$0")/.."

messages=${1:-3000000}
runs=${RUNS:-5}
broker=${COHORTFLOW_TEST_BROKER:-$HOME/.cache/kbroker/bin/nisshi}
[ -x "$broker" ] || { echo "no broker at $broker: run scripts/test.sh first" >&2; exit 1; }

# `run` is built from the working tree and the variants from HEAD.
git diff --quiet HEAD -- src Cargo.toml Cargo.lock ||
    { echo "src/ has changes not committed: commit them, so that every build is of HEAD" >&2; exit 1; }
cargo build --release --locked -q --bin cohortflow --example bare_consumer --example wait_ingested
daemon_pid=
. scripts/bench_topic.sh

# The line each variant replaces, and what replaces it.
line='let result = event::decode(bytes, &self.cfg.fields, fallback).and_then(|ev| self.ingest(&ev, now_ms));'
declare -A variant=(
    [discard]='let result: Result<(), Reject> = { std::hint::black_box((bytes, fallback, now_ms, event::decode)); Ok(()) };'
    [decode]='let result = event::decode(bytes, &self.cfg.fields, fallback).map(|ev| { std::hint::black_box((&ev, now_ms)); });'
)
root=$PWD
for v in discard decode; do
    tree=$work/tree-$v
    mkdir "$tree"
    git archive HEAD | tar -x -C "$tree"
    python3 - "$tree/src/engine/mod.rs" "$line" "${variant[$v]}" <<'PY'
import sys
path, line, new = sys.argv[1:]
text = open(path).read()
if text.count(line) != 1:
    sys.exit("Engine::apply no longer has the one line to replace: update scripts/bench_kafka_ceiling.sh")
open(path, "w").write(text.replace(line, new))
PY
    (cd "$tree" && CARGO_TARGET_DIR=$root/target/ceiling cargo build --release --locked -q --bin cohortflow)
    cp target/ceiling/release/cohortflow "$work/cohortflow-$v"
done

start_broker ceiling
fill_topic events "$messages"
describe_run

declare -A rates workers
for i in $(seq "$runs"); do
    out=$("$target/examples/bare_consumer" "127.0.0.1:$port" events "$n" --batch)
    batch=$(echo "$out" | head -1 | sed -E 's/.*: ([0-9]+) msg\/s from the assignment.*/\1/')
    rates[batch]+="$batch "
    line_out="run $i: batch read $batch msg/s"
    for v in discard decode run; do
        case $v in run) b=$bin ;; *) b=$work/cohortflow-$v ;; esac
        read -r rate _ _ w _ _ <<< "$(time_run "ceiling-$v-$i" "$work/state-$v-$i" "" "$b")"
        rates[$v]+="$rate "
        workers[$v]+="$(echo "$w * 1000000 / $n" | bc -l) "
        line_out+="$(printf ', %s %.0f msg/s (shard workers %.2f us a message)' "$v" "$rate" "$(echo "$w * 1000000 / $n" | bc -l)")"
    done
    echo "${line_out# }"
done
batch=$(printf '%s\n' ${rates[batch]} | median)
printf 'median of %d: batch read %.0f msg/s' "$runs" "$batch"
for v in discard decode run; do
    r=$(printf '%s\n' ${rates[$v]} | median)
    printf '; %s %.0f msg/s (%.2f of it; shard workers %.2f us a message)' "$v" "$r" "$(echo "$r / $batch" | bc -l)" \
        "$(printf '%s\n' ${workers[$v]} | median)"
done
echo
