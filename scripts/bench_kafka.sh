#!/usr/bin/env bash
# The Kafka path's throughput next to a bare librdkafka consumer, side by
# side on one broker and one topic (runs alternate; medians and their
# ratio); then event → /metrics latency under a steady produced load
# (examples/latency.rs). `cohortflow run` is measured twice a round: with
# its default shard workers (one a core) and with one. Both sides are timed
# from their first assignment to the last message.
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

cargo build --release --locked -q --bin cohortflow --example bare_consumer --example latency
target=${CARGO_TARGET_DIR:-target}/release
bin=$target/cohortflow
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$broker" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "memory://bench/" > "$work/broker.log" 2>&1 &
broker_pid=$!
daemon_pid=
trap 'kill $broker_pid 2>/dev/null; [ -z "$daemon_pid" ] || kill $daemon_pid 2>/dev/null; rm -rf "$work"' EXIT
sleep 1
"$broker" topic create events --partitions 4 --broker "tcp://127.0.0.1:$port" > /dev/null

days=$(( messages / 25000 + 2 ))
"$bin" generate --days "$days" --users-per-day 2000 --start-ms 1785000000000 | head -n "$messages" > "$work/events.ndjson"
n=$(wc -l < "$work/events.ndjson")
"$bin" loadgen --brokers "127.0.0.1:$port" --topic events "$work/events.ndjson" 2> /dev/null
echo "topic: $n messages, 4 partitions, nisshi on 127.0.0.1; definitions: config/bench.toml"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(git rev-parse --short HEAD 2>/dev/null || echo '?')"

# A config for `run`: top-level keys first, then the definitions, then the
# tables of the source.
run_config() { # GROUP TOPIC STATE_DIR [WORKERS]
    {
        printf 'state_dir = "%s"\nsnapshot_interval = "30s"\n' "$3"
        cat config/bench.toml
        printf '[http]\nlisten = "127.0.0.1:0"\n[kafka]\nbrokers = "127.0.0.1:%s"\ntopics = ["%s"]\ngroup_id = "%s"\n' \
            "$port" "$2" "$1"
        [ -z "${4:-}" ] || printf 'workers = %s\n' "$4"
    } > "$work/$1.toml"
    echo "$work/$1.toml"
}

start_daemon() { # CONFIG LOG; sets daemon_pid and addr
    "$bin" run --config "$1" 2> "$2" &
    daemon_pid=$!
    addr=
    for _ in $(seq 100); do
        addr=$(grep -o 'http://[0-9.:]*' "$2" | head -1 | sed 's|http://||') && [ -n "$addr" ] && break
        sleep 0.1
    done
}

read_count() {
    curl -s "http://$addr/metrics" | awk '/^cohortflow_events_(ingested|rejected)_total/ {s += $NF} END {print s + 0}'
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

time_run() { # GROUP STATE_DIR [WORKERS]; prints msg/s
    start_daemon "$(run_config "$1" events "$2" "${3:-}")" "$work/$1.log"
    # Timed from the first assignment (/readyz turns 200 when the group is
    # joined and the partitions restored) to the last message, like the
    # bare consumer.
    for _ in $(seq 3000); do curl -sf "http://$addr/readyz" > /dev/null && break; sleep 0.01; done
    local start end
    start=$(date +%s.%N)
    while [ "$(read_count)" -lt "$n" ]; do sleep 0.02; done
    end=$(date +%s.%N)
    kill "$daemon_pid"; wait "$daemon_pid" 2> /dev/null || true
    daemon_pid=
    echo "$n / ($end - $start)" | bc -l
}

bares=()
ours=()
singles=()
for i in $(seq "$runs"); do
    bare_line=$("$target/examples/bare_consumer" "127.0.0.1:$port" events "$n")
    bare=$(echo "$bare_line" | sed -E 's/.*: ([0-9]+) msg\/s from the assignment.*/\1/')
    drain=$(echo "$bare_line" | sed -E 's/.* ([0-9]+) msg\/s from the first message.*/\1/')
    run=$(time_run "bench-run-$i" "$work/state-$i")
    single=$(time_run "bench-single-$i" "$work/state-single-$i" 1)
    printf 'run %d: bare librdkafka consumer %.0f msg/s (%.0f from its first message), cohortflow run %.0f msg/s, with one worker %.0f msg/s\n' \
        "$i" "$bare" "$drain" "$run" "$single"
    bares+=("$bare")
    ours+=("$run")
    singles+=("$single")
done
bare=$(printf '%s\n' "${bares[@]}" | median)
run=$(printf '%s\n' "${ours[@]}" | median)
single=$(printf '%s\n' "${singles[@]}" | median)
printf 'median of %d: bare %.0f msg/s, cohortflow run %.0f msg/s (ratio %.2f), with one worker %.0f msg/s (ratio %.2f)\n' \
    "$runs" "$bare" "$run" "$(echo "$run / $bare" | bc -l)" "$single" "$(echo "$single / $bare" | bc -l)"

# Latency: a fresh daemon on a one-partition topic (so that the ingested
# count orders messages), fed at a steady rate while /metrics is scraped.
"$broker" topic create latency --partitions 1 --broker "tcp://127.0.0.1:$port" > /dev/null
start_daemon "$(run_config bench-latency latency "$work/state-latency")" "$work/latency.log"
for _ in $(seq 600); do curl -sf "http://$addr/readyz" > /dev/null && break; sleep 0.1; done
printf 'event -> /metrics at %s msg/s for %s s: ' "$latency_rate" "$latency_seconds"
"$target/examples/latency" "127.0.0.1:$port" latency "$addr" "$latency_rate" "$latency_seconds"
