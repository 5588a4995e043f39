//! Logs heimdall writes can be trusted and hold no secret, and bad keys never crash it, checked
//! on the real binary: a forged log line through a token footer `kid` (plain and JSON formats),
//! credentials in config errors, in the debug configuration dump and in NATS and Cerbos
//! connection failures, every official PASERK k4 vector, and environment values that are not
//! UTF-8.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::sync::Mutex;

const HEIMDALL: &str = env!("CARGO_BIN_EXE_heimdall");

/// Environment variables of the test runner that must not leak into heimdall.
const CLEARED_ENV: &[&str] = &[
    "HEIMDALL_CONFIG",
    "PASETO_SYMMETRIC_KEY",
    "CERBOS_GRPC_URL",
    "NATS_URL",
    "RUST_LOG",
];

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A scratch directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "log-safety-{name}-{}-{}",
        std::process::id(),
        heimdall::test_helpers::unique_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs a short heimdall command (`validate`, `token inspect`) to completion.
fn run(args: &[&str], env: &[(&str, &OsStr)]) -> Output {
    let mut command = Command::new(HEIMDALL);
    command.args(args).stdin(Stdio::null());
    for name in CLEARED_ENV {
        command.env_remove(name);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

/// `heimdall serve` with its stderr collected line by line.
struct Serving {
    child: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    http: u16,
}

impl Serving {
    fn start(config: Option<&PathBuf>, env: &[(&str, &OsStr)]) -> Self {
        let (grpc, http) = (
            heimdall::test_helpers::free_port(),
            heimdall::test_helpers::free_port(),
        );
        let mut command = tokio::process::Command::new(HEIMDALL);
        command.arg("serve");
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        for name in CLEARED_ENV {
            command.env_remove(name);
        }
        command
            .env("HEIMDALL_BIND", "127.0.0.1")
            .env("GRPC_PORT", grpc.to_string())
            .env("PORT", http.to_string())
            .env("RUST_LOG", "info");
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut reader = BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = Arc::clone(&lines);
        tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lock().await.push(line);
            }
        });
        Self { child, lines, http }
    }

    /// Waits (bounded) until a line satisfies `found`; panics with the log otherwise.
    async fn wait_for(&mut self, what: &str, found: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.lines.lock().await.iter().any(|l| found(l)) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "heimdall exited ({status}) before {what}:\n{}",
                    self.log().await
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within 20 s:\n{}",
                self.log().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn log(&self) -> String {
        self.lines.lock().await.join("\n")
    }

    /// Stops heimdall (SIGTERM) and returns every line it wrote.
    async fn stop(self) -> Vec<String> {
        let status =
            heimdall::test_helpers::process::terminate(self.child, Duration::from_secs(10)).await;
        assert!(status.is_some(), "heimdall did not stop");
        // The reader task sees EOF once the process is gone.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.lines.lock().await.clone()
    }
}

/// A `v4.public` token that no key signed, whose footer `kid` holds a newline followed by a
/// complete, plausible log line.
fn token_with_forged_kid(forged_line: &str) -> String {
    let footer = serde_json::json!({ "kid": format!("k4.pid.x\n{forged_line}") }).to_string();
    format!("v4.public.{}.{}", b64(&[7u8; 100]), b64(footer.as_bytes()))
}

const FORGED_MARK: &str = "FORGED-BY-TOKEN";

#[tokio::test]
async fn a_token_footer_cannot_forge_a_log_line() {
    let dir = scratch("forge");
    let embedded =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/heimdall.yaml"))
            .unwrap();
    for format in ["plain", "json"] {
        let config = dir.join(format!("{format}.yaml"));
        let yaml = embedded.replacen("  format: plain", &format!("  format: {format}"), 1);
        assert!(yaml.contains(&format!("  format: {format}")));
        std::fs::write(&config, yaml).unwrap();
        let mut heimdall = Serving::start(Some(&config), &[]);
        heimdall
            .wait_for("heimdall is serving", |l| l.contains("heimdall is serving"))
            .await;

        // Short enough to survive the 64-character cut of quoted token text.
        let forged_line = match format {
            "plain" => format!("2030-01-01T00:00:00Z  INFO {FORGED_MARK} allow"),
            _ => format!("{{\"level\":\"INFO\",\"m\":\"{FORGED_MARK}\"}}"),
        };
        let token = token_with_forged_kid(&forged_line);
        let response = heimdall::test_helpers::http_client()
            .get(format!("http://127.0.0.1:{}/decision", heimdall.http))
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-host", "api.example.com")
            .header("x-forwarded-uri", "/api/documents/1")
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        heimdall
            .wait_for("the denial in the log", |l| l.contains(FORGED_MARK))
            .await;
        let lines = heimdall.stop().await;

        let marked: Vec<&String> = lines.iter().filter(|l| l.contains(FORGED_MARK)).collect();
        assert_eq!(marked.len(), 1, "{format}: {marked:#?}");
        let line = marked[0];
        // The kid stays inside the denial's own line, escaped.
        assert!(line.contains("request denied"), "{format}: {line}");
        assert!(line.contains("unknown key id"), "{format}: {line}");
        assert!(!line.starts_with("2030-") && !line.starts_with("{\"level\""));
        match format {
            "plain" => assert!(line.contains("k4.pid.x\\n2030-01-01"), "{line}"),
            _ => {
                // Every line is one JSON document; the denial's reason reads back as text.
                for l in &lines {
                    serde_json::from_str::<serde_json::Value>(l)
                        .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
                }
                let event: serde_json::Value = serde_json::from_str(line).unwrap();
                let reason = event["reason"].as_str().unwrap();
                assert!(reason.contains("k4.pid.x\\n{\"level\""), "{reason}");
            }
        }
        for l in &lines {
            assert!(!l.chars().any(|c| c.is_control()), "{format}: {l:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

const NATS_SECRET: &str = "n4ts-PASS-never-shown";
const CERBOS_SECRET: &str = "c3rbos-PASS-never-shown";

#[test]
fn config_errors_do_not_echo_secrets() {
    let dir = scratch("config-errors");
    let secret_key =
        "k4.secret.c2VjcmV0LWtleS1ieXRlcy1uZXZlci1zaG93bi1uZXZlci1zaG93bi1uZXZlci1zaG93bi1uZXZlcg";
    let body = secret_key.trim_start_matches("k4.secret.");
    for (name, yaml, secret) in [
        (
            "inline-secret-key",
            format!("version: \"1\"\ntokens:\n  keys:\n    - paserk: {secret_key}\n"),
            body,
        ),
        (
            "bare-secret-key",
            format!("version: \"1\"\ntokens:\n  keys:\n    - {secret_key}\n"),
            body,
        ),
        (
            "nats-token",
            format!("version: \"1\"\nnats:\n  auth:\n    token: {NATS_SECRET}\n"),
            NATS_SECRET,
        ),
        (
            "nats-password",
            format!(
                "version: \"1\"\nnats:\n  auth:\n    user: heimdall\n    password: \"{NATS_SECRET}\"\n"
            ),
            NATS_SECRET,
        ),
        (
            "nats-nkey-seed",
            format!("version: \"1\"\nnats:\n  auth:\n    nkey_seed: SU{NATS_SECRET}\n"),
            NATS_SECRET,
        ),
    ] {
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(&config, yaml).unwrap();
        for args in [
            vec!["validate", "--config", config.to_str().unwrap()],
            vec!["serve", "--config", config.to_str().unwrap()],
        ] {
            let out = run(&args, &[("RUST_LOG", OsStr::new("debug"))]);
            let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
            assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
            assert!(
                stderr.contains("`{env: NAME}` or `{file: PATH}`"),
                "{name}: {stderr}"
            );
            assert!(
                !stderr.contains(secret) && !stdout.contains(secret),
                "{name}: {stderr}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// NATS and Cerbos behind URLs with credentials, both on closed loopback ports: the debug
/// configuration dump, the connection failures (heimdall's and its libraries' debug logs) and
/// the Cerbos errors of a `/check` call show the user, never the password.
#[tokio::test]
async fn url_credentials_stay_out_of_the_dump_and_the_connection_errors() {
    let (nats_port, cerbos_port) = (
        heimdall::test_helpers::free_port(),
        heimdall::test_helpers::free_port(),
    );
    let nats_url = format!("nats://heimdall:{NATS_SECRET}@127.0.0.1:{nats_port}");
    let cerbos_url = format!("http://pdp:{CERBOS_SECRET}@127.0.0.1:{cerbos_port}");
    let debug = OsStr::new("debug");

    // NATS and Cerbos: the dump, then the NATS client's failures and retries.
    let mut heimdall = Serving::start(
        None,
        &[
            ("NATS_URL", OsStr::new(&nats_url)),
            ("CERBOS_GRPC_URL", OsStr::new(&cerbos_url)),
            ("RUST_LOG", debug),
        ],
    );
    heimdall
        .wait_for("heimdall is serving", |l| l.contains("heimdall is serving"))
        .await;
    heimdall
        .wait_for("a failed attribute pipeline", |l| {
            l.contains("attribute pipeline not running yet")
        })
        .await;
    let mut log = heimdall.stop().await.join("\n");
    assert!(
        log.contains("effective configuration")
            && log.contains(&format!("nats://heimdall:***@127.0.0.1:{nats_port}"))
            && log.contains(&format!("http://pdp:***@127.0.0.1:{cerbos_port}")),
        "the dump shows the redacted URLs:\n{log}"
    );
    assert!(log.contains("NATS connection event"), "{log}");

    // Cerbos alone (without NATS, a token needs no revocation state): a /check with the demo
    // token cannot reach Cerbos, and the log says why.
    let mut heimdall = Serving::start(
        None,
        &[
            ("CERBOS_GRPC_URL", OsStr::new(&cerbos_url)),
            ("RUST_LOG", debug),
        ],
    );
    heimdall
        .wait_for("heimdall is serving", |l| l.contains("heimdall is serving"))
        .await;
    let token = heimdall
        .lines
        .lock()
        .await
        .iter()
        .find_map(|l| {
            l.split(|c: char| c.is_whitespace() || c == '"')
                .find(|w| w.starts_with("v4.public."))
                .map(str::to_owned)
        })
        .expect("the demo token in the log");
    let response = heimdall::test_helpers::http_client()
        .post(format!("http://127.0.0.1:{}/check", heimdall.http))
        .header("authorization", format!("Bearer {token}"))
        .json(&serde_json::json!({
            "resources": [ { "kind": "document", "id": "1", "actions": ["view"] } ]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    heimdall
        .wait_for("the Cerbos failure", |l| {
            l.contains("no decision from Cerbos")
        })
        .await;
    log.push('\n');
    log.push_str(&heimdall.stop().await.join("\n"));

    assert!(!log.contains(NATS_SECRET), "{log}");
    assert!(!log.contains(CERBOS_SECRET), "{log}");
}

/// The official PASERK k4 vectors (paseto-standard/test-vectors, PASERK/k4.{local,secret,
/// public}.json), the expect-fail ones included; vectors without a PASERK string are given as
/// `k4.<type>.` + base64url of their key bytes. Each is refused: the valid ones because their
/// keys are published.
fn official_vectors() -> Vec<(&'static str, String)> {
    include_str!("fixtures/paserk-k4-vectors.txt")
        .lines()
        .filter_map(|line| line.split_once(' ').filter(|_| !line.starts_with('#')))
        .map(|(name, paserk)| (name, paserk.to_owned()))
        .collect()
}

#[test]
fn every_official_paserk_vector_is_a_clean_error() {
    let dir = scratch("paserk");
    let from_env = dir.join("from-env.yaml");
    std::fs::write(
        &from_env,
        "version: \"1\"\ntokens:\n  keys:\n    - env: TEST_PASERK\n",
    )
    .unwrap();
    let any_token = format!("v4.public.{}", b64(&[1u8; 100]));
    for (name, paserk) in official_vectors() {
        let mut runs = vec![
            run(
                &["validate", "--config", from_env.to_str().unwrap()],
                &[("TEST_PASERK", OsStr::new(&paserk))],
            ),
            run(
                &[
                    "token",
                    "inspect",
                    &any_token,
                    "--config",
                    from_env.to_str().unwrap(),
                ],
                &[("TEST_PASERK", OsStr::new(&paserk))],
            ),
        ];
        if paserk.starts_with("k4.public.") {
            // Public keys may also be written inline.
            let inline = dir.join(format!("{name}.yaml"));
            std::fs::write(
                &inline,
                format!("version: \"1\"\ntokens:\n  keys:\n    - paserk: {paserk}\n"),
            )
            .unwrap();
            runs.push(run(
                &["validate", "--config", inline.to_str().unwrap()],
                &[],
            ));
        }
        let body = paserk.rsplit('.').next().unwrap();
        for out in runs {
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
            assert!(!stderr.contains("panicked"), "{name}: {stderr}");
            assert!(stderr.starts_with("error: key 0"), "{name}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
            assert!(!stderr.contains(body), "{name}: {stderr}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_symmetric_key_that_is_not_utf8_is_refused_by_name() {
    // 32 bytes, one of which makes the value invalid UTF-8.
    let raw = OsStr::from_bytes(b"0123456789abcdef0123456789abcd\xff!");
    assert_eq!(raw.len(), 32);
    let out = run(&["validate"], &[("PASETO_SYMMETRIC_KEY", raw)]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("PASETO_SYMMETRIC_KEY") && stderr.contains("not valid UTF-8"),
        "{stderr}"
    );
    assert!(!stderr.contains("0123456789"), "{stderr}");

    // serve stops instead of falling back to a throw-away key.
    let mut heimdall = Serving::start(None, &[("PASETO_SYMMETRIC_KEY", raw)]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = heimdall.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "serve kept running:\n{}",
            heimdall.log().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = heimdall.log().await;
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("PASETO_SYMMETRIC_KEY") && log.contains("not valid UTF-8"),
        "{log}"
    );
    assert!(!log.contains("ephemeral"), "{log}");
    assert!(!log.contains("heimdall is serving"), "{log}");

    // Every other variable heimdall reads is held to the same rule.
    let bad: OsString = OsStr::from_bytes(b"nats://h\xff:4222").to_owned();
    for name in ["NATS_URL", "CERBOS_GRPC_URL", "PORT", "RUST_LOG"] {
        let out = run(&["validate"], &[(name, bad.as_os_str())]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(name), "{name}: {stderr}");
    }
}
