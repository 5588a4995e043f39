//! The `heimdall` command line: validate, keys, tokens, and the refusal of bad keys.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::process::{Command, Output};

fn heimdall(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_heimdall"));
    command
        .args(args)
        .env_remove("PASETO_SYMMETRIC_KEY")
        .env_remove("HEIMDALL_CONFIG");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn validate_accepts_the_shipped_configs_and_names_problems() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = std::env::temp_dir().join(format!("heimdall-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The local stack's config names Cerbos and NATS: validating prepares their clients but
    // dials neither.
    for shipped in [
        "config/heimdall.yaml",
        "config/local.yaml",
        "tests/fixtures/cerbos-rules.yaml",
    ] {
        let out = heimdall(&["validate", "--config", &format!("{root}/{shipped}")], &[]);
        assert!(out.status.success(), "{shipped}: {}", text(&out.stderr));
    }

    // The test fixture pins rules to v4.local and to v4.public tokens: it needs a key of each,
    // here a symmetric key and a public key read from an environment variable.
    let generated = text(&heimdall(&["keys", "generate", "--purpose", "public"], &[]).stdout);
    let public = generated
        .lines()
        .find_map(|l| l.strip_prefix("public: "))
        .unwrap()
        .to_owned();
    let fixture = std::fs::read_to_string(format!("{root}/tests/fixtures/rules.yaml")).unwrap();
    let fixture = fixture.replace(
        "  audience: heimdall-tests\n",
        "  audience: heimdall-tests\n  keys: [ { env: TEST_PUBLIC_KEY } ]\n",
    );
    let with_keys = dir.join("fixture.yaml");
    std::fs::write(&with_keys, fixture).unwrap();
    let env = [
        ("PASETO_SYMMETRIC_KEY", "heimdall-cli-test-key-0123456789"),
        ("TEST_PUBLIC_KEY", public.as_str()),
    ];
    let out = heimdall(&["validate", "--config", with_keys.to_str().unwrap()], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = heimdall(
        &["validate", "--config", with_keys.to_str().unwrap()],
        &env[..1],
    );
    assert!(
        text(&out.stderr).contains("environment variable `TEST_PUBLIC_KEY` is not set"),
        "{}",
        text(&out.stderr)
    );

    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "version: \"1\"\nrules:\n  - id: api\n    execute: [ { authenticator: jwt_x } ]\n",
    )
    .unwrap();
    let out = heimdall(&["validate", "--config", bad.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("unknown authenticator `jwt_x` in rule `api`"),
        "{}",
        text(&out.stderr)
    );
    std::fs::write(&bad, "version: \"1\"\nserver:\n  grpc_prot: 1\n").unwrap();
    let out = heimdall(&["validate", "--config", bad.to_str().unwrap()], &[]);
    assert!(
        text(&out.stderr).contains("unknown field `grpc_prot`"),
        "{}",
        text(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn validate_json_reports_problems_and_warnings_as_fields() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = std::env::temp_dir().join(format!("heimdall-cli-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = |config: &str| {
        let out = heimdall(&["validate", "--format", "json", "--config", config], &[]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)));
        (out.status.code(), report)
    };

    let (code, report) = json(&format!("{root}/config/heimdall.yaml"));
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["valid"], true);
    assert_eq!(report["problems"], serde_json::json!([]));
    assert!(report["warnings"].is_array());

    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        r#"version: "1"
mechanisms:
  authenticators: [ { id: bearer, type: paseto, config: { acept: public } } ]
rules:
  - id: api
    match: { paths: [/api/*rest] }
    execute: [ { authenticator: jwt_x } ]
default_rule:
  execute: [ { authenticator: anonymous_x } ]
"#,
    )
    .unwrap();
    let (code, report) = json(bad.to_str().unwrap());
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["valid"], false);
    let problems = report["problems"].as_array().unwrap();
    let unknown = problems
        .iter()
        .find(|p| p["rule"] == "api")
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!(unknown["problem"], "unknown_mechanism");
    assert_eq!(unknown["step"], 1);
    assert_eq!(
        unknown["mechanism"],
        serde_json::json!({"kind": "authenticator", "id": "jwt_x"})
    );
    assert_eq!(
        unknown["message"],
        "unknown authenticator `jwt_x` in rule `api` (known: none)"
    );
    let invalid = problems
        .iter()
        .find(|p| p["problem"] == "invalid_mechanism")
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!(invalid["rule"], serde_json::Value::Null);
    assert_eq!(invalid["mechanism"]["id"], "bearer");
    assert!(
        invalid["message"].as_str().unwrap().starts_with(
            "authenticator `bearer` (type `paseto`): invalid config: unknown field `acept`"
        ),
        "{report}"
    );
    assert!(problems.iter().any(|p| p["rule"] == "default"), "{report}");
    assert_eq!(problems.len(), 3, "{report}");

    // A setting serde accepts but heimdall refuses is a problem with its field.
    std::fs::write(&bad, "version: \"1\"\nserver:\n  check_timeout: 0s\n").unwrap();
    let (code, report) = json(bad.to_str().unwrap());
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["problems"][0]["problem"], "invalid_setting");
    assert_eq!(
        report["problems"][0]["message"],
        "invalid setting `server.check_timeout`: must be positive"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The committed key reference and the chart's `config` schema are generated from the types;
/// these fail when a setting changed and they were not regenerated.
#[test]
fn generated_configuration_reference_and_chart_schema_are_current() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = heimdall(&["schema", "--format", "markdown"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let committed = std::fs::read_to_string(format!("{root}/docs/configuration.md")).unwrap();
    assert!(
        committed == text(&out.stdout),
        "docs/configuration.md is out of date: run `cargo run -- schema --format markdown > docs/configuration.md`"
    );

    let out = heimdall(&["schema", "--format", "chart"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let generated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let chart: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/charts/heimdall/values.schema.json")).unwrap(),
    )
    .unwrap();
    assert!(
        chart["properties"]["config"] == generated,
        "charts/heimdall/values.schema.json `properties.config` is out of date: run \
         `cargo run -- schema --format chart > /tmp/c.json && jq --slurpfile c /tmp/c.json \
         '.properties.config = $c[0]' charts/heimdall/values.schema.json > /tmp/v.json && \
         mv /tmp/v.json charts/heimdall/values.schema.json`"
    );

    let out = heimdall(&["schema"], &[]);
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    for key in ["server", "tokens", "cerbos", "nats", "mechanisms", "rules"] {
        assert!(schema["properties"][key].is_object(), "{key} missing");
    }
}

#[test]
fn a_31_byte_symmetric_key_is_refused_with_its_length() {
    let out = heimdall(
        &["serve"],
        &[
            ("PASETO_SYMMETRIC_KEY", "change-this-to-32-byte-secret!!"),
            ("PORT", "0"),
            ("GRPC_PORT", "0"),
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("PASETO_SYMMETRIC_KEY must be exactly 32 bytes, got 31"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn minted_tokens_inspect_and_keys_generate() {
    let key = ("PASETO_SYMMETRIC_KEY", "heimdall-cli-test-key-0123456789");
    let out = heimdall(
        &[
            "token",
            "mint",
            "--sub",
            "alice",
            "--roles",
            "user,editor",
            "--attr",
            "plan=pro",
            "--purpose",
            "local",
        ],
        &[key],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_owned();
    assert!(token.starts_with("v4.local."));
    let out = heimdall(&["token", "inspect", &token], &[key]);
    let shown = text(&out.stdout);
    assert!(
        shown.contains("\"sub\": \"alice\"") && shown.contains("\"plan\": \"pro\""),
        "{shown}"
    );
    let out = heimdall(
        &["token", "inspect", &token],
        &[("PASETO_SYMMETRIC_KEY", "another-cli-test-key-0123456789x")],
    );
    assert!(!out.status.success());

    let out = heimdall(&["keys", "generate", "--purpose", "public"], &[]);
    let shown = text(&out.stdout);
    assert!(
        shown.contains("secret: k4.secret.")
            && shown.contains("public: k4.public.")
            && shown.contains("kid:    k4.pid."),
        "{shown}"
    );
}

/// `--roles user,user` is one role (Cerbos refuses a principal whose roles repeat), blanks and
/// surrounding spaces dropped, first-seen order kept.
#[test]
fn minted_roles_are_each_written_once() {
    let key = ("PASETO_SYMMETRIC_KEY", "heimdall-cli-test-key-0123456789");
    let out = heimdall(
        &[
            "token",
            "mint",
            "--sub",
            "alice",
            "--roles",
            "user,user, editor,,user",
            "--purpose",
            "local",
        ],
        &[key],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_owned();
    let out = heimdall(&["token", "inspect", &token], &[key]);
    let shown = text(&out.stdout);
    let claims: serde_json::Value = serde_json::from_str(
        shown
            .split_once("claims: ")
            .map(|(_, json)| json)
            .unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("{e}: {shown}"));
    assert_eq!(
        claims["roles"],
        serde_json::json!(["user", "editor"]),
        "{shown}"
    );
}

/// `heimdall serve` with no configuration at all: it starts on the embedded example rules, logs a
/// demo token, and that token is accepted; SIGTERM stops it cleanly.
mod serve_without_configuration {
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::process::Command;

    #[tokio::test]
    async fn starts_without_configuration_and_accepts_its_demo_token() {
        let (grpc, http) = (
            heimdall::test_helpers::free_port(),
            heimdall::test_helpers::free_port(),
        );
        let mut child = Command::new(env!("CARGO_BIN_EXE_heimdall"))
            .arg("serve")
            .env_remove("HEIMDALL_CONFIG")
            .env_remove("PASETO_SYMMETRIC_KEY")
            .env("HEIMDALL_BIND", "127.0.0.1")
            .env("GRPC_PORT", grpc.to_string())
            .env("PORT", http.to_string())
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut token, mut serving) = (None, false);
        while !(serving && token.is_some()) {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let line = tokio::time::timeout(remaining, lines.next_line())
                .await
                .expect("heimdall did not start in time")
                .unwrap()
                .expect("heimdall exited");
            if let Some(t) = line
                .split_whitespace()
                .find(|w| w.starts_with("v4.public."))
            {
                token = Some(t.to_owned());
            }
            serving |= line.contains("heimdall is serving");
        }
        let token = token.unwrap();

        let http_client = heimdall::test_helpers::http_client();
        let decide = |auth: Option<String>| {
            let mut request = http_client
                .get(format!("http://127.0.0.1:{http}/decision"))
                .header("x-forwarded-method", "GET")
                .header("x-forwarded-host", "api.example.com")
                .header("x-forwarded-uri", "/api/documents/1");
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            request.send()
        };
        let allowed = decide(Some(format!("Bearer {token}"))).await.unwrap();
        assert_eq!(allowed.status(), 200);
        assert_eq!(allowed.headers()["x-user-id"], "demo-user");
        assert_eq!(decide(None).await.unwrap().status(), 401);

        // SIGTERM: a clean exit within the grace period.
        let pid = child.id().unwrap();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
            .await
            .expect("no exit after SIGTERM")
            .unwrap();
        assert!(status.success(), "{status}");
    }
}
