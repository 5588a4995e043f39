//! Envoy-shaped `CheckRequest`s, as Envoy's HTTP ext_authz filter sends them, for tests, the
//! corpus and the benches.
//!
//! The pseudo-headers (`:authority`, `:method`, `:path`, and `:scheme` unless left out) come
//! first, then the headers in the order they were added. In the map form (`headers`) a repeated
//! header is joined with a comma, as Envoy does; [`CheckRequestBuilder::raw_headers`] sends the
//! `header_map` form (`raw_value` bytes) instead.

use std::collections::HashMap;
use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::{
    Address, HeaderMap, HeaderValue, SocketAddress, address, socket_address,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

/// Builds one `CheckRequest`; the defaults are `GET https://api.example.com<path>` over
/// HTTP/1.1 with request id `6f1c2a9e`.
#[derive(Debug, Clone)]
pub struct CheckRequestBuilder {
    method: String,
    scheme: String,
    scheme_header: bool,
    host: String,
    path: String,
    protocol: String,
    id: String,
    headers: Vec<(String, String)>,
    raw_headers: bool,
    context_extensions: HashMap<String, String>,
    source: Option<SocketAddr>,
    destination: Option<SocketAddr>,
}

impl CheckRequestBuilder {
    /// `method https://api.example.com<path>`.
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.to_owned(),
            scheme: "https".to_owned(),
            scheme_header: true,
            host: "api.example.com".to_owned(),
            path: path.to_owned(),
            protocol: "HTTP/1.1".to_owned(),
            id: "6f1c2a9e".to_owned(),
            headers: Vec::new(),
            raw_headers: false,
            context_extensions: HashMap::new(),
            source: None,
            destination: None,
        }
    }

    /// `GET https://api.example.com<path>`.
    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    /// The host (`:authority` and `host`).
    #[must_use]
    pub fn host(mut self, host: &str) -> Self {
        self.host = host.to_owned();
        self
    }

    /// The scheme (`:scheme` and `scheme`).
    #[must_use]
    pub fn scheme(mut self, scheme: &str) -> Self {
        self.scheme = scheme.to_owned();
        self
    }

    /// Leaves the `:scheme` pseudo-header out of the headers (the `scheme` field stays).
    #[must_use]
    pub fn without_scheme_header(mut self) -> Self {
        self.scheme_header = false;
        self
    }

    /// The request id (the `id` field; add an `x-request-id` header separately).
    #[must_use]
    pub fn id(mut self, id: &str) -> Self {
        self.id = id.to_owned();
        self
    }

    /// Adds one header; `name` should be lower-case, as Envoy sends them.
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Adds headers in order.
    #[must_use]
    pub fn headers(self, headers: &[(&str, &str)]) -> Self {
        headers
            .iter()
            .fold(self, |builder, (name, value)| builder.header(name, value))
    }

    /// Adds `authorization: Bearer <token>`.
    #[must_use]
    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// Sends the headers as `header_map` with `raw_value` bytes instead of the `headers` map.
    #[must_use]
    pub fn raw_headers(mut self, raw: bool) -> Self {
        self.raw_headers = raw;
        self
    }

    /// The route's `context_extensions` (e.g. `heimdall_rule`).
    #[must_use]
    pub fn context_extensions(mut self, extensions: HashMap<String, String>) -> Self {
        self.context_extensions = extensions;
        self
    }

    /// The downstream peer (`source`) and Envoy's listener (`destination`), as TCP addresses.
    #[must_use]
    pub fn peers(mut self, source: SocketAddr, destination: SocketAddr) -> Self {
        self.source = Some(source);
        self.destination = Some(destination);
        self
    }

    /// The request.
    pub fn build(self) -> CheckRequest {
        let mut headers = vec![
            (":authority".to_owned(), self.host.clone()),
            (":method".to_owned(), self.method.clone()),
            (":path".to_owned(), self.path.clone()),
        ];
        if self.scheme_header {
            headers.push((":scheme".to_owned(), self.scheme.clone()));
        }
        headers.extend(self.headers);
        let mut http = HttpRequest {
            id: self.id,
            method: self.method,
            scheme: self.scheme,
            host: self.host,
            path: self.path,
            protocol: self.protocol,
            ..HttpRequest::default()
        };
        if self.raw_headers {
            http.header_map = Some(HeaderMap {
                headers: headers
                    .into_iter()
                    .map(|(key, value)| HeaderValue {
                        key,
                        value: String::new(),
                        raw_value: value.into_bytes(),
                    })
                    .collect(),
            });
        } else {
            for (name, value) in headers {
                http.headers
                    .entry(name)
                    .and_modify(|joined: &mut String| {
                        joined.push(',');
                        joined.push_str(&value);
                    })
                    .or_insert(value);
            }
        }
        CheckRequest {
            attributes: Some(AttributeContext {
                source: self.source.map(peer),
                destination: self.destination.map(peer),
                request: Some(Request {
                    http: Some(http),
                    ..Request::default()
                }),
                context_extensions: self.context_extensions,
                ..AttributeContext::default()
            }),
        }
    }
}

/// `request` with its path (`:path` and `path`) set to `path`.
pub fn with_path(request: &CheckRequest, path: String) -> CheckRequest {
    let mut request = request.clone();
    if let Some(http) = request
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        http.headers.insert(":path".to_owned(), path.clone());
        http.path = path;
    }
    request
}

/// A TCP peer at `addr`.
fn peer(addr: SocketAddr) -> Peer {
    Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                protocol: socket_address::Protocol::Tcp.into(),
                address: addr.ip().to_string(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                    addr.port(),
                ))),
                ..SocketAddress::default()
            })),
        }),
        ..Peer::default()
    }
}
