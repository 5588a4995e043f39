//! `/auth/login`, `/auth/callback`, `/auth/refresh` and `/auth/logout`: the HTTP side of
//! [`crate::login`] — query parameters, cookies, redirects and the contract's JSON.
//!
//! A browser gets cookies (`HttpOnly`, `SameSite=Lax`, `Secure` unless turned off for local
//! HTTP) and redirects; a JSON client (a login started without `redirect_uri`, or a callback
//! asked with `Accept: application/json`) gets `{"access_token", "token_type", "expires_in",
//! "refresh_token"}`. Every answer carrying a token is `Cache-Control: no-store`.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRef, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::Deserialize;

use super::response::{Refusal, json};
use crate::login::{Issued, Login, LoginError, state_cookie_name};

/// What the login routes need: the login service, when login is configured.
#[derive(Clone, Default)]
pub(crate) struct LoginRoutes {
    pub login: Option<Arc<Login>>,
}

pub(crate) fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    LoginRoutes: FromRef<S>,
{
    Router::new()
        .route("/auth/login", get(login))
        .route("/auth/callback", get(callback))
        .route("/auth/refresh", post(refresh))
        .route("/auth/logout", post(logout))
}

fn not_configured() -> Response {
    Refusal::new(
        StatusCode::NOT_FOUND,
        "login is not configured (a `login` section or the OIDC_* variables)",
    )
    .into_response()
}

fn refusal(error: &LoginError) -> Response {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    if status.is_server_error() {
        tracing::warn!(%error, "login request failed at the provider");
    } else {
        tracing::info!(%error, "login request refused");
    }
    let mut response = json(status, &serde_json::json!({ "error": error.to_string() }));
    no_store(&mut response);
    response
}

fn no_store(response: &mut Response) {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// One `Set-Cookie` value.
fn set_cookie(
    login: &Login,
    name: &str,
    value: &str,
    path: &str,
    max_age: u64,
) -> Option<HeaderValue> {
    let cookies = &login.config().cookies;
    let mut cookie =
        format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax");
    if cookies.secure {
        cookie.push_str("; Secure");
    }
    if let Some(domain) = &cookies.domain {
        cookie.push_str("; Domain=");
        cookie.push_str(domain);
    }
    HeaderValue::try_from(cookie).ok()
}

fn append_cookie(response: &mut Response, cookie: Option<HeaderValue>) {
    if let Some(cookie) = cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
}

/// The value of cookie `name`, from every `Cookie` header.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"))
}

/// The path the login-state cookie is sent to: the callback's.
fn callback_path(login: &Login) -> String {
    openidconnect::url::Url::parse(&login.config().redirect_url)
        .map_or_else(|_| "/".to_owned(), |u| u.path().to_owned())
}

fn redirect(location: &str) -> Response {
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(value) = HeaderValue::try_from(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    no_store(&mut response);
    response
}

#[derive(Deserialize)]
struct LoginQuery {
    redirect_uri: Option<String>,
}

async fn login(
    State(routes): State<LoginRoutes>,
    query: Result<Query<LoginQuery>, QueryRejection>,
) -> Response {
    let Some(login) = routes.login.as_ref() else {
        return not_configured();
    };
    let Ok(Query(query)) = query else {
        return refusal(&LoginError::BadRequest(
            "the query string is not valid".into(),
        ));
    };
    let started = login.start(query.redirect_uri.as_deref()).await;
    login.count("login", &started);
    match started {
        Ok(started) => {
            let mut response = redirect(started.authorization_url.as_str());
            let max_age = login.config().login_ttl.as_secs();
            append_cookie(
                &mut response,
                set_cookie(
                    login,
                    &started.cookie_name,
                    &started.cookie_value,
                    &callback_path(login),
                    max_age,
                ),
            );
            response
        }
        Err(error) => refusal(&error),
    }
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

async fn callback(
    State(routes): State<LoginRoutes>,
    headers: HeaderMap,
    query: Result<Query<CallbackQuery>, QueryRejection>,
) -> Response {
    let Some(login) = routes.login.as_ref() else {
        return not_configured();
    };
    let result = finish(login, &headers, query.ok().map(|q| q.0)).await;
    login.count(
        "callback",
        &result.as_ref().map(|_| ()).map_err(|(e, _)| e.clone()),
    );
    match result {
        Ok(response) => response,
        Err((error, state_cookie)) => {
            let mut response = refusal(&error);
            // A failed callback ends that login: its cookie is of no further use.
            if let Some(name) = state_cookie {
                append_cookie(
                    &mut response,
                    set_cookie(login, &name, "", &callback_path(login), 0),
                );
            }
            response
        }
    }
}

/// The callback's work; the error carries the state cookie's name when there is one to clear.
async fn finish(
    login: &Login,
    headers: &HeaderMap,
    query: Option<CallbackQuery>,
) -> Result<Response, (LoginError, Option<String>)> {
    let query = query.ok_or_else(|| {
        (
            LoginError::BadRequest("the query string is not valid".into()),
            None,
        )
    })?;
    let state = query
        .state
        .as_deref()
        .ok_or_else(|| (LoginError::BadRequest("`state` is missing".into()), None))?;
    let name = state_cookie_name(state).ok_or_else(|| {
        (
            LoginError::BadRequest("`state` is not one heimdall issued".into()),
            None,
        )
    })?;
    if let Some(error) = &query.error {
        let description = query.error_description.as_deref().unwrap_or("");
        return Err((
            LoginError::Refused(format!(
                "the provider refused the login: {} {}",
                crate::redact::untrusted(error, 64),
                crate::redact::untrusted(description, 200)
            )),
            Some(name),
        ));
    }
    let Some(sealed) = cookie(headers, &name) else {
        return Err((
            LoginError::BadRequest(
                "no login in progress for this `state` in this browser (its cookie is missing or expired)"
                    .into(),
            ),
            None,
        ));
    };
    let code = query.code.as_deref().unwrap_or("");
    let logged_in = login
        .callback(code, state, sealed)
        .await
        .map_err(|e| (e, Some(name.clone())))?;
    let path = callback_path(login);
    let clear_state = set_cookie(login, &name, "", &path, 0);
    let mut response = match &logged_in.redirect {
        Some(to) if !wants_json(headers) => {
            let mut response = redirect(to.as_str());
            set_session_cookies(login, &mut response, &logged_in.session);
            response
        }
        _ => session_json(&logged_in.session),
    };
    append_cookie(&mut response, clear_state);
    Ok(response)
}

fn session_json(session: &Issued) -> Response {
    let mut body = serde_json::json!({
        "access_token": session.access_token,
        "token_type": "Bearer",
        "expires_in": session.expires_in,
    });
    if let (Some(refresh), Some(object)) = (&session.refresh_token, body.as_object_mut()) {
        object.insert("refresh_token".into(), refresh.clone().into());
    }
    let mut response = json(StatusCode::OK, &body);
    no_store(&mut response);
    response
}

fn set_session_cookies(login: &Login, response: &mut Response, session: &Issued) {
    let cookies = &login.config().cookies;
    append_cookie(
        response,
        set_cookie(
            login,
            &cookies.session,
            &session.access_token,
            "/",
            session.expires_in,
        ),
    );
    if let Some(refresh) = &session.refresh_token {
        append_cookie(
            response,
            set_cookie(
                login,
                &cookies.refresh,
                refresh,
                "/auth",
                session.refresh_expires_in,
            ),
        );
    }
}

fn clear_session_cookies(login: &Login, response: &mut Response) {
    let cookies = &login.config().cookies;
    append_cookie(response, set_cookie(login, &cookies.session, "", "/", 0));
    append_cookie(
        response,
        set_cookie(login, &cookies.refresh, "", "/auth", 0),
    );
}

#[derive(Deserialize)]
struct RefreshBody {
    refresh_token: Option<String>,
}

/// The refresh envelope of a refresh or logout: a JSON or form body's `refresh_token`, else
/// the refresh cookie. The flag says it came from the cookie (a browser).
fn envelope(
    login: &Login,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Option<(String, bool)>, LoginError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !body.is_empty() {
        let parsed: Option<RefreshBody> = if content_type.starts_with("application/json") {
            Some(serde_json::from_slice(body).map_err(|e| {
                LoginError::BadRequest(format!("the body is not valid JSON: {e}").into())
            })?)
        } else if content_type.starts_with("application/x-www-form-urlencoded") {
            Some(form_body(body))
        } else {
            None
        };
        if let Some(token) = parsed
            .and_then(|b| b.refresh_token)
            .filter(|t| !t.is_empty())
        {
            return Ok(Some((token, false)));
        }
    }
    Ok(cookie(headers, &login.config().cookies.refresh).map(|c| (c.to_owned(), true)))
}

fn form_body(body: &Bytes) -> RefreshBody {
    let refresh_token = openidconnect::url::form_urlencoded::parse(body)
        .find(|(k, _)| k == "refresh_token")
        .map(|(_, v)| v.into_owned());
    RefreshBody { refresh_token }
}

async fn refresh(State(routes): State<LoginRoutes>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(login) = routes.login.as_ref() else {
        return not_configured();
    };
    let result = async {
        let (token, from_cookie) = envelope(login, &headers, &body)?.ok_or_else(|| {
            LoginError::Refused(
                "no refresh token (a `refresh_token` in the body, or the refresh cookie)".into(),
            )
        })?;
        let session = login.refresh(&token).await?;
        Ok::<_, LoginError>((session, from_cookie))
    }
    .await;
    login.count("refresh", &result);
    match result {
        Ok((session, from_cookie)) => {
            let mut response = session_json(&session);
            if from_cookie {
                set_session_cookies(login, &mut response, &session);
            }
            response
        }
        Err(error) => refusal(&error),
    }
}

#[derive(Deserialize)]
struct LogoutQuery {
    post_logout_redirect_uri: Option<String>,
    /// `true`: also refuse every access token issued to the principal so far, on every
    /// replica (the `principal.revoked` event; needs NATS).
    #[serde(default)]
    everywhere: bool,
}

async fn logout(
    State(routes): State<LoginRoutes>,
    headers: HeaderMap,
    query: Result<Query<LogoutQuery>, QueryRejection>,
    body: Bytes,
) -> Response {
    let Some(login) = routes.login.as_ref() else {
        return not_configured();
    };
    let (post_logout, everywhere) = match query {
        Ok(Query(q)) => (q.post_logout_redirect_uri, q.everywhere),
        Err(_) => {
            let mut response = refusal(&LoginError::BadRequest(
                "the query string is not valid".into(),
            ));
            clear_session_cookies(login, &mut response);
            return response;
        }
    };
    let result = async {
        let token = envelope(login, &headers, &body)?;
        login
            .logout(
                token.as_ref().map(|(t, _)| t.as_str()),
                post_logout.as_deref(),
                everywhere,
            )
            .await
    }
    .await;
    login.count("logout", &result);
    let mut response = match result {
        Ok(done) => {
            if wants_json(&headers) {
                let mut response = json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "logged_out": true,
                        "revoked": done.revoked,
                        "everywhere": everywhere,
                        "end_session_url": done.end_session.as_ref().map(|u| u.as_str()),
                    }),
                );
                no_store(&mut response);
                response
            } else if let Some(url) = &done.end_session {
                redirect(url.as_str())
            } else {
                let mut response = StatusCode::NO_CONTENT.into_response();
                no_store(&mut response);
                response
            }
        }
        Err(error) => refusal(&error),
    };
    // The session ends in this browser whatever the provider said.
    clear_session_cookies(login, &mut response);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_in_any_cookie_header() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; heimdall_refresh=v4.x"),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("b=\"2\""));
        assert_eq!(cookie(&headers, "heimdall_refresh"), Some("v4.x"));
        assert_eq!(cookie(&headers, "b"), Some("2"));
        assert_eq!(cookie(&headers, "c"), None);
        assert_eq!(cookie(&headers, "heimdall"), None);
    }
}
