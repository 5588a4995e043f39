#!/usr/bin/env bash
# Builds and runs heimdall's cargo-fuzz targets (fuzz/) for a bounded time each.
#
#   scripts/fuzz.sh                 every target, FUZZ_SECONDS (default 60) each
#   scripts/fuzz.sh token event     only these targets
#   FUZZ_SECONDS=5 FUZZ_PROFILE=dev FUZZ_SANITIZER=none scripts/fuzz.sh
#                                   the short run `make test` does
#
# Installs cargo-fuzz (pinned) when missing. cargo-fuzz passes nightly-only flags to rustc
# (-Zsanitizer, sanitizer-coverage options); RUSTC_BOOTSTRAP=1 lets the stable toolchain accept
# them, so no nightly toolchain is needed. AddressSanitizer is on (FUZZ_SANITIZER=none turns it
# off, for a toolchain without the ASan runtime).
#
# Each target starts from its committed seeds (fuzz/corpus/<target>, read only) plus what earlier
# runs found (fuzz/target/corpus/<target>, not committed). A crash stops that target, leaves
# its input in fuzz/artifacts/<target>/, and makes the script exit non-zero after the others ran.
# Reproduce one with: RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CARGO_FUZZ_VERSION="0.13.2"
TARGETS_ALL=(token event config check_request request_line redirect traceparent)
SECONDS_EACH="${FUZZ_SECONDS:-60}"
SANITIZER="${FUZZ_SANITIZER:-address}"
# release (default): optimized, for long runs. dev: unoptimized, builds in a third of the time,
# for the few seconds per target `make test` runs.
PROFILE="${FUZZ_PROFILE:-release}"

if ! [[ "${SECONDS_EACH}" =~ ^[0-9]+$ ]]; then
    echo "fuzz: FUZZ_SECONDS must be a whole number of seconds, not '${SECONDS_EACH}'" >&2
    exit 2
fi
if [[ "${SECONDS_EACH}" -eq 0 ]]; then
    # libFuzzer reads -max_total_time=0 as "no limit": 0 means skip instead.
    echo "==> fuzzing skipped (FUZZ_SECONDS=0)"
    exit 0
fi

if [[ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz ${CARGO_FUZZ_VERSION}" ]]; then
    echo "==> cargo install cargo-fuzz ${CARGO_FUZZ_VERSION}"
    cargo install cargo-fuzz --version "${CARGO_FUZZ_VERSION}" --locked
fi

export RUSTC_BOOTSTRAP=1
# cargo-fuzz's default of one codegen unit: on two cores, 16 units cost 50% more CPU time for
# the same wall time (a fresh build measured 21 min of CPU with one unit, 33 with 16).
BUILD_ARGS=(--sanitizer "${SANITIZER}")
case "${PROFILE}" in
    release) ;;
    dev) BUILD_ARGS+=(--dev) ;;
    *) echo "fuzz: FUZZ_PROFILE must be release or dev, not '${PROFILE}'" >&2; exit 2 ;;
esac

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=("${TARGETS_ALL[@]}")
fi

echo "==> cargo fuzz build (${PROFILE} profile, ${SANITIZER} sanitizer)"
cargo fuzz build "${BUILD_ARGS[@]}"

failed=()
for target in "${targets[@]}"; do
    # Absolute paths: cargo fuzz runs the target from fuzz/.
    work="${ROOT}/fuzz/target/corpus/${target}"
    mkdir -p "${work}" "${ROOT}/fuzz/artifacts/${target}"
    echo "==> fuzz ${target} for ${SECONDS_EACH}s"
    # -timeout: an input that takes this long is a finding (a hang), not a slow machine.
    if ! cargo fuzz run "${BUILD_ARGS[@]}" "${target}" "${work}" "${ROOT}/fuzz/corpus/${target}" -- \
        -max_total_time="${SECONDS_EACH}" -timeout=30 -rss_limit_mb=4096 -max_len=8192 \
        -print_final_stats=1; then
        failed+=("${target}")
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz: crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: ${#targets[@]} target(s) ran ${SECONDS_EACH}s each without a crash"
