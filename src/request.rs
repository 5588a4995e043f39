//! A borrowed, protocol-neutral view of the request being authorized.
//!
//! Both entry points build one: ext_authz from Envoy's `CheckRequest`, `/decision` from the
//! `X-Forwarded-*` headers of a gateway's sub-request. Nothing is copied: every field borrows
//! from the message the request arrived in.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;

use crate::canonical::RequestLine;

/// The request headers, in whichever shape they arrived. Names are matched case-insensitively;
/// Envoy already sends them lower-cased.
#[derive(Clone, Copy)]
pub enum Headers<'a> {
    /// Envoy's `headers` map (duplicates already joined with `,`).
    Map(&'a HashMap<String, String>),
    /// Envoy's `header_map` (`encode_raw_headers: true`): one entry per header line.
    List(&'a [HeaderValue]),
    /// An HTTP request received on the side port.
    Http(&'a http::HeaderMap),
    /// No headers at all.
    None,
}

/// The result of looking a header up where duplicates matter (credentials).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderLookup<'a> {
    Absent,
    One(&'a str),
    /// Sent more than once (or not valid UTF-8): ambiguous, so never a credential.
    Ambiguous,
}

fn header_value_str(h: &HeaderValue) -> Option<&str> {
    if h.raw_value.is_empty() {
        Some(h.value.as_str())
    } else {
        std::str::from_utf8(&h.raw_value).ok()
    }
}

impl<'a> Headers<'a> {
    /// The first value of `name` (lower-case).
    pub fn get(&self, name: &str) -> Option<&'a str> {
        match *self {
            // Envoy sends header names lower-cased (HTTP/2 and its own normalization), so a
            // miss is a miss: no case-insensitive scan of every header on the hot path.
            Self::Map(map) => map.get(name).map(String::as_str),
            Self::List(list) => list
                .iter()
                .find(|h| h.key.eq_ignore_ascii_case(name))
                .and_then(header_value_str),
            Self::Http(map) => map.get(name).and_then(|v| v.to_str().ok()),
            Self::None => None,
        }
    }

    /// Whether `name` (lower-case) was sent at all, whatever its value (even one that is not
    /// UTF-8, which [`Headers::get`] does not return).
    pub fn contains(&self, name: &str) -> bool {
        match *self {
            Self::Map(map) => map.contains_key(name),
            Self::List(list) => list.iter().any(|h| h.key.eq_ignore_ascii_case(name)),
            Self::Http(map) => map.contains_key(name),
            Self::None => false,
        }
    }

    /// Looks `name` up, reporting a header sent several times as ambiguous.
    pub fn get_unique(&self, name: &str) -> HeaderLookup<'a> {
        match *self {
            Self::Map(_) => self
                .get(name)
                .map_or(HeaderLookup::Absent, HeaderLookup::One),
            Self::List(list) => {
                let mut found = list.iter().filter(|h| h.key.eq_ignore_ascii_case(name));
                match (found.next(), found.next()) {
                    (None, _) => HeaderLookup::Absent,
                    (Some(h), None) => {
                        header_value_str(h).map_or(HeaderLookup::Ambiguous, HeaderLookup::One)
                    }
                    (Some(_), Some(_)) => HeaderLookup::Ambiguous,
                }
            }
            Self::Http(map) => {
                let mut found = map.get_all(name).iter();
                match (found.next(), found.next()) {
                    (None, _) => HeaderLookup::Absent,
                    (Some(v), None) => v
                        .to_str()
                        .map_or(HeaderLookup::Ambiguous, HeaderLookup::One),
                    (Some(_), Some(_)) => HeaderLookup::Ambiguous,
                }
            }
            Self::None => HeaderLookup::Absent,
        }
    }

    /// Every header name, once per header line, whatever its value (even one that is not UTF-8).
    pub fn for_each_name(&self, mut f: impl FnMut(&'a str)) {
        match *self {
            Self::Map(map) => map.keys().for_each(|k| f(k)),
            Self::List(list) => list.iter().for_each(|h| f(&h.key)),
            Self::Http(map) => map.keys().for_each(|k| f(k.as_str())),
            Self::None => {}
        }
    }

    /// Every header as `(name, value)`; names as received (Envoy: lower-case).
    pub fn for_each(&self, mut f: impl FnMut(&'a str, &'a str)) {
        match *self {
            Self::Map(map) => map.iter().for_each(|(k, v)| f(k, v)),
            Self::List(list) => list.iter().for_each(|h| {
                if let Some(v) = header_value_str(h) {
                    f(&h.key, v);
                }
            }),
            Self::Http(map) => map.iter().for_each(|(k, v)| {
                if let Ok(v) = v.to_str() {
                    f(k.as_str(), v);
                }
            }),
            Self::None => {}
        }
    }
}

/// The downstream peer as Envoy saw it.
#[derive(Clone, Copy, Default, Debug)]
pub struct Peer<'a> {
    /// The peer's IP address (Envoy sends no port here).
    pub address: &'a str,
    /// The principal of the peer's TLS certificate (URI SAN, else subject), when mTLS was used.
    pub principal: &'a str,
}

/// The request heimdall decides on.
#[derive(Clone, Copy)]
pub struct RequestView<'a> {
    pub id: &'a str,
    /// Upper-case.
    pub method: &'a str,
    pub scheme: &'a str,
    /// The authority as sent (may carry a port), for URLs only.
    pub authority: &'a str,
    /// The canonical host: lower-case, without port or trailing dot.
    pub host: &'a str,
    /// The canonical path without the query (see [`crate::canonical`]).
    pub path: &'a str,
    /// The raw query string without `?` (may be empty).
    pub query: &'a str,
    pub headers: Headers<'a>,
    pub peer: Peer<'a>,
    /// Envoy's per-route `context_extensions`.
    pub context_extensions: Option<&'a HashMap<String, String>>,
}

impl<'a> RequestView<'a> {
    /// Builds a view over a canonical request line (see [`crate::canonical`]): the only way in, so
    /// no entry point can judge a request as it was spelled.
    pub fn new(line: &'a RequestLine<'_>, scheme: &'a str, headers: Headers<'a>) -> Self {
        Self {
            id: "",
            method: &line.method,
            scheme,
            authority: line.authority,
            host: &line.host,
            path: &line.path,
            query: line.query,
            headers,
            peer: Peer::default(),
            context_extensions: None,
        }
    }

    /// The value of cookie `name` from the `cookie` header(s).
    pub fn cookie(&self, name: &str) -> Option<&'a str> {
        let header = self.headers.get("cookie")?;
        header.split(';').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
    }

    /// The request URL as the client sent it, for login redirects.
    pub fn url(&self) -> String {
        let scheme = if self.scheme.is_empty() {
            "http"
        } else {
            self.scheme
        };
        if self.query.is_empty() {
            format!("{scheme}://{}{}", self.authority, self.path)
        } else {
            format!("{scheme}://{}{}?{}", self.authority, self.path, self.query)
        }
    }

    /// Whether the client is a browser that wants HTML (for login redirects).
    pub fn accepts_html(&self) -> bool {
        self.headers
            .get("accept")
            .is_some_and(|a| a.contains("text/html"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_path_and_query() {
        let line = RequestLine::parse("GET", "a.example:443", "/x/y?a=1&b=2", &Default::default())
            .unwrap();
        let view = RequestView::new(&line, "https", Headers::None);
        assert_eq!(
            (view.path, view.query, view.host),
            ("/x/y", "a=1&b=2", "a.example")
        );
        assert_eq!(view.url(), "https://a.example:443/x/y?a=1&b=2");
    }

    #[test]
    fn duplicated_headers_are_ambiguous() {
        let list = vec![
            HeaderValue {
                key: "authorization".into(),
                value: "Bearer a".into(),
                raw_value: vec![],
            },
            HeaderValue {
                key: "authorization".into(),
                value: "".into(),
                raw_value: b"Bearer b".to_vec(),
            },
        ];
        let headers = Headers::List(&list);
        assert_eq!(headers.get_unique("authorization"), HeaderLookup::Ambiguous);
        assert_eq!(headers.get("authorization"), Some("Bearer a"));
        assert_eq!(
            Headers::List(&list[1..]).get_unique("authorization"),
            HeaderLookup::One("Bearer b")
        );
    }

    #[test]
    fn reads_cookies() {
        let map = HashMap::from([(
            "cookie".to_string(),
            "a=1; heimdall_token=v4.x; b=2".to_string(),
        )]);
        let line = RequestLine::parse("GET", "h", "/", &Default::default()).unwrap();
        let view = RequestView::new(&line, "http", Headers::Map(&map));
        assert_eq!(view.cookie("heimdall_token"), Some("v4.x"));
        assert_eq!(view.cookie("missing"), None);
    }
}
