//! The no-op ext_authz server, the baseline of every served-path benchmark: tonic's own server
//! and the `envoy-types` service answering OK with one header, so that what it costs is gRPC,
//! HTTP/2 and protobuf alone.

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse, OkHttpResponse};
use envoy_types::pb::google::rpc;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

/// Answers every `Check` with OK and an `ok_response` setting `x-user-id: bench-user`: the
/// least an authorizer that tells the upstream anything can do.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopAuthz;

#[tonic::async_trait]
impl Authorization for NoopAuthz {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(CheckResponse {
            status: Some(rpc::Status::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: vec![HeaderValueOption {
                    header: Some(HeaderValue {
                        key: "x-user-id".to_owned(),
                        value: "bench-user".to_owned(),
                        raw_value: Vec::new(),
                    }),
                    ..HeaderValueOption::default()
                }],
                ..OkHttpResponse::default()
            })),
            dynamic_metadata: None,
        }))
    }
}

/// Serves the no-op authorizer on `listener` (with TCP_NODELAY, as heimdall's listener does)
/// until `shutdown` resolves.
pub async fn serve_noop(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .add_service(AuthorizationServer::new(NoopAuthz))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
