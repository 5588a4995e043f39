//! The compose stack (`infra/compose/`), checked without Docker: the file against the Compose
//! Specification's JSON schema (what `docker compose config` does), then what the schema cannot
//! see (references between services, files on the host, variables, ports, addresses), and the
//! configurations it mounts with the real tools (`heimdall validate`, `envoy --mode validate`,
//! `cerbos compile`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use heimdall::test_helpers::envoy::Envoy;
use heimdall::test_helpers::tools;
use serde_json::Value;

/// The Compose Specification's schema, vendored with its source and license beside it.
const COMPOSE_SCHEMA: &str = include_str!("../fixtures/compose-spec/compose-spec.json");

/// Hosts a URL in the stack may name besides the services: the container's own loopback and the
/// wildcard a listener binds.
const LOCAL_HOSTS: [&str; 3] = ["127.0.0.1", "0.0.0.0", "localhost"];

/// The variables of heimdall's service contract (shared with the earlier deployment's `.env`),
/// which the stack's `.env.example` keeps with their meaning.
const CONTRACT_VARS: [&str; 8] = [
    "PASETO_SYMMETRIC_KEY",
    "PORT",
    "GRPC_PORT",
    "NATS_URL",
    "CERBOS_GRPC_URL",
    "KRATOS_ADMIN_URL",
    "HYDRA_ADMIN_URL",
    "HEIMDALL_CONFIG",
];

fn stack_dir() -> PathBuf {
    tools::repo_root().join("infra").join("compose")
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))
}

/// `.env.example`: `NAME=value` lines, comments and blank lines skipped; a name twice is an error.
fn env_example() -> Result<BTreeMap<String, String>, String> {
    let mut vars = BTreeMap::new();
    for (number, line) in read(&stack_dir().join(".env.example"))?.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line
            .split_once('=')
            .ok_or_else(|| format!(".env.example line {}: not NAME=value", number + 1))?;
        if vars.insert(name.to_owned(), value.to_owned()).is_some() {
            return Err(format!(".env.example defines {name} twice"));
        }
    }
    Ok(vars)
}

/// compose.yaml as written, before interpolation.
fn compose_raw() -> Result<Value, String> {
    yaml(&stack_dir().join("compose.yaml"))
}

/// A YAML file as JSON values.
fn yaml(path: &Path) -> Result<Value, String> {
    serde_yaml_ng::from_str(&read(path)?).map_err(|e| format!("{}: {e}", path.display()))
}

/// Replaces `${NAME}`, `${NAME:?message}`, `${NAME?message}`, `${NAME:-default}`,
/// `${NAME-default}` and `$NAME` in `text` as Compose does (`$$` is a literal `$`), recording
/// each name. A name `env` lacks and that has no default is an error.
fn interpolate(
    text: &str,
    env: &BTreeMap<String, String>,
    used: &mut BTreeSet<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let (expression, tail) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| format!("unclosed `${{` in {text:?}"))?;
            (&braced[..end], &braced[end + 1..])
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        let name_end = expression
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(expression.len());
        let (name, modifier) = expression.split_at(name_end);
        if name.is_empty() {
            return Err(format!("a `$` without a variable name in {text:?}"));
        }
        used.insert(name.to_owned());
        let default = modifier
            .strip_prefix(":-")
            .or_else(|| modifier.strip_prefix('-'));
        match (env.get(name), default) {
            (Some(value), _) => out.push_str(value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => return Err(format!("${{{name}}} is not defined in .env.example")),
        }
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}

/// Interpolates every string value of `node` (Compose leaves keys alone).
fn interpolate_values(
    node: &Value,
    env: &BTreeMap<String, String>,
    used: &mut BTreeSet<String>,
) -> Result<Value, String> {
    Ok(match node {
        Value::String(text) => Value::String(interpolate(text, env, used)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| interpolate_values(item, env, used))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| Ok((key.clone(), interpolate_values(value, env, used)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// compose.yaml with `.env.example`'s values, as `docker compose` would read it.
fn compose() -> Result<Value, String> {
    interpolate_values(&compose_raw()?, &env_example()?, &mut BTreeSet::new())
        .map_err(|e| format!("compose.yaml: {e}"))
}

fn services(compose: &Value) -> Result<&serde_json::Map<String, Value>, String> {
    compose
        .get("services")
        .and_then(Value::as_object)
        .ok_or_else(|| "compose.yaml has no services".to_owned())
}

/// The errors the Compose Specification's schema finds in `document`.
fn schema_errors(document: &Value) -> Result<Vec<String>, String> {
    let schema: Value = serde_json::from_str(COMPOSE_SCHEMA).map_err(|e| e.to_string())?;
    let validator = jsonschema::draft7::new(&schema).map_err(|e| e.to_string())?;
    Ok(validator
        .iter_errors(document)
        .map(|error| format!("{}: {error}", error.instance_path()))
        .collect())
}

#[test]
fn compose_file_follows_the_compose_specification() {
    let document = compose().unwrap();
    let errors = schema_errors(&document).unwrap();
    assert!(errors.is_empty(), "compose.yaml:\n{}", errors.join("\n"));

    // The schema is applied, not merely loaded: a misspelt key and a wrong condition are caught.
    let mut broken = document.clone();
    broken["services"]["heimdall"]["depends_on"]["nats"]["condition"] = "service_ready".into();
    broken["services"]["envoy"]["helthcheck"] = Value::Object(Default::default());
    let errors = schema_errors(&broken).unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("/services/heimdall/depends_on"))
            && errors.iter().any(|e| e.contains("helthcheck")),
        "the schema let a broken file through: {errors:?}"
    );
}

#[test]
fn env_example_defines_exactly_the_variables_compose_uses() {
    let env = env_example().unwrap();
    let mut used = BTreeSet::new();
    interpolate_values(&compose_raw().unwrap(), &env, &mut used).unwrap();
    let defined: BTreeSet<String> = env.keys().cloned().collect();
    let unused: Vec<_> = defined.difference(&used).collect();
    let undefined: Vec<_> = used.difference(&defined).collect();
    assert!(
        unused.is_empty() && undefined.is_empty(),
        ".env.example defines {unused:?} that compose.yaml never uses; compose.yaml uses {undefined:?} that .env.example does not define"
    );
    let missing: Vec<_> = CONTRACT_VARS
        .iter()
        .filter(|name| !env.contains_key(**name))
        .collect();
    assert!(
        missing.is_empty(),
        "contract variables missing: {missing:?}"
    );
    assert!(
        read(&stack_dir().join(".env.example"))
            .unwrap()
            .starts_with("# DEVELOPMENT ONLY"),
        ".env.example must open by saying its secrets are for development only"
    );

    // heimdall receives every variable of its own that .env sets, under the same name.
    let compose = compose_raw().unwrap();
    let heimdall_env = compose["services"]["heimdall"]["environment"]
        .as_object()
        .expect("heimdall's environment is a map");
    for name in heimdall::config::ENV_VARS {
        if env.contains_key(name) {
            let passed = heimdall_env.get(name).and_then(Value::as_str);
            let mut names = BTreeSet::new();
            let from_itself = passed.is_some_and(|value| {
                interpolate(value, &env, &mut names).is_ok()
                    && names == BTreeSet::from([name.to_owned()])
            });
            assert!(
                from_itself,
                "heimdall's environment must pass {name} through as ${{{name}}}, has {passed:?}"
            );
        }
    }
}

#[test]
fn services_reference_what_exists() {
    let compose = compose().unwrap();
    let services = services(&compose).unwrap();
    let named_volumes: BTreeSet<&str> = compose["volumes"]
        .as_object()
        .map(|volumes| volumes.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let mut problems = Vec::new();
    let mut host_ports: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, service) in services {
        check_dependencies(name, service, services, &mut problems);
        check_image_pinned(name, service, &mut problems);
        check_build(name, service, &mut problems);
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let volume = volume.as_str().unwrap_or_default();
            let source = volume.split(':').next().unwrap_or_default();
            if source.starts_with(['.', '/']) {
                if !stack_dir().join(source).exists() {
                    problems.push(format!("{name}: bind mount {source} does not exist"));
                }
            } else if !named_volumes.contains(source) {
                problems.push(format!("{name}: volume {source} is not declared"));
            }
        }
        for port in service["ports"].as_array().into_iter().flatten() {
            let host_port = host_port(port.as_str().unwrap_or_default());
            if let Some(other) = host_ports.insert(host_port, name) {
                problems.push(format!(
                    "{name} and {other} both publish host port {host_port}"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every `depends_on` names a service; `service_healthy` waits for one with a health check and
/// `service_completed_successfully` for a one-shot service (never restarted).
fn check_dependencies(
    name: &str,
    service: &Value,
    services: &serde_json::Map<String, Value>,
    problems: &mut Vec<String>,
) {
    for (dependency, settings) in service["depends_on"].as_object().into_iter().flatten() {
        let Some(target) = services.get(dependency) else {
            problems.push(format!(
                "{name} depends on {dependency}, which is no service"
            ));
            continue;
        };
        match settings["condition"].as_str() {
            Some("service_healthy") if target.get("healthcheck").is_none() => problems.push(
                format!("{name} waits for {dependency} to be healthy; it has no healthcheck"),
            ),
            Some("service_completed_successfully") if target["restart"] != "no" => {
                problems.push(format!(
                    "{name} waits for {dependency} to complete; it is not a one-shot service (restart: \"no\")"
                ))
            }
            Some(_) => {}
            None => problems.push(format!("{name} depends on {dependency} without a condition")),
        }
    }
}

/// An image is pinned by an explicit version tag: a tag with a digit, never `latest`.
fn check_image_pinned(name: &str, service: &Value, problems: &mut Vec<String>) {
    let Some(image) = service["image"].as_str() else {
        problems.push(format!("{name} names no image"));
        return;
    };
    let last_segment = image.rsplit('/').next().unwrap_or(image);
    match last_segment.split_once(':') {
        Some((_, tag)) if tag != "latest" && tag.contains(|c: char| c.is_ascii_digit()) => {}
        _ => problems.push(format!(
            "{name}: image {image} is not pinned to a version tag"
        )),
    }
}

/// A `build` names an existing context, Dockerfile and stage.
fn check_build(name: &str, service: &Value, problems: &mut Vec<String>) {
    let Some(build) = service.get("build") else {
        return;
    };
    let context = stack_dir().join(build["context"].as_str().unwrap_or("."));
    let dockerfile = context.join(build["dockerfile"].as_str().unwrap_or("Dockerfile"));
    let Ok(text) = std::fs::read_to_string(&dockerfile) else {
        problems.push(format!("{name}: no Dockerfile at {}", dockerfile.display()));
        return;
    };
    if let Some(target) = build["target"].as_str() {
        let stage = format!(" AS {target}");
        if !text
            .lines()
            .any(|l| l.starts_with("FROM ") && l.ends_with(&stage))
        {
            problems.push(format!("{name}: the Dockerfile has no stage {target}"));
        }
    }
}

/// The host side of a short-syntax port (`[ip:]host:container`): `ip:host`, or `host`.
fn host_port(port: &str) -> &str {
    port.rsplit_once(':').map_or("", |(host, _)| host)
}

/// Every URL and address in the stack's files is a service of the stack or the container's own
/// loopback: nothing reaches out. Registries appear in image references only.
#[test]
fn the_stack_names_no_host_outside_itself() {
    let compose = compose().unwrap();
    let services = services(&compose).unwrap();
    let mut allowed: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    allowed.extend(LOCAL_HOSTS);
    let registries: BTreeSet<&str> = services
        .values()
        .filter_map(|service| service["image"].as_str())
        .filter_map(|image| image.split_once('/'))
        .map(|(first, _)| first)
        .filter(|first| first.contains('.'))
        .collect();
    let mut problems = Vec::new();
    for file in stack_files().unwrap() {
        let text = read(&file).unwrap();
        let shown = file.strip_prefix(stack_dir()).unwrap_or(&file).display();
        for (number, line) in text.lines().enumerate() {
            let is_image = line.trim_start().starts_with("image:");
            if let Some(registry) = registries.iter().find(|r| line.contains(**r))
                && !is_image
            {
                problems.push(format!("{shown}:{}: names {registry}", number + 1));
            }
            // JSON Schema identifiers (`$schema`) name a specification, not a peer.
            if line.contains("\"$schema\"") {
                continue;
            }
            for host in url_hosts(line) {
                if !allowed.contains(host) {
                    problems.push(format!(
                        "{shown}:{}: {host} is outside the stack",
                        number + 1
                    ));
                }
            }
        }
    }
    // Addresses without a scheme: Cerbos's (`cerbos:3593`) and Envoy's sockets.
    let env = env_example().unwrap();
    let mut hosts = vec![env["CERBOS_GRPC_URL"].split(':').next().unwrap_or_default()];
    let envoy: Value = yaml(&stack_dir().join("envoy.yaml")).unwrap();
    socket_addresses(&envoy, &mut hosts);
    for host in hosts {
        if !allowed.contains(host) {
            problems.push(format!("address {host} is outside the stack"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The `socket_address.address` values anywhere in an Envoy configuration.
fn socket_addresses<'a>(node: &'a Value, found: &mut Vec<&'a str>) {
    match node {
        Value::Object(map) => {
            if let Some(address) = map
                .get("socket_address")
                .and_then(|s| s["address"].as_str())
            {
                found.push(address);
            }
            map.values()
                .for_each(|value| socket_addresses(value, found));
        }
        Value::Array(items) => items.iter().for_each(|item| socket_addresses(item, found)),
        _ => {}
    }
}

/// Every file of the stack, recursively.
fn stack_files() -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    let mut pending = vec![stack_dir()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The hosts of the `scheme://[user@]host[:port]` URLs in `line`.
fn url_hosts(line: &str) -> Vec<&str> {
    line.match_indices("://")
        .map(|(at, _)| &line[at + 3..])
        .map(|rest| {
            let authority = rest
                .split(|c: char| "/?#\"' ,]}".contains(c))
                .next()
                .unwrap_or_default();
            let host_port = authority.rsplit('@').next().unwrap_or_default();
            host_port.split(':').next().unwrap_or_default()
        })
        .filter(|host| !host.is_empty() && !host.starts_with('$'))
        .collect()
}

/// The bind mount of `service` whose container path is `target`: its path in the repository.
fn mounted(compose: &Value, service: &str, target: &str) -> Result<PathBuf, String> {
    services(compose)?
        .get(service)
        .and_then(|s| s.get("volumes"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|volume| {
            let mut parts = volume.split(':');
            let source = parts.next()?.trim_start_matches("./");
            (parts.next()? == target).then(|| stack_dir().join(source))
        })
        .ok_or_else(|| format!("{service} mounts nothing at {target}"))
}

#[test]
fn heimdall_validates_the_compose_configuration() {
    let compose = compose().unwrap();
    let env = env_example().unwrap();
    let config = mounted(&compose, "heimdall", &env["HEIMDALL_CONFIG"]).unwrap();
    let output = Command::new(tools::heimdall_binary())
        .arg("--config")
        .arg(&config)
        .arg("validate")
        .env_clear()
        .envs(env.iter().filter(|(name, _)| *name != "HEIMDALL_CONFIG"))
        .stdin(Stdio::null())
        .output()
        .expect("run heimdall validate");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("valid"),
        "heimdall validate {}: {}\n{stdout}{}",
        config.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn envoy_accepts_the_compose_config_and_routes_to_heimdalls_ports() {
    let compose = compose().unwrap();
    let config = mounted(&compose, "envoy", "/etc/envoy/envoy.yaml").unwrap();
    let envoy = yaml(&config).unwrap();
    let env = env_example().unwrap();
    let clusters = envoy["static_resources"]["clusters"]
        .as_array()
        .expect("clusters");
    for (cluster, port) in [("heimdall", "GRPC_PORT"), ("heimdall_http", "PORT")] {
        let address =
            clusters
                .iter()
                .find(|c| c["name"] == cluster)
                .map(|c| {
                    &c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                        ["socket_address"]
                })
                .unwrap_or_else(|| panic!("no {cluster} cluster"));
        assert_eq!(address["address"], "heimdall", "{cluster}");
        assert_eq!(
            address["port_value"].to_string(),
            env[port],
            "the {cluster} cluster's port is not {port}"
        );
    }
    if tools::require("envoy").is_none() {
        return;
    }
    Envoy::validate(&config).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn cerbos_compiles_the_mounted_policies() {
    let compose = compose().unwrap();
    let cerbos_config = yaml(&mounted(&compose, "cerbos", "/config/cerbos.yaml").unwrap()).unwrap();
    let policies_target = cerbos_config["storage"]["disk"]["directory"]
        .as_str()
        .expect("cerbos.yaml reads policies from disk");
    let policies = mounted(&compose, "cerbos", policies_target).unwrap();
    let grpc_port = cerbos_config["server"]["grpcListenAddr"]
        .as_str()
        .and_then(|addr| addr.rsplit(':').next())
        .expect("grpcListenAddr");
    assert!(
        env_example().unwrap()["CERBOS_GRPC_URL"].ends_with(&format!(":{grpc_port}")),
        "CERBOS_GRPC_URL does not name Cerbos's gRPC port {grpc_port}"
    );
    let Some(cerbos) = tools::require("cerbos") else {
        return;
    };
    let output = Command::new(cerbos)
        .arg("compile")
        .arg(&policies)
        .stdin(Stdio::null())
        .output()
        .expect("run cerbos compile");
    assert!(
        output.status.success(),
        "cerbos compile {}: {}\n{}{}",
        policies.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
