#!/usr/bin/env bash
# The whole test suite, from a clean clone: installs what the tests need, then checks
# formatting, lints, and runs every test (unit, property and integration).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
