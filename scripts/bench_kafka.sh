#!/usr/bin/env bash
# The Kafka path's throughput next to a bare librdkafka consumer, side by
# side on one broker and one topic (runs alternate; medians and their
# ratio); then event → /metrics latency under a steady produced load
# (examples/latency.rs). `cohortflow run` is measured twice a round: with
# its default shard workers (one a core) and with one; the bare consumer
# twice too: with rdkafka's poll, the baseline, and with the batch read
# `run` uses. Both sides are timed from their first assignment to the last
# message.
# Usage: scripts/bench_kafka.sh [MESSAGES] [LATENCY_RATE] [LATENCY_SECONDS]
# Environment: RUNS (runs of each side; default 3).
set -euo pipefail
cd "$(dirname "$0")/.."

messages=${1:-3000000}
latency_rate=${2:-20000}
latency_seconds=${3:-30}
runs=${RUNS:-3}
broker=${COHORTFLOW_TEST_BROKER:-$HOME/.cache/kbroker/bin/nisshi}
[ -x "$broker" ] || { echo "no broker at $broker: run scripts/test.sh first" >&2; exit 1; }

cargo build --release --locked -q --bin cohortflow --example bare_consumer --example latency --example wait_ingested
daemon_pid=
. scripts/bench_topic.sh
start_broker bench
fill_topic events "$messages"
describe_run

# Bash's `times` gives a subshell's children's CPU time as "XmY.YYYs".
seconds() { echo "$1" | sed -E 's/([0-9]+)m([0-9.]+)s/\1 * 60 + \2/' | bc -l; }

# CPU a message costs the machine (the consumer's process and the
# broker's), microseconds: where the cores are all busy, throughput is
# bound by it.
per_msg() { echo "($1 + $2) * 1000000 / $n" | bc -l; }

bares=()
batches=()
ours=()
singles=()
bare_cpus=()
run_cpus=()
rest_cpus=()
worker_cpus=()
for i in $(seq "$runs"); do
    # The bare consumer reading as `run` does: partitions forwarded to a
    # queue of its own, read with librdkafka's batch call.
    batch_out=$("$target/examples/bare_consumer" "127.0.0.1:$port" events "$n" --batch)
    batch=$(echo "$batch_out" | head -1 | sed -E 's/.*: ([0-9]+) msg\/s from the assignment.*/\1/')
    read -r batch_rdk batch_poll <<< "$(echo "$batch_out" | sed -n 2p | sed -E 's/.*threads ([0-9]+), the others ([0-9]+)/\1 \2/')"
    broker_before=$(cpu_of "$broker_pid")
    bare_out=$( ("$target/examples/bare_consumer" "127.0.0.1:$port" events "$n"; times) )
    bare_broker=$(echo "$(cpu_of "$broker_pid") - $broker_before" | bc -l)
    bare_line=$(echo "$bare_out" | head -1)
    read -r bare_rdk bare_poll <<< "$(echo "$bare_out" | sed -n 2p | sed -E 's/.*threads ([0-9]+), the others ([0-9]+)/\1 \2/')"
    read -r bare_user bare_sys <<< "$(echo "$bare_out" | tail -1)"
    bare_cpu=$(echo "$(seconds "$bare_user") + $(seconds "$bare_sys")" | bc -l)
    bare=$(echo "$bare_line" | sed -E 's/.*: ([0-9]+) msg\/s from the assignment.*/\1/')
    drain=$(echo "$bare_line" | sed -E 's/.* ([0-9]+) msg\/s from the first message.*/\1/')
    read -r run run_cpu run_broker run_workers run_rdk run_consumer <<< "$(time_run "bench-run-$i" "$work/state-$i")"
    read -r single _ _ <<< "$(time_run "bench-single-$i" "$work/state-single-$i" 1)"
    printf 'run %d: bare librdkafka consumer %.0f msg/s (%.0f from its first message; batch read %.0f), cohortflow run %.0f msg/s, with one worker %.0f msg/s\n' \
        "$i" "$bare" "$drain" "$batch" "$run" "$single"
    printf '       CPU a message: bare %.2f us (consumer %.1f s, broker %.1f s), run %.2f us (daemon %.1f s, of which shard workers %.1f s; broker %.1f s)\n' \
        "$(per_msg "$bare_cpu" "$bare_broker")" "$bare_cpu" "$bare_broker" "$(per_msg "$run_cpu" "$run_broker")" "$run_cpu" \
        "$run_workers" "$run_broker"
    printf '       by thread: bare polling thread %.1f s, librdkafka %.1f s (batch read: %.1f s, %.1f s); run consumer thread %.1f s, librdkafka %.1f s, shard workers %.1f s, the rest (start, HTTP, runtime) %.1f s\n' \
        "$(echo "$bare_poll / $ticks" | bc -l)" "$(echo "$bare_rdk / $ticks" | bc -l)" \
        "$(echo "$batch_poll / $ticks" | bc -l)" "$(echo "$batch_rdk / $ticks" | bc -l)" \
        "$run_consumer" "$run_rdk" "$run_workers" "$(echo "$run_cpu - $run_workers - $run_rdk - $run_consumer" | bc -l)"
    bares+=("$bare")
    batches+=("$batch")
    ours+=("$run")
    singles+=("$single")
    bare_cpus+=("$(per_msg "$bare_cpu" "$bare_broker")")
    run_cpus+=("$(per_msg "$run_cpu" "$run_broker")")
    # The rest of the daemon: the consumer thread and librdkafka's own.
    rest_cpus+=("$(per_msg "$run_cpu - $run_workers" "$run_broker")")
    worker_cpus+=("$(per_msg "$run_workers" 0)")
done
bare=$(printf '%s\n' "${bares[@]}" | median)
run=$(printf '%s\n' "${ours[@]}" | median)
single=$(printf '%s\n' "${singles[@]}" | median)
batch=$(printf '%s\n' "${batches[@]}" | median)
bare_cpu=$(printf '%s\n' "${bare_cpus[@]}" | median)
run_cpu=$(printf '%s\n' "${run_cpus[@]}" | median)
printf 'median of %d: bare %.0f msg/s, cohortflow run %.0f msg/s (ratio %.2f), with one worker %.0f msg/s (ratio %.2f)\n' \
    "$runs" "$bare" "$run" "$(echo "$run / $bare" | bc -l)" "$single" "$(echo "$single / $bare" | bc -l)"
printf 'median of %d: bare consumer with the batch read %.0f msg/s; cohortflow run to it %.2f\n' \
    "$runs" "$batch" "$(echo "$run / $batch" | bc -l)"
printf 'median CPU a message, consumer and broker: bare %.2f us, run %.2f us (ratio %.2f)\n' \
    "$bare_cpu" "$run_cpu" "$(echo "$bare_cpu / $run_cpu" | bc -l)"
# Where the cores are all busy the ratio is bound by the CPU a message:
# run's split shows what it spends besides a bare consumer's work.
printf 'of run'"'"'s: shard workers (decoding and the engine) %.2f us, the rest (consumer thread, librdkafka, broker) %.2f us\n' \
    "$(printf '%s\n' "${worker_cpus[@]}" | median)" "$(printf '%s\n' "${rest_cpus[@]}" | median)"

# Latency: a fresh daemon on a one-partition topic (so that the ingested
# count orders messages), fed at a steady rate while /metrics is scraped.
"$broker" topic create latency --partitions 1 --broker "tcp://127.0.0.1:$port" > /dev/null
start_daemon "$(run_config bench-latency latency "$work/state-latency")" "$work/latency.log"
for _ in $(seq 600); do curl -sf "http://$addr/readyz" > /dev/null && break; sleep 0.1; done
printf 'event -> /metrics at %s msg/s for %s s: ' "$latency_rate" "$latency_seconds"
"$target/examples/latency" "127.0.0.1:$port" latency "$addr" "$latency_rate" "$latency_seconds"
