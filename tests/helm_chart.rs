//! The Helm chart in charts/heimdall: `helm lint` passes, `helm template` renders both modes and
//! every optional resource, keys stay out of ConfigMaps, and what the chart renders is accepted by
//! the real programs (`heimdall validate` for the configuration, `envoy --mode validate` for the
//! sidecar's Envoy configuration).
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

/// One rendered manifest.
#[derive(Debug)]
struct Manifest {
    kind: String,
    name: String,
    text: String,
}

/// `helm template <release> charts/heimdall <args…>`, split into manifests.
fn render(helm: &Path, args: &[&str]) -> Vec<Manifest> {
    let chart = chart();
    let mut all = vec!["template", RELEASE, chart.to_str().unwrap()];
    all.extend_from_slice(args);
    split_manifests(&helm_ok(helm, &all))
}

fn split_manifests(stream: &str) -> Vec<Manifest> {
    let mut docs: Vec<String> = vec![String::new()];
    for line in stream.lines() {
        if line == "---" {
            docs.push(String::new());
        } else {
            let doc = docs.last_mut().unwrap();
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.into_iter()
        .filter_map(|text| {
            let kind = text
                .lines()
                .find_map(|l| l.strip_prefix("kind: "))?
                .trim()
                .to_owned();
            let name = text
                .lines()
                .skip_while(|l| *l != "metadata:")
                .find_map(|l| l.strip_prefix("  name: "))?
                .trim()
                .to_owned();
            Some(Manifest { kind, name, text })
        })
        .collect()
}

fn find<'a>(manifests: &'a [Manifest], kind: &str, name: &str) -> &'a Manifest {
    manifests
        .iter()
        .find(|m| m.kind == kind && m.name == name)
        .unwrap_or_else(|| {
            let have: Vec<String> = manifests
                .iter()
                .map(|m| format!("{}/{}", m.kind, m.name))
                .collect();
            panic!("no {kind}/{name} among {have:?}")
        })
}

fn kinds(manifests: &[Manifest]) -> Vec<&str> {
    let mut kinds: Vec<&str> = manifests.iter().map(|m| m.kind.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    kinds
}

/// The lines indented under the first line that reads `key` (after its indentation), without
/// that indentation: a YAML block, or a block scalar's text.
fn block(text: &str, key: &str) -> String {
    let mut lines = text.lines();
    let header = lines
        .by_ref()
        .find(|l| l.trim() == key)
        .unwrap_or_else(|| panic!("no `{key}` in:\n{text}"));
    let indent = header.len() - header.trim_start().len();
    let body: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
        .collect();
    let strip = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    body.iter()
        .map(|l| l.get(strip..).unwrap_or("").trim_end())
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
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

    let deployment = &find(&manifests, "Deployment", FULLNAME).text;
    assert!(deployment.contains("  replicas: 2\n"), "{deployment}");
    let readiness = block(deployment, "readinessProbe:");
    assert!(readiness.contains("path: /ready"), "{readiness}");
    assert!(readiness.contains("port: http"), "{readiness}");
    let liveness = block(deployment, "livenessProbe:");
    assert!(liveness.contains("path: /health"), "{liveness}");
    let ports = block(deployment, "ports:");
    assert!(
        ports.contains("- name: grpc\n  containerPort: 9001"),
        "{ports}"
    );
    assert!(
        ports.contains("- name: http\n  containerPort: 8080"),
        "{ports}"
    );
    let container_security = block(deployment, "securityContext:");
    for want in [
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "- ALL",
        "type: RuntimeDefault",
    ] {
        assert!(
            deployment.contains(want),
            "Deployment lacks `{want}`:\n{deployment}"
        );
    }
    assert!(
        container_security.contains("runAsNonRoot: true"),
        "{container_security}"
    );
    assert!(
        deployment
            .contains("- serve\n            - --config\n            - /etc/heimdall/heimdall.yaml"),
        "{deployment}"
    );
    assert!(
        deployment.contains("checksum/config: "),
        "pods must roll on config changes:\n{deployment}"
    );
    assert!(
        deployment.contains("name: authz-heimdall-config"),
        "{deployment}"
    );
    assert!(
        deployment.contains("automountServiceAccountToken: false"),
        "{deployment}"
    );
    assert!(
        deployment.contains("topologyKey: kubernetes.io/hostname"),
        "{deployment}"
    );
    let env = block(deployment, "env:");
    assert!(
        env.contains("- name: GRPC_PORT\n  value: \"9001\""),
        "{env}"
    );
    assert!(env.contains("- name: PORT\n  value: \"8080\""), "{env}");

    let service = &find(&manifests, "Service", FULLNAME).text;
    assert!(service.contains("type: ClusterIP"), "{service}");
    assert!(
        service.contains(
            "- name: grpc\n      port: 9001\n      targetPort: grpc\n      protocol: TCP\n      appProtocol: grpc"
        ),
        "{service}"
    );
    assert!(
        service.contains("- name: http\n      port: 8080"),
        "{service}"
    );

    let config = &find(&manifests, "ConfigMap", "authz-heimdall-config").text;
    let file = block(config, "heimdall.yaml: |");
    assert!(file.contains("version: \"1\""), "{file}");
    assert!(
        file.contains("keys:\n  - env: HEIMDALL_SIGNING_KEY"),
        "{file}"
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

        for manifest in manifests.iter().filter(|m| m.kind != "Secret") {
            for secret in &secrets {
                assert!(
                    !manifest.text.contains(secret.as_str()),
                    "{} {} shows a key:\n{}",
                    manifest.kind,
                    manifest.name,
                    manifest.text
                );
            }
        }
        let secret = &find(&manifests, "Secret", "authz-heimdall-keys").text;
        assert!(
            secret.contains(&format!(
                "PASETO_SYMMETRIC_KEY: \"{}\"",
                b64(SYMMETRIC_KEY.as_bytes())
            )),
            "{secret}"
        );
        assert!(
            secret.contains(&format!(
                "HEIMDALL_SIGNING_KEY: \"{}\"",
                b64(SIGNING_KEY.as_bytes())
            )),
            "{secret}"
        );

        // The pre-install hook cannot read the release's Secret (not created yet): it has a copy.
        let job = &find(&manifests, "Job", "authz-heimdall-validate").text;
        assert!(
            job.contains("secretKeyRef:\n                  name: authz-heimdall-validate\n                  key: HEIMDALL_SIGNING_KEY"),
            "{job}"
        );
        let hook_secret = &find(&manifests, "Secret", "authz-heimdall-validate").text;
        assert!(
            hook_secret.contains("helm.sh/hook: pre-install,pre-upgrade"),
            "{hook_secret}"
        );
    }

    let manifests = render(&helm, &keys);
    let deployment = &find(&manifests, "Deployment", FULLNAME).text;
    let env = block(deployment, "env:");
    for var in ["PASETO_SYMMETRIC_KEY", "HEIMDALL_SIGNING_KEY"] {
        assert!(
            env.contains(&format!(
                "- name: {var}\n  valueFrom:\n    secretKeyRef:\n      name: authz-heimdall-keys\n      key: {var}\n"
            )),
            "{env}"
        );
    }
    assert!(
        deployment.contains("checksum/keys: "),
        "pods must roll on key changes:\n{deployment}"
    );

    // An existing Secret: referenced by name, nothing created.
    let manifests = render(&helm, &["--set", "keys.existingSecret=my-keys"]);
    assert!(!kinds(&manifests).contains(&"Secret"));
    let deployment = &find(&manifests, "Deployment", FULLNAME).text;
    assert!(
        deployment.contains(
            "secretKeyRef:\n                  name: my-keys\n                  key: HEIMDALL_SIGNING_KEY\n                  optional: true"
        ),
        "{deployment}"
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

    let deployment = &find(&manifests, "Deployment", FULLNAME).text;
    assert!(
        !deployment.contains("replicas:"),
        "the HPA owns the replica count:\n{deployment}"
    );
    let env = block(deployment, "env:");
    for (var, value) in [
        ("NATS_URL", "nats://nats.messaging.svc:4222"),
        ("CERBOS_GRPC_URL", "cerbos.cerbos.svc:3593"),
        ("HYDRA_ADMIN_URL", "http://hydra-admin.ory.svc:4445"),
        ("KRATOS_ADMIN_URL", "http://kratos-admin.ory.svc:4434"),
    ] {
        assert!(
            env.contains(&format!("- name: {var}\n  value: \"{value}\"")),
            "{env}"
        );
    }
    assert!(block(deployment, "lifecycle:").contains("seconds: 5"));

    let hpa = &find(&manifests, "HorizontalPodAutoscaler", FULLNAME).text;
    assert!(hpa.contains("apiVersion: autoscaling/v2"), "{hpa}");
    assert!(
        hpa.contains("kind: Deployment\n    name: authz-heimdall"),
        "{hpa}"
    );

    let monitor = &find(&manifests, "ServiceMonitor", FULLNAME).text;
    assert!(
        monitor.contains("- port: http\n      path: /metrics"),
        "{monitor}"
    );
    assert!(monitor.contains("release: prometheus"), "{monitor}");

    let pdb = &find(&manifests, "PodDisruptionBudget", FULLNAME).text;
    assert!(pdb.contains("minAvailable: 1"), "{pdb}");
    assert!(!pdb.contains("maxUnavailable"), "{pdb}");

    let headless = &find(&manifests, "Service", "authz-heimdall-headless").text;
    assert!(headless.contains("clusterIP: None"), "{headless}");

    let job = &find(&manifests, "Job", "authz-heimdall-validate").text;
    assert!(
        job.contains("helm.sh/hook: pre-install,pre-upgrade"),
        "{job}"
    );
    assert!(
        job.contains(
            "- validate\n            - --config\n            - /etc/heimdall/heimdall.yaml"
        ),
        "{job}"
    );
    assert!(
        job.contains("secretKeyRef:\n                  name: heimdall-keys"),
        "{job}"
    );
    // The hook's pod must not be taken for a heimdall replica by the Service or the PDB.
    let pod_labels = block(&block(job, "template:"), "labels:");
    assert!(
        pod_labels.contains("app.kubernetes.io/name: heimdall-validate"),
        "{pod_labels}"
    );
    let hook_config = &find(&manifests, "ConfigMap", "authz-heimdall-validate").text;
    assert_eq!(
        block(hook_config, "heimdall.yaml: |"),
        block(
            &find(&manifests, "ConfigMap", "authz-heimdall-config").text,
            "heimdall.yaml: |"
        ),
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

        let snippet = &find(&manifests, "ConfigMap", "authz-heimdall-sidecar-snippet").text;
        let container = block(snippet, "containers.yaml: |");
        assert!(container.starts_with("- name: heimdall\n"), "{container}");
        for want in [
            "containerPort: 9001",
            "containerPort: 8090",
            "- name: PORT\n      value: \"8090\"",
            "path: /ready\n      port: 8090",
            "path: /health\n      port: 8090",
            "readOnlyRootFilesystem: true",
            "mountPath: /etc/heimdall",
        ] {
            assert!(container.contains(want), "no `{want}` in:\n{container}");
        }
        let volumes = block(snippet, "volumes.yaml: |");
        assert!(
            volumes.contains("configMap:\n    name: authz-heimdall-config"),
            "{volumes}"
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
    let manifests = split_manifests(&helm_ok(
        &helm,
        &["template", "shop", dir.to_str().unwrap()],
    ));
    let deployment = &find(&manifests, "Deployment", "shop").text;
    let containers = block(deployment, "containers:");
    assert!(
        containers.contains("- name: shop\n") && containers.contains("- name: heimdall\n"),
        "{containers}"
    );
    assert!(
        containers.contains("name: shop-keys\n          key: HEIMDALL_SIGNING_KEY"),
        "{containers}"
    );
    let volumes = block(deployment, "volumes:");
    assert!(volumes.contains("name: shop-heimdall-config"), "{volumes}");
    assert!(deployment.contains("checksum/config: "), "{deployment}");
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

/// The value of a plain `- name: NAME\n  value: "…"` entry in a rendered `env:` block.
fn env_value(env: &str, name: &str) -> Option<String> {
    let mut lines = env.lines();
    lines.find(|l| l.trim() == format!("- name: {name}"))?;
    let value = lines.next()?.trim().strip_prefix("value: ")?;
    Some(value.trim_matches('"').to_owned())
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
        let config = &find(&manifests, "ConfigMap", "authz-heimdall-config").text;
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, block(config, "heimdall.yaml: |")).unwrap();

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
    let deployment = &find(&manifests, "Deployment", FULLNAME).text;
    let env = block(deployment, "env:");
    assert_eq!(
        env_value(&env, "NATS_URL").as_deref(),
        Some(NATS_URL),
        "{env}"
    );
    assert!(
        !deployment.contains("secrets/heimdall/nats"),
        "{deployment}"
    );
    let file = block(
        &find(&manifests, "ConfigMap", "authz-heimdall-config").text,
        "heimdall.yaml: |",
    );
    assert!(!file.contains("nats:"), "{file}");

    // Environment-variable credentials: (type, variable, default entry, rendered nats.auth).
    for (kind, var, entry, auth) in [
        (
            "nkey",
            "NATS_NKEY_SEED",
            "NATS_NKEY_SEED",
            "auth:\n    nkey_seed:\n      env: NATS_NKEY_SEED\n",
        ),
        (
            "token",
            "NATS_TOKEN",
            "NATS_TOKEN",
            "auth:\n    token:\n      env: NATS_TOKEN\n",
        ),
        (
            "userPassword",
            "NATS_PASSWORD",
            "NATS_PASSWORD",
            "auth:\n    password:\n      env: NATS_PASSWORD\n    user: heimdall\n",
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
        let file = block(
            &find(&manifests, "ConfigMap", "authz-heimdall-config").text,
            "heimdall.yaml: |",
        );
        assert!(
            file.contains(&format!("nats:\n  {auth}")),
            "{kind}:\n{file}"
        );
        let secret_ref = format!(
            "- name: {var}\n  valueFrom:\n    secretKeyRef:\n      name: heimdall-nats\n      key: {entry}\n"
        );
        for (what, manifest) in [
            ("Deployment", &find(&manifests, "Deployment", FULLNAME).text),
            (
                "Job",
                &find(&manifests, "Job", "authz-heimdall-validate").text,
            ),
        ] {
            let env = block(manifest, "env:");
            assert!(env.contains(&secret_ref), "{kind} {what}:\n{env}");
            assert_eq!(env_value(&env, "NATS_URL").as_deref(), Some(NATS_URL));
            assert!(!manifest.contains("nats-credentials"), "{kind} {what}");
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
    let rendered_nats = "nats:\n  auth:\n    credentials_file: /var/run/secrets/heimdall/nats/nats.creds\n  tls:\n    ca_file: /var/run/secrets/heimdall/nats-tls/ca.crt\n    cert_file: /var/run/secrets/heimdall/nats-tls/tls.crt\n    key_file: /var/run/secrets/heimdall/nats-tls/tls.key\n    required: true\n";
    let creds_volume = "secret:\n    secretName: heimdall-nats\n    items:\n      - key: heimdall.creds\n        path: nats.creds\n";
    let tls_volume = "secret:\n    secretName: nats-client-tls\n    items:\n      - key: ca.crt\n        path: ca.crt\n      - key: tls.crt\n        path: tls.crt\n      - key: tls.key\n        path: tls.key\n";

    let manifests = render(&helm, &creds);
    let config = &find(&manifests, "ConfigMap", "authz-heimdall-config").text;
    let file = block(config, "heimdall.yaml: |");
    assert!(file.contains(rendered_nats), "{file}");
    for (what, manifest) in [
        ("Deployment", &find(&manifests, "Deployment", FULLNAME).text),
        (
            "Job",
            &find(&manifests, "Job", "authz-heimdall-validate").text,
        ),
    ] {
        let mounts = block(manifest, "volumeMounts:");
        for want in [
            "- name: nats-credentials\n  mountPath: /var/run/secrets/heimdall/nats\n  readOnly: true",
            "- name: nats-tls\n  mountPath: /var/run/secrets/heimdall/nats-tls\n  readOnly: true",
        ] {
            assert!(mounts.contains(want), "{what}: no `{want}` in:\n{mounts}");
        }
        let volumes = block(manifest, "volumes:");
        assert!(
            volumes.contains(&format!("- name: nats-credentials\n  {creds_volume}")),
            "{what}:\n{volumes}"
        );
        assert!(
            volumes.contains(&format!("- name: nats-tls\n  {tls_volume}")),
            "{what}:\n{volumes}"
        );
        assert!(!block(manifest, "env:").contains("NATS_TOKEN"), "{what}");
    }
    // The credentials are part of the configuration: pods roll when they change.
    let plain = render(&helm, &["--set", &url]);
    let checksum = |m: &[Manifest]| {
        find(m, "Deployment", FULLNAME)
            .text
            .lines()
            .find(|l| l.contains("checksum/config: "))
            .unwrap()
            .to_owned()
    };
    assert_ne!(checksum(&manifests), checksum(&plain));

    let mut sidecar = creds.to_vec();
    sidecar.extend(["--set", "mode=sidecar"]);
    let manifests = render(&helm, &sidecar);
    let snippet = &find(&manifests, "ConfigMap", "authz-heimdall-sidecar-snippet").text;
    let container = block(snippet, "containers.yaml: |");
    assert_eq!(
        env_value(&block(&container, "env:"), "NATS_URL").as_deref(),
        Some(NATS_URL)
    );
    for want in [
        "- name: heimdall-nats-credentials\n      mountPath: /var/run/secrets/heimdall/nats\n      readOnly: true",
        "- name: heimdall-nats-tls\n      mountPath: /var/run/secrets/heimdall/nats-tls\n      readOnly: true",
    ] {
        assert!(container.contains(want), "no `{want}` in:\n{container}");
    }
    let volumes = block(snippet, "volumes.yaml: |");
    assert!(
        volumes.contains(&format!(
            "- name: heimdall-nats-credentials\n  {creds_volume}"
        )),
        "{volumes}"
    );
    assert!(
        volumes.contains(&format!("- name: heimdall-nats-tls\n  {tls_volume}")),
        "{volumes}"
    );
    let file = block(
        &find(&manifests, "ConfigMap", "authz-heimdall-config").text,
        "heimdall.yaml: |",
    );
    assert!(file.contains(rendered_nats), "{file}");
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
        let file = block(
            &find(&manifests, "ConfigMap", "authz-heimdall-config").text,
            "heimdall.yaml: |",
        );
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, &file).unwrap();
        let env = if name == "read-only-sidecar" {
            let snippet = &find(&manifests, "ConfigMap", "authz-heimdall-sidecar-snippet").text;
            block(&block(snippet, "containers.yaml: |"), "env:")
        } else {
            block(&find(&manifests, "Deployment", FULLNAME).text, "env:")
        };
        let url = env_value(&env, "NATS_URL").unwrap();

        let valid = heimdall_validate(
            heimdall,
            &path,
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
            assert!(!file.contains("nats:"), "{file}");
            let without = heimdall_validate(
                heimdall,
                &path,
                &[("HEIMDALL_SIGNING_KEY", signing_key.as_str())],
            );
            let stderr = String::from_utf8_lossy(&without.stderr);
            assert!(
                !without.status.success() && stderr.contains("NATS_URL"),
                "without NATS_URL the contextualizer has no store: {stderr}"
            );
        } else {
            assert!(file.contains("nats:\n  auth:\n"), "{file}");
        }
        if name == "read-only-sidecar" {
            assert!(file.contains("  consumer:\n    enabled: false\n"), "{file}");
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
    let config = &find(&manifests, "ConfigMap", "authz-heimdall-envoy").text;
    let envoy_yaml = block(config, "envoy.yaml: |");
    assert!(
        envoy_yaml.contains("socket_address: { address: 127.0.0.1, port_value: 9101 }"),
        "{envoy_yaml}"
    );
    assert!(
        envoy_yaml.contains("failure_mode_allow: false"),
        "{envoy_yaml}"
    );

    let Some(envoy) = tools::require("envoy") else {
        return;
    };
    let dir = scratch("envoy");
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, &envoy_yaml).unwrap();
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
