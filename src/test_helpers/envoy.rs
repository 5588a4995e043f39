//! A real Envoy in front of heimdall for integration tests.
//!
//! The configuration is `tests/fixtures/envoy-test.yaml.tmpl`: `envoy/envoy.yaml` with
//! placeholders for the addresses (tests/envoy_configs.rs keeps the two in step), so the ext_authz
//! settings under test are the shipped ones: fail closed with 503, `/healthz` unauthenticated,
//! `/admin/` carrying the `heimdall_rule: admin` context extension.
//!
//! [`render_shipped`] renders any shipped configuration (`envoy/*.yaml`) on loopback instead, for
//! [`Envoy::start_rendered`]; [`render_shipped_with_side_port`] also routes `/auth/` (the
//! `heimdall_http` cluster) to heimdall's side port, for the login journey; [`replace_exactly`]
//! derives variants (Istio's `BASE` normalization).
//!
//! Envoy's listener and admin bind port 0 on 127.0.0.1 (no port race); the admin address comes
//! from `--admin-address-path`, the listener's from the admin `/listeners` endpoint.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::Mutex;

use super::process::{ManagedProcess, fail, fresh_dir};
use super::tools;

/// The configuration template, `tests/fixtures/envoy-test.yaml.tmpl`.
pub const TEMPLATE: &str = include_str!("../../tests/fixtures/envoy-test.yaml.tmpl");

/// How long Envoy may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How often readiness is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What the test Envoy connects to.
#[derive(Debug, Clone, Copy)]
pub struct EnvoyOptions {
    /// heimdall's gRPC ext_authz address (a loopback address; nothing need listen there).
    pub ext_authz_grpc: SocketAddr,
    /// The upstream that allowed requests are routed to (a loopback address).
    pub upstream: SocketAddr,
    /// The ext_authz call timeout in milliseconds (`envoy/envoy.yaml` uses 250).
    pub timeout_ms: u32,
}

impl EnvoyOptions {
    /// Options with the shipped ext_authz timeout (250 ms).
    pub fn new(ext_authz_grpc: SocketAddr, upstream: SocketAddr) -> Self {
        Self {
            ext_authz_grpc,
            upstream,
            timeout_ms: 250,
        }
    }
}

/// Values for the template's placeholders.
#[derive(Debug, Clone, Copy)]
pub struct TemplateValues {
    pub admin_port: u16,
    pub listen_port: u16,
    pub ext_authz_grpc: SocketAddr,
    pub upstream: SocketAddr,
    /// heimdall's HTTP side port, where `/auth/` is routed.
    pub side_port: SocketAddr,
    pub timeout_ms: u32,
}

/// Renders [`TEMPLATE`] with `values`. Fails if a placeholder is left over.
pub fn render(values: &TemplateValues) -> Result<String, String> {
    let timeout = duration(values.timeout_ms);
    let replacements = [
        ("{{ADMIN_PORT}}", values.admin_port.to_string()),
        ("{{LISTEN_PORT}}", values.listen_port.to_string()),
        ("{{EXT_AUTHZ_ADDRESS}}", yaml_ip(values.ext_authz_grpc)),
        (
            "{{EXT_AUTHZ_PORT}}",
            values.ext_authz_grpc.port().to_string(),
        ),
        ("{{EXT_AUTHZ_TIMEOUT}}", timeout),
        ("{{UPSTREAM_ADDRESS}}", yaml_ip(values.upstream)),
        ("{{UPSTREAM_PORT}}", values.upstream.port().to_string()),
        ("{{SIDE_ADDRESS}}", yaml_ip(values.side_port)),
        ("{{SIDE_PORT}}", values.side_port.port().to_string()),
    ];
    let mut rendered = String::with_capacity(TEMPLATE.len());
    for line in TEMPLATE.lines() {
        if line.trim_start().starts_with('#') {
            // The template's header documents the placeholders; leave it as it is.
            rendered.push_str(line);
        } else {
            let mut line = line.to_owned();
            for (placeholder, value) in &replacements {
                line = line.replace(placeholder, value);
            }
            if line.contains("{{") {
                return Err(format!(
                    "unresolved placeholder in the Envoy template: {}",
                    line.trim()
                ));
            }
            rendered.push_str(&line);
        }
        rendered.push('\n');
    }
    Ok(rendered)
}

/// Milliseconds as a protobuf JSON duration: 250 -> `0.25s`, 1000 -> `1s`.
fn duration(ms: u32) -> String {
    let (secs, millis) = (ms / 1000, ms % 1000);
    if millis == 0 {
        return format!("{secs}s");
    }
    let fraction = format!("{millis:03}");
    format!("{secs}.{}s", fraction.trim_end_matches('0'))
}

/// An IP address as a YAML scalar (IPv6 needs quoting: `::1` is not a plain scalar).
fn yaml_ip(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(v4) => v4.ip().to_string(),
        SocketAddr::V6(v6) => format!("\"{}\"", v6.ip()),
    }
}

/// A running Envoy; killed (and its temporary directory removed) when dropped.
pub struct Envoy {
    /// `None` only while dropping.
    process: Option<ManagedProcess>,
    listen: SocketAddr,
    admin: SocketAddr,
    dir: PathBuf,
}

impl Envoy {
    /// Starts Envoy with the test configuration and waits (at most 20 s) until it is ready.
    ///
    /// Returns `None` when Envoy is not installed and the tests do not run in CI (see
    /// [`tools::require`]); panics if Envoy is installed but does not start, with its log.
    pub async fn start(options: EnvoyOptions) -> Option<Envoy> {
        Self::start_configured(options, false).await
    }

    /// As [`Envoy::start`], but with `failure_mode_allow: true`: Envoy lets a request through
    /// when the ext_authz call fails or heimdall answers "cannot decide" (an `error_response`).
    /// Deployments set this for availability; tests use it to prove that what heimdall means as
    /// a denial is never sent as "cannot decide".
    pub async fn start_failure_mode_allow(options: EnvoyOptions) -> Option<Envoy> {
        Self::start_configured(options, true).await
    }

    /// Starts Envoy with a fully rendered configuration (see [`render_shipped`]) and waits (at
    /// most 20 s) until it is ready; `None` and panics as [`Envoy::start`].
    pub async fn start_rendered(config: String) -> Option<Envoy> {
        Self::start_rendered_with_workers(config, 1).await
    }

    /// [`Envoy::start_rendered`] with `workers` worker threads (`--concurrency`) instead of one,
    /// for benchmarks; tests keep one, so they do not compete with heimdall for cores.
    pub async fn start_rendered_with_workers(config: String, workers: u16) -> Option<Envoy> {
        let binary = tools::require("envoy")?;
        // An installed Envoy that does not start fails the test.
        Some(
            Self::spawn(&binary, config, workers.max(1))
                .await
                .unwrap_or_else(|e| fail(&e)),
        )
    }

    async fn start_configured(options: EnvoyOptions, failure_mode_allow: bool) -> Option<Envoy> {
        let binary = tools::require("envoy")?;
        // An installed Envoy that does not start fails the test.
        Some(
            Self::try_start(&binary, options, failure_mode_allow)
                .await
                .unwrap_or_else(|e| fail(&e)),
        )
    }

    async fn try_start(
        binary: &Path,
        options: EnvoyOptions,
        failure_mode_allow: bool,
    ) -> Result<Envoy, String> {
        for addr in [options.ext_authz_grpc, options.upstream] {
            if !addr.ip().is_loopback() {
                return Err(format!(
                    "test Envoy only talks to loopback addresses, not {addr}"
                ));
            }
        }
        let config = render(&TemplateValues {
            admin_port: 0,
            listen_port: 0,
            ext_authz_grpc: options.ext_authz_grpc,
            upstream: options.upstream,
            // The template tests do not log in: /auth/ goes to the upstream like the rest.
            side_port: options.upstream,
            timeout_ms: options.timeout_ms,
        })?;
        let config = if failure_mode_allow {
            const SHIPPED: &str = "failure_mode_allow: false";
            if config.matches(SHIPPED).count() != 1 {
                return Err(format!(
                    "the Envoy template must hold `{SHIPPED}` exactly once"
                ));
            }
            config.replace(SHIPPED, "failure_mode_allow: true")
        } else {
            config
        };
        Self::spawn(binary, config, 1).await
    }

    async fn spawn(binary: &Path, config: String, workers: u16) -> Result<Envoy, String> {
        let dir = fresh_dir("envoy")?;
        let config_path = dir.join("envoy.yaml");
        let admin_path = dir.join("admin-address");
        let log_path = dir.join("envoy.log");
        std::fs::write(&config_path, config)
            .map_err(|e| format!("write {}: {e}", config_path.display()))?;
        let mut command = Command::new(binary);
        command
            .arg("-c")
            .arg(&config_path)
            .arg("--base-id")
            .arg(base_id(super::unique_id()).to_string())
            .args(["--log-level", "warn", "--concurrency"])
            .arg(workers.to_string())
            .arg("--disable-hot-restart")
            .arg("--admin-address-path")
            .arg(&admin_path);
        let process = ManagedProcess::spawn("envoy", &mut command, &log_path)?;
        let client = super::http_client();
        // The probe learns the admin and listener addresses; it is the only writer.
        let found = Mutex::new(None);
        let ready = process
            .wait_ready(READY_TIMEOUT, POLL_INTERVAL, || async {
                let addrs = probe(&client, &admin_path).await?;
                *found.lock().await = Some(addrs);
                Ok(())
            })
            .await;
        let found = found.into_inner();
        match (ready, found) {
            (Ok(()), Some((admin, listen))) => Ok(Envoy {
                process: Some(process),
                listen,
                admin,
                dir,
            }),
            (Err(e), _) => Err(process.with_log(&format!("Envoy did not become ready: {e}"))),
            (Ok(()), None) => Err(process.with_log("Envoy did not become ready: no addresses")),
        }
    }

    /// Validates a configuration file with `envoy --mode validate -c FILE`.
    ///
    /// `Err` carries Envoy's output; it is also `Err` when Envoy is not installed (use
    /// [`tools::require`] first to skip outside CI).
    pub fn validate(path: &Path) -> Result<(), String> {
        let binary = tools::find("envoy")
            .ok_or_else(|| "envoy not installed, run `make tools`".to_owned())?;
        let output = std::process::Command::new(&binary)
            .args(["--mode", "validate", "--log-level", "warn", "-c"])
            .arg(path)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run {}: {e}", binary.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} is not a valid Envoy configuration ({}):\n{}{}",
                path.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// The address of Envoy's HTTP listener (127.0.0.1).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The address of Envoy's admin interface (127.0.0.1).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// `http://LISTEN_ADDR{path}`; `path` starts with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    /// `http://ADMIN_ADDR{path}`, e.g. `admin_url("/stats?filter=ext_authz")`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// The value of the counter or gauge `name` (`cluster.heimdall.ssl.handshake`) on the admin
    /// port's `/stats`, with the whole filtered stats text for a failure message; `None` when
    /// Envoy has no such stat.
    pub async fn stat(&self, name: &str) -> (Option<u64>, String) {
        let text = match super::http_client()
            .get(self.admin_url(&format!("/stats?filter=^{name}$")))
            .send()
            .await
        {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(e) => format!("admin port: {e}"),
        };
        let value = text
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
            .and_then(|v| v.trim().parse().ok());
        (value, text)
    }

    /// The rendered configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("envoy.yaml")
    }

    /// What Envoy has logged so far (warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        // Dropping the process kills it before its directory goes.
        drop(self.process.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One readiness probe: Envoy's admin answers `/ready` with 200 and its listener has an
/// address. Returns the admin and listener addresses.
async fn probe(
    client: &reqwest::Client,
    admin_path: &Path,
) -> Result<(SocketAddr, SocketAddr), String> {
    let text = std::fs::read_to_string(admin_path).map_err(|e| format!("admin address: {e}"))?;
    let admin: SocketAddr = text
        .trim()
        .parse()
        .map_err(|e| format!("admin address {text:?}: {e}"))?;
    let ready = client
        .get(format!("http://{admin}/ready"))
        .send()
        .await
        .map_err(|e| format!("admin /ready: {e}"))?;
    if !ready.status().is_success() {
        return Err(format!("admin /ready answered {}", ready.status()));
    }
    let listeners: serde_json::Value = client
        .get(format!("http://{admin}/listeners?format=json"))
        .send()
        .await
        .map_err(|e| format!("admin /listeners: {e}"))?
        .json()
        .await
        .map_err(|e| format!("admin /listeners: {e}"))?;
    let socket = listeners
        .get("listener_statuses")
        .and_then(|l| l.as_array())
        .and_then(|l| {
            // The test template's listener is `ingress`; a rendered shipped configuration
            // may name its one listener otherwise (the sidecar's is `inbound`).
            l.iter()
                .find(|s| s.get("name").and_then(|n| n.as_str()) == Some("ingress"))
                .or_else(|| if l.len() == 1 { l.first() } else { None })
        })
        .and_then(|s| s.get("local_address"))
        .and_then(|a| a.get("socket_address"))
        .ok_or_else(|| format!("no ingress listener in {listeners}"))?;
    let address = socket
        .get("address")
        .and_then(|a| a.as_str())
        .ok_or_else(|| format!("listener without an address: {socket}"))?;
    let port = socket
        .get("port_value")
        .and_then(|p| p.as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("listener without a port: {socket}"))?;
    let ip = address
        .parse()
        .map_err(|e| format!("listener address {address:?}: {e}"))?;
    Ok((admin, SocketAddr::new(ip, port)))
}

/// Renders a shipped Envoy configuration (`envoy/*.yaml`) for a test on loopback: the admin
/// interface and every listener on 127.0.0.1 port 0, the `heimdall` cluster's endpoints at
/// `ext_authz_grpc` and every other cluster's at `upstream`. Everything else (the ext_authz
/// filter, path normalization, routes) stays exactly as shipped.
pub fn render_shipped(
    text: &str,
    ext_authz_grpc: SocketAddr,
    upstream: SocketAddr,
) -> Result<String, String> {
    render_loopback(text, ext_authz_grpc, None, upstream)
}

/// As [`render_shipped`], but the `heimdall_http` cluster (what `envoy/envoy.yaml` routes `/auth/`
/// to: login, callback, refresh, logout) has its endpoints at `side_port`, heimdall's HTTP side
/// port, instead of `upstream`. The configuration must have exactly one such cluster.
pub fn render_shipped_with_side_port(
    text: &str,
    ext_authz_grpc: SocketAddr,
    side_port: SocketAddr,
    upstream: SocketAddr,
) -> Result<String, String> {
    render_loopback(text, ext_authz_grpc, Some(side_port), upstream)
}

/// The cluster heimdall's gRPC ext_authz service sits behind in the shipped configurations.
const GRPC_CLUSTER: &str = "heimdall";
/// The cluster heimdall's HTTP side port (`/auth/`) sits behind in `envoy/envoy.yaml`.
const SIDE_PORT_CLUSTER: &str = "heimdall_http";

/// [`render_shipped`] and [`render_shipped_with_side_port`]: `side_port` `None` sends the
/// `heimdall_http` cluster (if any) to `upstream` like every other cluster.
fn render_loopback(
    text: &str,
    ext_authz_grpc: SocketAddr,
    side_port: Option<SocketAddr>,
    upstream: SocketAddr,
) -> Result<String, String> {
    use serde_yaml_ng::Value;
    for addr in [ext_authz_grpc, upstream].into_iter().chain(side_port) {
        if !addr.ip().is_loopback() {
            return Err(format!(
                "test Envoy only talks to loopback addresses, not {addr}"
            ));
        }
    }
    fn at<'v>(value: &'v mut Value, keys: &[&str]) -> Result<&'v mut Value, String> {
        let mut here = value;
        for key in keys {
            here = here
                .get_mut(*key)
                .ok_or_else(|| format!("the Envoy configuration has no `{}`", keys.join(".")))?;
        }
        Ok(here)
    }
    fn set(socket: &mut Value, addr: SocketAddr) -> Result<(), String> {
        let map = socket
            .as_mapping_mut()
            .ok_or("a socket_address that is not a mapping")?;
        map.insert("address".into(), Value::from(addr.ip().to_string()));
        map.insert("port_value".into(), Value::from(addr.port()));
        Ok(())
    }
    let mut doc: Value =
        serde_yaml_ng::from_str(text).map_err(|e| format!("the Envoy configuration: {e}"))?;
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    set(
        at(&mut doc, &["admin", "address", "socket_address"])?,
        any_port,
    )?;
    let listeners = at(&mut doc, &["static_resources", "listeners"])?
        .as_sequence_mut()
        .ok_or("static_resources.listeners is not a list")?;
    if listeners.is_empty() {
        return Err("the Envoy configuration has no listener".into());
    }
    for listener in listeners {
        set(at(listener, &["address", "socket_address"])?, any_port)?;
    }
    let clusters = at(&mut doc, &["static_resources", "clusters"])?
        .as_sequence_mut()
        .ok_or("static_resources.clusters is not a list")?;
    let mut heimdall_endpoints = 0;
    let mut side_port_clusters = 0;
    for cluster in clusters {
        let target = match (cluster.get("name").and_then(Value::as_str), side_port) {
            (Some(GRPC_CLUSTER), _) => {
                heimdall_endpoints += 1;
                ext_authz_grpc
            }
            (Some(SIDE_PORT_CLUSTER), Some(side_port)) => {
                side_port_clusters += 1;
                side_port
            }
            _ => upstream,
        };
        let groups = at(cluster, &["load_assignment", "endpoints"])?
            .as_sequence_mut()
            .ok_or("a cluster's endpoints are not a list")?;
        for group in groups {
            let endpoints = at(group, &["lb_endpoints"])?
                .as_sequence_mut()
                .ok_or("lb_endpoints is not a list")?;
            for endpoint in endpoints {
                set(
                    at(endpoint, &["endpoint", "address", "socket_address"])?,
                    target,
                )?;
            }
        }
    }
    if heimdall_endpoints != 1 {
        return Err(format!(
            "expected one `{GRPC_CLUSTER}` cluster in the Envoy configuration, found {heimdall_endpoints}"
        ));
    }
    if side_port.is_some() && side_port_clusters != 1 {
        return Err(format!(
            "expected one `{SIDE_PORT_CLUSTER}` cluster in the Envoy configuration, found {side_port_clusters}"
        ));
    }
    serde_yaml_ng::to_string(&doc).map_err(|e| format!("render the Envoy configuration: {e}"))
}

/// Replaces `from` by `to` in a rendered configuration, which must hold `from` exactly `count`
/// times (so a variant cannot silently stop differing from what it is a variant of).
pub fn replace_exactly(config: &str, from: &str, to: &str, count: usize) -> Result<String, String> {
    let found = config.matches(from).count();
    if found != count {
        return Err(format!(
            "expected `{from}` {count} time(s) in the Envoy configuration, found {found}"
        ));
    }
    Ok(config.replace(from, to))
}

/// A base id no other Envoy of this machine's test runs uses at the same time: hot restart is
/// disabled, but Envoy still names its shared-memory region after the base id.
fn base_id(id: u32) -> u32 {
    (std::process::id() % 100_000) * 100 + id % 100
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../envoy/envoy.yaml");

    /// The endpoint addresses of cluster `name` in a rendered configuration.
    fn endpoints(rendered: &str, name: &str) -> Vec<String> {
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(rendered).unwrap();
        let clusters = doc["static_resources"]["clusters"].as_sequence().unwrap();
        let cluster = clusters
            .iter()
            .find(|c| c["name"].as_str() == Some(name))
            .unwrap();
        cluster["load_assignment"]["endpoints"]
            .as_sequence()
            .unwrap()
            .iter()
            .flat_map(|group| group["lb_endpoints"].as_sequence().unwrap())
            .map(|e| {
                let socket = &e["endpoint"]["address"]["socket_address"];
                format!(
                    "{}:{}",
                    socket["address"].as_str().unwrap(),
                    socket["port_value"].as_u64().unwrap()
                )
            })
            .collect()
    }

    #[test]
    fn the_side_port_cluster_goes_to_the_side_port_only_when_asked() {
        let grpc = SocketAddr::from(([127, 0, 0, 1], 1001));
        let side = SocketAddr::from(([127, 0, 0, 1], 1002));
        let upstream = SocketAddr::from(([127, 0, 0, 1], 1003));
        let plain = render_shipped(SHIPPED, grpc, upstream).unwrap();
        assert_eq!(endpoints(&plain, "heimdall"), ["127.0.0.1:1001"]);
        assert_eq!(endpoints(&plain, "heimdall_http"), ["127.0.0.1:1003"]);
        assert_eq!(endpoints(&plain, "upstream"), ["127.0.0.1:1003"]);

        let login = render_shipped_with_side_port(SHIPPED, grpc, side, upstream).unwrap();
        assert_eq!(endpoints(&login, "heimdall"), ["127.0.0.1:1001"]);
        assert_eq!(endpoints(&login, "heimdall_http"), ["127.0.0.1:1002"]);
        assert_eq!(endpoints(&login, "upstream"), ["127.0.0.1:1003"]);
    }

    #[test]
    fn a_side_port_needs_its_cluster_and_loopback() {
        let grpc = SocketAddr::from(([127, 0, 0, 1], 1001));
        let upstream = SocketAddr::from(([127, 0, 0, 1], 1003));
        let without = SHIPPED.replace("heimdall_http", "heimdall_side");
        let err = render_shipped_with_side_port(&without, grpc, upstream, upstream).unwrap_err();
        assert!(err.contains("`heimdall_http`"), "{err}");
        let remote = SocketAddr::from(([192, 0, 2, 1], 8080));
        let err = render_shipped_with_side_port(SHIPPED, grpc, remote, upstream).unwrap_err();
        assert!(err.contains("loopback"), "{err}");
    }
}
