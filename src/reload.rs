//! Rule hot reload: on SIGHUP, or when the configuration file's contents change (a rename over
//! it, a ConfigMap's symlink swap), the file is read and compiled again; only when all of it
//! compiles does the new rule set replace the running one, in one atomic swap.
//!
//! What reloads is what a rule set is made of: `mechanisms`, `rules` and `default_rule`. Every
//! other section (ports, listeners, keys, Cerbos, NATS, login, logging) shapes objects built once
//! at startup, so a change there is reported as needing a restart and the running values stay:
//! the new rules are compiled against the running sections, never against half of a new file.
//! A refused reload is logged with every problem and counted, and the last good rules keep
//! answering.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::attributes::PrincipalStore;
use crate::cerbos::Cerbos;
use crate::config::{Config, Env};
use crate::engine::Engine;
use crate::file_watch::{Changes, Hangups};
use crate::mechanisms::BuildContext;
use crate::mechanisms::provider::ProviderMetrics;
use crate::mechanisms::remote_call::RemoteCallMetrics;
use crate::rules::RuleSet;
use crate::tokens::Keyring;

/// What set a reload off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// SIGHUP.
    Signal,
    /// The configuration file's contents changed.
    File,
}

/// How a reload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The new rules serve.
    Applied,
    /// The file's rules are those already serving.
    Unchanged,
    /// The file does not load or its rules do not compile; the running rules stay.
    Refused,
}

impl EncodeLabelValue for Trigger {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(match self {
            Self::Signal => "signal",
            Self::File => "file",
        })
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(match self {
            Self::Applied => "applied",
            Self::Unchanged => "unchanged",
            Self::Refused => "refused",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadLabels {
    trigger: Trigger,
    outcome: Outcome,
}

/// `heimdall_config_reloads_total{trigger,outcome}` and whether the last attempt succeeded.
#[derive(Clone)]
pub struct ReloadMetrics {
    reloads: Family<ReloadLabels, Counter>,
    last_successful: Gauge,
    last_success_time: Gauge,
}

impl ReloadMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let r = registry.sub_registry_with_prefix("heimdall");
        let reloads = Family::default();
        r.register(
            "config_reloads",
            "Rule reloads (SIGHUP or a changed configuration file) by trigger and outcome",
            reloads.clone(),
        );
        let last_successful = Gauge::default();
        last_successful.set(1);
        r.register(
            "config_last_reload_successful",
            "1 when the last reload was applied or had nothing to apply, 0 when it was refused",
            last_successful.clone(),
        );
        let last_success_time = Gauge::default();
        last_success_time.set(unix_now());
        r.register(
            "config_last_reload_success_timestamp_seconds",
            "When the serving rules were last loaded (startup or reload), Unix time",
            last_success_time.clone(),
        );
        Self {
            reloads,
            last_successful,
            last_success_time,
        }
    }

    fn record(&self, trigger: Trigger, outcome: Outcome) {
        self.reloads
            .get_or_create(&ReloadLabels { trigger, outcome })
            .inc();
        match outcome {
            Outcome::Applied => {
                self.last_successful.set(1);
                self.last_success_time.set(unix_now());
            }
            Outcome::Unchanged => {
                self.last_successful.set(1);
            }
            Outcome::Refused => {
                self.last_successful.set(0);
            }
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The startup objects a rule set is compiled against; they outlive every reload.
#[derive(Clone)]
pub struct Services {
    pub keys: Arc<Keyring>,
    pub cerbos: Option<Arc<Cerbos>>,
    pub attributes: Option<Arc<PrincipalStore>>,
    pub provider_metrics: ProviderMetrics,
    pub remote_calls: RemoteCallMetrics,
    pub reloads: ReloadMetrics,
}

impl Services {
    /// The context mechanisms are built in, with the running configuration's Check deadline.
    pub fn context<'a>(&'a self, config: &'a Config) -> BuildContext<'a> {
        BuildContext {
            keys: &self.keys,
            tokens: &config.tokens,
            cerbos: self.cerbos.as_ref(),
            attributes: self.attributes.as_ref(),
            check_timeout: config.server.check_timeout,
            provider_metrics: &self.provider_metrics,
            remote_calls: Some(&self.remote_calls),
        }
    }
}

/// Reloads the rules of one configuration file into an engine.
pub struct Reloader {
    source: PathBuf,
    env: Arc<dyn Env + Send + Sync>,
    /// The serving configuration: startup sections, plus the rule sections last applied.
    running: Config,
    engine: Arc<Engine>,
    services: Services,
}

impl Reloader {
    pub fn new(
        source: PathBuf,
        env: Arc<dyn Env + Send + Sync>,
        running: Config,
        engine: Arc<Engine>,
        services: Services,
    ) -> Self {
        Self {
            source,
            env,
            running,
            engine,
            services,
        }
    }

    /// Reads, compiles and, when all of it compiles, swaps in the file's rules.
    pub fn reload(&mut self, trigger: Trigger) -> Outcome {
        let outcome = self.try_reload(trigger);
        self.services.reloads.record(trigger, outcome);
        outcome
    }

    fn try_reload(&mut self, trigger: Trigger) -> Outcome {
        let source = self.source.display().to_string();
        let file = match Config::load(Some(&self.source), &*self.env) {
            Ok((config, _)) => config,
            Err(error) => {
                tracing::error!(
                    ?trigger,
                    config = %source,
                    error = %format!("{error:#}"),
                    "configuration reload refused: the file does not load; the running rules stay"
                );
                return Outcome::Refused;
            }
        };
        let restart = sections_needing_restart(&self.running, &file);
        if !restart.is_empty() {
            tracing::warn!(
                ?trigger,
                config = %source,
                sections = %restart.join(", "),
                "these sections changed and take effect only at restart; the running values stay"
            );
        }
        let mut candidate = self.running.clone();
        candidate.mechanisms = file.mechanisms;
        candidate.default_rule = file.default_rule;
        candidate.rules = file.rules;
        if same_rules(&self.running, &candidate) {
            tracing::info!(?trigger, config = %source, "configuration reread: rules unchanged");
            return Outcome::Unchanged;
        }
        let context = self.services.context(&candidate);
        let rules = match RuleSet::compile(&candidate, &context, self.engine.metrics()) {
            Ok(rules) => rules,
            Err(error) => {
                tracing::error!(
                    ?trigger,
                    config = %source,
                    problems = %error,
                    "configuration reload refused: the rules do not compile; the running rules stay"
                );
                return Outcome::Refused;
            }
        };
        for warning in rules.lint(&candidate) {
            tracing::warn!(config = %source, "{warning}");
        }
        let count = rules.iter().count();
        self.engine.swap_rules(rules);
        self.running = candidate;
        tracing::info!(?trigger, config = %source, rules = count, "rules reloaded");
        Outcome::Applied
    }

    /// Reloads on SIGHUP and on every change of the file, until `shutdown`. Compiling reads
    /// key and secret files, so it runs on a blocking thread.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>, poll: Duration) {
        let mut hangups = Hangups::new("the rule set");
        let mut changes = Changes::new(vec![self.source.clone()], poll).await;
        loop {
            let trigger = tokio::select! {
                _ = shutdown.changed() => return,
                () = hangups.recv() => Trigger::Signal,
                _ = changes.next() => Trigger::File,
            };
            self = match tokio::task::spawn_blocking(move || {
                self.reload(trigger);
                self
            })
            .await
            {
                Ok(reloader) => reloader,
                Err(error) => {
                    tracing::error!(%error, "rule reload stopped: the reload task failed");
                    return;
                }
            };
        }
    }
}

/// Without a configuration file (the embedded example) there is nothing to reload, but SIGHUP
/// must still not kill the process (its default action): it is answered with a log line.
pub async fn answer_hangups_without_file(mut shutdown: watch::Receiver<bool>) {
    let mut hangups = Hangups::new("the embedded configuration");
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            () = hangups.recv() => tracing::warn!(
                "SIGHUP: nothing to reload, heimdall runs the embedded example configuration \
                 (start it with --config or HEIMDALL_CONFIG)"
            ),
        }
    }
}

/// The sections built once at startup whose new value differs from the running one.
fn sections_needing_restart(running: &Config, file: &Config) -> Vec<&'static str> {
    [
        ("server", json(&running.server) != json(&file.server)),
        ("log", json(&running.log) != json(&file.log)),
        ("tokens", json(&running.tokens) != json(&file.tokens)),
        ("cerbos", json(&running.cerbos) != json(&file.cerbos)),
        ("nats", json(&running.nats) != json(&file.nats)),
        ("api", json(&running.api) != json(&file.api)),
        ("login", json(&running.login) != json(&file.login)),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}

fn same_rules(a: &Config, b: &Config) -> bool {
    json(&a.mechanisms) == json(&b.mechanisms)
        && json(&a.default_rule) == json(&b.default_rule)
        && json(&a.rules) == json(&b.rules)
}

/// A section in its serialized form: the config types are data, so equal serializations mean
/// equal settings.
fn json<T: serde::Serialize>(section: &T) -> Option<serde_json::Value> {
    serde_json::to_value(section).ok()
}
