//! Wiring: keys, rules, engine, the ext_authz gRPC server and the HTTP side port, with
//! graceful shutdown. Tests build the whole app on `127.0.0.1:0` through [`build`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::attributes::{AttributeMetrics, PrincipalStore};
use crate::cerbos::{Cerbos, CerbosMetrics};
use crate::config::{Config, Env};
use crate::engine::Engine;
use crate::extauthz::{AuthorizationServer, ExtAuthz};
use crate::http::{ForwardAuth, LoginRoutes, Ops, PolicyApi, SideState, router};
use crate::listener;
use crate::login::Login;
use crate::mechanisms::Authenticator;
use crate::mechanisms::remote_call::RemoteCallMetrics;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::reload::{ReloadMetrics, Reloader, Services};
use crate::rules::RuleSet;
use crate::tls::ListenerTls;
use crate::tokens::{Claims, Keyring, Purpose};

/// The key ring for `serve`: configured keys, or an ephemeral signing key when none is
/// configured (development: tokens die with the process). Returns whether it is ephemeral.
pub fn keys_for_serve(config: &Config, env: &dyn Env) -> anyhow::Result<(Keyring, bool)> {
    let mut keys = config.keyring(env)?;
    let ephemeral = !keys.can_verify(Purpose::Local) && !keys.can_verify(Purpose::Public);
    if ephemeral {
        keys.add_ephemeral_signing_key()?;
    }
    Ok((keys, ephemeral))
}

/// A compiled, not yet listening, heimdall.
pub struct Built {
    pub config: Arc<Config>,
    pub keys: Arc<Keyring>,
    pub engine: Arc<Engine>,
    pub registry: Arc<Registry>,
    pub readiness: Readiness,
    pub cerbos: Option<Arc<Cerbos>>,
    /// Principal attributes from NATS, when configured.
    pub attributes: Option<Arc<PrincipalStore>>,
    /// Verifies the bearer token of `/check` and `/plan/resources` when the rules name no
    /// `api.authenticator`.
    pub builtin_api_authenticator: Option<Arc<Authenticator>>,
    /// What `heimdall validate` warns about ([`RuleSet::lint`]).
    pub warnings: Vec<String>,
    /// OpenID Connect login, when configured.
    pub login: Option<Arc<Login>>,
    /// What reloaded rules are compiled against.
    pub services: Services,
    /// The configuration file [`Built::serve`] reloads rules from ([`Built::reload_from`]).
    reload_source: Option<(PathBuf, Arc<dyn Env + Send + Sync>)>,
    /// TLS of the two ports (`server.grpc.tls`, `server.http.tls`), read at build.
    pub tls: ListenerTls,
}

/// Compiles the rules against the keys.
pub fn build(config: Config, keys: Keyring) -> anyhow::Result<Built> {
    let keys = Arc::new(keys);
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let cerbos = match &config.cerbos {
        Some(cerbos_config) => Some(Arc::new(
            Cerbos::new(cerbos_config, CerbosMetrics::new(&mut registry))
                .context("Cerbos client")?,
        )),
        None => None,
    };
    let attributes = config.nats.as_ref().map(|nats| {
        Arc::new(PrincipalStore::new(
            nats,
            AttributeMetrics::new(&mut registry),
        ))
    });
    let tls = ListenerTls::load(&config.server, &mut registry)?;
    let services = Services {
        keys: Arc::clone(&keys),
        cerbos: cerbos.clone(),
        attributes: attributes.clone(),
        provider_metrics: crate::mechanisms::provider::ProviderMetrics::new(&mut registry),
        remote_calls: RemoteCallMetrics::new(&mut registry),
        reloads: ReloadMetrics::new(&mut registry),
    };
    let ctx = services.context(&config);
    let rules = RuleSet::compile(&config, &ctx, &metrics)
        .map_err(|e| anyhow::anyhow!("invalid rules:\n{e}"))?;
    // The policy API verifies callers with `api.authenticator`, or a built-in `paseto` one.
    // `api` is a restart-only section, so whether the rules name one never changes on reload.
    let builtin_api_authenticator = match rules.api_authenticator() {
        Some(_) => None,
        None => {
            let api_id: Arc<str> = Arc::from("api");
            match Authenticator::build(&api_id, "paseto", &serde_yaml_ng::Value::Null, &ctx) {
                Ok(authenticator) => Some(Arc::new(authenticator)),
                Err(error) => {
                    tracing::warn!(
                        %error,
                        "/check and /plan/resources answer 401 to every token: set \
                         api.authenticator or configure a verifying key"
                    );
                    None
                }
            }
        }
    };
    for rule in rules.iter().filter(|r| r.allows_anonymous) {
        tracing::warn!(rule.id = &*rule.id, "rule accepts anonymous requests");
    }
    let login = match &config.login {
        Some(login_config) => {
            let secret = login_config
                .client_secret
                .as_ref()
                .map(|s| s.read())
                .transpose()
                .context("login.client_secret")?;
            Some(Arc::new(
                Login::new(
                    login_config.clone(),
                    secret,
                    Arc::clone(&keys),
                    crate::login::Minted {
                        issuer: config.tokens.issuer.clone(),
                        audience: config.tokens.audience.clone(),
                        ttl: config.tokens.ttl,
                    },
                    attributes.clone(),
                    &mut registry,
                )
                .context("login")?,
            ))
        }
        None => None,
    };
    let warnings = rules.lint(&config);
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    let engine = Arc::new(Engine::new(
        rules,
        metrics,
        config.server.check_timeout,
        &config.server.rule_extension,
        config.log.decisions,
        config.server.paths,
        &config.server.remove_client_headers,
    ));
    Ok(Built {
        tls,
        warnings,
        login,
        cerbos,
        attributes,
        builtin_api_authenticator,
        services,
        reload_source: None,
        config: Arc::new(config),
        keys,
        engine,
        registry: Arc::new(registry),
        readiness: Readiness::default(),
    })
}

/// A serving heimdall.
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub readiness: Readiness,
    shutdown: watch::Sender<bool>,
    /// The gRPC health service's status, turned to NOT_SERVING by [`Running::drain`].
    health: tonic_health::server::HealthReporter,
    /// Set by [`Running::drain`]: keeps `/ready` at 503 until the process exits.
    draining: Option<crate::readiness::BlockReady>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
    /// Loops that run until shutdown (health watchers).
    background: Vec<JoinHandle<()>>,
}

impl Built {
    /// Makes [`Built::serve`] reload the rules from `source` on SIGHUP and when its contents
    /// change (`crate::reload`), reading the environment through `env` as at startup.
    pub fn reload_from(mut self, source: PathBuf, env: Arc<dyn Env + Send + Sync>) -> Self {
        self.reload_source = Some((source, env));
        self
    }

    /// Binds both ports (port 0 picks a free one) and serves until [`Running::shutdown`].
    pub async fn serve(self) -> anyhow::Result<Running> {
        let listening = self.readiness.block("listeners");
        let server = &self.config.server;
        let grpc_listener = TcpListener::bind((server.bind, server.grpc_port))
            .await
            .with_context(|| format!("ext_authz gRPC port {} cannot be bound", server.grpc_port))?;
        let http_listener = TcpListener::bind((server.bind, server.http_port))
            .await
            .with_context(|| format!("HTTP side port {} cannot be bound", server.http_port))?;
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;
        let (shutdown, signal) = watch::channel(false);

        warn_if_caps_exceed_open_files(server);

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<AuthorizationServer<ExtAuthz>>()
            .await;
        // tonic reserves a message's announced length before reading it: the limit is what
        // one stream can make the process allocate.
        let max_message = server.grpc.max_message_bytes;
        let ext_authz = AuthorizationServer::new(ExtAuthz::new(Arc::clone(&self.engine)))
            .max_decoding_message_size(max_message);
        let health_service = health_service.max_decoding_message_size(max_message);
        let routes = tonic::service::Routes::new(health_service).add_service(ext_authz);
        let grpc = tokio::spawn(listener::serve(
            "grpc",
            grpc_listener,
            listener::grpc_builder(&server.grpc),
            listener::GrpcHandler::new(routes),
            listener::Limits::grpc(&server.grpc),
            self.tls.grpc.clone(),
            signal.clone(),
        ));

        let state = SideState {
            ops: Ops {
                readiness: self.readiness.clone(),
                registry: Arc::clone(&self.registry),
                keys: Arc::clone(&self.keys),
            },
            forward_auth: ForwardAuth {
                engine: Arc::clone(&self.engine),
                trusted_proxies: self.config.server.trusted_proxies.clone().into(),
            },
            policy_api: PolicyApi {
                cerbos: self.cerbos.clone(),
                engine: Arc::clone(&self.engine),
                builtin_authenticator: self.builtin_api_authenticator.clone(),
                attributes: self.attributes.clone(),
                config: self.config.api.clone(),
            },
            login: LoginRoutes {
                login: self.login.clone(),
            },
        };
        let login_warm_up = self.login.clone().map(|login| {
            tokio::spawn(async move {
                login.warm_up().await;
            })
        });
        let http = tokio::spawn(listener::serve(
            "http",
            http_listener,
            listener::http_builder(&server.http),
            listener::HttpHandler::new(router(state), server.http.max_body_bytes),
            listener::Limits::http(&server.http),
            self.tls.http.clone(),
            signal.clone(),
        ));
        let health = match (&self.cerbos, &self.config.cerbos) {
            (Some(cerbos), Some(cfg)) => Some(tokio::spawn(crate::cerbos::watch_health(
                cerbos.channel(),
                self.readiness.clone(),
                cfg.health_interval,
                cfg.timeout,
            ))),
            _ => None,
        };
        // Blocked from here, before the listeners count as ready, until the consumer and the
        // watch are live; the pipeline then keeps itself running (and reconnecting).
        let attributes = match (&self.attributes, &self.config.nats) {
            (Some(store), Some(nats)) => Some(tokio::spawn(crate::attributes::run(
                nats.clone(),
                Arc::clone(store),
                self.readiness.block("nats"),
            ))),
            _ => None,
        };
        let reload = match self.reload_source {
            Some((source, env)) => tokio::spawn(
                Reloader::new(
                    source,
                    env,
                    (*self.config).clone(),
                    Arc::clone(&self.engine),
                    self.services,
                )
                .run(signal.clone(), self.config.server.reload_poll_interval),
            ),
            None => tokio::spawn(crate::reload::answer_hangups_without_file(signal.clone())),
        };
        let tls_reload = {
            let listeners = self.tls.all();
            (!listeners.is_empty()).then(|| tokio::spawn(crate::tls::reload_on_change(listeners)))
        };
        drop(listening);
        tracing::info!(grpc = %grpc_addr, http = %http_addr, "heimdall is serving");
        Ok(Running {
            grpc_addr,
            http_addr,
            readiness: self.readiness,
            shutdown,
            health: health_reporter,
            draining: None,
            tasks: vec![grpc, http],
            background: health
                .into_iter()
                .chain(attributes)
                .chain(login_warm_up)
                .chain(Some(reload))
                .chain(tls_reload)
                .collect(),
        })
    }
}

impl Running {
    /// The first step of a graceful stop: `/ready` answers 503 and the gRPC health service
    /// NOT_SERVING (for the ext_authz service and the server as a whole) from now on, while both
    /// ports keep serving for `delay`, so that whoever balances over replicas stops choosing
    /// this one before its listeners close.
    pub async fn drain(&mut self, delay: std::time::Duration) {
        // Held until the process exits: readiness never comes back.
        self.draining = Some(self.readiness.block("draining"));
        self.health
            .set_not_serving::<AuthorizationServer<ExtAuthz>>()
            .await;
        self.health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        if !delay.is_zero() {
            tracing::info!(
                ?delay,
                "draining: /ready is 503 and gRPC health NOT_SERVING; still serving until the delay is over"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// Stops accepting, lets in-flight requests finish (bounded by `grace`), and returns.
    pub async fn shutdown(self, grace: std::time::Duration) {
        let _ = self.shutdown.send(true);
        self.background.iter().for_each(JoinHandle::abort);
        let all = futures_util::future::join_all(self.tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(
                ?grace,
                "shutdown grace period over; in-flight requests dropped"
            );
        }
    }

    /// Waits until a server task ends by itself, which only happens when it failed: the caller
    /// then shuts down, so the process exits and is restarted rather than serving half.
    pub async fn server_failure(&mut self) -> anyhow::Error {
        if self.tasks.is_empty() {
            return anyhow::anyhow!("no server task is running");
        }
        let (first, index, _) = futures_util::future::select_all(self.tasks.iter_mut()).await;
        self.tasks.swap_remove(index);
        match first {
            Ok(Ok(())) => anyhow::anyhow!("a server stopped"),
            Ok(Err(e)) => e,
            Err(e) => anyhow::anyhow!("server task failed: {e}"),
        }
    }
}

/// Descriptors the process needs besides connections: listeners, the runtime, Cerbos and NATS
/// clients, files.
const OTHER_OPEN_FILES: u64 = 64;

/// The connection caps only protect the process if it can open that many descriptors; past the
/// limit `accept` fails (EMFILE) and `/health` cannot answer either.
fn warn_if_caps_exceed_open_files(server: &crate::config::ServerConfig) {
    let caps = u64::try_from(
        server
            .grpc
            .max_connections
            .saturating_add(server.http.max_connections),
    )
    .unwrap_or(u64::MAX);
    if let Some(limit) = listener::open_files_limit()
        && caps.saturating_add(OTHER_OPEN_FILES) > limit
    {
        tracing::warn!(
            open_files_limit = limit,
            grpc_max_connections = server.grpc.max_connections,
            http_max_connections = server.http.max_connections,
            "the connection caps exceed the open-files limit (RLIMIT_NOFILE); raise the limit \
             or lower server.grpc.max_connections / server.http.max_connections"
        );
    }
}

/// A demo token for the startup log in development mode.
pub fn demo_token(keys: &Keyring, config: &Config) -> Option<String> {
    let mut claims = Claims::new("demo-user", &config.tokens.issuer, config.tokens.ttl);
    claims.roles = vec!["user".into()];
    if let Some(aud) = &config.tokens.audience {
        claims.aud = crate::tokens::Audience::One(aud.clone());
    }
    keys.mint(Purpose::Public, &claims).ok()
}
