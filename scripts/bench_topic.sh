# Sourced by bench_kafka.sh, bench_kafka_ceiling.sh and profile_kafka.sh:
# a nisshi broker on a free port of 127.0.0.1, the benchmark's topic, 4
# partitions of generated events (users who come back over months: 2 000
# sign-ups a day, 25 000 events a day), and a `cohortflow run` config
# reading it. Needs $broker; sets $target, $bin, $work (removed at exit,
# when the broker and any $daemon_pid or $perf_pid are stopped), and
# through its functions $port, $broker_pid and $n (the messages in the
# topic). Its last part starts and times a daemon (`time_run`) and reads
# processes' CPU time.

target=${CARGO_TARGET_DIR:-target}/release
bin=$target/cohortflow
work=$(mktemp -d)
broker_pid=
# The processes are waited for before their directory goes: a daemon
# writes its last snapshot there as it stops.
trap 'kill ${broker_pid:-} ${daemon_pid:-} ${perf_pid:-} 2> /dev/null; wait ${daemon_pid:-} ${perf_pid:-} ${broker_pid:-} 2> /dev/null; rm -rf "$work" || true' EXIT

start_broker() { # STORAGE_NAME
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$broker" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine "memory://$1/" > "$work/broker.log" 2>&1 &
    broker_pid=$!
    sleep 1
}

fill_topic() { # TOPIC MESSAGES
    local days=$(( $2 / 25000 + 2 )) start=1785000000000 now_ms
    # Events after the clock (plus max_future_skew) are rejected as too
    # early, which would time rejections, not the engine: the last one is
    # some MESSAGES / 25 000 days after the start. A topic too long to end
    # before today from the usual start (2026-07-25) starts earlier, at a
    # day's start.
    now_ms=$(( $(date +%s) * 1000 ))
    if (( start + ($2 / 25000 + 1) * 86400000 > now_ms )); then
        start=$(( (now_ms / 86400000 - days - 1) * 86400000 ))
    fi
    "$broker" topic create "$1" --partitions 4 --broker "tcp://127.0.0.1:$port" > /dev/null
    "$bin" generate --days "$days" --users-per-day 2000 --start-ms "$start" |
        head -n "$2" > "$work/events.ndjson"
    n=$(wc -l < "$work/events.ndjson")
    "$bin" loadgen --brokers "127.0.0.1:$port" --topic "$1" "$work/events.ndjson" 2> /dev/null
}

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

# The topic, the definitions, the machine and the commit, for the record.
describe_run() {
    echo "topic: $n messages, 4 partitions, nisshi on 127.0.0.1; definitions: config/bench.toml"
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
}

listen_addr() { # LOG; sets addr, the daemon's HTTP address, once the log names it
    addr=
    for _ in $(seq 100); do
        addr=$(grep -o 'http://[0-9.:]*' "$1" | head -1 | sed 's|http://||') && [ -n "$addr" ] && break
        sleep 0.1
    done
}

start_daemon() { # CONFIG LOG [BIN]; sets daemon_pid and addr
    "${3:-$bin}" run --config "$1" 2> "$2" &
    daemon_pid=$!
    listen_addr "$2"
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# CPU time (user + system, all threads) a live process has used, seconds.
ticks=$(getconf CLK_TCK)
cpu_of() { awk -v t="$ticks" '{print ($14 + $15) / t}' "/proc/$1/stat"; }
# The same for the threads of a live process whose name starts with PREFIX
# (the name, in parentheses, is the second field).
threads_cpu() { # PID PREFIX
    cat /proc/"$1"/task/*/stat 2> /dev/null | awk -v t="$ticks" -v p="$2" '{
        name = $0; sub(/^[0-9]+ \(/, "", name); sub(/\) [A-Za-z] .*/, "", name)
        rest = $0; sub(/.*\) /, "", rest); split(rest, f, " ")
        if (index(name, p) == 1) s += (f[12] + f[13]) / t
    } END { print s + 0 }'
}

time_run() { # GROUP STATE_DIR [WORKERS] [BIN]; prints msg/s, then the CPU seconds of the daemon, the broker, the daemon's shard workers, librdkafka's threads and the consumer thread
    local broker_before secs cpu workers_cpu rdk_cpu consumer_cpu
    broker_before=$(cpu_of "$broker_pid")
    start_daemon "$(run_config "$1" events "$2" "${3:-}")" "$work/$1.log" "${4:-$bin}"
    # Timed from the first assignment (/readyz turns 200 when the group is
    # joined and the partitions restored) to the last message, like the
    # bare consumer, by one light poller (a curl and an awk every 20 ms
    # took a third of a core from the run).
    secs=$("$target/examples/wait_ingested" "$addr" "$n" 50)
    cpu=$(cpu_of "$daemon_pid")
    workers_cpu=$(threads_cpu "$daemon_pid" shard-worker)
    rdk_cpu=$(threads_cpu "$daemon_pid" rdk:)
    consumer_cpu=$(threads_cpu "$daemon_pid" kafka-consumer)
    printf '%s / %s\n%s\n%s - %s\n%s\n%s\n%s\n' "$n" "$secs" "$cpu" "$(cpu_of "$broker_pid")" "$broker_before" "$workers_cpu" \
        "$rdk_cpu" "$consumer_cpu" | bc -l | paste -sd' '
    kill "$daemon_pid"; wait "$daemon_pid" 2> /dev/null || true
    daemon_pid=
}
