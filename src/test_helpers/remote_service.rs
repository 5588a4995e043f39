//! A remote HTTP service for the mechanisms that call one (an identity store such as Kratos's
//! admin API, a policy service): a real axum server on 127.0.0.1 that records every request as
//! received and answers what the test's function says. Plus [`RemoteStack`]: that service,
//! `heimdall serve` (the real binary) configured to call it, an echo upstream and Envoy.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::echo::EchoUpstream;
use super::envoy::{Envoy, EnvoyOptions};
use super::heimdall::HeimdallProcess;
use super::{TEST_SYMMETRIC_KEY, claims, fail, mint, test_keys};
use crate::tokens::Purpose;

/// One request as the service received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path and query exactly as sent (still percent-encoded).
    pub target: String,
    /// Lower-case names; a repeated header keeps its first value.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// What the service answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: Option<&'static str>,
    pub body: String,
    /// Waited before answering.
    pub delay: Duration,
}

impl Reply {
    /// A JSON answer.
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        Self {
            status,
            content_type: Some("application/json"),
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    /// An answer with this content type and body, as is.
    pub fn raw(status: u16, content_type: &'static str, body: &str) -> Self {
        Self {
            status,
            content_type: Some(content_type),
            body: body.to_owned(),
            delay: Duration::ZERO,
        }
    }

    /// The same answer, `delay` later.
    #[must_use]
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Answer = dyn Fn(&Received) -> Reply + Send + Sync;

/// The running service; stops when dropped.
pub struct RemoteService {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl RemoteService {
    /// Starts the service on a free loopback port; `answer` decides each reply.
    pub async fn start(answer: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap_or_else(|e| fail(&format!("bind the remote service: {e}")));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| fail(&format!("the remote service's address: {e}")));
        let received = Arc::new(Mutex::new(Vec::new()));
        let answer: Arc<Answer> = Arc::new(answer);
        let log = Arc::clone(&received);
        let app = Router::new().fallback(move |request: Request| {
            let log = Arc::clone(&log);
            let answer = Arc::clone(&answer);
            async move { serve(request, &log, &*answer).await }
        });
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                eprintln!("remote service stopped: {err}");
            }
        });
        Self {
            addr,
            task,
            received,
        }
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in order.
    pub async fn received(&self) -> Vec<Received> {
        self.received.lock().await.clone()
    }

    /// How many requests whose target starts with `prefix` were received.
    pub async fn calls_to(&self, prefix: &str) -> usize {
        self.received
            .lock()
            .await
            .iter()
            .filter(|r| r.target.starts_with(prefix))
            .count()
    }
}

impl Drop for RemoteService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(request: Request, log: &Mutex<Vec<Received>>, answer: &Answer) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    let mut headers = HashMap::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.as_str().to_owned())
            .or_insert_with(|| String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let received = Received {
        method: parts.method.to_string(),
        target: parts
            .uri
            .path_and_query()
            .map_or_else(String::new, |p| p.as_str().to_owned()),
        headers,
        body,
    };
    log.lock().await.push(received.clone());
    let reply = answer(&received);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response = Response::builder().status(reply.status);
    if let Some(content_type) = reply.content_type {
        response = response.header("content-type", content_type);
    }
    response
        .body(Body::from(reply.body))
        .unwrap_or_else(|e| fail(&format!("build the remote service's reply: {e}")))
}

/// A remote service, `heimdall serve` configured to call it, an echo upstream and Envoy in
/// front. heimdall gets the test key (`PASETO_SYMMETRIC_KEY`) and the environment given.
pub struct RemoteStack {
    pub service: RemoteService,
    pub heimdall: HeimdallProcess,
    pub envoy: Envoy,
    pub echo: EchoUpstream,
    client: reqwest::Client,
}

impl RemoteStack {
    /// Starts everything; `config` is heimdall's YAML and may use `${NAME}` of `env`. `None`
    /// when Envoy is not installed (outside CI).
    pub async fn start(service: RemoteService, config: &str, env: &[(&str, &str)]) -> Option<Self> {
        let key = String::from_utf8_lossy(TEST_SYMMETRIC_KEY).into_owned();
        let mut all = vec![
            ("PASETO_SYMMETRIC_KEY", key.as_str()),
            ("RUST_LOG", "heimdall=info"),
        ];
        all.extend_from_slice(env);
        let heimdall = HeimdallProcess::start(config, &all).await;
        if !heimdall.wait_ready(Duration::from_secs(20)).await {
            fail(&format!(
                "heimdall did not become ready:\n{}",
                heimdall.log_tail(40)
            ));
        }
        let echo = EchoUpstream::start().await;
        let envoy = Envoy::start(EnvoyOptions::new(heimdall.grpc_addr(), echo.addr)).await?;
        Some(Self {
            service,
            heimdall,
            envoy,
            echo,
            client: super::http_client(),
        })
    }

    /// `GET path` through Envoy with a bearer token for `sub`: the status, and the upstream's
    /// echo (the headers it received) when allowed.
    pub async fn get(&self, path: &str, sub: &str) -> (u16, serde_json::Value) {
        let token = mint(&test_keys(), Purpose::Local, &claims(sub, &["user"]));
        let response = self
            .client
            .get(self.envoy.url(path))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap_or_else(|e| fail(&format!("GET {path} through Envoy: {e}")));
        let status = response.status().as_u16();
        let body = if status == 200 {
            response.json().await.unwrap_or_default()
        } else {
            serde_json::Value::Null
        };
        (status, body)
    }

    /// The value of one metric sample, 0 when absent.
    pub async fn metric(&self, name_with_labels: &str) -> f64 {
        self.heimdall
            .metric_value(name_with_labels)
            .await
            .unwrap_or(0.0)
    }
}
