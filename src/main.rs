//! The `heimdall` command: `serve` (default), `validate`, `keys generate`, `token mint|inspect`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use heimdall::config::{Config, Origin, ProcessEnv};
use heimdall::tokens::{Accept, Audience, Claims, Purpose, generate_key, token_purpose};

#[derive(Parser)]
#[command(name = "heimdall", version, about = "An Envoy external authorizer")]
struct Cli {
    /// Configuration file (YAML). Without it, the embedded example configuration is used.
    #[arg(long, short, global = true, env = "HEIMDALL_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve ext_authz gRPC and the HTTP side port (the default).
    Serve,
    /// Load and compile the configuration and rules; exit non-zero with every problem found.
    Validate {
        /// `text` (problems on stderr) or `json` (one object on stdout, see docs/configuration.md).
        #[arg(long, value_enum, default_value = "text")]
        format: FormatArg,
    },
    /// Print the configuration file's JSON Schema, its key reference (docs/configuration.md)
    /// or the `config` subtree of the Helm chart's values.schema.json.
    Schema {
        #[arg(long, value_enum, default_value = "json")]
        format: SchemaFormat,
    },
    /// Key management.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Tokens for operators and demos.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new key as PASERK: `local` (k4.local) or `public` (k4.secret + k4.public).
    Generate {
        #[arg(long, value_enum, default_value = "public")]
        purpose: PurposeArg,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint a token with the configured keys; prints it on stdout.
    Mint {
        #[arg(long)]
        sub: String,
        /// Comma-separated roles.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Attributes as `key=value` (value parsed as JSON when it is valid JSON).
        #[arg(long = "attr")]
        attrs: Vec<String>,
        /// Lifetime, e.g. `15m`, `1h` (default: `tokens.ttl`).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        #[arg(long, value_enum)]
        purpose: Option<PurposeArg>,
        #[arg(long)]
        audience: Option<String>,
    },
    /// Verify a token with the configured keys and print its claims.
    Inspect { token: String },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SchemaFormat {
    /// JSON Schema (2020-12).
    Json,
    /// The key reference, docs/configuration.md.
    Markdown,
    /// Draft-07, every reference inlined: charts/heimdall/values.schema.json `properties.config`.
    Chart,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FormatArg {
    Text,
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PurposeArg {
    Local,
    Public,
}

impl From<PurposeArg> for Purpose {
    fn from(p: PurposeArg) -> Self {
        match p {
            PurposeArg::Local => Purpose::Local,
            PurposeArg::Public => Purpose::Public,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(cli: &Cli) -> anyhow::Result<(Config, Origin)> {
    Ok(Config::load(cli.config.as_deref(), &ProcessEnv)?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        None | Some(Command::Serve) => serve(&cli),
        Some(Command::Validate {
            format: FormatArg::Json,
        }) => validate_json(&cli),
        Some(Command::Validate {
            format: FormatArg::Text,
        }) => {
            let (config, origin) = load(&cli)?;
            let (keys, ephemeral) = heimdall::app::keys_for_serve(&config, &ProcessEnv)?;
            // Building prepares (never dials) the Cerbos channels, which needs a runtime.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("tokio runtime")?;
            let _entered = runtime.enter();
            let built = heimdall::app::build(config, keys)?;
            for warning in &built.warnings {
                eprintln!("warning: {warning}");
            }
            println!(
                "{origin}: configuration and rules are valid{}",
                if ephemeral {
                    " (no key configured: serve would use an ephemeral key)"
                } else {
                    ""
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Schema { format }) => {
            match format {
                SchemaFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&heimdall::config::schema())?
                ),
                SchemaFormat::Markdown => print!("{}", heimdall::config::reference::markdown()),
                SchemaFormat::Chart => {
                    let mut chart = heimdall::config::reference::inlined_schema();
                    if let Some(object) = chart.as_object_mut() {
                        object.insert(
                            "description".into(),
                            "heimdall's configuration file (format version 1); generated by `heimdall schema --format chart`".into(),
                        );
                    }
                    println!("{}", serde_json::to_string_pretty(&chart)?);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Keys {
            command: KeysCommand::Generate { purpose },
        }) => {
            let (secret, public, kid) = generate_key((*purpose).into())?;
            match public {
                Some(public) => println!("secret: {secret}\npublic: {public}\nkid:    {kid}"),
                None => println!("local: {secret}\nkid:   {kid}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Token {
            command:
                TokenCommand::Mint {
                    sub,
                    roles,
                    attrs,
                    ttl,
                    purpose,
                    audience,
                },
        }) => {
            let (config, _) = load(&cli)?;
            let keys = config.keyring(&ProcessEnv)?;
            let purpose = match purpose {
                Some(p) => (*p).into(),
                None => keys.default_mint_purpose().context("no key to mint with: set PASETO_SYMMETRIC_KEY or add a k4.secret key under tokens.keys")?,
            };
            let ttl = ttl.unwrap_or(config.tokens.ttl);
            if ttl.is_zero() || ttl > heimdall::tokens::MAX_TTL {
                anyhow::bail!(
                    "--ttl must be positive and at most {} days",
                    heimdall::tokens::MAX_TTL.as_secs() / 86_400
                );
            }
            let mut claims = Claims::new(sub, &config.tokens.issuer, ttl);
            // Each role once (`--roles user,user` is one role), blanks dropped: Cerbos refuses a
            // principal whose roles repeat.
            let roles: Vec<String> = roles.iter().map(|r| r.trim().to_owned()).collect();
            claims.roles = heimdall::policy::dedup_roles(&roles);
            if let Some(aud) = audience.clone().or_else(|| config.tokens.audience.clone()) {
                claims.aud = Audience::One(aud);
            }
            for attr in attrs {
                let (k, v) = attr
                    .split_once('=')
                    .with_context(|| format!("--attr `{attr}` is not key=value"))?;
                let value = serde_json::from_str(v)
                    .unwrap_or_else(|_| serde_json::Value::String(v.to_owned()));
                claims.attr.insert(k.to_owned(), value);
            }
            println!("{}", keys.mint(purpose, &claims)?);
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Token {
            command: TokenCommand::Inspect { token },
        }) => {
            let (config, _) = load(&cli)?;
            let keys = config.keyring(&ProcessEnv)?;
            let purpose = token_purpose(token)?;
            let claims = keys.open(token, Accept::Any, usize::MAX).with_context(|| {
                format!("v4.{purpose} token does not verify with the configured keys")
            })?;
            println!(
                "purpose: v4.{purpose}\nverified: yes\nclaims: {}",
                serde_json::to_string_pretty(&claims)?
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `validate --format json`: every problem and warning as one JSON object on stdout,
/// `{"valid", "origin", "ephemeral_key", "problems": [{"rule", "step", "mechanism": {"kind",
/// "id"}, "problem", "message"}], "warnings": [..]}`; exits 1 when there is a problem.
fn validate_json(cli: &Cli) -> anyhow::Result<ExitCode> {
    use heimdall::config::ConfigError;
    use heimdall::rules::Problem;
    let mut problems: Vec<Problem> = Vec::new();
    let mut warnings = Vec::new();
    let mut origin = None;
    let mut ephemeral = false;
    match Config::load(cli.config.as_deref(), &ProcessEnv) {
        Err(ConfigError::Invalid { field, message }) => {
            problems.push(Problem::setting(field, message))
        }
        Err(e) => problems.push(Problem::config(e.to_string())),
        Ok((config, from)) => {
            origin = Some(from.to_string());
            match heimdall::app::keys_for_serve(&config, &ProcessEnv) {
                Err(e) => problems.push(Problem::config(format!("{e:#}"))),
                Ok((keys, eph)) => {
                    ephemeral = eph;
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("tokio runtime")?;
                    let _entered = runtime.enter();
                    match heimdall::rules::check(&config, keys) {
                        Ok(found) => warnings = found,
                        Err(e) => problems.extend(e.0),
                    }
                    let mut registry = prometheus_client::registry::Registry::default();
                    if let Err(e) = heimdall::tls::ListenerTls::load(&config.server, &mut registry)
                    {
                        problems.push(Problem::config(e.to_string()));
                    }
                }
            }
        }
    }
    let report = serde_json::json!({
        "valid": problems.is_empty(),
        "origin": origin,
        "ephemeral_key": ephemeral,
        "problems": problems.iter().map(Problem::to_json).collect::<Vec<_>>(),
        "warnings": warnings,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn serve(cli: &Cli) -> anyhow::Result<ExitCode> {
    let (config, origin) = load(cli)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    // The trace exporter's batch task and connection live on the runtime.
    let traces = {
        let _entered = runtime.enter();
        heimdall::telemetry::init_with_tracing(&config.log, &config.tracing)?
    };
    runtime.block_on(async move {
        tracing::info!(config = %origin, "configuration loaded");
        if traces.is_some() {
            tracing::info!(
                service = %config.tracing.service_name,
                "exporting OpenTelemetry traces (OTLP/gRPC)"
            );
        }
        tracing::debug!(config = %config.redacted_yaml(), "effective configuration");
        let (keys, ephemeral) = heimdall::app::keys_for_serve(&config, &ProcessEnv)?;
        if ephemeral {
            let token = heimdall::app::demo_token(&keys, &config).unwrap_or_default();
            tracing::warn!(
                "no token key configured: generated an ephemeral v4.public key pair that dies with this process (development only). \
                 A demo token for subject `demo-user` with role `user`, valid {}: {token} — \
                 try: curl -H 'Authorization: Bearer <token>' through Envoy. For real keys run `heimdall keys generate` \
                 or set PASETO_SYMMETRIC_KEY (32 bytes) and mint with `heimdall token mint --sub alice --roles user`.",
                humantime::format_duration(config.tokens.ttl)
            );
        } else {
            tracing::info!("get a token this heimdall accepts with: heimdall token mint --sub alice --roles user (same configuration and environment)");
        }
        let (drain_delay, grace) = (config.server.drain_delay, config.server.shutdown_grace);
        let mut built = heimdall::app::build(config, keys)?;
        if let Origin::File(path) = origin {
            built = built.reload_from(path, std::sync::Arc::new(ProcessEnv));
        }
        let running = built.serve().await?;
        let mut running = running;
        let failure = tokio::select! {
            result = wait_for_signal() => result.err(),
            error = running.server_failure() => Some(error),
        };
        tracing::info!("shutting down");
        if failure.is_none() {
            running.drain(drain_delay).await;
        }
        running.shutdown(grace).await;
        // After the last decision: its spans are in the queue. Bounded by
        // `tracing.shutdown_timeout`.
        if let Some(traces) = traces {
            traces.shutdown().await;
        }
        match failure {
            None => Ok(ExitCode::SUCCESS),
            Some(error) => Err(error.context("heimdall stopped serving")),
        }
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("SIGTERM handler")?;
        tokio::select! {
            result = ctrl_c => result.context("Ctrl-C handler")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.context("Ctrl-C handler")?;
    Ok(())
}
