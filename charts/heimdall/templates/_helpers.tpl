{{/*
Named templates of the heimdall chart.

Every template here takes the chart's root context (`.`). A parent chart that has heimdall as a
dependency passes heimdall's own context, `.Subcharts.heimdall`, e.g.
  {{ include "heimdall.sidecarContainer" .Subcharts.heimdall }}
*/}}

{{/* The chart name, overridable. */}}
{{- define "heimdall.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: `<release>-heimdall`, or the release name alone when it already contains the chart
name. Truncated to 63 characters (DNS label); resources add short suffixes to it.
*/}}
{{- define "heimdall.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* `name-version` for the helm.sh/chart label. */}}
{{- define "heimdall.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "heimdall.labels" -}}
helm.sh/chart: {{ include "heimdall.chart" . }}
{{ include "heimdall.selectorLabels" . }}
app.kubernetes.io/version: {{ include "heimdall.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: heimdall
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels that select heimdall's pods (immutable in a Deployment: keep them stable). */}}
{{- define "heimdall.selectorLabels" -}}
app.kubernetes.io/name: {{ include "heimdall.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount the pods run as. */}}
{{- define "heimdall.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "heimdall.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image tag: image.tag, else the chart's appVersion. */}}
{{- define "heimdall.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "heimdall.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "heimdall.imageTag" .) }}
{{- end }}
{{- end }}

{{/* The ConfigMap holding heimdall.yaml. */}}
{{- define "heimdall.configMapName" -}}
{{- default (printf "%s-config" (include "heimdall.fullname" .)) .Values.existingConfigMap }}
{{- end }}

{{/* Where the configuration is mounted, and the file heimdall reads. */}}
{{- define "heimdall.configDir" -}}/etc/heimdall{{- end }}
{{- define "heimdall.configPath" -}}/etc/heimdall/heimdall.yaml{{- end }}

{{/* Whether the chart manages a key Secret (inline keys given). */}}
{{- define "heimdall.managedKeySecret" -}}
{{- if and (not .Values.keys.existingSecret) (or .Values.keys.symmetricKey .Values.keys.signingKey) }}true{{ end }}
{{- end }}

{{/* The Secret the key environment variables come from ("" when none). */}}
{{- define "heimdall.keySecretName" -}}
{{- if .Values.keys.existingSecret }}
{{- .Values.keys.existingSecret }}
{{- else if include "heimdall.managedKeySecret" . }}
{{- printf "%s-keys" (include "heimdall.fullname" .) }}
{{- end }}
{{- end }}

{{/*
The rendered configuration file: `config`, plus the `nats.auth` / `nats.tls` settings that point
at the NATS credentials the chart mounts or exports (values `nats.*`).
*/}}
{{- define "heimdall.configYaml" -}}
{{- $config := deepCopy .Values.config }}
{{- $auth := include "heimdall.natsAuthConfig" . | fromYaml }}
{{- $tls := include "heimdall.natsTlsConfig" . | fromYaml }}
{{- if or $auth $tls }}
{{- $nats := get $config "nats" }}
{{- if not (kindIs "map" $nats) }}{{ $nats = dict }}{{ end }}
{{- if $auth }}{{ $_ := set $nats "auth" $auth }}{{ end }}
{{- if $tls }}{{ $_ := set $nats "tls" $tls }}{{ end }}
{{- $_ := set $config "nats" $nats }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* Where the NATS credentials and TLS files are mounted. */}}
{{- define "heimdall.natsCredentialsDir" -}}/var/run/secrets/heimdall/nats{{- end }}
{{- define "heimdall.natsTlsDir" -}}/var/run/secrets/heimdall/nats-tls{{- end }}

{{/* The entry of `nats.auth.existingSecret` holding the credential: `nats.auth.key` or the type's default. */}}
{{- define "heimdall.natsAuthKey" -}}
{{- $defaults := dict "creds" "nats.creds" "nkey" "NATS_NKEY_SEED" "token" "NATS_TOKEN" "userPassword" "NATS_PASSWORD" }}
{{- default (get $defaults .Values.nats.auth.type) .Values.nats.auth.key }}
{{- end }}

{{/* The configuration's `nats.auth` for `nats.auth.type` (YAML; empty without a type). */}}
{{- define "heimdall.natsAuthConfig" -}}
{{- $type := .Values.nats.auth.type }}
{{- if eq $type "creds" }}
credentials_file: {{ include "heimdall.natsCredentialsDir" . }}/nats.creds
{{- else if eq $type "nkey" }}
nkey_seed:
  env: NATS_NKEY_SEED
{{- else if eq $type "token" }}
token:
  env: NATS_TOKEN
{{- else if eq $type "userPassword" }}
user: {{ .Values.nats.auth.user | quote }}
password:
  env: NATS_PASSWORD
{{- end }}
{{- end }}

{{/* The configuration's `nats.tls` for `nats.tls.existingSecret` (YAML; empty without it). */}}
{{- define "heimdall.natsTlsConfig" -}}
{{- if .Values.nats.tls.existingSecret }}
{{- $dir := include "heimdall.natsTlsDir" . }}
required: true
ca_file: {{ $dir }}/ca.crt
{{- if .Values.nats.tls.clientCertificate }}
cert_file: {{ $dir }}/tls.crt
key_file: {{ $dir }}/tls.key
{{- end }}
{{- end }}
{{- end }}

{{/*
Volumes holding the NATS credentials file and TLS files (list items; empty when none). Takes
(list <root context> <name prefix>): the sidecar's volumes are prefixed `heimdall-`.
*/}}
{{- define "heimdall.natsVolumes" -}}
{{- $ctx := index . 0 }}
{{- $prefix := index . 1 }}
{{- with $ctx.Values.nats }}
{{- if eq .auth.type "creds" }}
- name: {{ $prefix }}nats-credentials
  secret:
    secretName: {{ .auth.existingSecret }}
    items:
      - key: {{ include "heimdall.natsAuthKey" $ctx }}
        path: nats.creds
{{- end }}
{{- if .tls.existingSecret }}
- name: {{ $prefix }}nats-tls
  secret:
    secretName: {{ .tls.existingSecret }}
    items:
      - key: ca.crt
        path: ca.crt
      {{- if .tls.clientCertificate }}
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
      {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The mounts of `heimdall.natsVolumes` (same arguments). */}}
{{- define "heimdall.natsVolumeMounts" -}}
{{- $ctx := index . 0 }}
{{- $prefix := index . 1 }}
{{- if eq $ctx.Values.nats.auth.type "creds" }}
- name: {{ $prefix }}nats-credentials
  mountPath: {{ include "heimdall.natsCredentialsDir" $ctx }}
  readOnly: true
{{- end }}
{{- if $ctx.Values.nats.tls.existingSecret }}
- name: {{ $prefix }}nats-tls
  mountPath: {{ include "heimdall.natsTlsDir" $ctx }}
  readOnly: true
{{- end }}
{{- end }}

{{/*
Refuses values that cannot work or would leak a secret, with a message saying what to change.
Included by configmap.yaml, which renders in every mode, so `helm template`, `helm lint` and
`helm install` all stop on it.
*/}}
{{- define "heimdall.validateValues" -}}
{{- if not (has .Values.mode (list "deployment" "sidecar")) }}
{{- fail (printf "mode must be `deployment` or `sidecar`, got `%v`" .Values.mode) }}
{{- end }}
{{- if and .Values.keys.existingSecret (or .Values.keys.symmetricKey .Values.keys.signingKey) }}
{{- fail "keys.existingSecret excludes keys.symmetricKey and keys.signingKey: put every key into the existing Secret" }}
{{- end }}
{{- with .Values.keys.symmetricKey }}
{{- if ne (len .) 32 }}
{{- fail (printf "keys.symmetricKey (PASETO_SYMMETRIC_KEY) must be exactly 32 bytes, got %d" (len .)) }}
{{- end }}
{{- end }}
{{- with .Values.keys.signingKey }}
{{- if not (or (hasPrefix "k4.secret." .) (hasPrefix "k4.local." .) (hasPrefix "k4.public." .)) }}
{{- fail "keys.signingKey must be a v4 PASERK (`k4.secret.…`, `k4.local.…` or `k4.public.…`); generate one with `heimdall keys generate`" }}
{{- end }}
{{- end }}
{{- if not (kindIs "map" .Values.config) }}
{{- fail "config must be a map: heimdall's configuration file (version \"1\")" }}
{{- end }}
{{- $tokens := default dict .Values.config.tokens }}
{{- range $i, $key := (default list $tokens.keys) }}
{{- if and (kindIs "map" $key) (hasKey $key "paserk") }}
{{- $paserk := toString (get $key "paserk") }}
{{- if not (hasPrefix "k4.public." $paserk) }}
{{- fail (printf "config.tokens.keys[%d] holds a secret key inline: the ConfigMap is not a place for secrets. Put it in keys.signingKey or keys.existingSecret and use `- env: HEIMDALL_SIGNING_KEY`" $i) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.keys.symmetricKey (not .Values.keys.signingKey) (include "heimdall.configNeedsSigningKeyEnv" .) }}
{{- fail "config.tokens.keys reads HEIMDALL_SIGNING_KEY but keys.signingKey is not set: set keys.signingKey too, or set config.tokens.keys to [] to use PASETO_SYMMETRIC_KEY alone" }}
{{- end }}
{{- include "heimdall.validateNats" . }}
{{- if and (eq .Values.mode "sidecar") (eq (int .Values.sidecar.httpPort) (int .Values.sidecar.envoy.appPort)) }}
{{- fail "sidecar.httpPort equals sidecar.envoy.appPort: heimdall's side port and your application cannot share a port in one pod" }}
{{- end }}
{{- end }}

{{/* The checks of `nats.*` (part of heimdall.validateValues). */}}
{{- define "heimdall.validateNats" -}}
{{- $auth := .Values.nats.auth }}
{{- if not (has $auth.type (list "" "creds" "nkey" "token" "userPassword")) }}
{{- fail (printf "nats.auth.type must be one of creds, nkey, token, userPassword (or empty), got `%v`" $auth.type) }}
{{- end }}
{{- if and $auth.type (not $auth.existingSecret) }}
{{- fail (printf "nats.auth.type `%s` needs nats.auth.existingSecret: the Secret holding heimdall's NATS credential" $auth.type) }}
{{- end }}
{{- if and $auth.existingSecret (not $auth.type) }}
{{- fail "nats.auth.existingSecret needs nats.auth.type (creds, nkey, token or userPassword)" }}
{{- end }}
{{- if and (eq $auth.type "userPassword") (not $auth.user) }}
{{- fail "nats.auth.type `userPassword` needs nats.auth.user" }}
{{- end }}
{{- if and $auth.user (ne $auth.type "userPassword") }}
{{- fail "nats.auth.user is only used with nats.auth.type `userPassword`" }}
{{- end }}
{{- if and .Values.nats.tls.clientCertificate (not .Values.nats.tls.existingSecret) }}
{{- fail "nats.tls.clientCertificate needs nats.tls.existingSecret (entries tls.crt and tls.key)" }}
{{- end }}
{{- $configNats := get (default dict .Values.config) "nats" }}
{{- if not (kindIs "map" $configNats) }}{{ $configNats = dict }}{{ end }}
{{- if and $auth.type (hasKey $configNats "auth") }}
{{- fail "config.nats.auth and nats.auth.type both set: the chart writes config.nats.auth from nats.auth, so remove one" }}
{{- end }}
{{- if and .Values.nats.tls.existingSecret (hasKey $configNats "tls") }}
{{- fail "config.nats.tls and nats.tls.existingSecret both set: the chart writes config.nats.tls from nats.tls, so remove one" }}
{{- end }}
{{- if and (or $auth.type .Values.nats.tls.existingSecret) (not .Values.existingConfigMap) (not .Values.integrations.natsUrl) (not (get $configNats "url")) }}
{{- fail "nats.auth / nats.tls are set but no NATS server is: set integrations.natsUrl (NATS_URL) or config.nats.url" }}
{{- end }}
{{- end }}

{{/* "true" when config.tokens.keys has `- env: HEIMDALL_SIGNING_KEY`. */}}
{{- define "heimdall.configNeedsSigningKeyEnv" -}}
{{- $tokens := default dict .Values.config.tokens }}
{{- range (default list $tokens.keys) }}
{{- if and (kindIs "map" .) (eq (toString (get . "env")) "HEIMDALL_SIGNING_KEY") }}true{{ end }}
{{- end }}
{{- end }}

{{/*
"true" when nothing the chart knows of provides HEIMDALL_SIGNING_KEY although the configuration
reads it: heimdall would refuse to start. (envFrom may provide it: then it is assumed to.)
*/}}
{{- define "heimdall.signingKeyMissing" -}}
{{- if and (include "heimdall.configNeedsSigningKeyEnv" .) (not .Values.existingConfigMap) }}
{{- $fromEnv := false }}
{{- range .Values.extraEnv }}
{{- if eq (toString .name) "HEIMDALL_SIGNING_KEY" }}{{ $fromEnv = true }}{{ end }}
{{- end }}
{{- if not (or .Values.keys.existingSecret .Values.keys.signingKey .Values.envFrom $fromEnv) }}true{{ end }}
{{- end }}
{{- end }}

{{/*
Environment of the heimdall container (list items). Takes (list <root context> <HTTP side port>)
and optionally a third item, the name of the key Secret to read instead of the release's.
*/}}
{{- define "heimdall.env" -}}
{{- $ctx := index . 0 }}
{{- $httpPort := index . 1 }}
{{- $secret := "" }}
{{- if gt (len .) 2 }}{{ $secret = index . 2 }}{{ end }}
{{- with $ctx }}
- name: GRPC_PORT
  value: {{ .Values.ports.grpc | quote }}
- name: PORT
  value: {{ $httpPort | quote }}
{{- $secret = default (include "heimdall.keySecretName" .) $secret }}
{{- if .Values.keys.existingSecret }}
- name: PASETO_SYMMETRIC_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.keys.existingSecretKeys.symmetricKey }}
      optional: true
- name: HEIMDALL_SIGNING_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.keys.existingSecretKeys.signingKey }}
      optional: true
{{- else }}
{{- if .Values.keys.symmetricKey }}
- name: PASETO_SYMMETRIC_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: PASETO_SYMMETRIC_KEY
{{- end }}
{{- if .Values.keys.signingKey }}
- name: HEIMDALL_SIGNING_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: HEIMDALL_SIGNING_KEY
{{- end }}
{{- end }}
{{- with .Values.integrations }}
{{- if .natsUrl }}
- name: NATS_URL
  value: {{ .natsUrl | quote }}
{{- end }}
{{- end }}
{{- $natsEnv := get (dict "nkey" "NATS_NKEY_SEED" "token" "NATS_TOKEN" "userPassword" "NATS_PASSWORD") .Values.nats.auth.type }}
{{- if $natsEnv }}
- name: {{ $natsEnv }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.nats.auth.existingSecret }}
      key: {{ include "heimdall.natsAuthKey" . }}
{{- end }}
{{- with .Values.integrations }}
{{- if .cerbosGrpcUrl }}
- name: CERBOS_GRPC_URL
  value: {{ .cerbosGrpcUrl | quote }}
{{- end }}
{{- if .hydraAdminUrl }}
- name: HYDRA_ADMIN_URL
  value: {{ .hydraAdminUrl | quote }}
{{- end }}
{{- if .kratosAdminUrl }}
- name: KRATOS_ADMIN_URL
  value: {{ .kratosAdminUrl | quote }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Pod template annotations that roll the pods when the configuration or the chart-managed keys
change (deployment mode; in sidecar mode, put them on your own pod template).
*/}}
{{- define "heimdall.checksumAnnotations" -}}
{{- $lines := list }}
{{- if not (or .Values.existingConfigMap .Values.reloadConfigInPlace) }}
{{- $lines = append $lines (printf "checksum/config: %s" (include "heimdall.configYaml" . | sha256sum)) }}
{{- end }}
{{- if include "heimdall.managedKeySecret" . }}
{{- /* 32 bits of the digest tell a rotation apart without publishing a full hash of the keys. */}}
{{- $keys := printf "%s\n%s" .Values.keys.symmetricKey .Values.keys.signingKey | sha256sum | trunc 8 }}
{{- $lines = append $lines (printf "checksum/keys: %s" $keys) }}
{{- end }}
{{- join "\n" $lines }}
{{- end }}

{{/*
The heimdall sidecar container, for your own pod spec's `containers:` (sidecar mode). It listens
on 127.0.0.1-reachable ports <ports.grpc> (ext_authz) and <sidecar.httpPort> (side port) and needs
the volumes of `heimdall.sidecarVolumes`. Use it as
  containers:
    {{- include "heimdall.sidecarContainer" . | nindent 4 }}
*/}}
{{- define "heimdall.sidecarContainer" -}}
{{- $httpPort := int .Values.sidecar.httpPort -}}
- name: {{ .Values.sidecar.containerName }}
  image: {{ include "heimdall.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- with .Values.command }}
  command:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  args:
    - serve
    - --config
    - {{ include "heimdall.configPath" . }}
  ports:
    - name: heimdall-grpc
      containerPort: {{ .Values.ports.grpc }}
      protocol: TCP
    - name: heimdall-http
      containerPort: {{ $httpPort }}
      protocol: TCP
  env:
    {{- include "heimdall.env" (list . $httpPort) | trim | nindent 4 }}
  {{- with .Values.envFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.livenessProbe }}
  livenessProbe:
    {{- include "heimdall.probeOnPort" (list . $httpPort) | nindent 4 }}
  {{- end }}
  {{- with .Values.readinessProbe }}
  readinessProbe:
    {{- include "heimdall.probeOnPort" (list . $httpPort) | nindent 4 }}
  {{- end }}
  {{- with .Values.startupProbe }}
  startupProbe:
    {{- include "heimdall.probeOnPort" (list . $httpPort) | nindent 4 }}
  {{- end }}
  {{- with .Values.sidecar.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: heimdall-config
      mountPath: {{ include "heimdall.configDir" . }}
      readOnly: true
    - name: heimdall-tmp
      mountPath: /tmp
    {{- with include "heimdall.natsVolumeMounts" (list . "heimdall-") | trim }}
    {{- . | nindent 4 }}
    {{- end }}
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/*
The volumes the sidecar container mounts, for your pod spec's `volumes:`. Add
`.Values.extraVolumes` yourself if `extraVolumeMounts` refers to any.
*/}}
{{- define "heimdall.sidecarVolumes" -}}
- name: heimdall-config
  configMap:
    name: {{ include "heimdall.configMapName" . }}
- name: heimdall-tmp
  emptyDir:
    sizeLimit: 16Mi
{{- with include "heimdall.natsVolumes" (list . "heimdall-") | trim }}
{{ . }}
{{- end }}
{{- end }}

{{/*
A probe with its httpGet/tcpSocket port set to the side port's number: the sidecar's ports have
other names than `http`. A `grpc` probe names its port by number already and is left as is.
*/}}
{{- define "heimdall.probeOnPort" -}}
{{- $probe := deepCopy (index . 0) }}
{{- $port := index . 1 }}
{{- if hasKey $probe "httpGet" }}
{{- $_ := set $probe.httpGet "port" $port }}
{{- end }}
{{- if hasKey $probe "tcpSocket" }}
{{- $_ := set $probe.tcpSocket "port" $port }}
{{- end }}
{{- toYaml $probe }}
{{- end }}
