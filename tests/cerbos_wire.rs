//! Wire compatibility of heimdall's Cerbos API subset (`proto/`) with the real Cerbos PDP.
//!
//! Each test starts `cerbos server` with the example policies (`infra/cerbos/policies`) and
//! calls it with the generated client, `heimdall::cerbos::pb`: `CheckResources` effects per
//! action, `PlanResources` filter kinds and condition trees, and request ids.
//!
//! The policies: `view` for the owner or a public document, `edit` for an `editor` of the
//! document's department or the owner of a draft, `delete` for `admin` only, and `view` of every
//! document for the principal `auditor`.

#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed call or lookup is a failed test"
)]

use std::collections::HashMap;

use heimdall::cerbos::pb::cerbos::effect::v1::Effect;
use heimdall::cerbos::pb::cerbos::engine::v1::plan_resources_filter::Kind;
use heimdall::cerbos::pb::cerbos::engine::v1::plan_resources_filter::expression::{
    Operand, operand::Node,
};
use heimdall::cerbos::pb::cerbos::engine::v1::{
    PlanResourcesFilter, Principal, Resource, plan_resources_input,
};
use heimdall::cerbos::pb::cerbos::request::v1::check_resources_request::ResourceEntry;
use heimdall::cerbos::pb::cerbos::request::v1::{CheckResourcesRequest, PlanResourcesRequest};
use heimdall::cerbos::pb::cerbos::response::v1::{CheckResourcesResponse, PlanResourcesResponse};
use heimdall::cerbos::pb::cerbos::svc::v1::cerbos_service_client::CerbosServiceClient;
use heimdall::test_helpers::cerbos::Cerbos;
use prost_types::value::Kind as ValueKind;
use prost_types::{ListValue, Value};
use tonic::transport::Channel;

use Effect::{Allow as A, Deny as D};

const ACTIONS: [&str; 3] = ["view", "edit", "delete"];

fn string(s: &str) -> Value {
    Value {
        kind: Some(ValueKind::StringValue(s.to_owned())),
    }
}

fn boolean(b: bool) -> Value {
    Value {
        kind: Some(ValueKind::BoolValue(b)),
    }
}

fn principal(id: &str, roles: &[&str], department: Option<&str>) -> Principal {
    Principal {
        id: id.to_owned(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        attr: department
            .map(|d| HashMap::from([("department".to_owned(), string(d))]))
            .unwrap_or_default(),
        ..Principal::default()
    }
}

/// A `document` with the four attributes the example policies read.
fn document(id: &str, owner: &str, status: &str, public: bool, department: &str) -> Resource {
    Resource {
        kind: "document".to_owned(),
        id: id.to_owned(),
        attr: HashMap::from([
            ("owner".to_owned(), string(owner)),
            ("status".to_owned(), string(status)),
            ("public".to_owned(), boolean(public)),
            ("department".to_owned(), string(department)),
        ]),
        ..Resource::default()
    }
}

/// The example documents: alice's draft and published (both `sales`), bob's public one.
fn documents() -> Vec<Resource> {
    vec![
        document("doc-draft", "alice", "draft", false, "sales"),
        document("doc-published", "alice", "published", false, "sales"),
        document("doc-public", "bob", "published", true, "marketing"),
    ]
}

async fn client(cerbos: &Cerbos) -> CerbosServiceClient<Channel> {
    CerbosServiceClient::connect(cerbos.grpc_url())
        .await
        .expect("connect to Cerbos over gRPC")
}

async fn check(
    client: &mut CerbosServiceClient<Channel>,
    request_id: &str,
    principal: Principal,
) -> CheckResourcesResponse {
    let request = CheckResourcesRequest {
        request_id: request_id.to_owned(),
        include_meta: false,
        principal: Some(principal),
        resources: documents()
            .into_iter()
            .map(|resource| ResourceEntry {
                actions: ACTIONS.iter().map(|a| (*a).to_owned()).collect(),
                resource: Some(resource),
            })
            .collect(),
    };
    client
        .check_resources(request)
        .await
        .expect("CheckResources")
        .into_inner()
}

/// The effect Cerbos decided for `action` on the resource `id`.
fn effect(response: &CheckResourcesResponse, id: &str, action: &str) -> Effect {
    let result = response
        .results
        .iter()
        .find(|r| r.resource.as_ref().is_some_and(|res| res.id == id))
        .unwrap_or_else(|| panic!("no result for {id} in {response:?}"));
    let value = result
        .actions
        .get(action)
        .unwrap_or_else(|| panic!("no effect for {action} on {id} in {response:?}"));
    Effect::try_from(*value).expect("a known effect")
}

/// Asserts `[view, edit, delete]` effects on each of [`documents`], in that order.
fn assert_effects(response: &CheckResourcesResponse, expected: [(&str, [Effect; 3]); 3]) {
    for (id, effects) in expected {
        for (action, want) in ACTIONS.iter().zip(effects) {
            assert_eq!(
                effect(response, id, action),
                want,
                "{action} on {id}: {response:?}"
            );
        }
    }
}

#[tokio::test]
async fn check_resources_owner_and_other_user() {
    let Some(cerbos) = Cerbos::start().await else {
        return;
    };
    let mut client = client(&cerbos).await;

    let owner = check(
        &mut client,
        "req-owner",
        principal("alice", &["user"], Some("sales")),
    )
    .await;
    assert_eq!(owner.request_id, "req-owner");
    assert_eq!(owner.results.len(), 3);
    for result in &owner.results {
        let resource = result.resource.as_ref().expect("result names its resource");
        assert_eq!(resource.kind, "document");
        assert!(
            result.validation_errors.is_empty(),
            "{:?}",
            result.validation_errors
        );
    }
    assert!(!owner.cerbos_call_id.is_empty(), "{owner:?}");
    assert_effects(
        &owner,
        [
            ("doc-draft", [A, A, D]),
            ("doc-published", [A, D, D]),
            ("doc-public", [A, D, D]),
        ],
    );

    let other = check(
        &mut client,
        "req-other",
        principal("bob", &["user"], Some("sales")),
    )
    .await;
    assert_eq!(other.request_id, "req-other");
    assert_effects(
        &other,
        [
            ("doc-draft", [D, D, D]),
            ("doc-published", [D, D, D]),
            // bob owns it, but it is no longer a draft.
            ("doc-public", [A, D, D]),
        ],
    );
}

#[tokio::test]
async fn check_resources_editor_admin_and_auditor() {
    let Some(cerbos) = Cerbos::start().await else {
        return;
    };
    let mut client = client(&cerbos).await;

    // An editor of `sales` edits the sales documents, not marketing's; views only what is public.
    let editor = check(
        &mut client,
        "req-editor",
        principal("erin", &["user", "editor"], Some("sales")),
    )
    .await;
    assert_effects(
        &editor,
        [
            ("doc-draft", [D, A, D]),
            ("doc-published", [D, A, D]),
            ("doc-public", [A, D, D]),
        ],
    );

    // An editor without a department attribute edits nothing.
    let no_department = check(
        &mut client,
        "req-editor-no-dept",
        principal("erin", &["editor"], None),
    )
    .await;
    assert_effects(
        &no_department,
        [
            ("doc-draft", [D, D, D]),
            ("doc-published", [D, D, D]),
            ("doc-public", [A, D, D]),
        ],
    );

    let admin = check(&mut client, "req-admin", principal("ada", &["admin"], None)).await;
    assert_eq!(admin.request_id, "req-admin");
    assert_effects(
        &admin,
        [
            ("doc-draft", [D, D, A]),
            ("doc-published", [D, D, A]),
            ("doc-public", [A, D, A]),
        ],
    );

    let auditor = check(
        &mut client,
        "req-auditor",
        principal("auditor", &["user"], None),
    )
    .await;
    assert_effects(
        &auditor,
        [
            ("doc-draft", [A, D, D]),
            ("doc-published", [A, D, D]),
            ("doc-public", [A, D, D]),
        ],
    );
}

#[tokio::test]
async fn check_resources_unknown_action_is_denied() {
    let Some(cerbos) = Cerbos::start().await else {
        return;
    };
    let mut client = client(&cerbos).await;
    let response = client
        .check_resources(CheckResourcesRequest {
            request_id: "req-unknown".to_owned(),
            principal: Some(principal("alice", &["user"], None)),
            resources: vec![ResourceEntry {
                actions: vec!["archive".to_owned()],
                resource: Some(document("doc-draft", "alice", "draft", false, "sales")),
            }],
            ..CheckResourcesRequest::default()
        })
        .await
        .expect("CheckResources")
        .into_inner();
    assert_eq!(effect(&response, "doc-draft", "archive"), Effect::Deny);
}

async fn plan(
    client: &mut CerbosServiceClient<Channel>,
    request_id: &str,
    principal: Principal,
    action: &str,
) -> PlanResourcesResponse {
    let request = PlanResourcesRequest {
        request_id: request_id.to_owned(),
        principal: Some(principal),
        resource: Some(plan_resources_input::Resource {
            kind: "document".to_owned(),
            ..plan_resources_input::Resource::default()
        }),
        include_meta: true,
        actions: vec![action.to_owned()],
    };
    client
        .plan_resources(request)
        .await
        .expect("PlanResources")
        .into_inner()
}

/// Every variable named anywhere in a condition tree.
fn variables(operand: &Operand, out: &mut Vec<String>) {
    match &operand.node {
        Some(Node::Variable(name)) => out.push(name.clone()),
        Some(Node::Expression(expression)) => {
            for operand in &expression.operands {
                variables(operand, out);
            }
        }
        Some(Node::Value(_)) | None => {}
    }
}

fn filter(response: &PlanResourcesResponse) -> &PlanResourcesFilter {
    response.filter.as_ref().expect("a filter")
}

#[tokio::test]
async fn plan_resources_view_by_user_is_conditional_on_owner() {
    let Some(cerbos) = Cerbos::start().await else {
        return;
    };
    let mut client = client(&cerbos).await;
    let response = plan(
        &mut client,
        "req-plan-view",
        principal("alice", &["user"], None),
        "view",
    )
    .await;
    assert_eq!(response.request_id, "req-plan-view");
    assert_eq!(response.resource_kind, "document");
    let filter = filter(&response);
    assert_eq!(filter.kind(), Kind::Conditional, "{response:?}");
    let condition = filter
        .condition
        .as_ref()
        .expect("a conditional filter has a condition");
    let mut names = Vec::new();
    variables(condition, &mut names);
    assert!(
        names.iter().any(|n| n == "request.resource.attr.owner"),
        "{names:?} in {condition:?}"
    );
    assert!(
        names.iter().any(|n| n == "request.resource.attr.public"),
        "{names:?} in {condition:?}"
    );
    let debug = &response
        .meta
        .as_ref()
        .expect("include_meta gives meta")
        .filter_debug;
    assert!(debug.contains("request.resource.attr.owner"), "{debug}");
    assert!(response.validation_errors.is_empty());
}

#[tokio::test]
async fn plan_resources_delete_is_always_allowed_or_denied() {
    let Some(cerbos) = Cerbos::start().await else {
        return;
    };
    let mut client = client(&cerbos).await;

    let admin = plan(
        &mut client,
        "req-plan-admin",
        principal("ada", &["admin"], None),
        "delete",
    )
    .await;
    assert_eq!(admin.request_id, "req-plan-admin");
    assert_eq!(filter(&admin).kind(), Kind::AlwaysAllowed, "{admin:?}");
    assert!(filter(&admin).condition.is_none());

    let user = plan(
        &mut client,
        "req-plan-user",
        principal("alice", &["user"], None),
        "delete",
    )
    .await;
    assert_eq!(user.request_id, "req-plan-user");
    assert_eq!(filter(&user).kind(), Kind::AlwaysDenied, "{user:?}");

    let auditor = plan(
        &mut client,
        "req-plan-auditor",
        principal("auditor", &["user"], None),
        "view",
    )
    .await;
    assert_eq!(filter(&auditor).kind(), Kind::AlwaysAllowed, "{auditor:?}");
}

/// Resource attributes known up front decide the plan: an editor of `sales` may edit every
/// `sales` document. The principal also carries a list attribute, encoded as a `ListValue`.
#[tokio::test]
async fn plan_resources_with_known_attributes_is_decided() {
    let Some(cerbos) = Cerbos::start().await else {
        return;
    };
    let mut client = client(&cerbos).await;
    let mut principal = principal("erin", &["editor"], Some("sales"));
    principal.attr.insert(
        "teams".to_owned(),
        Value {
            kind: Some(ValueKind::ListValue(ListValue {
                values: vec![string("a"), string("b")],
            })),
        },
    );
    let response = client
        .plan_resources(PlanResourcesRequest {
            request_id: "req-plan-edit".to_owned(),
            principal: Some(principal),
            resource: Some(plan_resources_input::Resource {
                kind: "document".to_owned(),
                attr: HashMap::from([("department".to_owned(), string("sales"))]),
                ..plan_resources_input::Resource::default()
            }),
            include_meta: true,
            actions: vec!["edit".to_owned()],
        })
        .await
        .expect("PlanResources")
        .into_inner();
    assert_eq!(response.request_id, "req-plan-edit");
    assert_eq!(
        filter(&response).kind(),
        Kind::AlwaysAllowed,
        "{response:?}"
    );
}

/// The test harness itself: Cerbos stopped refuses connections, started again it answers on the
/// same port, and paused (SIGSTOP) it lets a call run into its deadline until resumed.
#[tokio::test]
async fn harness_stop_start_again_pause_resume() {
    let Some(mut cerbos) = Cerbos::start().await else {
        return;
    };
    let addr = cerbos.grpc_addr();
    assert!(addr.ip().is_loopback());
    let first_pid = cerbos.pid().expect("running");

    cerbos.stop().await;
    assert!(cerbos.pid().is_none());
    assert!(
        CerbosServiceClient::connect(cerbos.grpc_url())
            .await
            .is_err(),
        "a stopped Cerbos refuses connections"
    );

    cerbos.start_again().await;
    assert_eq!(cerbos.grpc_addr(), addr);
    assert_ne!(cerbos.pid(), Some(first_pid));
    let mut client = client(&cerbos).await;
    let response = check(&mut client, "req-again", principal("ada", &["admin"], None)).await;
    assert_eq!(effect(&response, "doc-draft", "delete"), Effect::Allow);

    cerbos.pause();
    let mut request = tonic::Request::new(CheckResourcesRequest {
        request_id: "req-paused".to_owned(),
        principal: Some(principal("ada", &["admin"], None)),
        resources: vec![ResourceEntry {
            actions: vec!["delete".to_owned()],
            resource: Some(document("doc-draft", "alice", "draft", false, "sales")),
        }],
        ..CheckResourcesRequest::default()
    });
    request.set_timeout(std::time::Duration::from_millis(200));
    let started = std::time::Instant::now();
    let status = client
        .check_resources(request)
        .await
        .expect_err("a paused Cerbos does not answer");
    assert!(
        matches!(
            status.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{status:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(2));

    cerbos.resume();
    let response = check(
        &mut client,
        "req-resumed",
        principal("ada", &["admin"], None),
    )
    .await;
    assert_eq!(response.request_id, "req-resumed");
}

/// What Cerbos refuses outright, before any policy runs: each of these is `InvalidArgument`
/// (heimdall checks the common ones itself and treats the code as a denial, never an outage).
#[tokio::test]
async fn invalid_requests_are_refused_with_invalid_argument() {
    let Some(cerbos) = Cerbos::start().await else {
        return;
    };
    let mut client = client(&cerbos).await;
    let user = principal("alice", &["user"], None);
    let entry = |id: &str, actions: &[&str]| ResourceEntry {
        actions: actions.iter().map(|a| (*a).to_owned()).collect(),
        resource: Some(document(id, "alice", "draft", false, "sales")),
    };
    let many: Vec<ResourceEntry> = (0..51)
        .map(|i| entry(&format!("d{i}"), &["view"]))
        .collect();
    let cases: Vec<(&str, Principal, Vec<ResourceEntry>)> = vec![
        (
            "empty resource id",
            user.clone(),
            vec![entry("", &["view"])],
        ),
        (
            "duplicate actions",
            user.clone(),
            vec![entry("d", &["view", "view"])],
        ),
        ("no actions", user.clone(), vec![entry("d", &[])]),
        ("empty action", user.clone(), vec![entry("d", &[""])]),
        (
            "no roles",
            principal("alice", &[], None),
            vec![entry("d", &["view"])],
        ),
        (
            "duplicate roles",
            principal("alice", &["user", "user"], None),
            vec![entry("d", &["view"])],
        ),
        (
            "empty principal id",
            principal("", &["user"], None),
            vec![entry("d", &["view"])],
        ),
        ("51 resources", user.clone(), many),
    ];
    for (name, principal, resources) in cases {
        let status = client
            .check_resources(CheckResourcesRequest {
                request_id: "req-invalid".to_owned(),
                include_meta: false,
                principal: Some(principal),
                resources,
            })
            .await
            .expect_err(name);
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{name}: {status:?}"
        );
    }
    let plan_cases: Vec<(&str, Principal, Vec<&str>)> = vec![
        (
            "plan without roles",
            principal("alice", &[], None),
            vec!["view"],
        ),
        (
            "plan with duplicate actions",
            user.clone(),
            vec!["view", "view"],
        ),
        ("plan without actions", user.clone(), vec![]),
    ];
    for (name, principal, actions) in plan_cases {
        let status = client
            .plan_resources(PlanResourcesRequest {
                request_id: "req-invalid-plan".to_owned(),
                principal: Some(principal),
                resource: Some(plan_resources_input::Resource {
                    kind: "document".to_owned(),
                    ..plan_resources_input::Resource::default()
                }),
                include_meta: false,
                actions: actions.iter().map(|a| (*a).to_owned()).collect(),
            })
            .await
            .expect_err(name);
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{name}: {status:?}"
        );
    }
}
