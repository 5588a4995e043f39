//! The compiled rule set: an immutable snapshot of every rule, its pipeline and the matcher.
//!
//! Compilation resolves mechanism ids, merges per-rule config overrides, compiles every CEL
//! expression and checks the pipeline order, collecting every problem with the rule id in its
//! message, so `heimdall validate` reports them all at once.

pub mod matcher;
pub mod problem;

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;
use crate::config::mechanisms::merge_config;
use crate::config::spec::{PipelineSpec, StepSpec};
use crate::expr::Expr;
use crate::mechanisms::{self, Authenticator, BuildContext, Kind, Mechanism};
use crate::metrics::{Metrics, RuleMetrics};
use crate::pipeline::{AuthnChain, Pipeline, Step};
use crate::subject::DEFAULT_PRINCIPAL;
use matcher::{Found, Matcher, PathPattern, RuleMatch};

/// The id of the rule that takes unmatched requests.
pub const DEFAULT_RULE_ID: &str = "default";

pub use problem::{CompileError, Problem, ProblemKind};

/// A compiled rule.
pub struct Rule {
    pub id: Arc<str>,
    pub pipeline: Pipeline,
    pub metrics: RuleMetrics,
    /// Whether an anonymous authenticator can satisfy it (reported at load).
    pub allows_anonymous: bool,
    /// Whether an authorizer that can refuse (not `allow`) always runs.
    pub authorizes: bool,
}

/// All rules, ready to match.
pub struct RuleSet {
    rules: Box<[Rule]>,
    default: Option<Rule>,
    matcher: Matcher,
    by_id: HashMap<Box<str>, usize>,
    /// `api.authenticator`, resolved in the catalogue.
    api_authenticator: Option<Arc<Authenticator>>,
}

/// The rule chosen for a request.
pub struct Selected<'a> {
    pub rule: &'a Rule,
    pub captures: matcher::Captures<'a>,
}

/// Why no rule was chosen.
#[derive(Debug, PartialEq, Eq)]
pub enum NoRule<'a> {
    /// Nothing matches and there is no default rule.
    NoMatch,
    /// `context_extensions` names a rule that does not exist.
    UnknownRule(&'a str),
}

impl RuleSet {
    /// Compiles the rules of `config`.
    pub fn compile(
        config: &Config,
        ctx: &BuildContext<'_>,
        metrics: &Metrics,
    ) -> Result<Self, CompileError> {
        let mut errors = Vec::new();
        let catalogue = Catalogue::build(config, ctx, &mut errors);

        let mut rules = Vec::with_capacity(config.rules.len());
        let mut by_id = HashMap::new();
        let mut matcher = Matcher::default();
        for spec in &config.rules {
            if spec.id.is_empty() || spec.id == DEFAULT_RULE_ID {
                errors.push(Problem::rule(&spec.id, ProblemKind::ReservedRuleId));
                continue;
            }
            if by_id.contains_key(spec.id.as_str()) {
                errors.push(Problem::rule(&spec.id, ProblemKind::DuplicateRule));
                continue;
            }
            let Some(rule) = compile_rule(
                &spec.id,
                &spec.pipeline,
                &catalogue,
                ctx,
                metrics,
                &mut errors,
            ) else {
                continue;
            };
            let index = rules.len();
            if let Some(m) = &spec.matcher {
                // No paths means every path: the root and everything under it.
                let patterns: Vec<&str> = if m.paths.is_empty() {
                    vec!["/*path"]
                } else {
                    m.paths.iter().map(String::as_str).collect()
                };
                let before = errors.len();
                let paths: Vec<PathPattern> = patterns
                    .iter()
                    .filter_map(|p| {
                        PathPattern::parse(p)
                            .map_err(|e| errors.push(Problem::rule(&spec.id, ProblemKind::Path(e))))
                            .ok()
                    })
                    .collect();
                let mut methods = Vec::with_capacity(m.methods.len());
                for method in &m.methods {
                    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
                        errors.push(Problem::rule(
                            &spec.id,
                            ProblemKind::Method(method.as_str().into()),
                        ));
                    }
                    methods.push(method.to_ascii_uppercase());
                }
                if errors.len() == before
                    && let Err(e) = matcher.add(
                        index,
                        &spec.id,
                        &RuleMatch {
                            hosts: &m.hosts,
                            paths: &paths,
                            methods: &methods,
                            case_insensitive: m.case_insensitive,
                        },
                    )
                {
                    errors.push(Problem::rule(&spec.id, ProblemKind::Matcher(e)));
                }
            }
            by_id.insert(Box::from(spec.id.as_str()), index);
            rules.push(rule);
        }
        matcher.finish();
        let default = config
            .default_rule
            .as_ref()
            .and_then(|p| compile_rule(DEFAULT_RULE_ID, p, &catalogue, ctx, metrics, &mut errors));
        let api_authenticator =
            config.api.authenticator.as_deref().and_then(|id| {
                match catalogue.resolve(
                    Kind::Authenticator,
                    id,
                    &serde_yaml_ng::Value::Null,
                    "",
                    ctx,
                ) {
                    Ok(Mechanism::Authenticator(authenticator)) => Some(authenticator),
                    Ok(_) => None,
                    Err(problem) => {
                        errors.push(Problem {
                            rule: None,
                            ..*problem
                        });
                        None
                    }
                }
            });
        if errors.is_empty() {
            Ok(Self {
                rules: rules.into(),
                default,
                matcher,
                by_id,
                api_authenticator,
            })
        } else {
            Err(CompileError(errors))
        }
    }

    /// The authenticator `api.authenticator` names, if it names one.
    pub fn api_authenticator(&self) -> Option<&Arc<Authenticator>> {
        self.api_authenticator.as_ref()
    }

    /// The rule for a request: the one named by `context_extensions`, else the most specific
    /// match, else the default rule.
    pub fn select<'a>(
        &'a self,
        named: Option<&'a str>,
        method: &str,
        host: &str,
        path: &'a str,
    ) -> Result<Selected<'a>, NoRule<'a>> {
        if let Some(name) = named {
            let rule = if name == DEFAULT_RULE_ID {
                self.default.as_ref()
            } else {
                self.by_id.get(name).and_then(|&i| self.rules.get(i))
            };
            return rule
                .map(|rule| Selected {
                    rule,
                    captures: matcher::Captures::new(),
                })
                .ok_or(NoRule::UnknownRule(name));
        }
        match self.matcher.find(method, host, path) {
            Some(Found { rule, captures }) => self
                .rules
                .get(rule)
                .map(|rule| Selected { rule, captures })
                .ok_or(NoRule::NoMatch),
            None => self
                .default
                .as_ref()
                .map(|rule| Selected {
                    rule,
                    captures: matcher::Captures::new(),
                })
                .ok_or(NoRule::NoMatch),
        }
    }

    /// What is legal but probably not meant, the way a policy linter reports it: a default
    /// rule that allows without authorization, a rule that lets anonymous requests write, and a
    /// rule for any host that a host-scoped rule takes over on that host. `heimdall validate`
    /// prints these; `serve` logs them.
    pub fn lint(&self, config: &Config) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(default) = &self.default
            && !default.authorizes
        {
            warnings.push(format!(
                "default_rule allows every request no rule matches{} without an authorizer that can refuse; remove it to deny them (403)",
                if default.allows_anonymous { ", even anonymous ones," } else { "" }
            ));
        }
        const WRITES: [&str; 4] = ["POST", "PUT", "PATCH", "DELETE"];
        for spec in &config.rules {
            let Some(rule) = self
                .by_id
                .get(spec.id.as_str())
                .and_then(|&i| self.rules.get(i))
            else {
                continue;
            };
            let methods = spec
                .matcher
                .as_ref()
                .map(|m| m.methods.as_slice())
                .unwrap_or(&[]);
            let writes = methods.is_empty()
                || methods
                    .iter()
                    .any(|m| WRITES.contains(&m.to_ascii_uppercase().as_str()));
            if rule.allows_anonymous && !rule.authorizes && writes {
                warnings.push(format!(
                    "rule `{}` lets anonymous requests write ({}) without an authorizer that can refuse",
                    spec.id,
                    if methods.is_empty() { "any method".to_owned() } else { methods.join(", ") }
                ));
            }
        }
        warnings.extend(self.shadowed(config));
        warnings
    }

    /// Rules for any host whose paths a host-scoped rule takes on that host (a more specific
    /// host beats a more specific path, so `/admin/*rest` for any host loses to `/*rest` for
    /// `api.example.com` there).
    fn shadowed(&self, config: &Config) -> Vec<String> {
        let mut hosts: Vec<String> = Vec::new();
        for spec in &config.rules {
            for host in spec.matcher.iter().flat_map(|m| &m.hosts) {
                let sample = match host.strip_prefix("*.") {
                    Some(suffix) => format!("sample.{suffix}"),
                    None if host == "*" => continue,
                    None => host.clone(),
                };
                let sample = sample.trim_end_matches('.').to_ascii_lowercase();
                if !hosts.contains(&sample) {
                    hosts.push(sample);
                }
            }
        }
        let host_scoped = |id: &str| {
            config.rules.iter().any(|r| {
                r.id == id
                    && r.matcher
                        .as_ref()
                        .is_some_and(|m| !m.hosts.is_empty() && !m.hosts.iter().any(|h| h == "*"))
            })
        };
        let mut warnings = Vec::new();
        for spec in &config.rules {
            let Some(m) = &spec.matcher else { continue };
            if !m.hosts.is_empty() && !m.hosts.iter().any(|h| h == "*") {
                continue;
            }
            let methods: Vec<String> = if m.methods.is_empty() {
                vec!["GET".to_owned()]
            } else {
                m.methods.iter().map(|m| m.to_ascii_uppercase()).collect()
            };
            for path in &m.paths {
                let sample = sample_path(path);
                for host in &hosts {
                    for method in &methods {
                        let Some(found) = self.matcher.find(method, host, &sample) else {
                            continue;
                        };
                        let Some(winner) = self.rules.get(found.rule) else {
                            continue;
                        };
                        if *winner.id != *spec.id && host_scoped(&winner.id) {
                            warnings.push(format!(
                                "rule `{}` ({method} {path}, any host) is shadowed on host `{host}` by rule `{}`",
                                spec.id, winner.id
                            ));
                        }
                    }
                }
            }
        }
        warnings.dedup();
        warnings
    }

    /// Every rule (the default one last).
    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().chain(self.default.as_ref())
    }
}

/// Compiles `config`'s rules as `serve` does (a Cerbos client is prepared, never dialled, so
/// this needs a tokio runtime) and lints them: what `heimdall validate --format json` reports.
/// Problems of the Cerbos or NATS sections join the rules' problems.
pub fn check(config: &Config, keys: crate::tokens::Keyring) -> Result<Vec<String>, CompileError> {
    let keys = Arc::new(keys);
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::new(&mut registry);
    let mut problems = Vec::new();
    let cerbos = config.cerbos.as_ref().and_then(|c| {
        crate::cerbos::Cerbos::new(c, crate::cerbos::CerbosMetrics::new(&mut registry))
            .map_err(|e| problems.push(Problem::setting("cerbos", e.to_string())))
            .ok()
            .map(Arc::new)
    });
    let attributes = config.nats.as_ref().map(|nats| {
        Arc::new(crate::attributes::PrincipalStore::new(
            nats,
            crate::attributes::AttributeMetrics::new(&mut registry),
        ))
    });
    let provider_metrics = crate::mechanisms::provider::ProviderMetrics::new(&mut registry);
    let remote_calls = crate::mechanisms::remote_call::RemoteCallMetrics::new(&mut registry);
    let ctx = BuildContext {
        keys: &keys,
        tokens: &config.tokens,
        cerbos: cerbos.as_ref(),
        attributes: attributes.as_ref(),
        check_timeout: config.server.check_timeout,
        provider_metrics: &provider_metrics,
        remote_calls: Some(&remote_calls),
    };
    match RuleSet::compile(config, &ctx, &metrics) {
        Ok(rules) if problems.is_empty() => Ok(rules.lint(config)),
        Ok(_) => Err(CompileError(problems)),
        Err(CompileError(more)) => {
            problems.extend(more);
            Err(CompileError(problems))
        }
    }
}

/// A concrete path a pattern matches: parameters filled with `x`.
fn sample_path(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|segment| {
            if segment.starts_with([':', '*']) {
                "x"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Built mechanisms by kind and id, with their type and config for per-rule overrides.
struct Catalogue<'c> {
    entries: HashMap<(Kind, &'c str), Entry<'c>>,
}

struct Entry<'c> {
    type_name: &'c str,
    config: &'c serde_yaml_ng::Value,
    built: Mechanism,
}

impl<'c> Catalogue<'c> {
    fn build(config: &'c Config, ctx: &BuildContext<'_>, errors: &mut Vec<Problem>) -> Self {
        let mut entries = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        for (kind, id, type_name, config) in config.mechanisms.entries() {
            let key = (kind, id);
            // Tracked apart from `entries`: a definition that failed to build still counts.
            if !seen.insert(key) {
                errors.push(Problem {
                    rule: None,
                    step: None,
                    mechanism: Some((kind, id.into())),
                    what: ProblemKind::DuplicateMechanism,
                });
                continue;
            }
            let arc_id: Arc<str> = Arc::from(id);
            match mechanisms::build(kind, &arc_id, type_name, config, ctx) {
                Ok(built) => {
                    entries.insert(
                        key,
                        Entry {
                            type_name,
                            config,
                            built,
                        },
                    );
                }
                Err(error) => errors.push(Problem {
                    rule: None,
                    step: None,
                    mechanism: Some((kind, id.into())),
                    what: ProblemKind::Mechanism {
                        type_name: type_name.into(),
                        error,
                    },
                }),
            }
        }
        Self { entries }
    }

    /// The mechanism `id` of `kind`, rebuilt with `overrides` merged when there are any.
    fn resolve(
        &self,
        kind: Kind,
        id: &str,
        overrides: &serde_yaml_ng::Value,
        rule: &str,
        ctx: &BuildContext<'_>,
    ) -> Result<Mechanism, Box<Problem>> {
        let Some(entry) = self.entries.get(&(kind, id)) else {
            let mut known: Vec<Box<str>> = self
                .entries
                .keys()
                .filter(|(k, _)| *k == kind)
                .map(|(_, id)| Box::from(*id))
                .collect();
            known.sort_unstable();
            return Err(Box::new(
                Problem::rule(rule, ProblemKind::UnknownMechanism { known })
                    .with_mechanism(kind, id),
            ));
        };
        if overrides.is_null() {
            return Ok(entry.built.clone());
        }
        let merged = merge_config(entry.config, overrides);
        let step_id: Arc<str> = Arc::from(format!("{rule}/{id}"));
        mechanisms::build(kind, &step_id, entry.type_name, &merged, ctx).map_err(|e| {
            Box::new(Problem::rule(rule, ProblemKind::Override(e)).with_mechanism(kind, id))
        })
    }
}

fn step_kind<'s>(
    step: &'s StepSpec,
    rule: &str,
    index: usize,
) -> Result<(Kind, &'s str), Box<Problem>> {
    let named: Vec<(Kind, &str)> = [
        (Kind::Authenticator, &step.authenticator),
        (Kind::Contextualizer, &step.contextualizer),
        (Kind::Authorizer, &step.authorizer),
        (Kind::Finalizer, &step.finalizer),
    ]
    .into_iter()
    .filter_map(|(stage, id)| id.as_deref().map(|id| (stage, id)))
    .collect();
    match named.as_slice() {
        [one] => Ok(*one),
        [] => Err(Box::new(Problem::step(
            rule,
            index,
            ProblemKind::StepNamesNone,
        ))),
        _ => Err(Box::new(Problem::step(
            rule,
            index,
            ProblemKind::StepNamesMany,
        ))),
    }
}

fn compile_condition(
    source: Option<&str>,
    rule: &str,
    step: usize,
    errors: &mut Vec<Problem>,
) -> Option<Expr> {
    let source = source?;
    match Expr::compile(source) {
        Ok(expr) => Some(expr),
        Err(e) => {
            errors.push(Problem::step(rule, step, ProblemKind::Condition(e)));
            None
        }
    }
}

fn compile_rule(
    rule_id: &str,
    spec: &PipelineSpec,
    catalogue: &Catalogue<'_>,
    ctx: &BuildContext<'_>,
    metrics: &Metrics,
    errors: &mut Vec<Problem>,
) -> Option<Rule> {
    let before = errors.len();
    let mut chains: Vec<(Arc<str>, Vec<Step<mechanisms::Authenticator>>)> = Vec::new();
    let mut contextualizers = Vec::new();
    let mut authorizers = Vec::new();
    let mut finalizers = Vec::new();
    let mut stage = Kind::Authenticator;
    let mut allows_anonymous = false;
    let mut authorizes = false;
    for (index, step) in spec.execute.iter().enumerate() {
        let (step_stage, id) = match step_kind(step, rule_id, index) {
            Ok(k) => k,
            Err(e) => {
                errors.push(*e);
                continue;
            }
        };
        if step_stage < stage {
            errors.push(
                Problem::step(rule_id, index, ProblemKind::OutOfOrder { after: stage })
                    .with_mechanism(step_stage, id),
            );
            continue;
        }
        stage = step_stage;
        if step.principal.is_some() && step_stage != Kind::Authenticator {
            errors.push(
                Problem::step(rule_id, index, ProblemKind::PrincipalNotAuthenticator)
                    .with_mechanism(step_stage, id),
            );
        }
        let when = compile_condition(step.condition.as_deref(), rule_id, index, errors);
        if step.condition.is_some() && when.is_none() {
            continue;
        }
        // What a condition may read depends on when it runs: refused here, not on every request.
        if let Some(uses) = when.as_ref().map(Expr::uses) {
            if step_stage == Kind::Authenticator && uses.reads_subject() {
                errors.push(
                    Problem::step(rule_id, index, ProblemKind::ConditionReadsSubject)
                        .with_mechanism(step_stage, id),
                );
                continue;
            }
            if uses.reads_error() {
                errors.push(
                    Problem::step(rule_id, index, ProblemKind::ConditionReadsError)
                        .with_mechanism(step_stage, id),
                );
                continue;
            }
        }
        let mechanism = match catalogue.resolve(step_stage, id, &step.config, rule_id, ctx) {
            Ok(m) => m,
            Err(mut e) => {
                e.step = Some(index + 1);
                errors.push(*e);
                continue;
            }
        };
        let step_id: Arc<str> = Arc::from(id);
        match mechanism {
            Mechanism::Authenticator(m) => {
                allows_anonymous |= m.is_anonymous();
                let principal = step.principal.as_deref().unwrap_or(DEFAULT_PRINCIPAL);
                let built = Step {
                    id: step_id,
                    when,
                    mechanism: m,
                };
                match chains.iter_mut().find(|(p, _)| &**p == principal) {
                    Some((_, chain)) => chain.push(built),
                    None => chains.push((Arc::from(principal), vec![built])),
                }
            }
            Mechanism::Contextualizer(m) => contextualizers.push(Step {
                id: step_id,
                when,
                mechanism: m,
            }),
            Mechanism::Authorizer(m) if m.expressions().any(|e| e.uses().reads_error()) => {
                errors.push(
                    Problem::step(rule_id, index, ProblemKind::MechanismReadsError)
                        .with_mechanism(Kind::Authorizer, id),
                );
            }
            Mechanism::Finalizer(m) if m.expressions().any(|e| e.uses().reads_error()) => {
                errors.push(
                    Problem::step(rule_id, index, ProblemKind::MechanismReadsError)
                        .with_mechanism(Kind::Finalizer, id),
                );
            }
            Mechanism::Authorizer(m) => {
                authorizes |= when.is_none() && !matches!(*m, mechanisms::Authorizer::Allow);
                authorizers.push(Step {
                    id: step_id,
                    when,
                    mechanism: m,
                });
            }
            Mechanism::Finalizer(m) => finalizers.push(Step {
                id: step_id,
                when,
                mechanism: m,
            }),
            Mechanism::ErrorHandler(_) => errors.push(Problem::step(
                rule_id,
                index,
                ProblemKind::Internal("error handler in execute"),
            )),
        }
    }
    if chains.is_empty() && errors.len() == before {
        errors.push(Problem::rule(rule_id, ProblemKind::NoAuthenticator));
    }
    let mut on_error = Vec::with_capacity(spec.on_error.len());
    for (index, step) in spec.on_error.iter().enumerate() {
        let when = compile_condition(step.condition.as_deref(), rule_id, index, errors);
        match catalogue.resolve(
            Kind::ErrorHandler,
            &step.error_handler,
            &step.config,
            rule_id,
            ctx,
        ) {
            Ok(Mechanism::ErrorHandler(m)) => on_error.push(Step {
                id: Arc::from(step.error_handler.as_str()),
                when,
                mechanism: m,
            }),
            Ok(_) => errors.push(Problem::step(
                rule_id,
                index,
                ProblemKind::Internal("not an error handler"),
            )),
            Err(mut e) => {
                e.step = Some(index + 1);
                errors.push(*e);
            }
        }
    }
    if errors.len() != before {
        return None;
    }
    let authn = chains
        .into_iter()
        .map(|(principal, steps)| AuthnChain {
            principal,
            steps: steps.into(),
        })
        .collect();
    Some(Rule {
        id: Arc::from(rule_id),
        pipeline: Pipeline::new(
            authn,
            contextualizers.into(),
            authorizers.into(),
            finalizers.into(),
            on_error.into(),
        ),
        metrics: metrics.for_rule(rule_id),
        allows_anonymous,
        authorizes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Origin;
    use crate::config::mechanisms::SpecError;
    use crate::mechanisms::BuildError;
    use crate::tokens::Keyring;

    /// The problems of a configuration that does not compile.
    fn problems(result: Result<RuleSet, CompileError>) -> Vec<Problem> {
        result.err().unwrap().0
    }

    /// Where a problem is: (rule, step, mechanism kind and id).
    fn place(p: &Problem) -> (Option<&str>, Option<usize>, Option<(Kind, &str)>) {
        (
            p.rule.as_deref(),
            p.step,
            p.mechanism.as_ref().map(|(k, id)| (*k, &**id)),
        )
    }

    fn compile(yaml: &str) -> Result<RuleSet, CompileError> {
        compile_with(yaml, None)
    }

    fn compile_with(
        yaml: &str,
        attributes: Option<&Arc<crate::attributes::PrincipalStore>>,
    ) -> Result<RuleSet, CompileError> {
        let config = Config::parse(yaml, &Origin::Embedded).unwrap();
        let mut keys = Keyring::default();
        keys.add_ephemeral_signing_key().unwrap();
        let keys = Arc::new(keys);
        let ctx = BuildContext {
            keys: &keys,
            tokens: &config.tokens,
            cerbos: None,
            attributes,
            check_timeout: config.server.check_timeout,
            provider_metrics: &Default::default(),
            remote_calls: None,
        };
        RuleSet::compile(&config, &ctx, &Metrics::default())
    }

    #[test]
    fn contextualizers_sit_between_authentication_and_authorization() {
        let yaml = |rules: &str| {
            format!(
                "{CATALOGUE}  contextualizers: [ {{ id: attrs, type: principal_attributes }} ]\nrules:\n{rules}"
            )
        };
        let store = Arc::new(crate::attributes::PrincipalStore::new(
            &crate::attributes::NatsConfig::default(),
            crate::attributes::AttributeMetrics::new(
                &mut prometheus_client::registry::Registry::default(),
            ),
        ));
        let good = yaml(
            "  - id: ok\n    execute: [ { authenticator: bearer }, { contextualizer: attrs, if: 'subject.id != \"\"' }, { authorizer: allow } ]\n",
        );
        let set = compile_with(&good, Some(&store)).unwrap();
        let rule = set.iter().find(|r| &*r.id == "ok").unwrap();
        assert_eq!(rule.pipeline.contextualizers.len(), 1);

        let late = yaml(
            "  - id: late\n    execute: [ { authenticator: bearer }, { authorizer: allow }, { contextualizer: attrs } ]\n",
        );
        let errors = problems(compile_with(&late, Some(&store)));
        assert!(
            matches!(
                errors.as_slice(),
                [p] if matches!(p.what, ProblemKind::OutOfOrder { after: Kind::Authorizer })
                    && place(p) == (Some("late"), Some(3), Some((Kind::Contextualizer, "attrs")))
            ),
            "{errors:#?}"
        );
        assert_eq!(
            errors.first().unwrap().to_string(),
            "rule `late`: step 3 (contextualizer `attrs`) comes after an authorizer; the order is authenticators, contextualizers, authorizers, finalizers"
        );
        let errors = problems(compile_with(&good, None));
        assert!(
            errors.iter().any(|p| matches!(
                p.what,
                ProblemKind::Mechanism {
                    error: BuildError::NoAttributeStore,
                    ..
                }
            ) && place(p)
                == (None, None, Some((Kind::Contextualizer, "attrs")))),
            "{errors:#?}"
        );
    }

    const CATALOGUE: &str = r#"
version: "1"
mechanisms:
  authenticators: [ { id: bearer, type: paseto }, { id: anon, type: anonymous } ]
  authorizers: [ { id: allow, type: allow }, { id: admins, type: cel, config: { expression: '"admin" in subject.roles' } } ]
  finalizers: [ { id: hdr, type: header, config: { headers: { X-User-ID: subject.id } } } ]
  error_handlers: [ { id: challenge, type: www_authenticate } ]
"#;

    fn with_rules(rules: &str) -> String {
        format!("{CATALOGUE}rules:\n{rules}")
    }

    #[test]
    fn the_policy_api_authenticator_comes_from_the_catalogue() {
        let named = |id: &str| format!("{CATALOGUE}api: {{ authenticator: {id} }}\nrules: []\n");
        let rules = compile(&named("bearer")).unwrap();
        let authenticator = rules.api_authenticator().unwrap();
        assert!(matches!(**authenticator, Authenticator::Paseto(_)));
        assert!(
            compile(&format!("{CATALOGUE}rules: []\n"))
                .unwrap()
                .api_authenticator()
                .is_none()
        );

        let problems = problems(compile(&named("jwt")));
        assert_eq!(problems.len(), 1, "{problems:?}");
        let problem = problems.first().unwrap();
        assert_eq!(
            place(problem),
            (None, None, Some((Kind::Authenticator, "jwt")))
        );
        assert!(matches!(
            &problem.what,
            ProblemKind::UnknownMechanism { known } if known.iter().map(|k| &**k).eq(["anon", "bearer"])
        ));
    }

    #[test]
    fn reports_every_problem_with_the_rule_id() {
        let rules = r#"
  - id: api
    match: { paths: [/api/*rest] }
    execute: [ { authenticator: jwt_x }, { authorizer: allow } ]
  - id: order
    match: { paths: [/order] }
    execute: [ { authenticator: bearer }, { finalizer: hdr }, { authorizer: allow } ]
  - id: cel
    match: { paths: [/cel] }
    execute: [ { authenticator: bearer, if: 'request.method ==' } ]
  - id: none
    match: { paths: [/none] }
    execute: [ { authorizer: allow } ]
  - id: handler
    match: { paths: [/handler] }
    execute: [ { authenticator: bearer } ]
    on_error: [ { error_handler: nope } ]
"#;
        let errors = problems(compile(&with_rules(rules)));
        assert_eq!(errors.len(), 5, "{errors:#?}");
        let unknown = errors
            .iter()
            .find(|p| matches!(&p.what, ProblemKind::UnknownMechanism { known } if *known == [Box::from("anon"), Box::from("bearer")]))
            .unwrap();
        assert_eq!(
            place(unknown),
            (Some("api"), Some(1), Some((Kind::Authenticator, "jwt_x")))
        );
        assert_eq!(
            unknown.to_string(),
            "unknown authenticator `jwt_x` in rule `api` (known: anon, bearer)"
        );
        let order = errors
            .iter()
            .find(|p| {
                matches!(
                    p.what,
                    ProblemKind::OutOfOrder {
                        after: Kind::Finalizer
                    }
                )
            })
            .unwrap();
        assert_eq!(
            place(order),
            (Some("order"), Some(3), Some((Kind::Authorizer, "allow")))
        );
        let cel = errors
            .iter()
            .find(|p| {
                matches!(
                    p.what,
                    ProblemKind::Condition(crate::expr::ExprError::Parse { .. })
                )
            })
            .unwrap();
        assert_eq!(place(cel), (Some("cel"), Some(1), None));
        assert!(
            cel.to_string()
                .starts_with("rule `cel`: step 1 condition: invalid CEL `request.method ==`")
        );
        let none = errors
            .iter()
            .find(|p| matches!(p.what, ProblemKind::NoAuthenticator))
            .unwrap();
        assert_eq!(place(none), (Some("none"), None, None));
        let handler = errors
            .iter()
            .find(|p| {
                p.mechanism
                    .as_ref()
                    .is_some_and(|(k, _)| *k == Kind::ErrorHandler)
            })
            .unwrap();
        assert!(matches!(handler.what, ProblemKind::UnknownMechanism { .. }));
        assert_eq!(
            place(handler),
            (Some("handler"), Some(1), Some((Kind::ErrorHandler, "nope")))
        );
        assert_eq!(
            handler.to_string(),
            "unknown error_handler `nope` in rule `handler` (known: challenge)"
        );
    }

    #[test]
    fn refuses_variables_a_condition_cannot_see_yet() {
        let rules = r#"
  - id: early
    match: { paths: [/early] }
    execute: [ { authenticator: bearer, if: '"admin" in subject.roles' } ]
  - id: error_outside
    match: { paths: [/error] }
    execute: [ { authenticator: bearer }, { authorizer: allow, if: 'error.kind == "authentication"' } ]
  - id: fine
    match: { paths: [/fine] }
    execute: [ { authenticator: bearer }, { authorizer: allow, if: '"admin" in subject.roles' } ]
    on_error: [ { error_handler: challenge, if: 'error.kind == "authentication"' } ]
"#;
        let errors = problems(compile(&with_rules(rules)));
        let found: Vec<_> = errors.iter().map(|p| (place(p), p.what.code())).collect();
        assert_eq!(
            found,
            [
                (
                    (
                        Some("early"),
                        Some(1),
                        Some((Kind::Authenticator, "bearer"))
                    ),
                    "condition_reads_subject"
                ),
                (
                    (
                        Some("error_outside"),
                        Some(2),
                        Some((Kind::Authorizer, "allow"))
                    ),
                    "condition_reads_error"
                ),
            ]
        );
    }

    #[test]
    fn refuses_bad_mechanism_config_and_duplicates() {
        let yaml = r#"
version: "1"
mechanisms:
  authenticators:
    - { id: bearer, type: paseto, config: { sources: [], leeway: 5s } }
    - { id: bearer, type: anonymous }
    - { id: odd, type: paseto, config: { acept: public } }
    - { id: skew, type: paseto, config: { leeway: 1000000000d } }
  authorizers:
    - { id: expr, type: cel, config: { expression: 'secret == 1' } }
  error_handlers:
    - { id: sneaky, type: generic, config: { status: 200 } }
rules: []
"#;
        let errors = problems(compile(yaml));
        let of = |id: &str, code: &str| {
            errors
                .iter()
                .find(|p| {
                    p.mechanism.as_ref().is_some_and(|(_, m)| &**m == id) && p.what.code() == code
                })
                .unwrap_or_else(|| panic!("no {code} for {id} in {errors:#?}"))
        };
        // A 2xx "denial" would be an allow behind a forward-auth gateway.
        assert_eq!(
            of("sneaky", "invalid_mechanism").to_string(),
            "error_handler `sneaky` (type `generic`): `status` 200 is not a refusal (use 3xx, 4xx or 5xx)"
        );
        assert!(matches!(
            &of("bearer", "invalid_mechanism").what,
            ProblemKind::Mechanism { type_name, error: BuildError::Invalid(m) }
                if &**type_name == "paseto" && m.starts_with("`sources` must name at least one")
        ));
        assert_eq!(
            place(of("bearer", "duplicate_mechanism")),
            (None, None, Some((Kind::Authenticator, "bearer")))
        );
        assert!(matches!(
            &of("odd", "invalid_mechanism").what,
            ProblemKind::Mechanism { error: BuildError::Spec(SpecError::Invalid(m)), .. }
                if m.starts_with("unknown field `acept`")
        ));
        assert!(of("odd", "invalid_mechanism").to_string().starts_with(
            "authenticator `odd` (type `paseto`): invalid config: unknown field `acept`"
        ));
        assert!(matches!(
            &of("expr", "invalid_mechanism").what,
            ProblemKind::Mechanism {
                error: BuildError::Expression(crate::expr::ExprError::UnknownVariable { name, .. }),
                ..
            } if name == "secret"
        ));
        assert_eq!(
            of("skew", "invalid_mechanism").to_string(),
            "authenticator `skew` (type `paseto`): `leeway` 2737850years 9months 13days 12h 57m 36s is longer than the 10m allowed"
        );
        assert_eq!(errors.len(), 6, "{errors:#?}");
    }

    #[test]
    fn lint_warns_like_a_policy_linter() {
        let rules = r#"
  - id: admin
    match: { paths: [/admin/*rest] }
    execute: [ { authenticator: bearer }, { authorizer: admins } ]
  - id: api_host
    match: { hosts: [api.example.com], paths: [/*rest] }
    execute: [ { authenticator: bearer }, { authorizer: allow } ]
  - id: open_writes
    match: { paths: [/guestbook], methods: [GET, post] }
    execute: [ { authenticator: anon }, { authorizer: allow } ]
  - id: open_reads
    match: { paths: [/public/*rest], methods: [GET] }
    execute: [ { authenticator: anon }, { authorizer: allow } ]
default_rule:
  execute: [ { authenticator: bearer }, { authorizer: allow } ]
"#;
        let config = Config::parse(&with_rules(rules), &Origin::Embedded).unwrap();
        let set = compile(&with_rules(rules)).unwrap();
        let warnings = set.lint(&config);
        let expected = [
            "default_rule allows every request no rule matches without an authorizer that can refuse",
            "rule `open_writes` lets anonymous requests write (GET, post)",
            "rule `admin` (GET /admin/*rest, any host) is shadowed on host `api.example.com` by rule `api_host`",
            "rule `open_reads` (GET /public/*rest, any host) is shadowed on host `api.example.com` by rule `api_host`",
            "rule `open_writes` (GET /guestbook, any host) is shadowed on host `api.example.com` by rule `api_host`",
            "rule `open_writes` (POST /guestbook, any host) is shadowed on host `api.example.com` by rule `api_host`",
        ];
        for want in expected {
            assert!(
                warnings.iter().any(|w| w.contains(want)),
                "missing `{want}` in {warnings:#?}"
            );
        }
        assert_eq!(warnings.len(), expected.len(), "{warnings:#?}");
        // The shipped configuration is clean.
        let embedded = Config::parse(crate::config::EMBEDDED, &Origin::Embedded).unwrap();
        assert_eq!(
            compile(crate::config::EMBEDDED).unwrap().lint(&embedded),
            Vec::<String>::new()
        );
    }

    #[test]
    fn selects_by_context_extension_and_default() {
        let rules = r#"
  - id: api
    match: { paths: [/api/*rest] }
    execute: [ { authenticator: bearer } ]
  - id: named_only
    execute: [ { authenticator: anon } ]
default_rule:
  execute: [ { authenticator: anon } ]
"#;
        let set = compile(&with_rules(rules)).unwrap();
        assert_eq!(
            &*set.select(None, "GET", "h", "/api/x").ok().unwrap().rule.id,
            "api"
        );
        assert_eq!(
            &*set
                .select(Some("named_only"), "GET", "h", "/api/x")
                .ok()
                .unwrap()
                .rule
                .id,
            "named_only"
        );
        assert_eq!(
            &*set
                .select(None, "GET", "h", "/elsewhere")
                .ok()
                .unwrap()
                .rule
                .id,
            DEFAULT_RULE_ID
        );
        assert_eq!(
            set.select(Some("missing"), "GET", "h", "/api/x").err(),
            Some(NoRule::UnknownRule("missing"))
        );
    }
}
