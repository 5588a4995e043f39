#!/usr/bin/env bash
# What CI runs (`make test`, `.ci/run`): install the real components, then format check, clippy
# with warnings as errors, every test target, and each fuzz target for a few seconds. Integration
# tests find Envoy, NATS and Cerbos through HEIMDALL_TOOLS; with CI=true a missing one fails the
# test instead of skipping it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

scripts/install-tools.sh
export HEIMDALL_TOOLS="${ROOT}/.tools/bin"

echo "==> cargo fmt --all -- --check"
cargo fmt --all -- --check
echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
echo "==> cargo test --all-targets"
cargo test --all-targets
# Fuzzing: each cargo-fuzz target briefly from its seeds; a crash fails the run. The first fuzz
# build compiles every dependency again with instrumentation (about 20 minutes of CPU);
# FUZZ_SECONDS=0 skips this step.
echo "==> cargo fmt --manifest-path fuzz/Cargo.toml -- --check"
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
if [[ "${FUZZ_SECONDS:-5}" != 0 ]]; then
    # Unoptimized and without AddressSanitizer: a fresh build in about 7 minutes instead of 20+ on two
# cores; `make fuzz` runs the optimized, sanitized build for longer.
FUZZ_SECONDS="${FUZZ_SECONDS:-5}" FUZZ_PROFILE="${FUZZ_PROFILE:-dev}" \
    FUZZ_SANITIZER="${FUZZ_SANITIZER:-none}" scripts/fuzz.sh
fi
