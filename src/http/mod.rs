//! The HTTP side port: one router per concern, merged here. It never shares a listener with
//! ext_authz, so a scrape or a policy question cannot delay a decision.
//!
//! - [`ops`]: health, readiness, metrics and the public PASETO keys;
//! - [`forward_auth`]: `/decision`, for gateways without ext_authz (Traefik `forwardAuth`,
//!   nginx `auth_request`, Kong);
//! - [`policy_api`]: `POST /check` and `POST /plan/resources`;
//! - [`login`]: `/auth/login`, `/auth/callback`, `/auth/refresh` and `/auth/logout`.
//!
//! Each handler extracts only the sub-state it needs (axum's `FromRef`), so a router's
//! dependencies are visible in its type and a test builds only those.

pub(crate) mod forward_auth;
pub(crate) mod login;
pub(crate) mod ops;
pub(crate) mod policy_api;
mod response;

use axum::Router;
use axum::extract::FromRef;

pub(crate) use forward_auth::ForwardAuth;
pub(crate) use login::LoginRoutes;
pub(crate) use ops::Ops;
pub(crate) use policy_api::PolicyApi;

/// Everything the side port serves from, one field per router.
#[derive(Clone)]
pub(crate) struct SideState {
    pub ops: Ops,
    pub forward_auth: ForwardAuth,
    pub policy_api: PolicyApi,
    pub login: LoginRoutes,
}

impl FromRef<SideState> for Ops {
    fn from_ref(state: &SideState) -> Self {
        state.ops.clone()
    }
}

impl FromRef<SideState> for ForwardAuth {
    fn from_ref(state: &SideState) -> Self {
        state.forward_auth.clone()
    }
}

impl FromRef<SideState> for LoginRoutes {
    fn from_ref(state: &SideState) -> Self {
        state.login.clone()
    }
}

impl FromRef<SideState> for PolicyApi {
    fn from_ref(state: &SideState) -> Self {
        state.policy_api.clone()
    }
}

/// The side-port router (tests drive it with `oneshot`).
pub(crate) fn router(state: SideState) -> Router {
    Router::new()
        .merge(ops::router())
        .merge(forward_auth::router())
        .merge(policy_api::router())
        .merge(login::router())
        .with_state(state)
}
