# heimdall's container image: a release build in the Rust image, then the stripped binary alone in
# a slim Debian image, run as an unprivileged user. No HEALTHCHECK: Kubernetes probes /health and
# /ready (the Helm chart sets them).
#
#   docker build -t heimdall:0.1.0 .            # the last stage, `runtime`
#   docker build --target debug-symbols --output type=local,dest=symbols .   # heimdall.debug
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
# The symbols go to a file of their own (about 100 MB of line tables); the binary keeps a link to
# it, so a debugger or `perf report` finds them when they are put beside it.
RUN cargo build --release --locked --bin heimdall \
 && objcopy --only-keep-debug target/release/heimdall /heimdall.debug \
 && objcopy --strip-all --add-gnu-debuglink=/heimdall.debug target/release/heimdall /heimdall

FROM scratch AS debug-symbols
COPY --from=build /heimdall.debug /heimdall.debug

FROM debian:bookworm-slim AS runtime
# CA certificates: Cerbos, NATS and OpenID providers over TLS are verified against the system roots.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 heimdall \
 && useradd --system --uid 65532 --gid heimdall --no-create-home --shell /usr/sbin/nologin heimdall
COPY --from=build /heimdall /usr/local/bin/heimdall
USER 65532:65532
# ext_authz gRPC, HTTP side port (health, readiness, metrics, login, APIs).
EXPOSE 9001 8080
ENTRYPOINT ["heimdall"]
CMD ["serve"]
