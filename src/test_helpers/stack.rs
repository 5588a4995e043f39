//! The end-to-end stack the Envoy tests share: the real components heimdall depends on (Cerbos,
//! NATS), heimdall in this process with its configuration pointed at them, an echo upstream, and
//! a real Envoy in front.
//!
//! ```ignore
//! let Some(stack) = StackBuilder::new(RULES).cerbos().envoy().start().await else { return };
//! ```

use std::sync::Arc;
use std::time::Duration;

use super::cerbos::Cerbos;
use super::echo::EchoUpstream;
use super::envoy::{Envoy, EnvoyOptions};
use super::heimdall::{serve_in_process, wait_ready_in_process};
use super::nats::NatsServer;
use super::process::fail;
use super::{http_client, test_config, test_keys};
use crate::app::Running;
use crate::config::Config;
use crate::tokens::Keyring;

/// How long heimdall may take to be ready once its dependencies run.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Which Envoy sits in front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EnvoyMode {
    /// The shipped ext_authz settings: fail closed.
    Shipped,
    /// `failure_mode_allow: true` (see [`Envoy::start_failure_mode_allow`]).
    FailureModeAllow,
}

/// A hook that adjusts the parsed configuration before heimdall is built.
type Configure = Box<dyn FnOnce(&mut Config) + Send>;

/// What to start; see [`StackBuilder::start`].
pub struct StackBuilder {
    rules: String,
    cerbos: bool,
    nats: bool,
    envoy: Option<EnvoyMode>,
    keys: Option<Keyring>,
    configure: Option<Configure>,
}

impl StackBuilder {
    /// A stack serving the configuration `rules` (YAML).
    pub fn new(rules: &str) -> Self {
        Self {
            rules: rules.to_owned(),
            cerbos: false,
            nats: false,
            envoy: None,
            keys: None,
            configure: None,
        }
    }

    /// Starts Cerbos (shipped configuration and example policies) and points `cerbos.url` at it.
    #[must_use]
    pub fn cerbos(mut self) -> Self {
        self.cerbos = true;
        self
    }

    /// Starts NATS with JetStream and points `nats.url` at it.
    #[must_use]
    pub fn nats(mut self) -> Self {
        self.nats = true;
        self
    }

    /// Starts Envoy (the shipped ext_authz settings) in front of heimdall and the echo upstream.
    #[must_use]
    pub fn envoy(mut self) -> Self {
        self.envoy = Some(EnvoyMode::Shipped);
        self
    }

    /// Starts Envoy with `failure_mode_allow: true` instead.
    #[must_use]
    pub fn envoy_failure_mode_allow(mut self) -> Self {
        self.envoy = Some(EnvoyMode::FailureModeAllow);
        self
    }

    /// Verifies tokens with `keys` instead of [`test_keys`].
    #[must_use]
    pub fn keys(mut self, keys: Keyring) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Adjusts the configuration after the component addresses are filled in.
    #[must_use]
    pub fn configure(mut self, configure: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        self.configure = Some(Box::new(configure));
        self
    }

    /// Starts everything and waits until heimdall is ready.
    ///
    /// Returns `None` when a component is not installed and the tests do not run in CI (see
    /// [`super::tools::require`]); panics when one does not start.
    pub async fn start(self) -> Option<Stack> {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("heimdall=info")
            .with_test_writer()
            .try_init();
        let nats = match self.nats {
            true => Some(NatsServer::start().await?),
            false => None,
        };
        let cerbos = match self.cerbos {
            true => Some(Cerbos::start().await?),
            false => None,
        };
        let mut config = test_config(&self.rules);
        if let Some(cerbos) = &cerbos {
            match config.cerbos.as_mut() {
                Some(section) => section.url = cerbos.grpc_addr().to_string(),
                None => fail("the stack starts Cerbos, but the configuration has no `cerbos`"),
            }
        }
        if let Some(nats) = &nats {
            match config.nats.as_mut() {
                Some(section) => section.url = nats.url(),
                None => fail("the stack starts NATS, but the configuration has no `nats`"),
            }
        }
        if let Some(configure) = self.configure {
            configure(&mut config);
        }
        let keys = self.keys.unwrap_or_else(test_keys);
        let (keys, heimdall) = serve_in_process(config, keys)
            .await
            .unwrap_or_else(|e| fail(&e));
        let echo = EchoUpstream::start().await;
        let options = EnvoyOptions::new(heimdall.grpc_addr, echo.addr);
        let envoy = match self.envoy {
            Some(EnvoyMode::Shipped) => Some(Envoy::start(options).await?),
            Some(EnvoyMode::FailureModeAllow) => {
                Some(Envoy::start_failure_mode_allow(options).await?)
            }
            None => None,
        };
        Some(Stack {
            nats,
            cerbos,
            keys,
            heimdall,
            echo,
            envoy,
            client: http_client(),
        })
    }
}

/// A running stack; everything stops when it is dropped.
pub struct Stack {
    pub nats: Option<NatsServer>,
    pub cerbos: Option<Cerbos>,
    /// The key ring heimdall verifies with: mint tokens with it.
    pub keys: Arc<Keyring>,
    pub heimdall: Running,
    pub echo: EchoUpstream,
    pub envoy: Option<Envoy>,
    /// A loopback HTTP client ([`http_client`]).
    pub client: reqwest::Client,
}

impl Stack {
    /// Waits again until heimdall is ready (after a dependency was stopped and restarted).
    pub async fn wait_ready(&self) {
        if let Err(e) = wait_ready_in_process(&self.heimdall, READY_TIMEOUT).await {
            fail(&e);
        }
    }
}
