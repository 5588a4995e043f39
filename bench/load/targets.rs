//! What the harness measures: the targets, the no-op authorizer that is the baseline, the
//! requests each target is sent (Envoy-shaped `CheckRequest`s from the testkit's builder, or
//! `CheckResources` straight to Cerbos), and how an answer is sorted out.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse, DeniedHttpResponse};
use heimdall::cerbos::pb::cerbos::effect::v1::Effect;
use heimdall::cerbos::pb::cerbos::engine::v1::{Principal, Resource};
use heimdall::cerbos::pb::cerbos::request::v1::{CheckResourcesRequest, check_resources_request};
use heimdall::cerbos::pb::cerbos::response::v1::CheckResourcesResponse;
use heimdall::cerbos::pb::cerbos::svc::v1::cerbos_service_client::CerbosServiceClient;
use heimdall::test_helpers::CheckRequestBuilder;
use heimdall::test_helpers::check_request::with_path;
use heimdall::test_helpers::noop::serve_noop;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};

/// Bound on one `Check` call: a call that hangs counts as an error instead of stalling a worker
/// past the end of its phase.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on opening one HTTP/2 connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The request every worker sends, shaped like Envoy's for `GET /api/documents/42?x=1`.
const HOST: &str = "127.0.0.1:10000";
pub(crate) const PATH: &str = "/api/documents/42?x=1";

/// The `--cerbos` request: `GET /docs/alice/<id>` with `X-Department: eng`, by alice (role
/// `user`, attribute `department: eng`), allowed by the example policy's `view-own` rule.
pub(crate) const CERBOS_PATH_PREFIX: &str = "/docs/alice/";
pub(crate) const CERBOS_FIXED_ID: u64 = 42;

/// One target to measure: where it listens, what to send, and what a denial would mean.
pub(crate) struct Target {
    pub(crate) name: &'static str,
    pub(crate) addr: SocketAddr,
    pub(crate) load: Arc<Load>,
    /// The setup the first call checks, for the message when it is not allowed.
    pub(crate) setup: &'static str,
}

/// The no-op server, on a runtime of its own: like heimdall in its own process, it then gets
/// its own worker threads instead of sharing the load generator's.
pub(crate) struct NoopServer {
    pub(crate) addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl NoopServer {
    pub(crate) fn start() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("noop-authz")
            .enable_all()
            .build()
            .context("no-op server runtime")?;
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("binding the no-op server")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (shutdown, stopped) = oneshot::channel::<()>();
        runtime.spawn(async move {
            let served = async {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                serve_noop(listener, async {
                    let _ = stopped.await;
                })
                .await?;
                anyhow::Ok(())
            };
            if let Err(e) = served.await {
                eprintln!("load: no-op server failed: {e:#}");
            }
        });
        Ok(Self {
            addr,
            runtime: Some(runtime),
            shutdown: Some(shutdown),
        })
    }
}

impl Drop for NoopServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        // Dropping a runtime inside another one's context is not allowed; this one only has to
        // stop, not to finish anything.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The request id of every request.
pub(crate) const REQUEST_ID: &str = "heimdall-load-0001";

/// What Envoy's HTTP ext_authz filter sends for `GET http://127.0.0.1:10000<path>` with
/// `Authorization: Bearer <token>` and the `extra` headers (lower-case names), e.g. for
/// `/api/documents/42?x=1`.
pub(crate) fn check_request(token: &str, path: &str, extra: &[(&str, &str)]) -> CheckRequest {
    envoy_shaped(path).bearer(token).headers(extra).build()
}

/// The same request without a credential, e.g. for `/public/index.html`.
pub(crate) fn anonymous_request(path: &str) -> CheckRequest {
    envoy_shaped(path).build()
}

fn envoy_shaped(path: &str) -> CheckRequestBuilder {
    CheckRequestBuilder::get(path)
        .host(HOST)
        .scheme("http")
        .without_scheme_header()
        .id(REQUEST_ID)
        .header("accept", "application/json")
        .header("user-agent", "heimdall-load/1")
        .header("x-request-id", REQUEST_ID)
        .peers(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 54_321)),
            SocketAddr::from((Ipv4Addr::LOCALHOST, 10_000)),
        )
}

pub(crate) fn pb_string(text: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(text.to_owned())),
    }
}

/// The `CheckResources` heimdall's `cerbos` authorizer sends for the `--cerbos` request with
/// document id 42: principal alice, role `user`, `department: eng`; resource `document`
/// `{owner: alice, public: false, department: eng, status: published}`; action `view`.
pub(crate) fn cerbos_request() -> CheckResourcesRequest {
    let principal = Principal {
        id: "alice".to_owned(),
        roles: vec!["user".to_owned()],
        attr: HashMap::from([("department".to_owned(), pb_string("eng"))]),
        ..Principal::default()
    };
    let resource = Resource {
        kind: "document".to_owned(),
        id: CERBOS_FIXED_ID.to_string(),
        attr: HashMap::from([
            ("owner".to_owned(), pb_string("alice")),
            (
                "public".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::BoolValue(false)),
                },
            ),
            ("department".to_owned(), pb_string("eng")),
            ("status".to_owned(), pb_string("published")),
        ]),
        ..Resource::default()
    };
    CheckResourcesRequest {
        request_id: REQUEST_ID.to_owned(),
        principal: Some(principal),
        resources: vec![check_resources_request::ResourceEntry {
            actions: vec!["view".to_owned()],
            resource: Some(resource),
        }],
        ..CheckResourcesRequest::default()
    }
}

/// `request` with its (single) resource's id set to `id`.
pub(crate) fn with_resource_id(request: &CheckResourcesRequest, id: u64) -> CheckResourcesRequest {
    let mut request = request.clone();
    if let Some(resource) = request
        .resources
        .iter_mut()
        .next()
        .and_then(|entry| entry.resource.as_mut())
    {
        resource.id = id.to_string();
    }
    request
}

/// What a target's workers send. Every call clones a prepared request (and, for the varying
/// ones, sets one string in it): the same cost on every target, as Envoy's encoding would be.
pub(crate) enum Load {
    /// The same ext_authz `Check` every call.
    Fixed(CheckRequest),
    /// An ext_authz `Check` whose path is `prefix` followed by a per-call number, so that no
    /// two calls ask the same question.
    VaryingPath {
        base: CheckRequest,
        prefix: &'static str,
    },
    /// `CheckResources` straight to Cerbos, with a per-call resource id.
    Cerbos(CheckResourcesRequest),
}

/// A client of the right service for a `Load`, on one connection.
pub(crate) enum Client {
    Authz(AuthorizationClient<Channel>),
    Cerbos(CerbosServiceClient<Channel>),
}

impl Load {
    pub(crate) fn client(&self, channel: Channel) -> Client {
        match self {
            Load::Fixed(_) | Load::VaryingPath { .. } => {
                Client::Authz(AuthorizationClient::new(channel))
            }
            Load::Cerbos(_) => Client::Cerbos(CerbosServiceClient::new(channel)),
        }
    }

    /// One call; `seq` picks the path or resource id of the varying loads.
    pub(crate) async fn call(&self, client: &mut Client, seq: u64) -> Outcome {
        match (self, client) {
            (Load::Fixed(request), Client::Authz(client)) => classify(
                tokio::time::timeout(CALL_TIMEOUT, client.check(request.clone()))
                    .await
                    .ok(),
            ),
            (Load::VaryingPath { base, prefix }, Client::Authz(client)) => {
                let request = with_path(base, format!("{prefix}{seq}"));
                classify(
                    tokio::time::timeout(CALL_TIMEOUT, client.check(request))
                        .await
                        .ok(),
                )
            }
            (Load::Cerbos(base), Client::Cerbos(client)) => {
                let request = with_resource_id(base, seq);
                classify_cerbos(
                    tokio::time::timeout(CALL_TIMEOUT, client.check_resources(request))
                        .await
                        .ok(),
                )
            }
            _ => Outcome::Error("internal: the client does not match the load".into()),
        }
    }
}

/// How one `Check` ended.
pub(crate) enum Outcome {
    /// gRPC OK, status code 0 and an `ok_response`: Envoy would forward the request.
    Allowed,
    /// The authorizer answered, but not with an allow: Envoy would not forward the request.
    Denied(String),
    /// No usable answer: transport failure, gRPC error, timeout or a malformed response.
    Error(String),
}

pub(crate) fn describe_denied(kind: &str, denied: &DeniedHttpResponse) -> String {
    let http = denied.status.as_ref().map_or(0, |s| s.code);
    let body: String = denied.body.chars().take(200).collect();
    format!("{kind} HTTP {http}, body {body:?}")
}

/// The message of a call that answered, or the error outcome of one that timed out (`None`) or
/// failed at the gRPC level.
fn answered<T>(answer: Option<Result<tonic::Response<T>, tonic::Status>>) -> Result<T, Outcome> {
    match answer {
        None => Err(Outcome::Error(format!("no answer within {CALL_TIMEOUT:?}"))),
        Some(Err(status)) => Err(Outcome::Error(format!(
            "gRPC {:?}: {}",
            status.code(),
            status.message()
        ))),
        Some(Ok(response)) => Ok(response.into_inner()),
    }
}

/// Sorts an answer out; `None` is a call that timed out.
pub(crate) fn classify(
    answer: Option<Result<tonic::Response<CheckResponse>, tonic::Status>>,
) -> Outcome {
    let response = match answered(answer) {
        Ok(response) => response,
        Err(outcome) => return outcome,
    };
    let (code, message) = response
        .status
        .as_ref()
        .map_or((0, ""), |s| (s.code, s.message.as_str()));
    match &response.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => Outcome::Denied(format!(
            "status {code} {message:?}, {}",
            describe_denied("denied_response", denied)
        )),
        Some(HttpResponse::ErrorResponse(denied)) => Outcome::Error(format!(
            "status {code} {message:?}, {}",
            describe_denied("error_response", denied)
        )),
        // Envoy denies on any non-OK status, whatever else the response carries.
        _ if code != 0 => Outcome::Denied(format!("status {code} {message:?}")),
        Some(HttpResponse::OkResponse(_)) => Outcome::Allowed,
        None => Outcome::Error("status OK without an ok_response".into()),
    }
}

/// Sorts out a `CheckResources` answer for one resource and the action `view`.
pub(crate) fn classify_cerbos(
    answer: Option<Result<tonic::Response<CheckResourcesResponse>, tonic::Status>>,
) -> Outcome {
    let response = match answered(answer) {
        Ok(response) => response,
        Err(outcome) => return outcome,
    };
    let Some(result) = response.results.first() else {
        return Outcome::Error("CheckResources answered without a result".into());
    };
    let effect = result.actions.get("view").copied();
    if effect == Some(Effect::Allow as i32) {
        return Outcome::Allowed;
    }
    let id = result.resource.as_ref().map_or("?", |r| r.id.as_str());
    let effect = effect.map_or_else(
        || "none".to_owned(),
        |e| Effect::try_from(e).map_or_else(|_| e.to_string(), |e| format!("{e:?}")),
    );
    Outcome::Denied(format!("effect {effect} for view on document {id}"))
}

/// One call on a fresh connection before any load: a target that denies or fails the request
/// stops the run here, loudly, instead of producing figures for the wrong code path.
pub(crate) async fn preflight(target: &Target) -> anyhow::Result<()> {
    let Target {
        name, addr, setup, ..
    } = target;
    let channel = connect(*addr)
        .await
        .with_context(|| format!("{name}: connecting to {addr}"))?;
    let mut client = target.load.client(channel);
    match target.load.call(&mut client, CERBOS_FIXED_ID).await {
        Outcome::Allowed => Ok(()),
        Outcome::Denied(why) => bail!(
            "{name} DENIED the benchmark request ({why}); the token or the configuration is wrong \
             ({setup}). The run stops here."
        ),
        Outcome::Error(why) => bail!("{name} failed the benchmark request: {why}"),
    }
}

pub(crate) async fn connect(addr: SocketAddr) -> anyhow::Result<Channel> {
    // One `Channel` from `connect` is one HTTP/2 connection.
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await?)
}
