//! The `tracing` section: OpenTelemetry trace export over OTLP/gRPC, and the standard `OTEL_*`
//! environment variables that override it (as `PORT` or `NATS_URL` override theirs).
//!
//! Off unless an endpoint is set, in the file or by `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`;
//! `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn it off whatever the file says.
//! Values the SDK would quietly replace by a default (an unknown sampler, a ratio of 2) are
//! refused at load instead, naming the variable or field.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Env};

/// OpenTelemetry tracing: one span per decision and child spans for the calls it makes,
/// exported over OTLP/gRPC in batches that never hold a decision up.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// The collector's OTLP/gRPC address, `http://host:4317` (or `https://`, verified with
    /// the system's roots). Empty or absent: tracing is off and costs nothing.
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`, override it.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_endpoint"
    )]
    pub endpoint: Option<String>,
    /// `service.name` of heimdall's spans (`OTEL_SERVICE_NAME`).
    pub service_name: String,
    /// Which traces are kept (`OTEL_TRACES_SAMPLER`). The `parentbased_*` samplers follow
    /// the caller's sampled flag (Envoy's), so a trace is kept or dropped as a whole.
    pub sampler: Sampler,
    /// The share of traces kept by the `*traceidratio` samplers, 0 to 1
    /// (`OTEL_TRACES_SAMPLER_ARG`).
    #[serde(serialize_with = "serialize_ratio")]
    pub ratio: f64,
    /// Deadline of one export call to the collector (`OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`,
    /// `OTEL_EXPORTER_OTLP_TIMEOUT`, in milliseconds).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub export_timeout: Duration,
    /// The longest a finished span waits before its batch is sent (`OTEL_BSP_SCHEDULE_DELAY`,
    /// milliseconds).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub schedule_delay: Duration,
    /// Finished spans waiting for export; past it spans are dropped and counted in
    /// `heimdall_trace_spans_dropped_total` (`OTEL_BSP_MAX_QUEUE_SIZE`).
    pub max_queue_size: usize,
    /// Most spans in one export call, at most `max_queue_size` (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
    pub max_export_batch_size: usize,
    /// At shutdown, the longest heimdall waits to send the spans still queued.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub shutdown_timeout: Duration,
}

/// The OpenTelemetry samplers (the values of `OTEL_TRACES_SAMPLER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    Traceidratio,
    ParentbasedAlwaysOn,
    ParentbasedAlwaysOff,
    ParentbasedTraceidratio,
}

impl Sampler {
    const NAMES: [(&'static str, Self); 6] = [
        ("always_on", Self::AlwaysOn),
        ("always_off", Self::AlwaysOff),
        ("traceidratio", Self::Traceidratio),
        ("parentbased_always_on", Self::ParentbasedAlwaysOn),
        ("parentbased_always_off", Self::ParentbasedAlwaysOff),
        ("parentbased_traceidratio", Self::ParentbasedTraceidratio),
    ];

    fn from_name(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, sampler)| *sampler)
    }
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            service_name: "heimdall".into(),
            sampler: Sampler::ParentbasedAlwaysOn,
            ratio: 1.0,
            export_timeout: Duration::from_secs(10),
            schedule_delay: Duration::from_secs(5),
            max_queue_size: 2048,
            max_export_batch_size: 512,
            shutdown_timeout: Duration::from_secs(1),
        }
    }
}

/// The `OTEL_*` variables heimdall reads.
pub const OTEL_ENV_VARS: [&str; 14] = [
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
];

fn serialize_endpoint<S: serde::Serializer>(
    endpoint: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match endpoint {
        Some(url) => crate::redact::serialize_redacted_url(url, serializer),
        None => serializer.serialize_none(),
    }
}

/// 0 and 1 as integers: `jq` (which regenerates the chart's schema) rewrites `1.0` as `1`, and
/// the generated schema must read back equal.
fn serialize_ratio<S: serde::Serializer>(ratio: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    if *ratio == 0.0 || *ratio == 1.0 {
        serializer.serialize_u8(u8::from(*ratio == 1.0))
    } else {
        serializer.serialize_f64(*ratio)
    }
}

/// The first of `names` that is set to something other than blanks, with its name.
fn first_set(
    env: &dyn Env,
    names: &[&'static str],
) -> Result<Option<(&'static str, String)>, ConfigError> {
    for &name in names {
        if let Some(value) = env.var(name)? {
            let value = value.trim();
            if !value.is_empty() {
                return Ok(Some((name, value.to_owned())));
            }
        }
    }
    Ok(None)
}

fn parse_env<T: std::str::FromStr>(name: &'static str, value: &str) -> Result<T, ConfigError> {
    value.parse().map_err(|_| ConfigError::Env {
        name,
        message: format!("`{value}` is not a number"),
    })
}

impl TracingConfig {
    /// Whether spans are exported: an endpoint is set.
    pub fn is_enabled(&self) -> bool {
        self.endpoint
            .as_deref()
            .is_some_and(|e| !e.trim().is_empty())
    }

    /// Applies the `OTEL_*` variables over the file's values.
    pub fn apply_env(&mut self, env: &dyn Env) -> Result<(), ConfigError> {
        if let Some((name, value)) = first_set(
            env,
            &[
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ],
        )? {
            if !value.starts_with("http://") && !value.starts_with("https://") {
                return Err(ConfigError::Env {
                    name,
                    message: "must be an `http://` or `https://` URL of an OTLP/gRPC collector"
                        .into(),
                });
            }
            self.endpoint = Some(value);
        }
        if let Some((name, protocol)) = first_set(
            env,
            &[
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ],
        )? && protocol != "grpc"
        {
            return Err(ConfigError::Env {
                name,
                message: format!(
                    "`{protocol}` is not supported: heimdall exports OTLP over gRPC only (`grpc`)"
                ),
            });
        }
        if let Some((name, millis)) = first_set(
            env,
            &[
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                "OTEL_EXPORTER_OTLP_TIMEOUT",
            ],
        )? {
            self.export_timeout = Duration::from_millis(parse_env(name, &millis)?);
        }
        if let Some((_, name)) = first_set(env, &["OTEL_SERVICE_NAME"])? {
            self.service_name = name;
        }
        if let Some((name, sampler)) = first_set(env, &["OTEL_TRACES_SAMPLER"])? {
            self.sampler = Sampler::from_name(&sampler).ok_or_else(|| ConfigError::Env {
                name,
                message: format!(
                    "`{sampler}` is not a sampler heimdall knows ({})",
                    Sampler::NAMES.map(|(n, _)| n).join(", ")
                ),
            })?;
        }
        if let Some((name, ratio)) = first_set(env, &["OTEL_TRACES_SAMPLER_ARG"])? {
            self.ratio = parse_env(name, &ratio)?;
        }
        if let Some((name, millis)) = first_set(env, &["OTEL_BSP_SCHEDULE_DELAY"])? {
            self.schedule_delay = Duration::from_millis(parse_env(name, &millis)?);
        }
        if let Some((name, size)) = first_set(env, &["OTEL_BSP_MAX_QUEUE_SIZE"])? {
            self.max_queue_size = parse_env(name, &size)?;
        }
        if let Some((name, size)) = first_set(env, &["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"])? {
            self.max_export_batch_size = parse_env(name, &size)?;
        }
        // Last: whatever else is set, these two turn export off.
        let disabled = first_set(env, &["OTEL_SDK_DISABLED"])?
            .is_some_and(|(_, v)| v.eq_ignore_ascii_case("true"));
        match first_set(env, &["OTEL_TRACES_EXPORTER"])? {
            Some((_, exporter)) if exporter == "none" => self.endpoint = None,
            Some((name, exporter)) if exporter != "otlp" => {
                return Err(ConfigError::Env {
                    name,
                    message: format!("`{exporter}` is not supported: `otlp` or `none`"),
                });
            }
            _ => {}
        }
        if disabled {
            self.endpoint = None;
        }
        Ok(())
    }

    /// Checks what serde cannot; an error names the field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(endpoint) = self.endpoint.as_deref().filter(|e| !e.trim().is_empty()) {
            let parsed = url::Url::parse(endpoint.trim()).map_err(|_| {
                (
                    "tracing.endpoint",
                    format!(
                        "`{}` is not a URL",
                        crate::redact::redact_url(endpoint.trim())
                    ),
                )
            })?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err((
                    "tracing.endpoint",
                    "must be an `http://` or `https://` URL with a host".into(),
                ));
            }
        }
        if self.service_name.trim().is_empty() {
            return Err(("tracing.service_name", "must not be empty".into()));
        }
        if !(0.0..=1.0).contains(&self.ratio) {
            return Err(("tracing.ratio", "must be between 0 and 1".into()));
        }
        let positive: [(&'static str, bool); 5] = [
            ("tracing.export_timeout", self.export_timeout.is_zero()),
            ("tracing.schedule_delay", self.schedule_delay.is_zero()),
            ("tracing.shutdown_timeout", self.shutdown_timeout.is_zero()),
            ("tracing.max_queue_size", self.max_queue_size == 0),
            (
                "tracing.max_export_batch_size",
                self.max_export_batch_size == 0,
            ),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, zero)| *zero) {
            return Err((field, "must be positive".into()));
        }
        if self.max_export_batch_size > self.max_queue_size {
            return Err((
                "tracing.max_export_batch_size",
                "must not exceed `tracing.max_queue_size`".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn off_without_an_endpoint() {
        let mut config = TracingConfig::default();
        config
            .apply_env(&env(&[("OTEL_SERVICE_NAME", "x")]))
            .unwrap();
        assert!(!config.is_enabled());
        assert_eq!(config.service_name, "x");
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let mut config = TracingConfig {
            endpoint: Some("http://file:4317".into()),
            ..TracingConfig::default()
        };
        config
            .apply_env(&env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "32"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000"),
            ]))
            .unwrap();
        assert_eq!(config.endpoint.as_deref(), Some("http://traces:4317"));
        assert_eq!(config.sampler, Sampler::Traceidratio);
        assert!((config.ratio - 0.25).abs() < f64::EPSILON);
        assert_eq!(config.schedule_delay, Duration::from_millis(100));
        assert_eq!(config.export_timeout, Duration::from_secs(2));
        assert_eq!(
            (config.max_queue_size, config.max_export_batch_size),
            (64, 32)
        );
        config.validate().unwrap();
    }

    #[test]
    fn disabled_wins_over_any_endpoint() {
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_SDK_DISABLED", "TRUE"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            let mut config = TracingConfig {
                endpoint: Some("http://file:4317".into()),
                ..TracingConfig::default()
            };
            config
                .apply_env(&env(&[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                    off,
                ]))
                .unwrap();
            assert!(!config.is_enabled(), "{off:?}");
        }
    }

    #[test]
    fn what_the_sdk_would_replace_by_a_default_is_refused() {
        for (name, value) in [
            ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
            ("OTEL_TRACES_SAMPLER_ARG", "half"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "-1"),
        ] {
            let error = TracingConfig::default()
                .apply_env(&env(&[(name, value)]))
                .unwrap_err();
            assert!(error.to_string().contains(name), "{error}");
        }
        for (config, field) in [
            (
                TracingConfig {
                    ratio: 1.5,
                    ..TracingConfig::default()
                },
                "tracing.ratio",
            ),
            (
                TracingConfig {
                    max_export_batch_size: 4096,
                    ..TracingConfig::default()
                },
                "tracing.max_export_batch_size",
            ),
            (
                TracingConfig {
                    endpoint: Some("ftp://collector".into()),
                    ..TracingConfig::default()
                },
                "tracing.endpoint",
            ),
            (
                TracingConfig {
                    max_queue_size: 0,
                    ..TracingConfig::default()
                },
                "tracing.max_queue_size",
            ),
        ] {
            assert_eq!(config.validate().unwrap_err().0, field);
        }
    }
}
