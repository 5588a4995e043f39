//! The Helm chart in charts/heimdall: `helm lint` passes, `helm template` renders both modes and
//! every optional resource, keys stay out of ConfigMaps, and what the chart renders is accepted by
//! the real programs (`heimdall validate` for the configuration, `envoy --mode validate` for the
//! sidecar's Envoy configuration), and the Dockerfile passes `hadolint`.
//!
//! Rendered manifests, and the files the ConfigMaps embed, are parsed as YAML and checked field by
//! field, so a change in helm's or the templates' formatting alone cannot fail or pass a test.
//!
//! Needs `helm` (from `$HEIMDALL_TOOLS`, `<repo>/.tools/bin` or `$PATH`): without it each test
//! prints a skip line and passes, except in CI (`CI=true`), where it fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed setup or lookup is a failed test"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use heimdall::test_helpers::tools;
use serde::Deserialize as _;
use serde_yaml_ng::Value;

const RELEASE: &str = "authz";
const FULLNAME: &str = "authz-heimdall";

/// A v4.local key of exactly 32 bytes and a signing key, both only for these tests.
const SYMMETRIC_KEY: &str = "chart-test-symmetric-key-32bytes";
const SIGNING_KEY: &str = "k4.secret.chart-test-signing-key-never-in-a-configmap";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    repo().join("charts").join("heimdall")
}

/// A scratch directory of this test's own.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("helm_chart")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs helm with its cache, configuration and data kept under the target directory.
fn helm_output(helm: &Path, args: &[&str]) -> Output {
    let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("helm_home");
    Command::new(helm)
        .args(args)
        .current_dir(repo())
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", helm.display()))
}

/// Runs helm and returns its stdout; a failure fails the test with helm's own words.
fn helm_ok(helm: &Path, args: &[&str]) -> String {
    let out = helm_output(helm, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "helm {} failed ({}):\n{stderr}\n{stdout}",
        args.join(" "),
        out.status
    );
    stdout
}

/// Runs helm expecting it to refuse; returns stderr.
fn helm_refuses(helm: &Path, args: &[&str]) -> String {
    let out = helm_output(helm, args);
    assert!(
        !out.status.success(),
        "helm {} should have failed, rendered:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `helm template <release> charts/heimdall <args…>`, parsed into manifests.
fn render(helm: &Path, args: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut all = vec!["template", RELEASE, chart.to_str().unwrap()];
    all.extend_from_slice(args);
    manifests(&helm_ok(helm, &all))
}

/// A multi-document YAML stream as one value per document; documents holding nothing (a
/// template that rendered only comments) are dropped.
fn manifests(stream: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(stream)
        .map(|document| {
            Value::deserialize(document)
                .unwrap_or_else(|e| panic!("helm rendered invalid YAML ({e}):\n{stream}"))
        })
        .filter(|document| !document.is_null())
        .collect()
}

/// A YAML text (a rendered manifest's embedded file, or an expected value) as a value.
fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("invalid YAML ({e}):\n{text}"))
}

/// A value printed back as YAML, for failure messages.
fn show(value: &Value) -> String {
    serde_yaml_ng::to_string(value).unwrap_or_else(|e| format!("{value:?} ({e})"))
}

/// One step of a path: a mapping's key, or a list's index.
fn step<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    match value {
        Value::Sequence(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => value.get(key),
    }
}

/// The value at a dot-separated path such as `spec.template.spec.containers.0`, if present.
fn try_path<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, step)
}

/// The value at a dot-separated path; an absent one fails the test. Keys holding dots
/// (`helm.sh/hook`, `heimdall.yaml`) are read with `Value::get` on their parent.
fn path<'a>(value: &'a Value, path: &str) -> &'a Value {
    try_path(value, path).unwrap_or_else(|| panic!("no `{path}` in:\n{}", show(value)))
}

/// The string at a path.
fn text<'a>(value: &'a Value, at: &str) -> &'a str {
    path(value, at)
        .as_str()
        .unwrap_or_else(|| panic!("`{at}` is not a string in:\n{}", show(value)))
}

fn kind_of(manifest: &Value) -> &str {
    text(manifest, "kind")
}

fn name_of(manifest: &Value) -> &str {
    text(manifest, "metadata.name")
}

fn find<'a>(manifests: &'a [Value], kind: &str, name: &str) -> &'a Value {
    manifests
        .iter()
        .find(|m| kind_of(m) == kind && name_of(m) == name)
        .unwrap_or_else(|| {
            let have: Vec<String> = manifests
                .iter()
                .map(|m| format!("{}/{}", kind_of(m), name_of(m)))
                .collect();
            panic!("no {kind}/{name} among {have:?}")
        })
}

fn kinds(manifests: &[Value]) -> Vec<&str> {
    let mut kinds: Vec<&str> = manifests.iter().map(kind_of).collect();
    kinds.sort_unstable();
    kinds.dedup();
    kinds
}

/// The entry called `name` of a list of named objects (containers, ports, env, volumes, mounts).
fn try_named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_sequence()?
        .iter()
        .find(|entry| entry.get("name").and_then(Value::as_str) == Some(name))
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    try_named(list, name).unwrap_or_else(|| panic!("no entry `{name}` in:\n{}", show(list)))
}

/// A workload's (Deployment, Job) pod template's container called `name`.
fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    named(path(workload, "spec.template.spec.containers"), name)
}

/// The literal value of a container's environment variable `name`, if it has one.
fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    try_named(try_path(container, "env")?, name)?
        .get("value")?
        .as_str()
}

/// The `secretKeyRef` a container's environment variable `name` is read from.
fn secret_key_ref<'a>(container: &'a Value, name: &str) -> &'a Value {
    path(
        named(path(container, "env"), name),
        "valueFrom.secretKeyRef",
    )
}

/// One of a manifest's annotations (at `metadata` or `spec.template.metadata`).
fn annotation<'a>(metadata: &'a Value, key: &str) -> Option<&'a str> {
    try_path(metadata, "annotations")?.get(key)?.as_str()
}

/// The file `key` embedded in a ConfigMap's `data`, as text.
fn embedded<'a>(configmap: &'a Value, key: &str) -> &'a str {
    path(configmap, "data")
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no data `{key}` in:\n{}", show(configmap)))
}

/// heimdall's configuration as the release's ConfigMap embeds it, parsed.
fn heimdall_config(manifests: &[Value]) -> Value {
    yaml(embedded(
        find(manifests, "ConfigMap", "authz-heimdall-config"),
        "heimdall.yaml",
    ))
}

/// Whether any key or scalar anywhere in `value` (embedded files included) contains `needle`.
fn mentions(value: &Value, needle: &str) -> bool {
    match value {
        Value::String(s) => s.contains(needle),
        Value::Number(n) => n.to_string().contains(needle),
        Value::Sequence(items) => items.iter().any(|v| mentions(v, needle)),
        Value::Mapping(map) => map
            .iter()
            .any(|(k, v)| mentions(k, needle) || mentions(v, needle)),
        Value::Tagged(tagged) => mentions(&tagged.value, needle),
        Value::Null | Value::Bool(_) => false,
    }
}

/// Standard base64 with padding, as Kubernetes stores a Secret's `data`.
fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn helm() -> Option<PathBuf> {
    tools::require("helm")
}

#[test]
fn chart_lints_in_both_modes_and_with_every_option() {
    let Some(helm) = helm() else { return };
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let full = format!("{chart}/ci/full-values.yaml");
    let sidecar = format!("{chart}/ci/sidecar-values.yaml");
    for extra in [
        vec![],
        vec!["-f", full.as_str()],
        vec!["-f", sidecar.as_str()],
        vec!["--set", "mode=sidecar"],
    ] {
        let mut args = vec!["lint", "--strict", chart];
        args.extend(extra);
        let out = helm_ok(&helm, &args);
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
}

#[test]
fn deployment_mode_renders_a_hardened_deployment_and_its_service() {
    let Some(helm) = helm() else { return };
    let manifests = render(&helm, &[]);
    assert_eq!(
        kinds(&manifests),
        [
            "ConfigMap",
            "Deployment",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount"
        ],
        "the default release renders no Secret, Job or optional resource"
    );

    let deployment = find(&manifests, "Deployment", FULLNAME);
    assert_eq!(*path(deployment, "spec.replicas"), 2);
    let pod = path(deployment, "spec.template");
    let heimdall = container(deployment, "heimdall");
    assert_eq!(*path(heimdall, "readinessProbe.httpGet.path"), "/ready");
    assert_eq!(*path(heimdall, "readinessProbe.httpGet.port"), "http");
    assert_eq!(*path(heimdall, "livenessProbe.httpGet.path"), "/health");
    let ports = path(heimdall, "ports");
    assert_eq!(*path(named(ports, "grpc"), "containerPort"), 9001);
    assert_eq!(*path(named(ports, "http"), "containerPort"), 8080);

    assert_eq!(*path(pod, "spec.securityContext.runAsNonRoot"), true);
    let security = path(heimdall, "securityContext");
    assert_eq!(*path(security, "runAsNonRoot"), true, "{}", show(security));
    assert_eq!(
        *path(security, "readOnlyRootFilesystem"),
        true,
        "{}",
        show(security)
    );
    assert_eq!(
        *path(security, "allowPrivilegeEscalation"),
        false,
        "{}",
        show(security)
    );
    assert_eq!(*path(security, "capabilities.drop"), yaml("[ALL]"));
    assert_eq!(*path(security, "seccompProfile.type"), "RuntimeDefault");

    assert_eq!(
        *path(heimdall, "args"),
        yaml("[serve, --config, /etc/heimdall/heimdall.yaml]")
    );
    assert!(
        annotation(path(pod, "metadata"), "checksum/config").is_some_and(|c| !c.is_empty()),
        "pods must roll on config changes:\n{}",
        show(pod)
    );
    assert_eq!(
        *path(named(path(pod, "spec.volumes"), "config"), "configMap.name"),
        "authz-heimdall-config"
    );
    assert_eq!(*path(pod, "spec.automountServiceAccountToken"), false);
    let spread = path(pod, "spec.topologySpreadConstraints");
    assert!(
        spread
            .as_sequence()
            .unwrap()
            .iter()
            .any(|c| *path(c, "topologyKey") == "kubernetes.io/hostname"),
        "{}",
        show(spread)
    );
    assert_eq!(env_value(heimdall, "GRPC_PORT"), Some("9001"));
    assert_eq!(env_value(heimdall, "PORT"), Some("8080"));

    let service = find(&manifests, "Service", FULLNAME);
    assert_eq!(*path(service, "spec.type"), "ClusterIP");
    let ports = path(service, "spec.ports");
    assert_eq!(
        *named(ports, "grpc"),
        yaml("{name: grpc, port: 9001, targetPort: grpc, protocol: TCP, appProtocol: grpc}")
    );
    assert_eq!(*path(named(ports, "http"), "port"), 8080);

    let config = heimdall_config(&manifests);
    assert_eq!(*path(&config, "version"), "1", "{}", show(&config));
    assert_eq!(
        *path(&config, "tokens.keys.0.env"),
        "HEIMDALL_SIGNING_KEY",
        "{}",
        show(&config)
    );
}

#[test]
fn keys_go_to_a_secret_and_never_to_a_configmap() {
    let Some(helm) = helm() else { return };
    let keys = [
        "--set",
        &format!("keys.symmetricKey={SYMMETRIC_KEY}"),
        "--set",
        &format!("keys.signingKey={SIGNING_KEY}"),
    ]
    .map(str::to_owned);
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let secrets = [
        SYMMETRIC_KEY.to_owned(),
        SIGNING_KEY.to_owned(),
        b64(SYMMETRIC_KEY.as_bytes()),
        b64(SIGNING_KEY.as_bytes()),
    ];

    for mode in [
        &[
            "--set",
            "mode=deployment",
            "--set",
            "validateConfig.enabled=true",
        ][..],
        &[
            "--set",
            "mode=sidecar",
            "--set",
            "validateConfig.enabled=true",
        ][..],
    ] {
        let mut args = keys.clone();
        args.extend_from_slice(mode);
        let manifests = render(&helm, &args);

        for manifest in manifests.iter().filter(|m| kind_of(m) != "Secret") {
            for secret in &secrets {
                assert!(
                    !mentions(manifest, secret),
                    "{} {} shows a key:\n{}",
                    kind_of(manifest),
                    name_of(manifest),
                    show(manifest)
                );
            }
        }
        let secret = find(&manifests, "Secret", "authz-heimdall-keys");
        assert_eq!(
            *path(secret, "data.PASETO_SYMMETRIC_KEY"),
            b64(SYMMETRIC_KEY.as_bytes())
        );
        assert_eq!(
            *path(secret, "data.HEIMDALL_SIGNING_KEY"),
            b64(SIGNING_KEY.as_bytes())
        );

        // The pre-install hook cannot read the release's Secret (not created yet): it has a copy.
        let job = find(&manifests, "Job", "authz-heimdall-validate");
        let from = secret_key_ref(container(job, "validate"), "HEIMDALL_SIGNING_KEY");
        assert_eq!(*path(from, "name"), "authz-heimdall-validate");
        assert_eq!(*path(from, "key"), "HEIMDALL_SIGNING_KEY");
        let hook_secret = find(&manifests, "Secret", "authz-heimdall-validate");
        assert_eq!(
            annotation(path(hook_secret, "metadata"), "helm.sh/hook"),
            Some("pre-install,pre-upgrade")
        );
    }

    let manifests = render(&helm, &keys);
    let deployment = find(&manifests, "Deployment", FULLNAME);
    let heimdall = container(deployment, "heimdall");
    for var in ["PASETO_SYMMETRIC_KEY", "HEIMDALL_SIGNING_KEY"] {
        let from = secret_key_ref(heimdall, var);
        assert_eq!(*path(from, "name"), "authz-heimdall-keys", "{var}");
        assert_eq!(*path(from, "key"), var);
    }
    assert!(
        annotation(path(deployment, "spec.template.metadata"), "checksum/keys").is_some(),
        "pods must roll on key changes:\n{}",
        show(deployment)
    );

    // An existing Secret: referenced by name, nothing created.
    let manifests = render(&helm, &["--set", "keys.existingSecret=my-keys"]);
    assert!(!kinds(&manifests).contains(&"Secret"));
    let deployment = find(&manifests, "Deployment", FULLNAME);
    assert_eq!(
        *secret_key_ref(container(deployment, "heimdall"), "HEIMDALL_SIGNING_KEY"),
        yaml("{name: my-keys, key: HEIMDALL_SIGNING_KEY, optional: true}")
    );
}

#[test]
fn values_that_would_leak_or_cannot_work_are_refused() {
    let Some(helm) = helm() else { return };
    let chart = chart();
    let chart = chart.to_str().unwrap();
    for (args, why) in [
        (
            vec!["--set", "config.tokens.keys[0].paserk=k4.secret.inline"],
            "holds a secret key inline",
        ),
        (
            vec!["--set", "config.tokens.keys[0].paserk=k4.local.inline"],
            "holds a secret key inline",
        ),
        (
            vec!["--set", "keys.symmetricKey=too-short"],
            "must be exactly 32 bytes, got 9",
        ),
        (
            vec!["--set", "keys.signingKey=not-a-paserk"],
            "must be a v4 PASERK",
        ),
        (
            vec![
                "--set",
                "keys.existingSecret=mine",
                "--set",
                "keys.signingKey=k4.secret.x",
            ],
            "keys.existingSecret excludes",
        ),
        (
            vec!["--set", &*format!("keys.symmetricKey={SYMMETRIC_KEY}")],
            "keys.signingKey is not set",
        ),
        (vec!["--set", "mode=daemonset"], "mode"),
        (vec!["--set", "replicaCont=3"], "replicaCont"),
        (
            vec!["--set", "nats.auth.type=jwt"],
            "nats.auth.type must be one of",
        ),
        (
            vec!["--set", "nats.auth.existing=x"],
            "Additional property existing is not allowed",
        ),
        (
            vec![
                "--set",
                "integrations.natsUrl=nats://nats:4222",
                "--set",
                "nats.auth.type=creds",
            ],
            "needs nats.auth.existingSecret",
        ),
        (
            vec![
                "--set",
                "integrations.natsUrl=nats://nats:4222",
                "--set",
                "nats.auth.existingSecret=heimdall-nats",
            ],
            "needs nats.auth.type",
        ),
        (
            vec![
                "--set",
                "integrations.natsUrl=nats://nats:4222",
                "--set",
                "nats.auth.type=userPassword",
                "--set",
                "nats.auth.existingSecret=heimdall-nats",
            ],
            "needs nats.auth.user",
        ),
        (
            vec![
                "--set",
                "nats.auth.type=token",
                "--set",
                "nats.auth.existingSecret=heimdall-nats",
            ],
            "no NATS server is",
        ),
        (
            vec![
                "--set",
                "integrations.natsUrl=nats://nats:4222",
                "--set",
                "nats.auth.type=token",
                "--set",
                "nats.auth.existingSecret=heimdall-nats",
                "--set",
                "config.nats.auth.token.env=MY_TOKEN",
            ],
            "config.nats.auth and nats.auth.type both set",
        ),
        (
            vec![
                "--set",
                "integrations.natsUrl=nats://nats:4222",
                "--set",
                "nats.tls.clientCertificate=true",
            ],
            "nats.tls.clientCertificate needs nats.tls.existingSecret",
        ),
    ] {
        let mut all = vec!["template", RELEASE, chart];
        all.extend(args.iter().copied());
        let stderr = helm_refuses(&helm, &all);
        assert!(
            stderr.contains(why),
            "{args:?}: expected `{why}` in:\n{stderr}"
        );
    }
    // A public key inline is fine: it verifies only.
    render(
        &helm,
        &["--set", "config.tokens.keys[0].paserk=k4.public.inline"],
    );
    // The symmetric key alone works once the configuration stops reading HEIMDALL_SIGNING_KEY.
    render(
        &helm,
        &[
            "--set",
            &format!("keys.symmetricKey={SYMMETRIC_KEY}"),
            "--set",
            "config.tokens.keys=null",
        ],
    );
}

#[test]
fn optional_resources_render_when_enabled() {
    let Some(helm) = helm() else { return };
    let values = chart().join("ci").join("full-values.yaml");
    let manifests = render(&helm, &["-f", values.to_str().unwrap()]);
    for kind in [
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Job",
    ] {
        assert!(
            kinds(&manifests).contains(&kind),
            "no {kind} in {:?}",
            kinds(&manifests)
        );
    }

    let deployment = find(&manifests, "Deployment", FULLNAME);
    assert!(
        try_path(deployment, "spec.replicas").is_none(),
        "the HPA owns the replica count:\n{}",
        show(deployment)
    );
    let heimdall = container(deployment, "heimdall");
    for (var, value) in [
        ("NATS_URL", "nats://nats.messaging.svc:4222"),
        ("CERBOS_GRPC_URL", "cerbos.cerbos.svc:3593"),
        ("HYDRA_ADMIN_URL", "http://hydra-admin.ory.svc:4445"),
        ("KRATOS_ADMIN_URL", "http://kratos-admin.ory.svc:4434"),
    ] {
        assert_eq!(env_value(heimdall, var), Some(value), "{var}");
    }
    assert_eq!(*path(heimdall, "lifecycle.preStop.sleep.seconds"), 5);

    let hpa = find(&manifests, "HorizontalPodAutoscaler", FULLNAME);
    assert_eq!(*path(hpa, "apiVersion"), "autoscaling/v2");
    assert_eq!(*path(hpa, "spec.scaleTargetRef.kind"), "Deployment");
    assert_eq!(*path(hpa, "spec.scaleTargetRef.name"), FULLNAME);

    let monitor = find(&manifests, "ServiceMonitor", FULLNAME);
    let endpoints = path(monitor, "spec.endpoints");
    assert!(
        endpoints
            .as_sequence()
            .unwrap()
            .iter()
            .any(|e| *path(e, "port") == "http" && *path(e, "path") == "/metrics"),
        "{}",
        show(endpoints)
    );
    assert_eq!(*path(monitor, "metadata.labels.release"), "prometheus");

    let pdb = find(&manifests, "PodDisruptionBudget", FULLNAME);
    assert_eq!(*path(pdb, "spec.minAvailable"), 1);
    assert!(
        try_path(pdb, "spec.maxUnavailable").is_none(),
        "{}",
        show(pdb)
    );

    let headless = find(&manifests, "Service", "authz-heimdall-headless");
    assert_eq!(*path(headless, "spec.clusterIP"), "None");

    let job = find(&manifests, "Job", "authz-heimdall-validate");
    assert_eq!(
        annotation(path(job, "metadata"), "helm.sh/hook"),
        Some("pre-install,pre-upgrade")
    );
    let validate = container(job, "validate");
    assert_eq!(
        *path(validate, "args"),
        yaml("[validate, --config, /etc/heimdall/heimdall.yaml]")
    );
    assert_eq!(
        *path(secret_key_ref(validate, "HEIMDALL_SIGNING_KEY"), "name"),
        "heimdall-keys"
    );
    // The hook's pod must not be taken for a heimdall replica by the Service or the PDB.
    let pod_labels = path(job, "spec.template.metadata.labels");
    assert_eq!(
        pod_labels
            .get("app.kubernetes.io/name")
            .and_then(Value::as_str),
        Some("heimdall-validate"),
        "{}",
        show(pod_labels)
    );
    let hook_config = find(&manifests, "ConfigMap", "authz-heimdall-validate");
    assert_eq!(
        yaml(embedded(hook_config, "heimdall.yaml")),
        heimdall_config(&manifests),
        "the hook validates the configuration being deployed"
    );
}

#[test]
fn sidecar_mode_renders_no_deployment_but_a_container_to_include() {
    let Some(helm) = helm() else { return };
    let values = chart().join("ci").join("sidecar-values.yaml");
    for args in [
        vec!["--set", "mode=sidecar"],
        vec!["-f", values.to_str().unwrap()],
    ] {
        let manifests = render(&helm, &args);
        for kind in [
            "Deployment",
            "Service",
            "ServiceAccount",
            "PodDisruptionBudget",
            "HorizontalPodAutoscaler",
        ] {
            assert!(
                !kinds(&manifests).contains(&kind),
                "sidecar mode rendered a {kind}"
            );
        }
        find(&manifests, "ConfigMap", "authz-heimdall-config");
        find(&manifests, "ConfigMap", "authz-heimdall-envoy");

        let snippet = find(&manifests, "ConfigMap", "authz-heimdall-sidecar-snippet");
        let containers = yaml(embedded(snippet, "containers.yaml"));
        assert_eq!(
            *path(&containers, "0.name"),
            "heimdall",
            "{}",
            show(&containers)
        );
        let heimdall = path(&containers, "0");
        let ports: Vec<&Value> = path(heimdall, "ports")
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| path(p, "containerPort"))
            .collect();
        for port in [9001, 8090] {
            assert!(
                ports.iter().any(|p| **p == port),
                "no port {port} in {ports:?}"
            );
        }
        assert_eq!(env_value(heimdall, "PORT"), Some("8090"));
        assert_eq!(*path(heimdall, "readinessProbe.httpGet.path"), "/ready");
        assert_eq!(*path(heimdall, "readinessProbe.httpGet.port"), 8090);
        assert_eq!(*path(heimdall, "livenessProbe.httpGet.path"), "/health");
        assert_eq!(*path(heimdall, "livenessProbe.httpGet.port"), 8090);
        assert_eq!(
            *path(heimdall, "securityContext.readOnlyRootFilesystem"),
            true
        );
        let mounts = path(heimdall, "volumeMounts");
        assert!(
            mounts
                .as_sequence()
                .unwrap()
                .iter()
                .any(|m| *path(m, "mountPath") == "/etc/heimdall"),
            "{}",
            show(mounts)
        );
        let volumes = yaml(embedded(snippet, "volumes.yaml"));
        assert!(
            volumes
                .as_sequence()
                .unwrap()
                .iter()
                .any(|v| try_path(v, "configMap.name")
                    .is_some_and(|name| *name == "authz-heimdall-config")),
            "{}",
            show(&volumes)
        );
    }
}

#[test]
fn a_parent_chart_includes_the_sidecar_container() {
    let Some(helm) = helm() else { return };
    let dir = scratch("parent");
    copy_dir(&chart(), &dir.join("charts").join("heimdall"));
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(
        dir.join("Chart.yaml"),
        "apiVersion: v2\nname: shop\nversion: 0.1.0\ndependencies:\n  - name: heimdall\n    version: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("values.yaml"),
        "heimdall:\n  mode: sidecar\n  keys:\n    existingSecret: shop-keys\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("templates").join("deployment.yaml"),
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
spec:
  selector:
    matchLabels: {app: shop}
  template:
    metadata:
      labels: {app: shop}
      annotations:
        {{- include "heimdall.checksumAnnotations" .Subcharts.heimdall | nindent 8 }}
    spec:
      containers:
        - name: shop
          image: shop
        {{- include "heimdall.sidecarContainer" .Subcharts.heimdall | nindent 8 }}
      volumes:
        {{- include "heimdall.sidecarVolumes" .Subcharts.heimdall | nindent 8 }}
"#,
    )
    .unwrap();
    let manifests = manifests(&helm_ok(
        &helm,
        &["template", "shop", dir.to_str().unwrap()],
    ));
    let deployment = find(&manifests, "Deployment", "shop");
    container(deployment, "shop");
    let from = secret_key_ref(container(deployment, "heimdall"), "HEIMDALL_SIGNING_KEY");
    assert_eq!(*path(from, "name"), "shop-keys");
    assert_eq!(*path(from, "key"), "HEIMDALL_SIGNING_KEY");
    let volumes = path(deployment, "spec.template.spec.volumes");
    assert!(
        volumes
            .as_sequence()
            .unwrap()
            .iter()
            .any(|v| try_path(v, "configMap.name")
                .is_some_and(|name| *name == "shop-heimdall-config")),
        "{}",
        show(volumes)
    );
    assert!(
        annotation(
            path(deployment, "spec.template.metadata"),
            "checksum/config"
        )
        .is_some(),
        "{}",
        show(deployment)
    );
    find(&manifests, "ConfigMap", "shop-heimdall-config");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A fresh `k4.secret` PASERK from `heimdall keys generate`.
fn generated_signing_key(heimdall: &str) -> String {
    let generated = Command::new(heimdall)
        .args(["keys", "generate"])
        .output()
        .unwrap();
    assert!(generated.status.success());
    let generated = String::from_utf8(generated.stdout).unwrap();
    generated
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .unwrap()
        .trim()
        .to_owned()
}

/// `heimdall validate --config <path>` with exactly the given environment of the variables
/// heimdall reads (everything else it reads is removed).
fn heimdall_validate(heimdall: &str, path: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(heimdall);
    command.args(["validate", "--config", path.to_str().unwrap()]);
    for name in [
        "HEIMDALL_SIGNING_KEY",
        "PASETO_SYMMETRIC_KEY",
        "HEIMDALL_CONFIG",
        "NATS_URL",
        "CERBOS_GRPC_URL",
    ] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    command.output().unwrap()
}

/// The configuration the chart renders is one this heimdall accepts, with the key the chart
/// hands it, and refuses without it (fail closed, no ephemeral key).
#[test]
fn rendered_configuration_is_valid_for_this_heimdall() {
    let Some(helm) = helm() else { return };
    let heimdall = env!("CARGO_BIN_EXE_heimdall");
    let signing_key = generated_signing_key(heimdall);

    let dir = scratch("config");
    for (name, args) in [
        ("deployment", vec![]),
        ("sidecar", vec!["--set", "mode=sidecar"]),
    ] {
        let manifests = render(&helm, &args);
        let config = find(&manifests, "ConfigMap", "authz-heimdall-config");
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, embedded(config, "heimdall.yaml")).unwrap();

        let valid = heimdall_validate(
            heimdall,
            &path,
            &[("HEIMDALL_SIGNING_KEY", signing_key.as_str())],
        );
        assert!(
            valid.status.success(),
            "{name}: heimdall validate refused the chart's configuration:\n{}{}",
            String::from_utf8_lossy(&valid.stdout),
            String::from_utf8_lossy(&valid.stderr)
        );

        let keyless = heimdall_validate(heimdall, &path, &[]);
        let stderr = String::from_utf8_lossy(&keyless.stderr);
        assert!(
            !keyless.status.success() && stderr.contains("HEIMDALL_SIGNING_KEY"),
            "{name}: without its key heimdall must refuse to start: {stderr}"
        );
    }
}

const NATS_URL: &str = "nats://nats.messaging.svc:4222";

/// `integrations.natsUrl` becomes NATS_URL, and each kind of NATS credential in an existing
/// Secret reaches heimdall the way the rendered `nats.auth` says: a mounted file or a
/// secretKeyRef variable, in the Deployment, the sidecar snippet and the validate hook alike.
#[test]
fn nats_url_and_credentials_from_an_existing_secret_are_wired_into_the_config() {
    let Some(helm) = helm() else { return };
    let url = format!("integrations.natsUrl={NATS_URL}");

    // Without credentials: only the variable; no `nats` section, no volume.
    let manifests = render(&helm, &["--set", &url]);
    let deployment = find(&manifests, "Deployment", FULLNAME);
    assert_eq!(
        env_value(container(deployment, "heimdall"), "NATS_URL"),
        Some(NATS_URL)
    );
    assert!(
        !mentions(deployment, "secrets/heimdall/nats"),
        "{}",
        show(deployment)
    );
    let config = heimdall_config(&manifests);
    assert!(try_path(&config, "nats").is_none(), "{}", show(&config));

    // Environment-variable credentials: (type, variable, default entry, rendered nats.auth).
    for (kind, var, entry, auth) in [
        (
            "nkey",
            "NATS_NKEY_SEED",
            "NATS_NKEY_SEED",
            "nkey_seed: {env: NATS_NKEY_SEED}",
        ),
        (
            "token",
            "NATS_TOKEN",
            "NATS_TOKEN",
            "token: {env: NATS_TOKEN}",
        ),
        (
            "userPassword",
            "NATS_PASSWORD",
            "NATS_PASSWORD",
            "{password: {env: NATS_PASSWORD}, user: heimdall}",
        ),
    ] {
        let mut args = vec![
            "--set".to_owned(),
            url.clone(),
            "--set".to_owned(),
            format!("nats.auth.type={kind}"),
            "--set".to_owned(),
            "nats.auth.existingSecret=heimdall-nats".to_owned(),
            "--set".to_owned(),
            "validateConfig.enabled=true".to_owned(),
        ];
        if kind == "userPassword" {
            args.extend(["--set".to_owned(), "nats.auth.user=heimdall".to_owned()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let manifests = render(&helm, &args);
        let config = heimdall_config(&manifests);
        assert_eq!(
            *path(&config, "nats.auth"),
            yaml(auth),
            "{kind}:\n{}",
            show(&config)
        );
        for (what, manifest, name) in [
            (
                "Deployment",
                find(&manifests, "Deployment", FULLNAME),
                "heimdall",
            ),
            (
                "Job",
                find(&manifests, "Job", "authz-heimdall-validate"),
                "validate",
            ),
        ] {
            let container = container(manifest, name);
            let from = secret_key_ref(container, var);
            assert_eq!(*path(from, "name"), "heimdall-nats", "{kind} {what}");
            assert_eq!(*path(from, "key"), entry, "{kind} {what}");
            assert_eq!(env_value(container, "NATS_URL"), Some(NATS_URL));
            assert!(!mentions(manifest, "nats-credentials"), "{kind} {what}");
        }
        assert!(
            !kinds(&manifests).contains(&"Secret"),
            "the chart never creates a NATS Secret"
        );
    }

    // A `.creds` file under another entry name, and a CA with a client certificate, in
    // deployment mode (with the validate hook) and in sidecar mode.
    let creds = [
        "--set",
        url.as_str(),
        "--set",
        "nats.auth.type=creds",
        "--set",
        "nats.auth.existingSecret=heimdall-nats",
        "--set",
        "nats.auth.key=heimdall.creds",
        "--set",
        "nats.tls.existingSecret=nats-client-tls",
        "--set",
        "nats.tls.clientCertificate=true",
        "--set",
        "validateConfig.enabled=true",
    ];
    let rendered_auth = yaml("credentials_file: /var/run/secrets/heimdall/nats/nats.creds");
    let rendered_tls = yaml(
        "ca_file: /var/run/secrets/heimdall/nats-tls/ca.crt
cert_file: /var/run/secrets/heimdall/nats-tls/tls.crt
key_file: /var/run/secrets/heimdall/nats-tls/tls.key
required: true",
    );
    let creds_volume = yaml(
        "secretName: heimdall-nats
items: [{key: heimdall.creds, path: nats.creds}]",
    );
    let tls_volume = yaml(
        "secretName: nats-client-tls
items:
  - {key: ca.crt, path: ca.crt}
  - {key: tls.crt, path: tls.crt}
  - {key: tls.key, path: tls.key}",
    );
    let mount = |name: &str, at: &str| {
        yaml(&format!(
            "{{name: {name}, mountPath: {at}, readOnly: true}}"
        ))
    };

    let manifests = render(&helm, &creds);
    let config = heimdall_config(&manifests);
    assert_eq!(
        *path(&config, "nats.auth"),
        rendered_auth,
        "{}",
        show(&config)
    );
    assert_eq!(
        *path(&config, "nats.tls"),
        rendered_tls,
        "{}",
        show(&config)
    );
    for (what, manifest, name) in [
        (
            "Deployment",
            find(&manifests, "Deployment", FULLNAME),
            "heimdall",
        ),
        (
            "Job",
            find(&manifests, "Job", "authz-heimdall-validate"),
            "validate",
        ),
    ] {
        let container = container(manifest, name);
        let mounts = path(container, "volumeMounts");
        assert_eq!(
            *named(mounts, "nats-credentials"),
            mount("nats-credentials", "/var/run/secrets/heimdall/nats"),
            "{what}"
        );
        assert_eq!(
            *named(mounts, "nats-tls"),
            mount("nats-tls", "/var/run/secrets/heimdall/nats-tls"),
            "{what}"
        );
        let volumes = path(manifest, "spec.template.spec.volumes");
        assert_eq!(
            *path(named(volumes, "nats-credentials"), "secret"),
            creds_volume,
            "{what}"
        );
        assert_eq!(
            *path(named(volumes, "nats-tls"), "secret"),
            tls_volume,
            "{what}"
        );
        assert!(!mentions(path(container, "env"), "NATS_TOKEN"), "{what}");
    }
    // The credentials are part of the configuration: pods roll when they change.
    let plain = render(&helm, &["--set", &url]);
    let checksum = |m: &[Value]| {
        annotation(
            path(find(m, "Deployment", FULLNAME), "spec.template.metadata"),
            "checksum/config",
        )
        .unwrap()
        .to_owned()
    };
    assert_ne!(checksum(&manifests), checksum(&plain));

    let mut sidecar = creds.to_vec();
    sidecar.extend(["--set", "mode=sidecar"]);
    let manifests = render(&helm, &sidecar);
    let snippet = find(&manifests, "ConfigMap", "authz-heimdall-sidecar-snippet");
    let containers = yaml(embedded(snippet, "containers.yaml"));
    let heimdall = named(&containers, "heimdall");
    assert_eq!(env_value(heimdall, "NATS_URL"), Some(NATS_URL));
    let mounts = path(heimdall, "volumeMounts");
    assert_eq!(
        *named(mounts, "heimdall-nats-credentials"),
        mount(
            "heimdall-nats-credentials",
            "/var/run/secrets/heimdall/nats"
        )
    );
    assert_eq!(
        *named(mounts, "heimdall-nats-tls"),
        mount("heimdall-nats-tls", "/var/run/secrets/heimdall/nats-tls")
    );
    let volumes = yaml(embedded(snippet, "volumes.yaml"));
    assert_eq!(
        *path(named(&volumes, "heimdall-nats-credentials"), "secret"),
        creds_volume
    );
    assert_eq!(
        *path(named(&volumes, "heimdall-nats-tls"), "secret"),
        tls_volume
    );
    let config = heimdall_config(&manifests);
    assert_eq!(
        *path(&config, "nats.auth"),
        rendered_auth,
        "{}",
        show(&config)
    );
    assert_eq!(
        *path(&config, "nats.tls"),
        rendered_tls,
        "{}",
        show(&config)
    );
}

/// The first YAML example of the chart README's NATS section: the values this test renders.
fn readme_nats_example() -> String {
    let readme = std::fs::read_to_string(chart().join("README.md")).unwrap();
    let section = readme
        .split_once("## NATS (principal attributes)")
        .expect("the chart README has a NATS section")
        .1;
    let example = section.split_once("```yaml\n").unwrap().1;
    let example = example.split_once("```").unwrap().0;
    assert!(example.contains("natsUrl:"), "{example}");
    example.to_owned()
}

/// The NATS settings the chart renders are accepted by this heimdall. The chart README's example
/// (a `principal_attributes` contextualizer, NATS_URL only) validates with the NATS_URL of the
/// rendered container's environment and is refused without it; credentials, TLS and a read-only
/// sidecar (`config.nats.consumer.enabled: false`) merge into a valid `nats` section.
#[test]
fn rendered_nats_configuration_is_valid_for_this_heimdall() {
    let Some(helm) = helm() else { return };
    let heimdall = env!("CARGO_BIN_EXE_heimdall");
    let signing_key = generated_signing_key(heimdall);
    let dir = scratch("nats");
    let values = dir.join("attributes-values.yaml");
    std::fs::write(&values, readme_nats_example()).unwrap();
    let values = values.to_str().unwrap();

    for (name, args) in [
        ("url-only", vec!["-f", values]),
        (
            "credentials",
            vec![
                "-f",
                values,
                "--set",
                "nats.auth.type=creds",
                "--set",
                "nats.auth.existingSecret=heimdall-nats",
                "--set",
                "nats.tls.existingSecret=nats-ca",
            ],
        ),
        (
            "read-only-sidecar",
            vec![
                "-f",
                values,
                "--set",
                "mode=sidecar",
                "--set",
                "nats.auth.type=token",
                "--set",
                "nats.auth.existingSecret=heimdall-nats",
                "--set",
                "config.nats.consumer.enabled=false",
            ],
        ),
    ] {
        let manifests = render(&helm, &args);
        let file = embedded(
            find(&manifests, "ConfigMap", "authz-heimdall-config"),
            "heimdall.yaml",
        );
        let config = yaml(file);
        let config_file = dir.join(format!("{name}.yaml"));
        std::fs::write(&config_file, file).unwrap();
        let url = if name == "read-only-sidecar" {
            let snippet = find(&manifests, "ConfigMap", "authz-heimdall-sidecar-snippet");
            let containers = yaml(embedded(snippet, "containers.yaml"));
            env_value(named(&containers, "heimdall"), "NATS_URL").map(str::to_owned)
        } else {
            let deployment = find(&manifests, "Deployment", FULLNAME);
            env_value(container(deployment, "heimdall"), "NATS_URL").map(str::to_owned)
        }
        .unwrap();

        let valid = heimdall_validate(
            heimdall,
            &config_file,
            &[
                ("HEIMDALL_SIGNING_KEY", signing_key.as_str()),
                ("NATS_URL", url.as_str()),
            ],
        );
        assert!(
            valid.status.success(),
            "{name}: heimdall validate refused the chart's configuration:\n{}{}\n{file}",
            String::from_utf8_lossy(&valid.stdout),
            String::from_utf8_lossy(&valid.stderr)
        );

        if name == "url-only" {
            // The rendered file has no `nats` section: only NATS_URL turns the store on.
            assert!(try_path(&config, "nats").is_none(), "{file}");
            let without = heimdall_validate(
                heimdall,
                &config_file,
                &[("HEIMDALL_SIGNING_KEY", signing_key.as_str())],
            );
            let stderr = String::from_utf8_lossy(&without.stderr);
            assert!(
                !without.status.success() && stderr.contains("NATS_URL"),
                "without NATS_URL the contextualizer has no store: {stderr}"
            );
        } else {
            assert!(path(&config, "nats.auth").is_mapping(), "{file}");
        }
        if name == "read-only-sidecar" {
            assert_eq!(*path(&config, "nats.consumer.enabled"), false, "{file}");
        }
    }
}

/// The sidecar's Envoy configuration sends ext_authz to heimdall on loopback and is valid for
/// the pinned Envoy.
#[test]
fn rendered_sidecar_envoy_configuration_is_valid() {
    let Some(helm) = helm() else { return };
    let manifests = render(
        &helm,
        &["--set", "mode=sidecar", "--set", "ports.grpc=9101"],
    );
    let envoy_yaml = embedded(
        find(&manifests, "ConfigMap", "authz-heimdall-envoy"),
        "envoy.yaml",
    );
    let envoy_config = yaml(envoy_yaml);
    let cluster = named(path(&envoy_config, "static_resources.clusters"), "heimdall");
    assert_eq!(
        *path(
            cluster,
            "load_assignment.endpoints.0.lb_endpoints.0.endpoint.address.socket_address"
        ),
        yaml("{address: 127.0.0.1, port_value: 9101}"),
        "{envoy_yaml}"
    );
    let listeners = path(&envoy_config, "static_resources.listeners");
    let manager = path(listeners, "0.filter_chains.0.filters.0.typed_config");
    let ext_authz = path(
        named(
            path(manager, "http_filters"),
            "envoy.filters.http.ext_authz",
        ),
        "typed_config",
    );
    assert_eq!(
        *path(ext_authz, "grpc_service.envoy_grpc.cluster_name"),
        "heimdall",
        "{envoy_yaml}"
    );
    assert_eq!(
        *path(ext_authz, "failure_mode_allow"),
        false,
        "{envoy_yaml}"
    );

    let Some(envoy) = tools::require("envoy") else {
        return;
    };
    let dir = scratch("envoy");
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, envoy_yaml).unwrap();
    let out = Command::new(envoy)
        .args(["--mode", "validate", "--log-level", "warn", "-c"])
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "envoy refused the chart's sidecar configuration:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The image the chart runs: `hadolint` passes the Dockerfile with the repository's settings,
/// and the final stage runs as a non-root user with the binary the chart's `command` calls.
#[test]
fn the_dockerfile_passes_hadolint_and_runs_unprivileged() {
    let Some(hadolint) = tools::require("hadolint") else {
        return;
    };
    let out = Command::new(&hadolint)
        .args(["--config", ".hadolint.yaml", "Dockerfile"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let final_stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    let user = final_stage
        .lines()
        .find_map(|line| line.strip_prefix("USER "))
        .expect("the final stage names its USER");
    assert!(
        !user.starts_with("0") && !user.starts_with("root"),
        "runs as {user}"
    );
    assert!(
        !dockerfile
            .lines()
            .any(|line| line.starts_with("HEALTHCHECK")),
        "probes belong to Kubernetes"
    );
    assert!(final_stage.contains("/usr/local/bin/heimdall"));
    let values = yaml(&std::fs::read_to_string(chart().join("values.yaml")).unwrap());
    assert_eq!(
        text(&values, "image.repository"),
        "heimdall",
        "the chart runs the image `docker build -t heimdall` makes"
    );
}

/// The alert rules Prometheus loads and the chart embeds.
fn alert_rules_file() -> PathBuf {
    chart().join("files").join("prometheus-rules.yaml")
}

#[test]
fn prometheus_rule_renders_the_alert_file_only_when_enabled() {
    let Some(helm) = helm() else { return };
    for mode in ["deployment", "sidecar"] {
        let manifests = render(&helm, &["--set", &format!("mode={mode}")]);
        assert!(
            !kinds(&manifests).contains(&"PrometheusRule"),
            "a PrometheusRule by default in {mode} mode: {:?}",
            kinds(&manifests)
        );
    }
    let file = yaml(&std::fs::read_to_string(alert_rules_file()).unwrap());
    for mode in ["deployment", "sidecar"] {
        let manifests = render(
            &helm,
            &[
                "--set",
                &format!("mode={mode}"),
                "--set",
                "prometheusRule.enabled=true",
                "--set",
                "prometheusRule.labels.release=prometheus",
            ],
        );
        let rule = find(&manifests, "PrometheusRule", FULLNAME);
        assert_eq!(*path(rule, "apiVersion"), "monitoring.coreos.com/v1");
        assert_eq!(*path(rule, "metadata.labels.release"), "prometheus");
        assert_eq!(
            *path(rule, "spec.groups"),
            *path(&file, "groups"),
            "the PrometheusRule's groups are the file's ({mode} mode)"
        );
    }

    let extra = scratch("prometheus_rule_additional").join("values.yaml");
    std::fs::write(
        &extra,
        "prometheusRule:\n  enabled: true\n  additionalRules:\n    - alert: HeimdallDown\n      expr: up{job=\"heimdall\"} == 0\n      for: 5m\n",
    )
    .unwrap();
    let manifests = render(&helm, &["-f", extra.to_str().unwrap()]);
    let groups = path(find(&manifests, "PrometheusRule", FULLNAME), "spec.groups")
        .as_sequence()
        .unwrap();
    let file_groups = path(&file, "groups").as_sequence().unwrap();
    assert_eq!(groups[..file_groups.len()], file_groups[..]);
    assert_eq!(
        groups[file_groups.len()],
        yaml(
            "{name: heimdall.additional, rules: [{alert: HeimdallDown, expr: 'up{job=\"heimdall\"} == 0', for: 5m}]}"
        )
    );
}

/// Runs promtool in the repository; a failure fails the test with promtool's words.
fn promtool_ok(promtool: &Path, args: &[&str]) -> String {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", promtool.display()));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{said}",
        args.join(" "),
        out.status
    );
    said
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(promtool) = tools::require("promtool") else {
        return;
    };
    let rules = alert_rules_file();
    let checked = promtool_ok(&promtool, &["check", "rules", rules.to_str().unwrap()]);
    assert!(checked.contains("SUCCESS: 8 rules found"), "{checked}");
    // Every alert has a unit test, and every unit test names an alert of the file.
    let tests_file = repo()
        .join("infra")
        .join("prometheus")
        .join("alerts.test.yaml");
    let alerts: std::collections::BTreeSet<String> =
        path(&yaml(&std::fs::read_to_string(&rules).unwrap()), "groups")
            .as_sequence()
            .unwrap()
            .iter()
            .flat_map(|group| path(group, "rules").as_sequence().unwrap())
            .map(|rule| text(rule, "alert").to_owned())
            .collect();
    let tested: std::collections::BTreeSet<String> = path(
        &yaml(&std::fs::read_to_string(&tests_file).unwrap()),
        "tests",
    )
    .as_sequence()
    .unwrap()
    .iter()
    .flat_map(|test| path(test, "alert_rule_test").as_sequence().unwrap())
    .map(|case| text(case, "alertname").to_owned())
    .collect();
    assert_eq!(alerts, tested, "alerts and their unit tests");
    let tested = promtool_ok(&promtool, &["test", "rules", tests_file.to_str().unwrap()]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn dashboard_queries_are_valid_promql() {
    let Some(promtool) = tools::require("promtool") else {
        return;
    };
    fn exprs(value: &serde_json::Value, found: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(expr)) = map.get("expr") {
                    found.push(expr.clone());
                }
                map.values().for_each(|v| exprs(v, found));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, found)),
            _ => {}
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("infra").join("grafana").join("heimdall.json"))
            .unwrap(),
    )
    .unwrap();
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    assert!(!queries.is_empty());
    // promtool parses PromQL in rule files: each query becomes a recording rule, with Grafana's
    // variables replaced by what they stand for.
    let rules: Vec<serde_json::Value> = queries
        .iter()
        .enumerate()
        .map(|(i, query)| {
            let promql = query
                .replace("$__rate_interval", "5m")
                .replace("$job", ".+");
            serde_json::json!({ "record": format!("dashboard:query_{i}"), "expr": promql })
        })
        .collect();
    let file = scratch("dashboard_queries").join("queries.yaml");
    let groups = serde_json::json!({ "groups": [ { "name": "dashboard", "rules": rules } ] });
    std::fs::write(&file, serde_json::to_string_pretty(&groups).unwrap()).unwrap();
    let checked = promtool_ok(&promtool, &["check", "rules", file.to_str().unwrap()]);
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{checked}"
    );
}
