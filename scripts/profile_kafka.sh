#!/usr/bin/env bash
# Where `cohortflow run`'s CPU goes on the Kafka benchmark's topic: one
# broker on 127.0.0.1, the messages of scripts/bench_kafka.sh on 4
# partitions, and the daemon sampled by `perf record -e cpu-clock` (a
# software clock: works where the machine has no hardware counters) from
# its start to the last message; then the report by thread and by thread
# and function.
# Usage: scripts/profile_kafka.sh [MESSAGES] [PERF_DATA]
set -euo pipefail
cd "$(dirname "$0")/.."

messages=${1:-3000000}
data=${2:-perf.data}
broker=${COHORTFLOW_TEST_BROKER:-$HOME/.cache/kbroker/bin/nisshi}
[ -x "$broker" ] || { echo "no broker at $broker: run scripts/test.sh first" >&2; exit 1; }
command -v perf > /dev/null || { echo "no perf: install linux-perf (Debian)" >&2; exit 1; }

cargo build --release --locked -q --bin cohortflow --example wait_ingested
perf_pid=
. scripts/bench_topic.sh
start_broker profile
fill_topic events "$messages"
config=$(run_config profile events "$work/state")
perf record -q -F 2000 -e cpu-clock -g -o "$data" -- "$bin" run --config "$config" 2> "$work/run.log" &
perf_pid=$!
listen_addr "$work/run.log"
printf '%s messages in %s s\n' "$n" "$("$target/examples/wait_ingested" "$addr" "$n" 50)"
kill -INT "$perf_pid"
wait "$perf_pid" || true
perf_pid=
echo "by thread (share of all samples):"
# awk, not head, reads to the end: with pipefail, head's early exit would
# fail the script (SIGPIPE).
perf report -i "$data" --no-children --sort comm -g none 2> /dev/null | grep -v '^#' | grep -v '^$' | awk 'NR <= 8'
echo "by thread and function:"
perf report -i "$data" --no-children --sort comm,sym -g none 2> /dev/null | grep -v '^#' | grep -v '^$' | awk 'NR <= 40'
