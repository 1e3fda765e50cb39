#!/usr/bin/env bash
# The full test suite: unit, property and integration tests, including the
# cross-check against ClickHouse (chdb, from PyPI) and the Kafka tests
# against a real broker. Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import chdb' >/dev/null 2>&1; then
    echo "installing chdb (ClickHouse in-process) for the reference cross-check" >&2
    python3 -m pip install --quiet chdb
fi

# A Kafka-protocol broker for the integration tests: nisshi 0.6.0, built
# once and cached (about 14 minutes on a cold machine).
broker_root="$HOME/.cache/kbroker"
if [ ! -x "$broker_root/bin/nisshi" ]; then
    echo "installing the nisshi broker (first time only)" >&2
    cargo install nisshi@0.6.0 --locked --no-default-features --features dynostore --root "$broker_root"
fi

cargo test --release --locked "$@"
