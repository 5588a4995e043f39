//! An upstream that answers every request with what it received, as JSON:
//! `{"method": "GET", "path": "/x?y=1", "headers": {"x-user-id": "..."}}`.
//!
//! The same shape as `infra/echo/echo.py` of the local stack. Header names are lower-case; a
//! header received more than once is joined with ", ".

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::Request;
use axum::response::Json;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running echo upstream on 127.0.0.1; stops when dropped.
pub struct EchoUpstream {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
    received: Arc<AtomicUsize>,
}

impl EchoUpstream {
    /// Starts the echo upstream on a free loopback port.
    pub async fn start() -> EchoUpstream {
        #[allow(
            clippy::expect_used,
            reason = "a test cannot go on without its upstream"
        )]
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the echo upstream on 127.0.0.1:0");
        #[allow(
            clippy::expect_used,
            reason = "a test cannot go on without its upstream"
        )]
        let addr = listener
            .local_addr()
            .expect("local address of the echo upstream");
        let received = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&received);
        let app = Router::new().fallback(move |request: Request| {
            counter.fetch_add(1, Ordering::SeqCst);
            echo(request)
        });
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                eprintln!("echo upstream stopped: {err}");
            }
        });
        EchoUpstream {
            addr,
            task,
            received,
        }
    }

    /// How many requests reached the upstream so far.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(request: Request) -> Json<Value> {
    let mut headers = Map::new();
    for (name, value) in request.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        let joined = match headers.remove(name.as_str()) {
            Some(Value::String(previous)) => format!("{previous}, {value}"),
            _ => value,
        };
        headers.insert(name.as_str().to_owned(), Value::String(joined));
    }
    let path = request.uri().path_and_query().map_or_else(
        || request.uri().path().to_owned(),
        |pq| pq.as_str().to_owned(),
    );
    Json(json!({
        "method": request.method().as_str(),
        "path": path,
        "headers": headers,
    }))
}
