//! Cerbos end to end: a real Cerbos PDP behind heimdall, through a real Envoy and through the
//! `/check` and `/plan/resources` APIs of the side port.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use heimdall::app::Running;
use heimdall::test_helpers::cerbos::Cerbos;
use heimdall::test_helpers::echo::EchoUpstream;
use heimdall::test_helpers::envoy::Envoy;
use heimdall::test_helpers::stack::StackBuilder;
use heimdall::test_helpers::{claims, mint, test_config, test_keys};
use heimdall::tokens::{Keyring, Purpose};
use reqwest::{Method, StatusCode};

const RULES: &str = include_str!("fixtures/cerbos-rules.yaml");

/// `(name, method, path, authorization, extra headers, expected status)`.
type Case<'a> = (
    &'a str,
    Method,
    &'a str,
    &'a String,
    &'a [(&'a str, &'a str)],
    StatusCode,
);

struct Stack {
    cerbos: Cerbos,
    keys: Arc<Keyring>,
    heimdall: Running,
    envoy: Envoy,
    _echo: EchoUpstream,
    client: reqwest::Client,
}

impl Stack {
    async fn start() -> Option<Self> {
        let stack = StackBuilder::new(RULES).cerbos().envoy().start().await?;
        Some(Self {
            cerbos: stack.cerbos?,
            keys: stack.keys,
            heimdall: stack.heimdall,
            envoy: stack.envoy?,
            _echo: stack.echo,
            client: stack.client,
        })
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.heimdall.readiness.is_ready() {
            assert!(
                Instant::now() < deadline,
                "heimdall not ready: {:?}",
                self.heimdall.readiness.pending()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn bearer(&self, sub: &str, roles: &[&str], attr: &[(&str, &str)]) -> String {
        let mut c = claims(sub, roles);
        for (k, v) in attr {
            c.attr.insert((*k).into(), (*v).into());
        }
        format!("Bearer {}", mint(&self.keys, Purpose::Public, &c))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        auth: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self
            .client
            .request(method, self.envoy.url(path))
            .header("authorization", auth);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        request.send().await.unwrap()
    }

    async fn api(
        &self,
        path: &str,
        auth: Option<&str>,
        body: &str,
    ) -> (StatusCode, serde_json::Value) {
        let mut request = self
            .client
            .post(format!("http://{}{path}", self.heimdall.http_addr))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (
            status,
            response.json().await.unwrap_or(serde_json::Value::Null),
        )
    }

    async fn metrics(&self) -> String {
        self.client
            .get(format!("http://{}/metrics", self.heimdall.http_addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn document_policy_through_envoy() {
    let Some(stack) = Stack::start().await else {
        return;
    };
    let alice = stack.bearer("alice", &["user"], &[("department", "eng")]);
    let bob = stack.bearer("bob", &["user"], &[("department", "sales")]);
    let erin = stack.bearer("erin", &["user", "editor"], &[("department", "eng")]);
    let root = stack.bearer("root", &["user", "admin"], &[]);
    let auditor = stack.bearer("auditor", &["user"], &[]);
    let eng = [("x-department", "eng")];

    let cases: Vec<Case<'_>> = vec![
        (
            "owner views",
            Method::GET,
            "/docs/alice/1",
            &alice,
            &[],
            StatusCode::OK,
        ),
        (
            "non-owner may not view",
            Method::GET,
            "/docs/alice/1",
            &bob,
            &[],
            StatusCode::FORBIDDEN,
        ),
        (
            "anyone views a public document",
            Method::GET,
            "/docs/alice/2?public=true",
            &bob,
            &[],
            StatusCode::OK,
        ),
        (
            "editor of the department edits",
            Method::PUT,
            "/docs/alice/3",
            &erin,
            &eng,
            StatusCode::OK,
        ),
        (
            "editor of another department may not",
            Method::PUT,
            "/docs/alice/3",
            &erin,
            &[("x-department", "sales")],
            StatusCode::FORBIDDEN,
        ),
        (
            "plain user may not edit",
            Method::PUT,
            "/docs/alice/3",
            &bob,
            &eng,
            StatusCode::FORBIDDEN,
        ),
        (
            "owner edits a draft",
            Method::PUT,
            "/docs/alice/4?status=draft",
            &alice,
            &[],
            StatusCode::OK,
        ),
        (
            "owner may not delete",
            Method::DELETE,
            "/docs/alice/5",
            &alice,
            &[],
            StatusCode::FORBIDDEN,
        ),
        (
            "admin deletes",
            Method::DELETE,
            "/docs/alice/5",
            &root,
            &[],
            StatusCode::OK,
        ),
        (
            "auditor principal policy views anything",
            Method::GET,
            "/docs/alice/6",
            &auditor,
            &[],
            StatusCode::OK,
        ),
    ];
    for (name, method, path, auth, headers, want) in cases {
        let response = stack.send(method, path, auth, headers).await;
        assert_eq!(response.status(), want, "{name}");
        if want == StatusCode::OK {
            let body: serde_json::Value = response.json().await.unwrap();
            assert!(
                body["headers"]["x-user-id"].is_string(),
                "{name}: identity headers reach the upstream"
            );
        }
    }
    // A method with no action mapped is a bad request, never an allow.
    assert_eq!(
        stack
            .send(Method::POST, "/docs/alice/1", &alice, &[])
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn decision_cache_serves_repeats_but_never_masks_a_changed_attribute() {
    let Some(stack) = Stack::start().await else {
        return;
    };
    let eng_editor = stack.bearer("erin", &["user", "editor"], &[("department", "eng")]);
    let moved_editor = stack.bearer("erin", &["user", "editor"], &[("department", "sales")]);
    let eng = [("x-department", "eng")];
    let before = metric(
        &stack.metrics().await,
        "heimdall_cerbos_decision_cache_hits_total",
    );
    for _ in 0..5 {
        assert_eq!(
            stack
                .send(Method::PUT, "/docs/alice/10", &eng_editor, &eng)
                .await
                .status(),
            StatusCode::OK
        );
    }
    let after = metric(
        &stack.metrics().await,
        "heimdall_cerbos_decision_cache_hits_total",
    );
    assert_eq!(
        after - before,
        4,
        "the first check goes to Cerbos, the repeats come from the cache"
    );
    // Same principal, same resource, one attribute changed: a new question, a new answer.
    assert_eq!(
        stack
            .send(Method::PUT, "/docs/alice/10", &moved_editor, &eng)
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    // And the resource's attributes are part of the key too.
    assert_eq!(
        stack
            .send(
                Method::PUT,
                "/docs/alice/10",
                &eng_editor,
                &[("x-department", "sales")]
            )
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn cerbos_down_or_stuck_fails_closed_and_recovers() {
    let Some(mut stack) = Stack::start().await else {
        return;
    };
    let alice = stack.bearer("alice", &["user"], &[]);
    assert_eq!(
        stack
            .send(Method::GET, "/docs/alice/20", &alice, &[])
            .await
            .status(),
        StatusCode::OK
    );

    // Stopped: 503 through Envoy (each request asks about a new resource, so no cache answers).
    stack.cerbos.stop().await;
    assert_eq!(
        stack
            .send(Method::GET, "/docs/alice/21", &alice, &[])
            .await
            .status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while stack.heimdall.readiness.is_ready() {
        assert!(
            Instant::now() < deadline,
            "readiness should drop when Cerbos is gone"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Back: heimdall recovers by itself.
    stack.cerbos.start_again().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 22;
    loop {
        let status = stack
            .send(Method::GET, &format!("/docs/alice/{n}"), &alice, &[])
            .await
            .status();
        if status == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery after Cerbos came back: {status}"
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stack.wait_ready().await;

    // Stuck (SIGSTOP): the deadline (150 ms) fires, the answer is 503, well before Envoy's 250 ms.
    stack.cerbos.pause();
    let started = Instant::now();
    let status = stack
        .send(Method::GET, "/docs/alice/99", &alice, &[])
        .await
        .status();
    let elapsed = started.elapsed();
    stack.cerbos.resume();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        elapsed < Duration::from_millis(240),
        "answered after {elapsed:?}"
    );
    assert!(
        stack
            .metrics()
            .await
            .contains(r#"heimdall_cerbos_errors_total{call="check_resources",kind="timeout"}"#)
    );
}

#[tokio::test]
async fn check_and_plan_apis() {
    let Some(stack) = Stack::start().await else {
        return;
    };
    let alice = stack.bearer("alice", &["user"], &[("department", "eng")]);
    let root = stack.bearer("root", &["admin"], &[]);

    // The contract's request, for one resource: the principal comes from the token.
    let body = r#"{"principal": {"id": "mallory", "roles": ["admin"]},
                   "resources": [{"kind": "document", "id": "doc456", "attr": {"owner": "alice", "status": "draft"}, "actions": ["view", "edit", "delete"]}]}"#;
    let (status, answer) = stack.api("/check", Some(&alice), body).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "delete is denied, so the whole check is"
    );
    assert_eq!(
        answer,
        serde_json::json!({"resourceId": "doc456", "actions": {"view": "EFFECT_ALLOW", "edit": "EFFECT_ALLOW", "delete": "EFFECT_DENY"}})
    );

    let body = r#"{"resources": [
        {"kind": "document", "id": "a", "attr": {"owner": "alice"}, "actions": ["view"]},
        {"kind": "document", "id": "b", "attr": {"owner": "bob", "public": true}, "actions": ["view"]}]}"#;
    let (status, answer) = stack.api("/check", Some(&alice), body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer,
        serde_json::json!([
        {"resourceId": "a", "actions": {"view": "EFFECT_ALLOW"}},
        {"resourceId": "b", "actions": {"view": "EFFECT_ALLOW"}}])
    );

    // Plans: conditional for a user, always allowed / denied for delete.
    let plan = |actions: &str| {
        format!(
            r#"{{"principal": {{"id": "x"}}, "resource": {{"kind": "document", "attr": {{}}}}, "actions": {actions}}}"#
        )
    };
    let (status, answer) = stack
        .api("/plan/resources", Some(&alice), &plan(r#"["view"]"#))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["filter"]["kind"], "KIND_CONDITIONAL", "{answer}");
    let expression = answer["filter"]["condition"]["expression"]
        .as_str()
        .unwrap();
    assert!(
        expression.contains("request.resource.attr.owner == \"alice\""),
        "{expression}"
    );
    assert!(
        expression.contains("request.resource.attr.public == true"),
        "{expression}"
    );
    assert!(
        answer["filter"]["condition"]["tree"]["expression"]["operator"].is_string(),
        "{answer}"
    );
    let (_, answer) = stack
        .api("/plan/resources", Some(&root), &plan(r#"["delete"]"#))
        .await;
    assert_eq!(
        answer,
        serde_json::json!({"filter": {"kind": "KIND_ALWAYS_ALLOWED"}})
    );
    let (_, answer) = stack
        .api("/plan/resources", Some(&alice), &plan(r#"["delete"]"#))
        .await;
    assert_eq!(
        answer,
        serde_json::json!({"filter": {"kind": "KIND_ALWAYS_DENIED"}})
    );

    // Bad input: 400 naming the field; no token: 401; oversized: 400.
    let huge = format!(
        r#"{{"resources": [{{"kind": "document", "id": "{}", "actions": ["view"]}}]}}"#,
        "x".repeat(100 * 1024)
    );
    let bad_bodies = [
        ("{not json", "invalid request body"),
        (
            r#"{"resources": [{"kind": "document", "id": "a", "actions": ["view"], "colour": 1}]}"#,
            "unknown field `colour`",
        ),
        (
            r#"{"resources": [{"kind": "document", "id": "a"}]}"#,
            "missing field `actions`",
        ),
        (
            r#"{"resources": [{"kind": "document", "id": "a", "actions": []}]}"#,
            "`resources[0].actions`",
        ),
        (huge.as_str(), "larger than"),
    ];
    for (body, named) in bad_bodies {
        let (status, answer) = stack.api("/check", Some(&alice), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(named),
            "want `{named}` in {answer}"
        );
    }
    let (status, _) = stack
        .api(
            "/check",
            None,
            r#"{"resources": [{"kind": "document", "id": "a", "actions": ["view"]}]}"#,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn trusted_callers_may_name_the_principal_in_the_body() {
    let Some(cerbos) = Cerbos::start().await else {
        return;
    };
    let mut config = test_config(RULES);
    config.cerbos.as_mut().unwrap().url = cerbos.grpc_addr().to_string();
    config.api.trust_body_principal = true;
    let running = heimdall::app::build(config, test_keys())
        .unwrap()
        .serve()
        .await
        .unwrap();
    let body = r#"{"principal": {"id": "user123", "roles": ["user"]},
                   "resources": [{"kind": "document", "id": "doc456", "attr": {"owner": "user123"}, "actions": ["view", "delete"]}]}"#;
    let response = heimdall::test_helpers::http_client()
        .post(format!("http://{}/check", running.http_addr))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        answer["actions"],
        serde_json::json!({"view": "EFFECT_ALLOW", "delete": "EFFECT_DENY"})
    );
    running.shutdown(Duration::from_secs(2)).await;
}

/// A self-signed CA and a server certificate for 127.0.0.1, made with the openssl command.
fn make_certificates(dir: &std::path::Path) -> Option<()> {
    let run = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(drop)
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=heimdall test CA",
    ])?;
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ])?;
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").ok()?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ])
}

#[tokio::test]
async fn cerbos_over_tls_with_a_private_ca() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cerbos-certs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    if make_certificates(&dir).is_none() {
        assert!(
            !heimdall::test_helpers::tools::in_ci(),
            "openssl is needed to make test certificates"
        );
        eprintln!("skipping: openssl could not make test certificates");
        return;
    }
    let Some(cerbos) = Cerbos::start_tls(&dir.join("server.pem"), &dir.join("server.key")).await
    else {
        return;
    };
    let body = r#"{"resources": [{"kind": "document", "id": "a", "attr": {"owner": "alice"}, "actions": ["view"]}]}"#;
    let ask = |ca: Option<std::path::PathBuf>| {
        let url = cerbos.grpc_addr().to_string();
        async move {
            let mut config = test_config(RULES);
            let cerbos_config = config.cerbos.as_mut().unwrap();
            cerbos_config.url = format!("https://{url}");
            cerbos_config.timeout = Duration::from_secs(2);
            cerbos_config.tls = Some(heimdall::cerbos::CerbosTls {
                ca_file: ca,
                ..Default::default()
            });
            let built = heimdall::app::build(config, test_keys()).unwrap();
            let token = format!(
                "Bearer {}",
                mint(&built.keys, Purpose::Public, &claims("alice", &["user"]))
            );
            let running = built.serve().await.unwrap();
            let response = heimdall::test_helpers::http_client()
                .post(format!("http://{}/check", running.http_addr))
                .header("authorization", token)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status();
            running.shutdown(Duration::from_secs(2)).await;
            status
        }
    };
    // Trusting the private CA: the PDP answers over TLS.
    assert_eq!(ask(Some(dir.join("ca.pem"))).await, StatusCode::OK);
    // The system roots do not know that CA: the handshake fails, and that fails closed.
    assert_eq!(ask(None).await, StatusCode::SERVICE_UNAVAILABLE);
    let _ = std::fs::remove_dir_all(&dir);
}

/// What Cerbos refuses as invalid is the caller's error on the API: `400` with a message that
/// names the field (or repeats Cerbos's reason, escaped), never the `503` of an outage.
#[tokio::test]
async fn invalid_policy_questions_are_400_not_503() {
    let Some(stack) = Stack::start().await else {
        return;
    };
    let alice = stack.bearer("alice", &["user"], &[]);
    let check = |resource: &str| format!(r#"{{"resources": [{resource}]}}"#);
    let many = format!(
        r#"{{"resources": [{}]}}"#,
        (0..51)
            .map(|i| format!(r#"{{"kind": "document", "id": "d{i}", "actions": ["view"]}}"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    let plan = |actions: &str, attr: &str| {
        format!(r#"{{"resource": {{"kind": "document", "attr": {attr}}}, "actions": {actions}}}"#)
    };
    let cases = [
        (
            "/check",
            check(r#"{"kind": "document", "id": "", "actions": ["view"]}"#),
            "`resources[0].id` must not be empty",
        ),
        (
            "/check",
            check(r#"{"kind": "document", "id": "a", "actions": ["view", "view"]}"#),
            "`resources[0].actions[1]` repeats the action `view`",
        ),
        (
            "/check",
            check(r#"{"kind": "document", "id": "a", "actions": [""]}"#),
            "`resources[0].actions[0]` must not be empty",
        ),
        ("/check", many, "`cerbos.max_resources` (50)"),
        // Not checked by heimdall: Cerbos refuses an attribute without a name.
        (
            "/check",
            check(r#"{"kind": "document", "id": "a", "attr": {"": 1}, "actions": ["view"]}"#),
            "Cerbos refused the request",
        ),
        (
            "/plan/resources",
            plan(r#"["view", "view"]"#, "{}"),
            "`actions[1]` repeats the action `view`",
        ),
        (
            "/plan/resources",
            plan(r#"["view", ""]"#, "{}"),
            "`actions[1]` must not be empty",
        ),
    ];
    for (path, body, named) in cases {
        let (status, answer) = stack.api(path, Some(&alice), &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {answer}");
        let object = answer.as_object().unwrap();
        assert_eq!(object.len(), 1, "only `error`: {answer}");
        let message = answer["error"].as_str().unwrap();
        assert!(message.contains(named), "want `{named}` in {answer}");
    }
    // Not checked by heimdall: Cerbos refuses a principal attribute without a name.
    let unnamed = stack.bearer("alice", &["user"], &[("", "x")]);
    let (status, answer) = stack
        .api(
            "/plan/resources",
            Some(&unnamed),
            &plan(r#"["view"]"#, "{}"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("Cerbos refused the request"),
        "{answer}"
    );
    // An untrusted action name comes back escaped, never with a raw control character.
    let (status, answer) = stack
        .api(
            "/plan/resources",
            Some(&alice),
            &plan(r#"["a\u001b[2Jb", "a\u001b[2Jb"]"#, "{}"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = answer["error"].as_str().unwrap();
    assert!(
        message.contains(r"a\u{1b}[2Jb") && !message.contains('\u{1b}'),
        "{answer}"
    );
}

/// Roles as Cerbos accepts them: a repeated role once, and a principal without roles asked
/// about as `cerbos.default_role` (`anonymous`), on the API and through Envoy.
#[tokio::test]
async fn repeated_and_missing_roles_get_a_decision() {
    let Some(stack) = Stack::start().await else {
        return;
    };
    let twice = stack.bearer("alice", &["user", "user"], &[]);
    let roleless = stack.bearer("carol", &[], &[]);
    let own = r#"{"resources": [{"kind": "document", "id": "a", "attr": {"owner": "alice"}, "actions": ["view"]}]}"#;
    assert_eq!(
        stack.api("/check", Some(&twice), own).await.0,
        StatusCode::OK
    );
    let public = r#"{"resources": [{"kind": "document", "id": "p", "attr": {"owner": "alice", "public": true}, "actions": ["view"]}]}"#;
    assert_eq!(
        stack.api("/check", Some(&roleless), public).await.0,
        StatusCode::OK,
        "`*` rules apply to the default role"
    );
    let private = r#"{"resources": [{"kind": "document", "id": "c", "attr": {"owner": "carol"}, "actions": ["view"]}]}"#;
    assert_eq!(
        stack.api("/check", Some(&roleless), private).await.0,
        StatusCode::FORBIDDEN,
        "the default role is not `user`"
    );
    let (status, answer) = stack
        .api(
            "/plan/resources",
            Some(&twice),
            r#"{"resource": {"kind": "document"}, "actions": ["view"]}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["filter"]["kind"], "KIND_CONDITIONAL", "{answer}");
    assert_eq!(
        stack
            .send(Method::GET, "/docs/alice/30", &twice, &[])
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        stack
            .send(Method::GET, "/docs/carol/31?public=true", &roleless, &[])
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn without_a_default_role_the_api_refuses_a_principal_without_roles() {
    let Some(cerbos) = Cerbos::start().await else {
        return;
    };
    let mut config = test_config(RULES);
    let cerbos_config = config.cerbos.as_mut().unwrap();
    cerbos_config.url = cerbos.grpc_addr().to_string();
    cerbos_config.default_role = String::new();
    let built = heimdall::app::build(config, test_keys()).unwrap();
    let token = format!(
        "Bearer {}",
        mint(&built.keys, Purpose::Public, &claims("carol", &[]))
    );
    let running = built.serve().await.unwrap();
    let response = heimdall::test_helpers::http_client()
        .post(format!("http://{}/check", running.http_addr))
        .header("authorization", token)
        .body(r#"{"resources": [{"kind": "document", "id": "p", "attr": {"public": true}, "actions": ["view"]}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("principal `carol` has no roles and `cerbos.default_role` is empty"),
        "{answer}"
    );
    running.shutdown(Duration::from_secs(2)).await;
}

/// A log sink for one test: heimdall's events at `info` and above, as the plain format writes
/// them (escaped).
#[derive(Clone, Default)]
#[allow(
    clippy::disallowed_types,
    reason = "the lock is held for one write or one copy, never across .await"
)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Captured {
    type Writer = Self;
    fn make_writer(&'w self) -> Self {
        self.clone()
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Cerbos with schema enforcement `enforcement` and the `report` policy of
/// `tests/fixtures/cerbos-schema` (a report must have a string `owner`); asks `/check` whether
/// `alice` may view a report without an owner. Returns the status, the log, and the metrics.
async fn schema_check(enforcement: &str) -> Option<(StatusCode, String, String)> {
    let policies = heimdall::test_helpers::cerbos::repo_root().join("tests/fixtures/cerbos-schema");
    let cerbos =
        Cerbos::start_with(&policies, &[&format!("schema.enforcement={enforcement}")]).await?;
    let captured = Captured::default();
    // This test's runtime is single-threaded, so heimdall's tasks log through this subscriber.
    let _logs = tracing::subscriber::set_default(heimdall::telemetry::subscriber(
        heimdall::config::LogFormat::Plain,
        tracing_subscriber::EnvFilter::new("heimdall=info"),
        false,
        captured.clone(),
    ));
    let mut config = test_config(RULES);
    config.cerbos.as_mut().unwrap().url = cerbos.grpc_addr().to_string();
    let built = heimdall::app::build(config, test_keys()).unwrap();
    let token = format!(
        "Bearer {}",
        mint(&built.keys, Purpose::Public, &claims("alice", &["user"]))
    );
    let running = built.serve().await.unwrap();
    let client = heimdall::test_helpers::http_client();
    let ask = |body: &'static str| {
        client
            .post(format!("http://{}/check", running.http_addr))
            .header("authorization", token.clone())
            .body(body)
            .send()
    };
    // A valid report: no validation error, allowed under either enforcement.
    let valid = ask(r#"{"resources": [{"kind": "report", "id": "r1", "attr": {"owner": "alice"}, "actions": ["view"]}]}"#)
        .await
        .unwrap();
    assert_eq!(valid.status(), StatusCode::OK);
    assert!(!captured.text().contains("schema validation failed"));
    // The owner is a number, and the id carries an escape sequence a log must not replay.
    let status = ask(r#"{"resources": [{"kind": "report", "id": "r2\u001b[2J", "attr": {"owner": 7}, "actions": ["view"]}]}"#)
        .await
        .unwrap()
        .status();
    let metrics = client
        .get(format!("http://{}/metrics", running.http_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    running.shutdown(Duration::from_secs(2)).await;
    Some((status, captured.text(), metrics))
}

#[tokio::test]
async fn schema_warn_is_logged_and_counted() {
    let Some((status, log, metrics)) = schema_check("warn").await else {
        return;
    };
    assert_eq!(status, StatusCode::OK, "`warn` lets the policies decide");
    let line = log
        .lines()
        .find(|l| l.contains("Cerbos schema validation failed"))
        .unwrap_or_else(|| panic!("no validation log in:\n{log}"));
    assert!(line.contains(r#"source="resource""#), "{line}");
    assert!(line.contains("/owner"), "{line}");
    assert!(line.contains(r#"decision="allowed""#), "{line}");
    assert!(
        line.contains(r"r2\u{1b}[2J") && !line.contains('\u{1b}'),
        "escaped: {line}"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"heimdall_cerbos_validation_errors_total{call="check_resources",source="resource"}"#
        ),
        1,
        "{metrics}"
    );
}

#[tokio::test]
async fn schema_reject_is_denied_with_the_reason_logged() {
    let Some((status, log, metrics)) = schema_check("reject").await else {
        return;
    };
    assert_eq!(status, StatusCode::FORBIDDEN, "`reject` denies");
    let line = log
        .lines()
        .find(|l| l.contains("Cerbos schema validation failed"))
        .unwrap_or_else(|| panic!("no validation log in:\n{log}"));
    assert!(line.contains("/owner"), "{line}");
    assert!(line.contains(r#"decision="denied""#), "{line}");
    assert!(
        metrics.contains(
            r#"heimdall_cerbos_validation_errors_total{call="check_resources",source="resource"} 1"#
        ),
        "{metrics}"
    );
}
