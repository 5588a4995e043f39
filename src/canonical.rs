//! The canonical request line: one spelling of a request's method, host and path, so that a rule
//! written for a resource judges every way of writing that resource.
//!
//! Both entry points (ext_authz and `/decision`) read the request through [`RequestLine::parse`]
//! before any rule is selected; the matcher, the decision log and CEL's `request.*` all see its
//! output. The policy (docs/security.md has the table) is:
//!
//! - **normalize** what every plausible server reads the same way (RFC 3986 §6.2.2): percent-encoded
//!   unreserved characters are decoded (`%61` → `a`), other percent-encodings get upper-case hex,
//!   characters that must be encoded are encoded (`"` → `%22`), empty segments are merged (`//`),
//!   the method is upper-cased, the host lower-cased without its port or one trailing dot;
//! - **refuse** (400) what servers read differently, so no rule can be walked around by a
//!   spelling: dot segments (`.`, `..`, `%2e`: Express routes them raw, Go and nginx resolve them),
//!   `;` (Tomcat and Jetty strip path parameters, others do not), `%2F`, `%5C` and `\` (decoded to
//!   a separator by some), `%25` followed by hex (double decoding), encoded or raw control
//!   characters and NUL, raw non-ASCII, encoded bytes that are not UTF-8 (overlong `%C0%AE`), a
//!   fragment, a request target that is not a path (absolute or asterisk form), encoded characters
//!   that fold to ASCII under NFKC or Windows best-fit conversion (fullwidth `．`, `／`), segments
//!   ending in `.` or a space (Windows strips them: `..%20` is `..`), and a host with userinfo, a
//!   non-numeric port or characters no host name has.
//!
//! The same stance as Spring Security's `StrictHttpFirewall`, for the same reasons. The policy
//! can only be made stricter ([`PathPolicy`]).

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Path settings (`server.paths`); each only makes the canonical form stricter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PathPolicy {
    /// `merge` (default: `//` reads as `/`, as nginx, Envoy's `merge_slashes` and most servers
    /// do) or `reject` (400).
    pub empty_segments: EmptySegments,
    /// Longest path accepted, in bytes (default 8192).
    pub max_length: usize,
}

impl Default for PathPolicy {
    fn default() -> Self {
        Self {
            empty_segments: EmptySegments::Merge,
            max_length: 8192,
        }
    }
}

/// What to do with an empty path segment (`/a//b`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EmptySegments {
    Merge,
    Reject,
}

/// Which part of the request line was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Method,
    Host,
    Path,
}

impl Part {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Method => "method",
            Self::Host => "host",
            Self::Path => "path",
        }
    }
}

/// Why a request line has no canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    Empty,
    NotAToken,
    Userinfo,
    BadPort,
    BadHostCharacter,
    EmptyLabel,
    TooLong,
    NotOriginForm,
    RawByte,
    Fragment,
    Backslash,
    Semicolon,
    BadPercentEncoding,
    EncodedSeparator,
    EncodedControl,
    EncodedSemicolon,
    DoubleEncoded,
    NotUtf8,
    DotSegment,
    EmptySegment,
    FoldsToAscii,
    TrailingDotOrSpace,
}

impl Problem {
    /// A short, stable name (metrics, JSON).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::NotAToken => "not_a_token",
            Self::Userinfo => "userinfo",
            Self::BadPort => "bad_port",
            Self::BadHostCharacter => "bad_host_character",
            Self::EmptyLabel => "empty_label",
            Self::TooLong => "too_long",
            Self::NotOriginForm => "not_origin_form",
            Self::RawByte => "raw_byte",
            Self::Fragment => "fragment",
            Self::Backslash => "backslash",
            Self::Semicolon => "semicolon",
            Self::BadPercentEncoding => "bad_percent_encoding",
            Self::EncodedSeparator => "encoded_separator",
            Self::EncodedControl => "encoded_control",
            Self::EncodedSemicolon => "encoded_semicolon",
            Self::DoubleEncoded => "double_encoded",
            Self::NotUtf8 => "not_utf8",
            Self::DotSegment => "dot_segment",
            Self::EmptySegment => "empty_segment",
            Self::FoldsToAscii => "folds_to_ascii",
            Self::TrailingDotOrSpace => "trailing_dot_or_space",
        }
    }

    const fn explanation(self) -> &'static str {
        match self {
            Self::Empty => "is empty",
            Self::NotAToken => "is not an HTTP method token",
            Self::Userinfo => "carries userinfo (`user@`)",
            Self::BadPort => "has a port that is not a number from 0 to 65535",
            Self::BadHostCharacter => "contains a character no host name has",
            Self::EmptyLabel => "has an empty label (`..`)",
            Self::TooLong => "is too long",
            Self::NotOriginForm => {
                "does not start with `/` (absolute-form and asterisk-form targets are refused)"
            }
            Self::RawByte => "contains a space, control character or raw non-ASCII byte",
            Self::Fragment => "contains a fragment (`#`)",
            Self::Backslash => "contains a backslash, which some servers read as `/`",
            Self::Semicolon => {
                "contains `;`: path parameters are stripped by some servers and kept by others"
            }
            Self::BadPercentEncoding => "contains `%` not followed by two hex digits",
            Self::EncodedSeparator => {
                "contains an encoded `/` or `\\` (%2F, %5C), which some servers decode to a separator"
            }
            Self::EncodedControl => "encodes a control character or NUL",
            Self::EncodedSemicolon => "contains an encoded `;` (%3B)",
            Self::DoubleEncoded => "is double-encoded (`%25` followed by two hex digits)",
            Self::NotUtf8 => "percent-encodes bytes that are not UTF-8 (such as an overlong `.`)",
            Self::DotSegment => {
                "contains a `.` or `..` segment (plain or encoded), which servers resolve differently"
            }
            Self::EmptySegment => "contains an empty segment (`//`), refused by server.paths",
            Self::FoldsToAscii => {
                "percent-encodes a character that folds to ASCII (such as a fullwidth `．` or `／`), which Windows best-fit conversion and NFKC read as that ASCII"
            }
            Self::TrailingDotOrSpace => {
                "has a segment ending in `.` or a space, which Windows servers strip (`..%20` is `..`)"
            }
        }
    }
}

/// A request line heimdall will not judge: which part, why, and at which byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub part: Part,
    pub problem: Problem,
    /// Byte offset of the problem in the part as received, when it has one.
    pub offset: Option<usize>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the {} {}",
            self.part.as_str(),
            self.problem.explanation()
        )?;
        if let Some(offset) = self.offset {
            write!(f, " (at byte {offset})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Refusal {}

fn refuse(part: Part, problem: Problem, offset: Option<usize>) -> Refusal {
    Refusal {
        part,
        problem,
        offset,
    }
}

/// A request's method, host and path in canonical form, and its raw query. Owns only what
/// canonicalization had to rewrite: a request already in canonical form borrows everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLine<'a> {
    /// Upper-case HTTP method.
    pub method: Cow<'a, str>,
    /// The authority as received, for URLs (login redirects); never matched.
    pub authority: &'a str,
    /// Lower-case host without port or trailing dot.
    pub host: Cow<'a, str>,
    /// The canonical path (see the module documentation).
    pub path: Cow<'a, str>,
    /// The query without `?` or fragment, as received.
    pub query: &'a str,
}

impl<'a> RequestLine<'a> {
    /// Canonicalizes a request line; `path_and_query` is split at the first `?`.
    pub fn parse(
        method: &'a str,
        authority: &'a str,
        path_and_query: &'a str,
        policy: &PathPolicy,
    ) -> Result<Self, Refusal> {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        // A fragment never reaches a server, but a hand-written `/decision` URI might carry one.
        let query = query.split_once('#').map_or(query, |(q, _)| q);
        Ok(Self {
            method: canonical_method(method)?,
            authority,
            host: canonical_host(authority)?,
            path: canonical_path(path, policy)?,
            query,
        })
    }

    /// A request line heimdall makes up itself (the policy API's synthetic request); trusted to be
    /// canonical already.
    pub const fn internal(method: &'static str, path: &'static str) -> RequestLine<'static> {
        RequestLine {
            method: Cow::Borrowed(method),
            authority: "",
            host: Cow::Borrowed(""),
            path: Cow::Borrowed(path),
            query: "",
        }
    }
}

/// RFC 9110 `tchar`.
const fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// The longest method accepted; the longest registered one (`UPDATEREDIRECTREF`) has 17 bytes.
const MAX_METHOD: usize = 32;

/// The method, upper-case: methods compare case-insensitively, so a lower-case `delete` is judged
/// by a `DELETE` rule (servers such as Node's upper-case it, and rules are written upper-case).
pub fn canonical_method(raw: &str) -> Result<Cow<'_, str>, Refusal> {
    if raw.is_empty() {
        return Err(refuse(Part::Method, Problem::Empty, None));
    }
    if raw.len() > MAX_METHOD {
        return Err(refuse(Part::Method, Problem::TooLong, None));
    }
    if let Some(at) = raw.bytes().position(|b| !is_tchar(b)) {
        return Err(refuse(Part::Method, Problem::NotAToken, Some(at)));
    }
    Ok(if raw.bytes().any(|b| b.is_ascii_lowercase()) {
        Cow::Owned(raw.to_ascii_uppercase())
    } else {
        Cow::Borrowed(raw)
    })
}

/// The longest host name (RFC 1035: 253 characters written out).
const MAX_HOST: usize = 253;

/// The host of an authority: without port and brackets, lower-case, without one trailing dot
/// (`Example.COM.:443` → `example.com`). Userinfo, a non-numeric port, empty labels and
/// characters no host has are refused, so a host-scoped rule cannot be escaped by spelling.
pub fn canonical_host(authority: &str) -> Result<Cow<'_, str>, Refusal> {
    let fail = |problem, offset| Err(refuse(Part::Host, problem, offset));
    if authority.is_empty() {
        return fail(Problem::Empty, None);
    }
    if let Some(at) = authority.find('@') {
        return fail(Problem::Userinfo, Some(at));
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        // An IPv6 literal, parsed: no zone identifier, no IPvFuture.
        let Some((inner, after)) = rest.split_once(']') else {
            return fail(Problem::BadHostCharacter, None);
        };
        if inner.parse::<std::net::Ipv6Addr>().is_err() {
            return fail(Problem::BadHostCharacter, Some(1));
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return fail(Problem::BadPort, Some(inner.len() + 2)),
            },
        };
        (inner, port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if let Some(port) = port
        && (port.is_empty()
            || port.len() > 5
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u32>().map_or(true, |p| p > 65535))
    {
        return fail(Problem::BadPort, Some(host.len() + 1));
    }
    if authority.starts_with('[') {
        // One spelling per address: `[::FFFF:127.0.0.1]` and `[0:0::ffff:7f00:1]` alike.
        return match host.parse::<std::net::Ipv6Addr>() {
            Ok(address) => Ok(Cow::Owned(address.to_string())),
            Err(_) => fail(Problem::BadHostCharacter, Some(1)),
        };
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() {
        return fail(Problem::Empty, None);
    }
    if name.len() > MAX_HOST {
        return fail(Problem::TooLong, None);
    }
    if let Some(at) = name
        .bytes()
        .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')))
    {
        return fail(Problem::BadHostCharacter, Some(at));
    }
    if name.starts_with('.') || name.ends_with('.') || name.contains("..") {
        return fail(Problem::EmptyLabel, None);
    }
    Ok(lower(name))
}

fn lower(host: &str) -> Cow<'_, str> {
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// RFC 3986 `unreserved`: decoded wherever it appears encoded.
const fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` minus `%` and `;` (handled apart): kept as they are.
const fn is_plain_pchar(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
        )
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Whether `raw` is canonical as it stands: only plain path characters, no `%`, no empty or dot
/// segment. The common case, checked without allocating.
fn already_canonical(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    if !bytes.iter().all(|&b| b == b'/' || is_plain_pchar(b)) {
        return false;
    }
    // Every segment but a trailing empty one must be non-empty and not end in `.` (which also
    // rules out `.` and `..`).
    let mut segments = raw.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last) || segment.ends_with('.') {
            return false;
        }
    }
    true
}

/// The canonical form of a path (without query). See the module documentation for the policy.
pub fn canonical_path<'a>(raw: &'a str, policy: &PathPolicy) -> Result<Cow<'a, str>, Refusal> {
    let fail = |problem, offset| Err(refuse(Part::Path, problem, offset));
    if !raw.starts_with('/') {
        return fail(Problem::NotOriginForm, Some(0));
    }
    if raw.len() > policy.max_length {
        return fail(Problem::TooLong, None);
    }
    if already_canonical(raw) {
        return Ok(Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    // Start offset (in `raw`) of the segment being read, and its start in `out`.
    let mut start = 1usize;
    let mut out_start;
    loop {
        let end = bytes
            .get(start..)
            .and_then(|rest| rest.iter().position(|&b| b == b'/'))
            .map_or(raw.len(), |p| start + p);
        let is_last = end == raw.len();
        out_start = out.len();
        out.push('/');
        decode_segment(raw, start, end, &mut out)?;
        let segment = out.get(out_start + 1..).unwrap_or("");
        // Checked on the output, so `%25%32%65` (whose digits arrive encoded) is caught too.
        if let Some(at) = double_encoded(segment) {
            return fail(Problem::DoubleEncoded, Some(start + at));
        }
        if segment == "." || segment == ".." {
            return fail(Problem::DotSegment, Some(start));
        }
        if segment.ends_with('.') || segment.ends_with("%20") {
            return fail(Problem::TrailingDotOrSpace, Some(start));
        }
        if segment.is_empty() && !is_last {
            if policy.empty_segments == EmptySegments::Reject {
                return fail(Problem::EmptySegment, Some(start));
            }
            out.truncate(out_start);
        }
        if is_last {
            break;
        }
        start = end + 1;
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// Where a canonical segment holds `%25` followed by two hex digits: a percent-encoded
/// percent-encoding, which servers that decode twice read as the character it encodes.
fn double_encoded(segment: &str) -> Option<usize> {
    let bytes = segment.as_bytes();
    bytes.windows(5).position(|w| {
        matches!(w, [b'%', b'2', b'5', hi, lo] if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit())
    })
}

/// Appends the canonical form of `raw[start..end]` (one segment) to `out`.
fn decode_segment(raw: &str, start: usize, end: usize, out: &mut String) -> Result<(), Refusal> {
    let fail = |problem, offset| Err(refuse(Part::Path, problem, Some(offset)));
    let bytes = raw.as_bytes();
    // Encoded bytes of one multi-byte UTF-8 character, validated once complete.
    let mut pending: smallvec::SmallVec<[u8; 4]> = smallvec::SmallVec::new();
    let mut pending_at = start;
    let mut i = start;
    while i < end {
        let b = bytes.get(i).copied().unwrap_or(0);
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex_value),
                bytes.get(i + 2).copied().and_then(hex_value),
            ) else {
                return fail(Problem::BadPercentEncoding, i);
            };
            if i + 2 >= end {
                return fail(Problem::BadPercentEncoding, i);
            }
            let value = hi << 4 | lo;
            if value >= 0x80 {
                if pending.is_empty() {
                    pending_at = i;
                }
                pending.push(value);
                if pending.len() > 4 {
                    return fail(Problem::NotUtf8, pending_at);
                }
                if let Ok(character) = std::str::from_utf8(&pending) {
                    if folds_to_ascii(character) {
                        return fail(Problem::FoldsToAscii, pending_at);
                    }
                    for byte in pending.drain(..) {
                        push_encoded(out, byte);
                    }
                }
                i += 3;
                continue;
            }
            if !pending.is_empty() {
                return fail(Problem::NotUtf8, pending_at);
            }
            match value {
                v if is_unreserved(v) => out.push(char::from(v)),
                b'/' | b'\\' => return fail(Problem::EncodedSeparator, i),
                b';' => return fail(Problem::EncodedSemicolon, i),
                v if v < 0x20 || v == 0x7f => return fail(Problem::EncodedControl, i),
                v => push_encoded(out, v),
            }
            i += 3;
            continue;
        }
        if !pending.is_empty() {
            return fail(Problem::NotUtf8, pending_at);
        }
        match b {
            b if is_plain_pchar(b) => out.push(char::from(b)),
            b'\\' => return fail(Problem::Backslash, i),
            b';' => return fail(Problem::Semicolon, i),
            b'#' => return fail(Problem::Fragment, i),
            b if b <= 0x20 || b >= 0x7f => return fail(Problem::RawByte, i),
            // `"`, `<`, `>`, `[`, `]`, `^`, `` ` ``, `{`, `|`, `}`: never delimiters, must be
            // encoded (RFC 3986 §2), and decode to themselves everywhere.
            b => push_encoded(out, b),
        }
        i += 1;
    }
    if pending.is_empty() {
        Ok(())
    } else {
        fail(Problem::NotUtf8, pending_at)
    }
}

/// Whether a (non-ASCII) character's compatibility form has an ASCII character in it: a fullwidth
/// `．`, `／` or `ａ`, a `ﬁ` ligature, a one-dot leader `․`. Such a character is another spelling
/// of ASCII to any server that normalizes (NFKC) or converts to a Windows code page (best fit).
fn folds_to_ascii(character: &str) -> bool {
    use unicode_normalization::UnicodeNormalization as _;
    character.nfkc().any(|c| c.is_ascii())
}

fn push_encoded(out: &mut String, byte: u8) {
    out.push('%');
    for nibble in [byte >> 4, byte & 0x0f] {
        let digit = HEX_UPPER.get(usize::from(nibble)).copied().unwrap_or(b'0');
        out.push(char::from(digit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_case::test_case;

    fn path(raw: &str) -> Result<String, Problem> {
        canonical_path(raw, &PathPolicy::default())
            .map(Cow::into_owned)
            .map_err(|r| r.problem)
    }

    #[test_case("/", "/")]
    #[test_case("/api/documents/42", "/api/documents/42")]
    #[test_case("/a/b/", "/a/b/" ; "trailing slash kept")]
    #[test_case("//admin/x", "/admin/x" ; "leading empty segment merged")]
    #[test_case("/admin//x//", "/admin/x/" ; "inner empty segments merged")]
    #[test_case("//", "/" ; "only slashes")]
    #[test_case("/%61dmin/x", "/admin/x" ; "encoded unreserved decoded")]
    #[test_case("/%41%7e%2D%5f", "/A~-_" ; "encoded unreserved in any case")]
    #[test_case("/a%3fb", "/a%3Fb" ; "reserved kept encoded with upper-case hex")]
    #[test_case("/caf%c3%a9", "/caf%C3%A9" ; "encoded utf8 kept")]
    #[test_case("/a\"b{c}", "/a%22b%7Bc%7D" ; "characters that must be encoded are")]
    #[test_case("/file%2ejson", "/file.json" ; "encoded dot inside a name")]
    #[test_case("/a%20b", "/a%20b" ; "an inner space is a name")]
    #[test_case("/.well-known/x", "/.well-known/x" ; "a leading dot is a name")]
    #[test_case("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,=" ; "sub-delims kept")]
    fn normalizes(raw: &str, want: &str) {
        assert_eq!(path(raw).as_deref(), Ok(want));
        // Idempotent: the canonical form is its own canonical form.
        assert_eq!(path(want).as_deref(), Ok(want));
        // The common case costs no allocation.
        if !raw.contains(['%', '"', '{']) && raw == want {
            assert!(matches!(
                canonical_path(raw, &PathPolicy::default()),
                Ok(Cow::Borrowed(_))
            ));
        }
    }

    #[test_case("/public/../admin/x", Problem::DotSegment)]
    #[test_case("/public/%2e%2e/admin/x", Problem::DotSegment)]
    #[test_case("/public/%2E./admin/x", Problem::DotSegment)]
    #[test_case("/./admin", Problem::DotSegment)]
    #[test_case("/admin/..", Problem::DotSegment)]
    #[test_case("/public/..%2Fadmin/x", Problem::EncodedSeparator)]
    #[test_case("/public/..%2fadmin/x", Problem::EncodedSeparator)]
    #[test_case("/public/..%5Cadmin", Problem::EncodedSeparator)]
    #[test_case("/public\\..\\admin", Problem::Backslash)]
    #[test_case("/admin;x/users", Problem::Semicolon)]
    #[test_case("/public/..;/admin", Problem::Semicolon)]
    #[test_case("/public/%2e%2e;/admin", Problem::Semicolon)]
    #[test_case("/api/documents%3bx/1", Problem::EncodedSemicolon)]
    #[test_case("/public/%252e%252e/admin", Problem::DoubleEncoded)]
    #[test_case("/public/%25%32%65%25%32%65/admin/x", Problem::DoubleEncoded ; "digits encoded too")]
    #[test_case("/d52len%25A%46dx", Problem::DoubleEncoded ; "hex digit encoded")]
    #[test_case("/a%00b", Problem::EncodedControl)]
    #[test_case("/a%0ab", Problem::EncodedControl)]
    #[test_case("/a%7fb", Problem::EncodedControl)]
    #[test_case("/a\u{0}b", Problem::RawByte)]
    #[test_case("/a b", Problem::RawByte)]
    #[test_case("/caf\u{e9}", Problem::RawByte)]
    #[test_case("/a#b", Problem::Fragment)]
    #[test_case("/a%zz", Problem::BadPercentEncoding)]
    #[test_case("/a%4", Problem::BadPercentEncoding)]
    #[test_case("/a%4/b", Problem::BadPercentEncoding)]
    #[test_case("/%c0%ae%c0%ae/admin", Problem::NotUtf8 ; "overlong dot")]
    #[test_case("/%c3", Problem::NotUtf8 ; "truncated utf8")]
    #[test_case("/%c3x", Problem::NotUtf8 ; "interrupted utf8")]
    #[test_case("/public/%EF%BC%8E%EF%BC%8E/admin/x", Problem::FoldsToAscii ; "fullwidth dots")]
    #[test_case("/public/..%EF%BC%8Fadmin/x", Problem::FoldsToAscii ; "fullwidth solidus")]
    #[test_case("/%EF%BD%81dmin", Problem::FoldsToAscii ; "fullwidth letter")]
    #[test_case("/%E2%80%A4%E2%80%A4/admin", Problem::FoldsToAscii ; "one dot leaders")]
    #[test_case("/public/..%20", Problem::TrailingDotOrSpace ; "dots and a space")]
    #[test_case("/admin./x", Problem::TrailingDotOrSpace ; "trailing dot")]
    #[test_case("/admin%20/x", Problem::TrailingDotOrSpace ; "trailing space")]
    #[test_case("/public/...", Problem::TrailingDotOrSpace ; "three dots")]
    #[test_case("http://evil/admin", Problem::NotOriginForm)]
    #[test_case("*", Problem::NotOriginForm)]
    #[test_case("", Problem::NotOriginForm)]
    fn refuses(raw: &str, problem: Problem) {
        assert_eq!(path(raw), Err(problem));
    }

    #[test]
    fn policy_can_be_stricter() {
        let strict = PathPolicy {
            empty_segments: EmptySegments::Reject,
            max_length: 8,
        };
        let problem = |raw| canonical_path(raw, &strict).map_err(|r| r.problem);
        assert_eq!(problem("//admin"), Err(Problem::EmptySegment));
        assert_eq!(problem("/a/"), Ok(Cow::Borrowed("/a/")));
        assert_eq!(problem("/123456789"), Err(Problem::TooLong));
    }

    #[test_case("GET", "GET")]
    #[test_case("delete", "DELETE")]
    #[test_case("Patch", "PATCH")]
    #[test_case("PROPFIND", "PROPFIND")]
    fn methods_are_upper_case(raw: &str, want: &str) {
        assert_eq!(canonical_method(raw).unwrap(), want);
    }

    #[test_case("" ; "empty")]
    #[test_case("GET " ; "space")]
    #[test_case("GE\nT" ; "newline")]
    #[test_case("G(T" ; "separator")]
    #[test_case("ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFGHIJ" ; "too long")]
    fn bad_methods_are_refused(raw: &str) {
        assert!(canonical_method(raw).is_err());
    }

    #[test_case("api.example.com", "api.example.com")]
    #[test_case("API.Example.COM", "api.example.com")]
    #[test_case("api.example.com.", "api.example.com" ; "trailing dot")]
    #[test_case("api.example.com.:8443", "api.example.com" ; "trailing dot and port")]
    #[test_case("api.example.com:443", "api.example.com")]
    #[test_case("[::1]:443", "::1")]
    #[test_case("[::FFFF:127.0.0.1]", "::ffff:127.0.0.1")]
    #[test_case("[0:0:0:0:0:0:0:1]", "::1" ; "ipv6 compressed")]
    #[test_case("127.0.0.1:10000", "127.0.0.1")]
    #[test_case("my_host", "my_host")]
    fn hosts_are_canonical(raw: &str, want: &str) {
        assert_eq!(canonical_host(raw).unwrap(), want);
    }

    #[test_case("", Problem::Empty)]
    #[test_case(".", Problem::Empty)]
    #[test_case("user@api.example.com", Problem::Userinfo)]
    #[test_case("api.example.com@evil", Problem::Userinfo)]
    #[test_case("api.example.com:http", Problem::BadPort)]
    #[test_case("api.example.com:", Problem::BadPort)]
    #[test_case("api.example.com:99999", Problem::BadPort)]
    #[test_case("api.example.com:80:80", Problem::BadPort)]
    #[test_case("[::1]x", Problem::BadPort)]
    #[test_case("[::1%25eth0]", Problem::BadHostCharacter)]
    #[test_case("[::.]", Problem::BadHostCharacter ; "not an ipv6 address")]
    #[test_case("[..::15]", Problem::BadHostCharacter ; "dots are not ipv6")]
    #[test_case("api.example.com..", Problem::EmptyLabel)]
    #[test_case(".api.example.com", Problem::EmptyLabel)]
    #[test_case("api example.com", Problem::BadHostCharacter)]
    #[test_case("api%2eexample.com", Problem::BadHostCharacter)]
    #[test_case("api.example.com/x", Problem::BadHostCharacter)]
    fn bad_hosts_are_refused(raw: &str, problem: Problem) {
        assert_eq!(canonical_host(raw).map_err(|r| r.problem), Err(problem));
    }

    #[test]
    fn refusals_say_what_and_where() {
        let refusal =
            RequestLine::parse("GET", "h", "/public/..;/admin?x=1", &PathPolicy::default())
                .unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "the path contains `;`: path parameters are stripped by some servers and kept by others (at byte 10)"
        );
        let line = RequestLine::parse(
            "get",
            "H.example.:80",
            "/%61?q=1#frag",
            &PathPolicy::default(),
        )
        .unwrap();
        assert_eq!(
            (&*line.method, &*line.host, &*line.path, line.query),
            ("GET", "h.example", "/a", "q=1")
        );
    }
}
