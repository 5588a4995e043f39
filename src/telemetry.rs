//! Logging: `tracing` with an `EnvFilter` (`RUST_LOG` overrides the configured level), plain or
//! JSON output on stderr, and the helpers that keep untrusted text and secrets out of it.
//!
//! Log lines must be trustworthy: a value that came from a request (a token footer, a header,
//! a path) must not be able to end a line and start a forged one, move the cursor or reorder
//! text. So escaping happens at the root, for every field of every event and span, not at the
//! call sites: the plain format writes fields through [`EscapingFields`], the JSON format
//! through [`JsonSafeWriter`] (serde already escapes what JSON requires; the writer adds the
//! rest). URLs that may carry credentials go through [`redact_url`] before they are shown.

pub mod otel;

use std::fmt::{self, Write as _};
use std::io;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::{FormatFields, MakeWriter};
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{LogConfig, LogFormat};
use crate::redact::{needs_escape, write_escaped};

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init(config: &LogConfig) {
    let _ = subscriber(config.format, log_filter(config), ansi(), std::io::stderr).try_init();
}

/// Installs the global subscriber with OpenTelemetry export when `tracing` sets an endpoint
/// (see [`otel`]); without one this is [`init`]. Runs inside the tokio runtime, which carries
/// the exporter. Returns the tracer to shut down at exit.
pub fn init_with_tracing(
    log: &LogConfig,
    tracing: &crate::config::otel::TracingConfig,
) -> Result<Option<otel::Tracing>, otel::TracingError> {
    let Some((handle, tracer)) = otel::build(tracing)? else {
        init(log);
        return Ok(None);
    };
    let installed = traced_subscriber(log.format, log_filter(log), ansi(), std::io::stderr, tracer)
        .try_init()
        .is_ok();
    if installed {
        crate::trace_context::enable();
    }
    Ok(Some(handle))
}

fn log_filter(config: &LogConfig) -> EnvFilter {
    EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

fn ansi() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
}

/// What the OpenTelemetry layer receives: heimdall's spans, its events at `info` and above
/// (span events: a denial's reason, a warning), and the pipeline's step events.
fn exported(metadata: &tracing::Metadata<'_>) -> bool {
    let target = metadata.target();
    target.starts_with("heimdall")
        && (metadata.is_span()
            || *metadata.level() <= tracing::Level::INFO
            || target == crate::trace_context::STEP_TARGET)
}

/// [`subscriber`] plus the OpenTelemetry layer. Each layer filters for itself: the log filter
/// (`log.level`, `RUST_LOG`) decides what is written, [`exported`] what becomes a span, so a
/// quiet log level does not switch tracing off. Log lines written inside a decision carry its
/// span, and with it the `trace_id` field.
pub fn traced_subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    ansi: bool,
    writer: W,
    tracer: opentelemetry_sdk::trace::SdkTracer,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        // Per-span bookkeeping nobody asked for: busy/idle times, code locations, threads.
        .with_tracked_inactivity(false)
        .with_location(false)
        .with_threads(false)
        .with_filter(tracing_subscriber::filter::filter_fn(exported));
    let registry = tracing_subscriber::registry().with(spans);
    match format {
        LogFormat::Plain => Box::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .fmt_fields(EscapingFields::default())
                    .with_writer(writer)
                    .with_filter(filter),
            ),
        ),
        LogFormat::Json => Box::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .json()
                    .flatten_event(true)
                    .with_writer(JsonSafeWriter(writer))
                    .with_filter(filter),
            ),
        ),
    }
}

/// The subscriber [`init`] installs, writing to `writer`; tests capture its output.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    ansi: bool,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match format {
        LogFormat::Plain => Box::new(
            builder
                .fmt_fields(EscapingFields::default())
                .with_writer(writer)
                .finish(),
        ),
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_writer(JsonSafeWriter(writer))
                .finish(),
        ),
    }
}

/// The plain format's field formatter: tracing-subscriber's own layout (`name=value`, the
/// message first), with every character of [`needs_escape`] escaped in names and values,
/// whether recorded as a string, with `%` (Display), `?` (Debug) or as an error.
#[derive(Debug, Default)]
pub struct EscapingFields {
    inner: DefaultFields,
}

impl<'writer> FormatFields<'writer> for EscapingFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut escaper = Escaper(&mut writer);
        self.inner.format_fields(Writer::new(&mut escaper), fields)
    }
}

/// A `fmt::Write` that escapes what passes through it.
struct Escaper<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Escaper<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_escaped(self.0, s)
    }
}

/// The JSON format's writer. serde_json escapes quotes, backslashes and C0 controls; it writes
/// DEL, C1 controls, U+2028/U+2029 and the invisible format characters raw. In a JSON line
/// these can only occur inside strings, so each is rewritten as the equivalent `\uXXXX`
/// escape: the document means the same, and no raw character can mislead a terminal or a
/// JavaScript log viewer.
#[derive(Debug, Clone)]
pub struct JsonSafeWriter<W>(pub W);

impl<'a, W: MakeWriter<'a>> MakeWriter<'a> for JsonSafeWriter<W> {
    type Writer = JsonSafe<W::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        JsonSafe(self.0.make_writer())
    }
}

/// One event's writer of [`JsonSafeWriter`].
#[derive(Debug)]
pub struct JsonSafe<W>(W);

impl<W: io::Write> io::Write for JsonSafe<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The formatter hands over whole events (a String), so `buf` is UTF-8; anything else
        // is passed on untouched rather than lost.
        match std::str::from_utf8(buf) {
            Ok(text) if text.chars().any(|c| c >= '\u{7f}' && needs_escape(c)) => {
                let mut out = String::with_capacity(text.len() + 12);
                for c in text.chars() {
                    if c >= '\u{7f}' && needs_escape(c) {
                        // Every such character is in the BMP: one \uXXXX escape.
                        let _ = write!(out, "\\u{:04x}", u32::from(c));
                    } else {
                        out.push(c);
                    }
                }
                self.0.write_all(out.as_bytes())?;
            }
            _ => self.0.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redact::*;
    use std::borrow::Cow;

    /// Collects what the subscriber writes (a channel: std's Mutex is not used in this crate).
    #[derive(Clone)]
    struct Capture(std::sync::mpsc::Sender<Vec<u8>>);

    impl io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.send(buf.to_vec()).map_err(io::Error::other)?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    const HOSTILE: &str = "kid\n2025-01-01T00:00:00Z  INFO heimdall: forged\r\u{1b}[31m\u{7f}\u{85}\u{2028}\u{2029}\u{202e}x";

    fn log_with(format: LogFormat) -> String {
        let (sender, receiver) = std::sync::mpsc::channel();
        let subscriber = subscriber(format, EnvFilter::new("info"), false, Capture(sender));
        log_hostile(subscriber, receiver)
    }

    /// As [`log_with`], through the subscriber with the OpenTelemetry layer.
    fn traced_log_with(format: LogFormat) -> String {
        let (sender, receiver) = std::sync::mpsc::channel();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "test");
        let subscriber = traced_subscriber(
            format,
            EnvFilter::new("info"),
            false,
            Capture(sender),
            tracer,
        );
        log_hostile(subscriber, receiver)
    }

    fn log_hostile(
        subscriber: Box<dyn tracing::Subscriber + Send + Sync>,
        receiver: std::sync::mpsc::Receiver<Vec<u8>>,
    ) -> String {
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", path = HOSTILE);
            let _entered = span.enter();
            tracing::event!(
                target: crate::trace_context::STEP_TARGET,
                tracing::Level::DEBUG,
                step.id = HOSTILE,
                "step"
            );
            let error = std::io::Error::other(HOSTILE.to_owned());
            tracing::info!(
                reason = %HOSTILE,
                debug = ?HOSTILE,
                plain = HOSTILE,
                error = &error as &(dyn std::error::Error + 'static),
                "message {HOSTILE}"
            );
        });
        let bytes: Vec<u8> = receiver.try_iter().flatten().collect();
        String::from_utf8(bytes).unwrap()
    }

    fn assert_clean(out: &str) {
        assert_eq!(out.matches('\n').count(), 1, "one line: {out:?}");
        assert!(out.ends_with('\n'), "{out:?}");
        let body = out.trim_end_matches('\n');
        assert!(
            !body.chars().any(needs_escape),
            "raw control or format character in {body:?}"
        );
    }

    #[test]
    fn plain_lines_cannot_be_forged() {
        let out = log_with(LogFormat::Plain);
        assert_clean(&out);
        // The layout is tracing-subscriber's, with the escapes in place of the characters.
        assert!(out.contains("INFO request{path=\"kid\\n2025"), "{out}");
        // tracing-subscriber itself writes ESC and DEL in messages as `\x1b`, `\x7f`.
        assert!(
            out.contains("message kid\\n2025-01-01T00:00:00Z  INFO heimdall: forged\\r\\x1b[31m\\x7f\\u{85}\\u{2028}\\u{2029}\\u{202e}x reason="),
            "{out}"
        );
        assert!(out.contains(" reason=kid\\n2025"), "{out}");
        assert!(out.contains(" debug=\"kid\\n2025"), "{out}");
        assert!(out.contains(" error=kid\\n2025"), "{out}");
    }

    #[test]
    fn json_lines_cannot_be_forged_and_still_parse() {
        let out = log_with(LogFormat::Json);
        assert_clean(&out);
        let parsed: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        // The escapes are JSON's own: the value reads back exactly.
        assert_eq!(parsed["reason"], HOSTILE);
        assert_eq!(parsed["plain"], HOSTILE);
        assert_eq!(parsed["message"], format!("message {HOSTILE}"));
        assert!(out.contains("\\u007f") && out.contains("\\u2028"), "{out}");
    }

    /// With tracing on the log layer is another (per-layer filtered) one: the same escaping,
    /// and no line for the step events below the log level.
    #[test]
    fn traced_lines_cannot_be_forged_either() {
        let plain = traced_log_with(LogFormat::Plain);
        assert_clean(&plain);
        assert!(plain.contains(" reason=kid\\n2025"), "{plain}");
        let json = traced_log_with(LogFormat::Json);
        assert_clean(&json);
        let parsed: serde_json::Value = serde_json::from_str(json.trim_end()).unwrap();
        assert_eq!(parsed["reason"], HOSTILE);
        assert_eq!(parsed["span"]["path"], HOSTILE);
    }

    #[test]
    fn escape_leaves_ordinary_text_alone() {
        assert!(matches!(
            escape("GET /päth?q=1 ✓ \\n"),
            Cow::Borrowed("GET /päth?q=1 ✓ \\n")
        ));
        assert_eq!(
            escape("a\nb\tc\u{1b}d\u{2028}"),
            "a\\nb\\tc\\u{1b}d\\u{2028}"
        );
        assert_eq!(untrusted("abc\ndef", 4), "abc\\n…");
        assert_eq!(untrusted("abc", 4), "abc");
    }

    #[test]
    fn urls_lose_their_credentials() {
        for (url, shown) in [
            ("nats://nats:4222", "nats://nats:4222"),
            ("nats://user:s3cret@nats:4222", "nats://user:***@nats:4222"),
            ("nats://t0ken@nats:4222", "nats://***@nats:4222"),
            ("tls://u:p@a:1,nats://b:2", "tls://u:***@a:1,nats://b:2"),
            ("nats://a:1,nats://u:p@b:2", "nats://a:1,nats://u:***@b:2"),
            (
                "http://u:p%40ss@cerbos:3593/x",
                "http://u:***@cerbos:3593/x",
            ),
            ("u:pw@cerbos:3593", "u:***@cerbos:3593"),
            ("nats://u:p@ss@h:1", "nats://u:***@h:1"),
            ("nats://u:pa,ss@h:1", "nats://***,***@h:1"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn credentials_come_out_of_urls() {
        let creds = |user: &str, password: Option<&str>| UrlCredentials {
            user: user.into(),
            password: password.map(Into::into),
        };
        assert_eq!(
            split_credentials("nats://a:4222,nats://b:4222").unwrap(),
            ("nats://a:4222,nats://b:4222".into(), None)
        );
        assert_eq!(
            split_credentials("nats://u:p%40ss@a:1,nats://u:p%40ss@b:2").unwrap(),
            (
                "nats://a:1,nats://b:2".into(),
                Some(creds("u", Some("p@ss")))
            )
        );
        assert_eq!(
            split_credentials("tls://t0ken@a:1").unwrap(),
            ("tls://a:1".into(), Some(creds("t0ken", None)))
        );
        assert_eq!(
            split_credentials("u:p@cerbos:3593").unwrap(),
            ("cerbos:3593".into(), Some(creds("u", Some("p"))))
        );
        for bad in [
            "nats://u:p@a:1,nats://v:q@b:2",
            "nats://u:pa,ss@h:1",
            "nats://u:%ff@h:1",
        ] {
            let err = split_credentials(bad).unwrap_err();
            assert!(!err.contains('@'), "{err}");
        }
        let shown = format!("{:?}", creds("u", Some("s3cret")));
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
