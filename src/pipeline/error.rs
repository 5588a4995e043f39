//! Step errors and their classification: the kind decides the default status of a denial.

use std::sync::Arc;

/// What went wrong, in terms a client and an operator act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// No acceptable credential, or an invalid one: 401.
    Authentication,
    /// Authenticated but not allowed: 403.
    Authorization,
    /// A dependency (policy engine, attribute store, remote call) failed or timed out: 503.
    Communication,
    /// The request itself is unusable: 400.
    BadRequest,
    /// No rule matches the request: 403.
    NoRule,
    /// The policy engine refused the question as invalid (no roles, an empty resource id,
    /// duplicate actions, too many resources), or heimdall did before asking: 403. A denial,
    /// never "could not decide": a proxy that lets requests through when its authorizer fails
    /// (`failure_mode_allow`) must not let these through.
    InvalidPolicyRequest,
    /// heimdall could not decide (a broken expression, a bug): an error response.
    Internal,
}

impl ErrorKind {
    /// The name used in CEL (`error.kind`), logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Authentication => "authentication",
            Self::Authorization => "authorization",
            Self::Communication => "communication",
            Self::BadRequest => "bad_request",
            Self::NoRule => "no_rule",
            Self::InvalidPolicyRequest => "invalid_policy_request",
            Self::Internal => "internal",
        }
    }

    /// The status of a denial when no error handler answers.
    pub const fn default_status(self) -> u16 {
        match self {
            Self::Authentication => 401,
            Self::Authorization | Self::NoRule | Self::InvalidPolicyRequest => 403,
            Self::BadRequest => 400,
            Self::Communication => 503,
            Self::Internal => 500,
        }
    }
}

/// A failed step: its kind, the mechanism that failed and a message for the log (never sent
/// to the client, which only sees the status).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{mechanism}: {message}")]
pub struct StepError {
    pub kind: ErrorKind,
    pub mechanism: Arc<str>,
    pub message: String,
}

impl StepError {
    pub fn new(kind: ErrorKind, mechanism: &Arc<str>, message: impl Into<String>) -> Self {
        Self {
            kind,
            mechanism: Arc::clone(mechanism),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorKind;

    /// Only `communication` and `internal` are "could not decide"; every other kind, the policy
    /// engine's refusals included, is a denial with a 4xx status.
    #[test]
    fn a_policy_refusal_is_a_denial() {
        assert_eq!(ErrorKind::InvalidPolicyRequest.default_status(), 403);
        assert_eq!(
            ErrorKind::InvalidPolicyRequest.as_str(),
            "invalid_policy_request"
        );
        let outcome = crate::pipeline::Outcome::from_error(crate::pipeline::StepError::new(
            ErrorKind::InvalidPolicyRequest,
            &std::sync::Arc::from("documents"),
            "resource 0 (`document`): the id is empty",
        ));
        assert!(
            matches!(outcome.decision, crate::pipeline::Decision::Deny(ref r) if r.status == 403),
            "{:?}",
            outcome.decision
        );
    }
}
