# Sourced by bench_kafka.sh and profile_kafka.sh: a nisshi broker on a free
# port of 127.0.0.1 and the benchmark's topic, 4 partitions of generated
# events (users who come back over months: 2 000 sign-ups a day, 25 000
# events a day). Needs $broker, $bin and $work; sets $port, $broker_pid
# and $n (the messages in the topic).

start_broker() { # STORAGE_NAME
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$broker" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine "memory://$1/" > "$work/broker.log" 2>&1 &
    broker_pid=$!
    sleep 1
}

fill_topic() { # TOPIC MESSAGES
    "$broker" topic create "$1" --partitions 4 --broker "tcp://127.0.0.1:$port" > /dev/null
    "$bin" generate --days $(( $2 / 25000 + 2 )) --users-per-day 2000 --start-ms 1785000000000 |
        head -n "$2" > "$work/events.ndjson"
    n=$(wc -l < "$work/events.ndjson")
    "$bin" loadgen --brokers "127.0.0.1:$port" --topic "$1" "$work/events.ndjson" 2> /dev/null
}
