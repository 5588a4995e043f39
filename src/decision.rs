//! The output vocabulary of a decision: step errors and their kinds (the kind decides the
//! default status of a denial), what an allow adds to the request, and the denial answer.
//! Below the mechanisms and the pipeline, so both entry points and every mechanism share it
//! without importing the executor.

use std::borrow::Cow;
use std::sync::Arc;

use smallvec::SmallVec;

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

/// Headers for the upstream request and the downstream response of an allowed request.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Allowed {
    pub upstream_headers: SmallVec<[(Arc<str>, String); 4]>,
    pub remove_headers: SmallVec<[Arc<str>; 2]>,
    pub response_headers: SmallVec<[(Arc<str>, String); 2]>,
}

impl Allowed {
    /// Sets (overwrites) an upstream header.
    pub fn set_header(&mut self, name: &Arc<str>, value: String) {
        self.remove_headers.retain(|h| h != name);
        match self.upstream_headers.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.upstream_headers.push((Arc::clone(name), value)),
        }
    }

    /// Removes a header from the upstream request (and any value a finalizer set before).
    pub fn remove_header(&mut self, name: &Arc<str>) {
        self.upstream_headers.retain(|(n, _)| n != name);
        if !self.remove_headers.contains(name) {
            self.remove_headers.push(Arc::clone(name));
        }
    }
}

/// A denial or error answer to the client.
#[derive(Debug, Clone, PartialEq)]
pub struct Denial {
    pub status: u16,
    pub headers: Vec<(Cow<'static, str>, String)>,
    pub body: String,
}

impl Denial {
    /// The default answer for an error kind: its status and a short JSON body naming the kind
    /// (never the detail, which goes to the log).
    pub fn from_kind(kind: ErrorKind) -> Self {
        let mut headers = vec![(Cow::Borrowed("content-type"), "application/json".to_owned())];
        if kind == ErrorKind::Authentication {
            // RFC 9110 §15.5.2: a 401 carries a challenge.
            headers.push((
                Cow::Borrowed("www-authenticate"),
                "Bearer realm=\"heimdall\"".to_owned(),
            ));
        }
        Self {
            status: kind.default_status(),
            headers,
            body: format!("{{\"error\":\"{}\"}}", kind.as_str()),
        }
    }
}

/// What heimdall answers.
#[expect(
    clippy::large_enum_variant,
    reason = "one per request, moved not copied; boxing the common Allow case would allocate"
)]
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Allow(Allowed),
    Deny(Denial),
    /// heimdall could not decide: Envoy applies `failure_mode_allow` (never set in our configs).
    Error(Denial),
}

/// A decision with the error that led to it, for logs and metrics.
#[derive(Debug)]
pub struct Outcome {
    pub decision: Decision,
    pub error: Option<StepError>,
}

impl Outcome {
    /// A decision that no pipeline produced (no rule, a bad request, a timeout).
    pub fn from_error(error: StepError) -> Self {
        let response = Denial::from_kind(error.kind);
        let decision = match error.kind {
            ErrorKind::Internal | ErrorKind::Communication => Decision::Error(response),
            _ => Decision::Deny(response),
        };
        Self {
            decision,
            error: Some(error),
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
        let outcome = crate::decision::Outcome::from_error(crate::decision::StepError::new(
            ErrorKind::InvalidPolicyRequest,
            &std::sync::Arc::from("documents"),
            "resource 0 (`document`): the id is empty",
        ));
        assert!(
            matches!(outcome.decision, crate::decision::Decision::Deny(ref r) if r.status == 403),
            "{:?}",
            outcome.decision
        );
    }
}
