//! Policy engine refusals are denials, not outages: a question Cerbos refuses as invalid (an
//! empty resource id, an action asked twice, a principal without roles, a role name it does not
//! accept) is answered `403`, never "cannot decide". Proven through a real Envoy configured with
//! `failure_mode_allow: true`, which lets "cannot decide" through to the upstream: the refusals
//! never reach the echo upstream, while a valid request does, and so does every request once
//! Cerbos is really down (the control that shows this Envoy does fail open). The same cases on
//! heimdall's gRPC ext_authz service are `DeniedResponse`s with status 403.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use heimdall::app::Running;
use heimdall::test_helpers::cerbos::Cerbos;
use heimdall::test_helpers::echo::EchoUpstream;
use heimdall::test_helpers::envoy::Envoy;
use heimdall::test_helpers::stack::StackBuilder;
use heimdall::test_helpers::{bearer_check_request, claims, mint};
use heimdall::tokens::{Keyring, Purpose};
use reqwest::StatusCode;

const RULES: &str = include_str!("fixtures/cerbos-refusal-rules.yaml");

/// The gRPC status Envoy reads as a denial.
const PERMISSION_DENIED: i32 = 7;

struct Stack {
    cerbos: Cerbos,
    keys: Arc<Keyring>,
    heimdall: Running,
    envoy: Envoy,
    echo: EchoUpstream,
    client: reqwest::Client,
}

impl Stack {
    /// Cerbos, heimdall with the refusal rules (and `cerbos.default_role` when given), an echo
    /// upstream, and Envoy with `failure_mode_allow: true` in front.
    async fn start(default_role: Option<&str>) -> Option<Self> {
        let mut builder = StackBuilder::new(RULES).cerbos().envoy_failure_mode_allow();
        if let Some(role) = default_role {
            let role = role.to_owned();
            builder = builder.configure(move |config| {
                config.cerbos.as_mut().unwrap().default_role = role;
            });
        }
        let parts = builder.start().await?;
        let stack = Self {
            cerbos: parts.cerbos?,
            keys: parts.keys,
            heimdall: parts.heimdall,
            envoy: parts.envoy?,
            echo: parts.echo,
            client: parts.client,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !stack.heimdall.readiness.is_ready() {
            assert!(Instant::now() < deadline, "heimdall not ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(stack)
    }

    fn token(&self, sub: &str, roles: &[&str]) -> String {
        mint(&self.keys, Purpose::Public, &claims(sub, roles))
    }

    /// A token with an attribute named `""`: heimdall passes it on, and Cerbos refuses a
    /// principal attribute without a name (`InvalidArgument`).
    fn unnamed_attribute_token(&self) -> String {
        let mut c = claims("alice", &["user"]);
        c.attr.insert(String::new(), "x".into());
        mint(&self.keys, Purpose::Public, &c)
    }

    /// `GET path` through Envoy: the status, the body, and whether the upstream saw it.
    async fn get(&self, path: &str, token: &str) -> (StatusCode, String, bool) {
        let before = self.echo.received();
        let response = self
            .client
            .get(self.envoy.url(path))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        (status, body, self.echo.received() > before)
    }

    /// Asserts that `path` is denied with 403 `invalid_policy_request` and never reaches the
    /// upstream.
    async fn assert_refused(&self, name: &str, path: &str, token: &str) {
        let (status, body, reached) = self.get(path, token).await;
        assert!(
            !reached,
            "{name}: `{path}` reached the upstream ({status} {body})"
        );
        assert_eq!(status, StatusCode::FORBIDDEN, "{name}: `{path}`: {body}");
        assert!(
            body.contains("invalid_policy_request"),
            "{name}: `{path}`: {body}"
        );
    }

    /// Asserts that `path` is decided by the policies: `want`, and the upstream reached exactly
    /// when allowed.
    async fn assert_decided(&self, name: &str, path: &str, token: &str, want: StatusCode) {
        let (status, body, reached) = self.get(path, token).await;
        assert_eq!(status, want, "{name}: `{path}`: {body}");
        assert_eq!(reached, want == StatusCode::OK, "{name}: `{path}`: {body}");
        if want == StatusCode::FORBIDDEN {
            assert!(body.contains("authorization"), "{name}: `{path}`: {body}");
        }
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

/// 51 distinct actions: one more than Cerbos accepts per resource.
fn too_many_actions() -> String {
    (0..51)
        .map(|i| format!("a{i}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test]
async fn refusals_never_reach_the_upstream_even_with_failure_mode_allow() {
    let Some(mut stack) = Stack::start(None).await else {
        return;
    };
    let alice = stack.token("alice", &["user"]);
    let twice = stack.token("alice", &["user", "user"]);
    let roleless = stack.token("carol", &[]);
    let odd_attr = stack.unnamed_attribute_token();

    // The positive control: a valid question reaches the upstream with the identity headers.
    let (status, body, reached) = stack.get("/docs?id=7&owner=alice", &alice).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(reached);
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["headers"]["x-user-id"], "alice");

    let many = format!("/docs?id=7&owner=alice&actions={}", too_many_actions());
    let refused = [
        // Checked by heimdall before asking Cerbos.
        ("empty resource id", "/docs?id=&owner=alice", &alice),
        ("no resource id", "/docs?owner=alice", &alice),
        (
            "an action twice",
            "/docs?id=7&owner=alice&actions=view,view",
            &alice,
        ),
        (
            "an empty action",
            "/docs?id=7&owner=alice&actions=view,",
            &alice,
        ),
        ("51 actions", many.as_str(), &alice),
        // Refused by Cerbos itself: the refusal is still a denial.
        (
            "an attribute Cerbos refuses",
            "/docs?id=8&owner=alice",
            &odd_attr,
        ),
    ];
    for (name, path, token) in refused {
        stack.assert_refused(name, path, token).await;
    }
    let metrics = stack.metrics().await;
    assert!(
        metrics.contains(r#"heimdall_cerbos_errors_total{call="check_resources",kind="invalid"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"heimdall_cerbos_errors_total{call="check_resources",kind="rejected"}"#),
        "{metrics}"
    );

    // Roles: a repeated role is sent once, so the owner is decided as before; a principal
    // without roles is asked about as `anonymous` (the default role), which the example
    // policies let view public documents only.
    stack
        .assert_decided(
            "role twice",
            "/docs?id=9&owner=alice",
            &twice,
            StatusCode::OK,
        )
        .await;
    stack
        .assert_decided(
            "no roles, public",
            "/docs?id=10&owner=alice&public=true",
            &roleless,
            StatusCode::OK,
        )
        .await;
    stack
        .assert_decided(
            "no roles, not even the owner",
            "/docs?id=10&owner=carol",
            &roleless,
            StatusCode::FORBIDDEN,
        )
        .await;
    // The `anonymous` authenticator's principal has no roles either.
    stack
        .assert_decided(
            "anonymous, public",
            "/public?id=11&public=true",
            &alice,
            StatusCode::OK,
        )
        .await;
    stack
        .assert_decided(
            "anonymous, private",
            "/public?id=11&owner=alice",
            &alice,
            StatusCode::FORBIDDEN,
        )
        .await;
    stack
        .assert_refused("anonymous, empty id", "/public?id=&public=true", &alice)
        .await;

    // The control: with Cerbos gone heimdall cannot decide, and this Envoy lets that through.
    // So the refusals above were denials, not a proxy that denies everything.
    stack.cerbos.stop().await;
    let (status, body, reached) = stack.get("/docs?id=12&owner=bob", &alice).await;
    assert!(
        reached && status == StatusCode::OK,
        "failure_mode_allow lets an outage through: {status} {body}"
    );
    // A question heimdall refuses before asking is still a denial while Cerbos is down.
    stack
        .assert_refused("empty id, Cerbos down", "/docs?id=&owner=alice", &alice)
        .await;
}

#[tokio::test]
async fn without_a_default_role_a_principal_without_roles_is_denied() {
    let Some(stack) = Stack::start(Some("")).await else {
        return;
    };
    let alice = stack.token("alice", &["user"]);
    let roleless = stack.token("alice", &[]);
    stack
        .assert_refused("anonymous", "/public?id=1&public=true", &alice)
        .await;
    stack
        .assert_refused("token without roles", "/docs?id=1&owner=alice", &roleless)
        .await;
    stack
        .assert_decided(
            "with a role",
            "/docs?id=1&owner=alice",
            &alice,
            StatusCode::OK,
        )
        .await;
}

/// The same refusals on heimdall's ext_authz gRPC service: a `DeniedResponse` with status 403
/// and gRPC status PERMISSION_DENIED, never an `ErrorResponse`.
#[tokio::test]
async fn ext_authz_answers_refusals_with_a_denied_response() {
    let Some(stack) = Stack::start(Some("")).await else {
        return;
    };
    let mut client = AuthorizationClient::connect(format!("http://{}", stack.heimdall.grpc_addr))
        .await
        .unwrap();
    let alice = stack.token("alice", &["user"]);
    let twice = stack.token("alice", &["user", "user"]);
    let roleless = stack.token("alice", &[]);
    let odd_attr = stack.unnamed_attribute_token();
    let many = format!("/docs?id=7&owner=alice&actions={}", too_many_actions());
    let refused = [
        ("empty resource id", "/docs?id=&owner=alice", &alice),
        (
            "an action twice",
            "/docs?id=7&owner=alice&actions=view,view",
            &alice,
        ),
        ("51 actions", many.as_str(), &alice),
        (
            "no roles, no default role",
            "/docs?id=7&owner=alice",
            &roleless,
        ),
        (
            "anonymous, no default role",
            "/public?id=7&public=true",
            &alice,
        ),
        (
            "an attribute Cerbos refuses",
            "/docs?id=7&owner=alice",
            &odd_attr,
        ),
    ];
    for (name, path, token) in refused {
        let response = client
            .check(bearer_check_request(path, token, &[]))
            .await
            .unwrap()
            .into_inner();
        let code = response.status.as_ref().map(|s| s.code);
        assert_eq!(code, Some(PERMISSION_DENIED), "{name}: {response:?}");
        match &response.http_response {
            Some(HttpResponse::DeniedResponse(denied)) => {
                assert_eq!(
                    denied.status.as_ref().map(|s| s.code),
                    Some(403),
                    "{name}: {denied:?}"
                );
                assert!(denied.body.contains("invalid_policy_request"), "{name}");
            }
            other => panic!("{name}: not a denial: {other:?}"),
        }
    }
    // A repeated role is one role: the owner is allowed.
    let response = client
        .check(bearer_check_request("/docs?id=7&owner=alice", &twice, &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(
        matches!(response.http_response, Some(HttpResponse::OkResponse(_))),
        "{response:?}"
    );
}
