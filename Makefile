# heimdall developer entry points.
#
#   make tools        install Envoy, NATS, Cerbos, oidc-provider, Helm, nginx, Chromium and playwright-core into .tools/ (ONLY="envoy nats" for a subset)
#   make up           build and run heimdall (config/local.yaml) + NATS + Cerbos + echo upstream +
#                     Envoy in the foreground (Ctrl-C stops all); publish events with
#                     scripts/publish-event.py
#   make test         tools, then rustfmt check, clippy (warnings are errors) and every test target
#   make bench        criterion benches of the pipeline, allocations per Check, the load harness,
#                     then CPU per Check against a no-op server driven by h2load (installed first)
#   make bench-envoy  open-loop latency through Envoy, with heimdall's ext_authz and without
#                     (bench/envoy/, bench/README.md); installs Envoy and the opt-in oha first.
#                     ENVOY_BENCH_ARGS passes flags, e.g. ENVOY_BENCH_ARGS="--duration 5 --json"
#   make fuzz         every cargo-fuzz target (fuzz/) for FUZZ_SECONDS (default 60) each; installs
#                     cargo-fuzz when missing, runs on the stable toolchain (RUSTC_BOOTSTRAP=1);
#                     crashes land in fuzz/artifacts/<target>/ (scripts/fuzz.sh,
#                     docs/security.md#fuzzing). `make test` runs each target for 5 seconds.
#   make fmt          format the code
#   make lint         rustfmt check and clippy, without running tests
#   make clean-tools  remove .tools/
#   make clean-data   remove .data/ (the local stack's NATS store: attributes and events)

SHELL := bash
ONLY ?=
FUZZ_SECONDS ?= 60
ENVOY_BENCH_ARGS ?=

.PHONY: tools up test bench bench-envoy fuzz fmt lint clean-tools clean-data

tools:
	scripts/install-tools.sh $(ONLY)

up:
	scripts/up.sh

test:
	scripts/test.sh

bench:
	scripts/install-tools.sh h2load
	cargo build --release
	cargo bench --bench pipeline
	cargo bench --bench allocations
	cargo run --release --example load
	cargo run --release --example load -- --generator h2load --connections 8 --concurrency 128 --rounds 3

bench-envoy:
	scripts/install-tools.sh envoy oha
	cargo build --release
	cargo run --release --example envoy-load -- $(ENVOY_BENCH_ARGS)

fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

clean-tools:
	rm -rf .tools

clean-data:
	rm -rf .data
