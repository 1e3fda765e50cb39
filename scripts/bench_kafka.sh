#!/usr/bin/env bash
# The Kafka path's throughput next to a bare librdkafka consumer, side by
# side on one broker and one topic; then event → /metrics latency under a
# steady produced load (examples/latency.rs).
# Usage: scripts/bench_kafka.sh [MESSAGES] [LATENCY_RATE] [LATENCY_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."

messages=${1:-1000000}
latency_rate=${2:-20000}
latency_seconds=${3:-30}
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
trap 'kill $broker_pid 2>/dev/null; kill $daemon_pid 2>/dev/null; rm -rf "$work"' EXIT
daemon_pid=
sleep 1
"$broker" topic create events --partitions 4 --broker "tcp://127.0.0.1:$port" > /dev/null

days=$(( messages / 25000 + 2 ))
"$bin" generate --days "$days" --users-per-day 2000 --start-ms 1785000000000 | head -n "$messages" > "$work/events.ndjson"
n=$(wc -l < "$work/events.ndjson")
"$bin" loadgen --brokers "127.0.0.1:$port" --topic events "$work/events.ndjson" 2> /dev/null
echo "topic: $n messages, 4 partitions, nisshi on 127.0.0.1"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"

bare=$("$target/examples/bare_consumer" "127.0.0.1:$port" events "$n" | sed -E 's/.*: ([0-9]+) msg\/s.*/\1/')
echo "bare librdkafka consumer: $bare msg/s"

cat > "$work/run.toml" <<TOML
state_dir = "$work/state"
snapshot_interval = "30s"
[http]
listen = "127.0.0.1:0"
[kafka]
brokers = "127.0.0.1:$port"
topics = ["events"]
group_id = "bench-run"
TOML
cat config/demo.toml | grep -v '^timezone' >> "$work/run.toml"
"$bin" run --config "$work/run.toml" 2> "$work/run.log" &
daemon_pid=$!
addr=
for _ in $(seq 100); do
    addr=$(grep -o 'http://[0-9.:]*' "$work/run.log" | head -1 | sed 's|http://||') && [ -n "$addr" ] && break
    sleep 0.1
done
# Timed from the first message read to the last, like the bare consumer.
read_count() {
    curl -s "http://$addr/metrics" | awk '/^cohortflow_events_(ingested|rejected)_total/ {s += $NF} END {print s + 0}'
}
while [ "$(read_count)" -eq 0 ]; do sleep 0.05; done
start=$(date +%s.%N)
while [ "$(read_count)" -lt "$n" ]; do sleep 0.05; done
end=$(date +%s.%N)
run=$(echo "$n / ($end - $start)" | bc -l)
printf 'cohortflow run (demo definitions): %.0f msg/s\n' "$run"
printf 'ratio run / bare: %.2f\n' "$(echo "$run / $bare" | bc -l)"

kill "$daemon_pid"; wait "$daemon_pid" 2> /dev/null || true

# Latency: a fresh daemon on a one-partition topic (so that the ingested
# count orders messages), fed at a steady rate while /metrics is scraped.
"$broker" topic create latency --partitions 1 --broker "tcp://127.0.0.1:$port" > /dev/null
sed -e 's/^topics = .*/topics = ["latency"]/' -e 's/^group_id = .*/group_id = "bench-latency"/' \
    -e "s|^state_dir = .*|state_dir = \"$work/state-latency\"|" "$work/run.toml" > "$work/latency.toml"
"$bin" run --config "$work/latency.toml" 2> "$work/latency.log" &
daemon_pid=$!
addr=
for _ in $(seq 100); do
    addr=$(grep -o 'http://[0-9.:]*' "$work/latency.log" | head -1 | sed 's|http://||') && [ -n "$addr" ] && break
    sleep 0.1
done
for _ in $(seq 600); do curl -sf "http://$addr/readyz" > /dev/null && break; sleep 0.1; done
printf 'event -> /metrics at %s msg/s for %s s: ' "$latency_rate" "$latency_seconds"
"$target/examples/latency" "127.0.0.1:$port" latency "$addr" "$latency_rate" "$latency_seconds"
