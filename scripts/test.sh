#!/usr/bin/env bash
# The full test suite: unit, property and integration tests, including the
# cross-check against ClickHouse (chdb, from PyPI). Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import chdb' >/dev/null 2>&1; then
    echo "installing chdb (ClickHouse in-process) for the reference cross-check" >&2
    python3 -m pip install --quiet chdb
fi

cargo test --release --locked "$@"
