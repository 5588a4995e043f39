//! Untrusted text and secrets made safe to show: control and invisible characters escaped,
//! long values cut, URL credentials hidden or taken out. A leaf module (nothing of heimdall's
//! below it), so the token, Cerbos, NATS and API code and the log formatter all share it.

use std::borrow::Cow;
use std::fmt;

/// Whether `c` must not reach a log as is: control characters (C0 including CR, LF and ESC,
/// DEL and C1 including NEL), the Unicode line and paragraph separators, and the invisible
/// format characters that reorder or hide text (bidi overrides and isolates, zero-width marks,
/// the BOM).
pub(crate) fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// `text` with every character of [`needs_escape`] written as a Rust-style escape (`\n`, `\r`,
/// `\t`, `\u{1b}`); other text, backslashes included, is unchanged. Borrowed when nothing
/// needs escaping, which is the common case. The log formatter writes escapes in place
/// ([`write_escaped`]); tests read them back through this.
#[cfg(test)]
pub(crate) fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    // Writing into a String cannot fail.
    let _ = write_escaped(&mut out, text);
    Cow::Owned(out)
}

pub(crate) fn write_escaped(out: &mut dyn fmt::Write, text: &str) -> fmt::Result {
    let mut rest = text;
    while let Some((at, c)) = rest.char_indices().find(|&(_, c)| needs_escape(c)) {
        let (clean, tail) = rest.split_at(at);
        out.write_str(clean)?;
        match c {
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            other => write!(out, "\\u{{{:x}}}", u32::from(other))?,
        }
        rest = tail.get(c.len_utf8()..).unwrap_or_default();
    }
    out.write_str(rest)
}

/// Untrusted text for an error message: escaped, and cut to `max` characters (with `…`) so a
/// 1 KiB footer cannot flood a log line.
pub(crate) fn untrusted(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(max).collect();
    let _ = write_escaped(&mut out, &head);
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// `url` with the credentials of its userinfo hidden: `nats://user:pass@host` shows as
/// `nats://user:***@host`, `nats://token@host` as `nats://***@host`. Comma-separated server
/// lists (NATS) are handled server by server; a URL without `@` is returned as is.
pub(crate) fn redact_url(url: &str) -> Cow<'_, str> {
    if !url.contains('@') {
        return Cow::Borrowed(url);
    }
    let servers: Vec<&str> = url.split(',').collect();
    let mut out = Vec::with_capacity(servers.len());
    for (i, server) in servers.iter().enumerate() {
        // A `,` inside a password splits one server in two: the part before it is userinfo too.
        let continued = servers
            .get(i + 1)
            .is_some_and(|next| next.contains('@') && !next.contains("://"));
        if continued && !server.contains('@') {
            let scheme = server.split_once("://").map_or("", |(scheme, _)| scheme);
            out.push(if scheme.is_empty() {
                "***".to_owned()
            } else {
                format!("{scheme}://***")
            });
        } else {
            out.push(redact_server(server));
        }
    }
    Cow::Owned(out.join(","))
}

fn redact_server(server: &str) -> String {
    let (scheme, rest) = match server.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, server),
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return server.to_owned();
    };
    // The user name stays (it says which account); a lone userinfo is a token, hidden whole.
    let shown = match userinfo.split_once(':') {
        Some((user, _)) if !user.contains('/') => format!("{user}:***"),
        _ => "***".to_owned(),
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{shown}@{host}"),
        None => format!("{shown}@{host}"),
    }
}

/// Credentials taken out of a URL's userinfo (percent-decoded). `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct UrlCredentials {
    /// The user, or the token when the userinfo has no `:` (`nats://token@host`).
    pub user: String,
    pub password: Option<String>,
}

impl fmt::Debug for UrlCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |present: bool| if present { "***" } else { "-" };
        f.debug_struct("UrlCredentials")
            .field("user", &shown(true))
            .field("password", &shown(self.password.is_some()))
            .finish()
    }
}

/// `url` without its userinfo, and the credentials it carried. Client libraries then get the
/// bare URL plus the credentials through their authentication options, so a library that logs
/// or reports its server address (async-nats logs the parsed URL, password included, at
/// debug) never holds a secret to show. Every server of a comma-separated list must carry the
/// same credentials or none. Errors never quote the URL.
pub(crate) fn split_credentials(
    url: &str,
) -> Result<(String, Option<UrlCredentials>), &'static str> {
    if !url.contains('@') {
        return Ok((url.to_owned(), None));
    }
    let servers: Vec<&str> = url.split(',').collect();
    let mut bare = Vec::with_capacity(servers.len());
    let mut found: Option<UrlCredentials> = None;
    for (i, server) in servers.iter().enumerate() {
        let continued = servers
            .get(i + 1)
            .is_some_and(|next| next.contains('@') && !next.contains("://"));
        if continued && !server.contains('@') {
            return Err("the credentials in the URL contain `,`: percent-encode it as `%2C`");
        }
        let (scheme, rest) = match server.split_once("://") {
            Some((scheme, rest)) => (Some(scheme), rest),
            None => (None, *server),
        };
        let Some((userinfo, host)) = rest.rsplit_once('@') else {
            bare.push((*server).to_owned());
            continue;
        };
        let decode = |text: &str| {
            percent_encoding::percent_decode_str(text)
                .decode_utf8()
                .map(|t| t.into_owned())
                .map_err(|_| "the credentials in the URL are not valid percent-encoded UTF-8")
        };
        let credentials = match userinfo.split_once(':') {
            Some((user, password)) => UrlCredentials {
                user: decode(user)?,
                password: Some(decode(password)?),
            },
            None => UrlCredentials {
                user: decode(userinfo)?,
                password: None,
            },
        };
        match &found {
            Some(previous) if *previous != credentials => {
                return Err("the servers of the URL carry different credentials");
            }
            _ => found = Some(credentials),
        }
        bare.push(match scheme {
            Some(scheme) => format!("{scheme}://{host}"),
            None => host.to_owned(),
        });
    }
    Ok((bare.join(","), found))
}

/// Serializes a URL field through [`redact_url`] (`#[serde(serialize_with = …)]`): the
/// configuration dump never shows credentials.
pub(crate) fn serialize_redacted_url<S: serde::Serializer>(
    url: &str,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(url))
}

/// Deserializes a `T` that must be written as a map, for settings that hold or point at
/// secrets. serde's own errors quote a wrongly typed value (`invalid type: string
/// "k4.secret.…"`); here any other shape is refused with `expecting` alone, so a secret pasted
/// in the wrong place never reaches an error message or a log.
pub(crate) fn deserialize_map_only<'de, D, T>(
    deserializer: D,
    expecting: &'static str,
) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    struct MapOnly<T> {
        expecting: &'static str,
        target: std::marker::PhantomData<T>,
    }

    impl<T> MapOnly<T> {
        fn refuse<E: serde::de::Error>(&self) -> Result<T, E> {
            Err(E::custom(format_args!(
                "expected {} (the value given is not shown)",
                self.expecting
            )))
        }
    }

    impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for MapOnly<T> {
        type Value = T;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.expecting)
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }

        // Every visitor method whose default error would quote the value.
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<T, E> {
            self.refuse()
        }
        fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<T, E> {
            self.refuse()
        }
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<T, E> {
            self.refuse()
        }
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<T, E> {
            self.refuse()
        }
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<T, E> {
            self.refuse()
        }
        fn visit_i128<E: serde::de::Error>(self, _: i128) -> Result<T, E> {
            self.refuse()
        }
        fn visit_u128<E: serde::de::Error>(self, _: u128) -> Result<T, E> {
            self.refuse()
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<T, E> {
            self.refuse()
        }
        fn visit_char<E: serde::de::Error>(self, _: char) -> Result<T, E> {
            self.refuse()
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<T, E> {
            self.refuse()
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<T, A::Error> {
            self.refuse()
        }
    }

    deserializer.deserialize_any(MapOnly {
        expecting,
        target: std::marker::PhantomData,
    })
}
