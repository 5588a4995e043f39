//! Compile problems as values: where (rule, step, mechanism) and what, so `heimdall validate`
//! can print them as text (one line each, as always) or as JSON, and tests can assert on fields.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::expr::ExprError;
use crate::mechanisms::{BuildError, Kind};

/// One problem of a configuration.
#[derive(Debug)]
pub struct Problem {
    /// The rule it is in (`default` for `default_rule`).
    pub rule: Option<Arc<str>>,
    /// The step of the rule's `execute` (or `on_error`) list, from 1.
    pub step: Option<usize>,
    /// The mechanism concerned, by kind and id.
    pub mechanism: Option<(Kind, Box<str>)>,
    pub what: ProblemKind,
}

/// What is wrong.
#[derive(Debug)]
pub enum ProblemKind {
    /// A rule's id is empty or `default`.
    ReservedRuleId,
    DuplicateRule,
    DuplicateMechanism,
    /// A catalogue entry cannot be built.
    Mechanism {
        type_name: Box<str>,
        error: BuildError,
    },
    /// A step's config override makes the mechanism unbuildable.
    Override(BuildError),
    UnknownMechanism {
        known: Vec<Box<str>>,
    },
    /// A path pattern of `match` (the pattern parser's message).
    Path(String),
    Method(Box<str>),
    /// Two rules' matches collide (the matcher's message).
    Matcher(String),
    StepNamesNone,
    StepNamesMany,
    /// The step's kind comes after a later stage's step.
    OutOfOrder {
        after: Kind,
    },
    PrincipalNotAuthenticator,
    Condition(ExprError),
    ConditionReadsSubject,
    ConditionReadsError,
    /// An authorizer or finalizer expression reads `error`.
    MechanismReadsError,
    NoAuthenticator,
    /// A setting outside the rules (`nats.url`, `server.grpc.max_connections`, …).
    Setting {
        field: Box<str>,
        message: String,
    },
    /// The configuration could not be read at all.
    Config(String),
    /// A case the compiler's structure should exclude.
    Internal(&'static str),
}

impl ProblemKind {
    /// A stable name for machines (`validate --format json`).
    pub const fn code(&self) -> &'static str {
        match self {
            Self::ReservedRuleId => "reserved_rule_id",
            Self::DuplicateRule => "duplicate_rule",
            Self::DuplicateMechanism => "duplicate_mechanism",
            Self::Mechanism { .. } => "invalid_mechanism",
            Self::Override(_) => "invalid_override",
            Self::UnknownMechanism { .. } => "unknown_mechanism",
            Self::Path(_) => "invalid_path",
            Self::Method(_) => "invalid_method",
            Self::Matcher(_) => "conflicting_match",
            Self::StepNamesNone => "step_names_no_mechanism",
            Self::StepNamesMany => "step_names_many_mechanisms",
            Self::OutOfOrder { .. } => "step_out_of_order",
            Self::PrincipalNotAuthenticator => "principal_not_on_authenticator",
            Self::Condition(_) => "invalid_condition",
            Self::ConditionReadsSubject => "condition_reads_subject",
            Self::ConditionReadsError => "condition_reads_error",
            Self::MechanismReadsError => "mechanism_reads_error",
            Self::NoAuthenticator => "no_authenticator",
            Self::Setting { .. } => "invalid_setting",
            Self::Config(_) => "invalid_config",
            Self::Internal(_) => "internal",
        }
    }
}

impl Problem {
    pub(crate) fn rule(rule: &str, what: ProblemKind) -> Self {
        Self {
            rule: Some(Arc::from(rule)),
            step: None,
            mechanism: None,
            what,
        }
    }

    pub(crate) fn step(rule: &str, index: usize, what: ProblemKind) -> Self {
        Self {
            step: Some(index + 1),
            ..Self::rule(rule, what)
        }
    }

    pub(crate) fn with_mechanism(mut self, kind: Kind, id: &str) -> Self {
        self.mechanism = Some((kind, id.into()));
        self
    }

    /// A problem of the configuration outside the rules.
    pub fn setting(field: impl Into<Box<str>>, message: impl Into<String>) -> Self {
        Self {
            rule: None,
            step: None,
            mechanism: None,
            what: ProblemKind::Setting {
                field: field.into(),
                message: message.into(),
            },
        }
    }

    /// A configuration that could not be read (`message` says why).
    pub fn config(message: impl Into<String>) -> Self {
        Self {
            rule: None,
            step: None,
            mechanism: None,
            what: ProblemKind::Config(message.into()),
        }
    }
}

/// The problem as text, as `heimdall validate` has always printed it.
impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rule = self.rule.as_deref().unwrap_or("");
        let n = self.step.unwrap_or(0);
        let (kind, id) = match &self.mechanism {
            Some((kind, id)) => (kind.as_str(), &**id),
            None => ("mechanism", ""),
        };
        match &self.what {
            ProblemKind::ReservedRuleId => write!(f, "rule id `{rule}` is reserved or empty"),
            ProblemKind::DuplicateRule => write!(f, "rule `{rule}` is defined twice"),
            ProblemKind::DuplicateMechanism => write!(f, "{kind} `{id}` is defined twice"),
            ProblemKind::Mechanism { type_name, error } => {
                write!(f, "{kind} `{id}` (type `{type_name}`): {error}")
            }
            ProblemKind::Override(error) => {
                write!(f, "rule `{rule}`: {kind} `{id}` with its override: {error}")
            }
            ProblemKind::UnknownMechanism { known } => {
                let known = if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                };
                match &self.rule {
                    Some(_) => write!(f, "unknown {kind} `{id}` in rule `{rule}` (known: {known})"),
                    // Named outside the rules: `api.authenticator`.
                    None => write!(
                        f,
                        "unknown {kind} `{id}` in `api.authenticator` (known: {known})"
                    ),
                }
            }
            ProblemKind::Path(e) => write!(f, "rule `{rule}`: {e}"),
            ProblemKind::Method(m) => {
                write!(f, "rule `{rule}`: method `{m}` is not an HTTP method")
            }
            ProblemKind::Matcher(e) => f.write_str(e),
            ProblemKind::StepNamesNone => write!(
                f,
                "rule `{rule}`: step {n} names no mechanism (use `authenticator`, `contextualizer`, `authorizer` or `finalizer`)"
            ),
            ProblemKind::StepNamesMany => {
                write!(f, "rule `{rule}`: step {n} names more than one mechanism")
            }
            ProblemKind::OutOfOrder { after } => write!(
                f,
                "rule `{rule}`: step {n} ({kind} `{id}`) comes after {}; the order is authenticators, contextualizers, authorizers, finalizers",
                after.with_article()
            ),
            ProblemKind::PrincipalNotAuthenticator => write!(
                f,
                "rule `{rule}`: step {n}: `principal` applies to authenticators only"
            ),
            ProblemKind::Condition(e) => write!(f, "rule `{rule}`: step {n} condition: {e}"),
            ProblemKind::ConditionReadsSubject => write!(
                f,
                "rule `{rule}`: step {n} condition reads `subject`, which is known only after authentication"
            ),
            ProblemKind::ConditionReadsError => write!(
                f,
                "rule `{rule}`: step {n} condition reads `error`, which exists only in `on_error`"
            ),
            ProblemKind::MechanismReadsError => write!(
                f,
                "rule `{rule}`: {kind} `{id}` reads `error`, which exists only in `on_error`"
            ),
            ProblemKind::NoAuthenticator => write!(
                f,
                "rule `{rule}`: needs at least one authenticator step (use `anonymous` for public routes)"
            ),
            ProblemKind::Setting { field, message } => {
                write!(f, "invalid setting `{field}`: {message}")
            }
            ProblemKind::Config(message) => f.write_str(message),
            ProblemKind::Internal(what) => write!(f, "rule `{rule}`: internal: {what}"),
        }
    }
}

/// The JSON form of a problem (see `heimdall validate --format json`).
#[derive(Serialize)]
pub struct ProblemJson<'a> {
    pub rule: Option<&'a str>,
    pub step: Option<usize>,
    pub mechanism: Option<MechanismJson<'a>>,
    pub problem: &'static str,
    pub message: String,
}

/// The mechanism of a problem, in JSON.
#[derive(Serialize)]
pub struct MechanismJson<'a> {
    pub kind: Kind,
    pub id: &'a str,
}

impl Problem {
    pub fn to_json(&self) -> ProblemJson<'_> {
        ProblemJson {
            rule: self.rule.as_deref(),
            step: self.step,
            mechanism: self
                .mechanism
                .as_ref()
                .map(|(kind, id)| MechanismJson { kind: *kind, id }),
            problem: self.what.code(),
            message: self.to_string(),
        }
    }
}

/// Every problem found while compiling, one per line.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct CompileError(pub Vec<Problem>);
