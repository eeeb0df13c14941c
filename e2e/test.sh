#!/usr/bin/env bash
# The test command: installs what is missing, then runs formatting and lint checks, the Rust
# unit and integration tests, and the real-client tests (xarray, zarr-python) against the
# release binary. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
e2e/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/cloudify-target}"
venv="${CLOUDIFY_VENV:-/var/tmp/cloudify-venv}"

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
# Built before the tests: the operator's registration tests start the real `cloudify
# catalog` and `cloudify serve` binaries (CLOUDIFY_BIN), as do the pytests.
echo "== cargo build --release"
cargo build --locked --release --workspace
export CLOUDIFY_BIN="$CARGO_TARGET_DIR/release/cloudify"
echo "== cargo test"
cargo test --locked --release --workspace
echo "== real-client tests (pytest)"
"$venv/bin/python" -m pytest e2e/pytests -q -p no:cacheprovider
