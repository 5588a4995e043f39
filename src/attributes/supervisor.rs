//! The connection and its supervisor: connect (authentication, TLS), set up the stream, bucket
//! and consumer, run the consumer and the watch, and retry with back-off when anything breaks.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;

use super::{AttributeMetrics, NatsConfig, PrincipalStore, consumer};
use crate::readiness::BlockReady;

/// Connects with the configured options. The client connects in the background and reconnects
/// forever; connection changes go to the log and the `heimdall_nats_connected` gauge.
async fn connect(
    config: &NatsConfig,
    metrics: &AttributeMetrics,
) -> anyhow::Result<async_nats::Client> {
    let connected = metrics.connected.clone();
    let mut options = async_nats::ConnectOptions::new()
        .name(&config.name)
        .connection_timeout(config.connect_timeout)
        .request_timeout(Some(config.request_timeout))
        .retry_on_initial_connect()
        .max_reconnects(None)
        // Quick first retries, then every 2 s: an outage is noticed in metrics, not hammered.
        .reconnect_delay_callback(|attempt| {
            Duration::from_millis(100u64.saturating_mul(1 << attempt.min(5)))
                .min(Duration::from_secs(2))
        })
        .event_callback(move |event| {
            let connected = connected.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        connected.set(1);
                        tracing::info!("connected to NATS");
                    }
                    async_nats::Event::Disconnected => {
                        connected.set(0);
                        tracing::warn!(
                            "disconnected from NATS; deciding from the cache while reconnecting"
                        );
                    }
                    other => tracing::info!(event = %other, "NATS connection event"),
                }
            }
        });
    // Credentials in the URL go to the client as options, never inside the URL it logs.
    let (servers, url_credentials) = crate::redact::split_credentials(&config.url)
        .map_err(|message| anyhow::anyhow!("nats.url: {message}"))?;
    if let Some(credentials) = url_credentials {
        if config.auth.is_some() {
            anyhow::bail!(
                "nats.url carries credentials and nats.auth is set: give them in one place"
            );
        }
        options = match credentials.password {
            Some(password) => options.user_and_password(credentials.user, password),
            None => options.token(credentials.user),
        };
    }
    if let Some(auth) = &config.auth {
        if let Some(path) = &auth.credentials_file {
            options = options
                .credentials_file(path)
                .await
                .with_context(|| format!("NATS credentials file `{}`", path.display()))?;
        }
        if let Some(seed) = &auth.nkey_seed {
            options = options.nkey(seed.read().context("NATS nkey seed")?);
        }
        if let Some(token) = &auth.token {
            options = options.token(token.read().context("NATS token")?);
        }
        match (&auth.user, &auth.password) {
            (Some(user), Some(password)) => {
                options = options
                    .user_and_password(user.clone(), password.read().context("NATS password")?);
            }
            (None, None) => {}
            _ => anyhow::bail!("nats.auth: `user` and `password` go together"),
        }
    }
    if let Some(tls) = &config.tls {
        options = options.require_tls(tls.required);
        if let Some(ca) = &tls.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => {
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
            (None, None) => {}
            _ => anyhow::bail!("nats.tls: `cert_file` and `key_file` go together"),
        }
    }
    options
        .connect(servers.as_str())
        .await
        .with_context(|| format!("NATS at `{}`", crate::redact::redact_url(&config.url)))
}

/// Runs the attribute pipeline until the process stops: connect, set up the stream, bucket and
/// consumer, then consume and watch; any failure is logged and retried with back-off. `ready`
/// is released the first time the consumer and the watch are both live.
pub async fn run(config: NatsConfig, store: Arc<PrincipalStore>, ready: BlockReady) {
    let metrics = store.metrics().clone();
    let mut ready = Some(ready);
    let mut delay = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let client = loop {
        match connect(&config, &metrics).await {
            Ok(client) => break client,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot set up the NATS connection; retrying");
                tokio::time::sleep(delay.next()).await;
            }
        }
    };
    let mut js = jetstream::new(client);
    js.set_timeout(config.request_timeout);
    store.attach_publisher(js.clone(), config.stream.revocation_subject.clone());
    let mut attempt: u32 = 0;
    loop {
        let session = session(&config, &js, &store, &mut ready, &mut delay);
        let error = session.await;
        metrics.live.set(0);
        attempt = attempt.saturating_add(1);
        // The first failures are expected while NATS starts; say so quietly, then loudly.
        if attempt <= 3 {
            tracing::info!(error = %format!("{error:#}"), "attribute pipeline not running yet; retrying");
        } else {
            tracing::warn!(error = %format!("{error:#}"), attempt, "attribute pipeline stopped; retrying");
        }
        tokio::time::sleep(delay.next()).await;
    }
}

/// One connected session: returns only when something broke.
async fn session(
    config: &NatsConfig,
    js: &jetstream::Context,
    store: &Arc<PrincipalStore>,
    ready: &mut Option<BlockReady>,
    delay: &mut Backoff,
) -> anyhow::Error {
    let result: anyhow::Result<()> = async {
        let kv = consumer::bucket(js, config).await?;
        store.attach(kv.clone());
        let watch = store.start_watch(&kv).await?;
        let consumer = if config.consumer.enabled {
            Some(consumer::Consumer::start(js, config, kv, store.metrics().clone()).await?)
        } else {
            None
        };
        if let Some(ready) = ready.take() {
            tracing::info!(
                stream = %config.stream.name,
                bucket = %config.bucket.name,
                consuming = config.consumer.enabled,
                "attribute pipeline live"
            );
            drop(ready);
        } else {
            tracing::info!("attribute pipeline live again");
        }
        store.metrics().live.set(1);
        delay.reset();
        match consumer {
            Some(consumer) => tokio::select! {
                result = store.follow(watch) => result,
                result = consumer.run() => result,
            },
            None => store.follow(watch).await,
        }
    }
    .await;
    match result {
        Ok(()) => anyhow::anyhow!("the attribute pipeline ended"),
        Err(e) => e,
    }
}

/// Exponential back-off between `min` and `max`.
struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            current: min,
        }
    }

    fn next(&mut self) -> Duration {
        let delay = self.current;
        self.current = (self.current * 2).min(self.max);
        delay
    }

    fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let seen: Vec<u128> = (0..4).map(|_| b.next().as_millis()).collect();
        assert_eq!(seen, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next().as_millis(), 100);
    }
}
