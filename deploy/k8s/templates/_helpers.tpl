{{/* Chart name, at most 63 characters. */}}
{{- define "cvat-sync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, with the chart name unless it already contains it. */}}
{{- define "cvat-sync.fullname" -}}
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

{{/* chart label: name-version, "+" is not valid in a label value. */}}
{{- define "cvat-sync.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cvat-sync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cvat-sync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cvat-sync.labels" -}}
helm.sh/chart: {{ include "cvat-sync.chart" . }}
{{ include "cvat-sync.selectorLabels" . }}
app.kubernetes.io/version: {{ include "cvat-sync.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cvat
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "cvat-sync.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cvat-sync.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "cvat-sync.secretName" -}}
{{- default (include "cvat-sync.fullname" .) .Values.secret.existingSecret }}
{{- end }}

{{- define "cvat-sync.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is given (tag kept for readers). */}}
{{- define "cvat-sync.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "cvat-sync.imageTag" .) }}
{{- end }}
{{- end }}

{{/*
The URL CVAT delivers to (without /webhooks/cvat): config.publicURL; else, with the Ingress,
its host (https when the Ingress has a certificate: a ManagedCertificate with gce, TLS Secrets,
or a pre-shared certificate); else this release's Service inside the cluster.
*/}}
{{- define "cvat-sync.publicURL" -}}
{{- $in := .Values.ingress }}
{{- if .Values.config.publicURL }}
{{- .Values.config.publicURL | trimSuffix "/" }}
{{- else if and $in.enabled $in.host }}
{{- $tls := or $in.tls (and $in.managedCertificate.enabled (eq $in.class "gce")) (hasKey $in.annotations "ingress.gcp.kubernetes.io/pre-shared-cert") }}
{{- printf "%s://%s" (ternary "https" "http" (not (empty $tls))) $in.host }}
{{- else }}
{{- printf "http://%s.%s.svc.%s:%d" (include "cvat-sync.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.service.port) }}
{{- end }}
{{- end }}

{{/* True ("true") when the embedded default runs: no GCP project and no emulator. */}}
{{- define "cvat-sync.embedded" -}}
{{- if and (not .Values.gcp.project) (not .Values.gcp.pubsubEmulatorHost) (not .Values.gcp.storageEmulatorHost) }}true{{- end }}
{{- end }}

{{/* "basic" when Basic auth (config.cvatUsername) is configured, else "token". */}}
{{- define "cvat-sync.authKind" -}}
{{- if .Values.config.cvatUsername }}basic{{ else }}token{{ end }}
{{- end }}

{{/*
The Secret key of the CVAT credential (token or password), or "" when the Secret cannot hold
one: with existingSecret the key is taken as possibly there (it may be added later); with the
chart's own Secret only when the value is set.
*/}}
{{- define "cvat-sync.credentialKey" -}}
{{- $s := .Values.secret }}
{{- $basic := eq (include "cvat-sync.authKind" .) "basic" }}
{{- $key := ternary $s.keys.cvatPassword $s.keys.cvatToken $basic }}
{{- $value := ternary $s.cvatPassword $s.cvatToken $basic }}
{{- if and $key (or $s.existingSecret $value) }}{{ $key }}{{ end }}
{{- end }}

{{/* Whether CVAT credentials can exist for the pods (register Job, helm test): "true" or "". */}}
{{- define "cvat-sync.hasCvatCredentials" -}}
{{- if include "cvat-sync.credentialKey" . }}true{{ end }}
{{- end }}

{{/*
The CVAT credential as an optional variable from the Secret: a Secret without the key starts
the receiver without credentials (it reports them missing and exports nothing) instead of
failing the pod, and the register Job waits for them and gives up cleanly.
*/}}
{{- define "cvat-sync.credentialEnv" -}}
{{- with include "cvat-sync.credentialKey" . }}
- name: {{ ternary "CVAT_SYNC_CVAT_PASSWORD" "CVAT_SYNC_CVAT_TOKEN" (eq (include "cvat-sync.authKind" $) "basic") }}
  valueFrom:
    secretKeyRef:
      name: {{ include "cvat-sync.secretName" $ }}
      key: {{ . }}
      optional: true
{{- end }}
{{- end }}

{{/* The webhook scope register uses: "project <id>", "organization <slug>", or "". */}}
{{- define "cvat-sync.webhookScope" -}}
{{- $c := .Values.config }}
{{- if gt (int $c.webhookProjectID) 0 }}project {{ $c.webhookProjectID }}
{{- else if or $c.webhookOrg $c.cvatOrg }}organization {{ default $c.cvatOrg $c.webhookOrg }}
{{- end }}
{{- end }}

{{/* Why the pods that call CVAT's webhook API (register Job, helm test) cannot work, or "". */}}
{{- define "cvat-sync.cvatClientSkipReason" -}}
{{- if not (include "cvat-sync.webhookScope" .) }}no webhook scope: set config.cvatOrg (or config.webhookOrg) for an organization webhook, or config.webhookProjectID
{{- else if and (not .Values.secret.existingSecret) (not .Values.secret.webhookSecret) }}no webhook secret: set secret.webhookSecret or secret.existingSecret
{{- else if not (include "cvat-sync.hasCvatCredentials" .) }}no CVAT credentials in the values: set secret.cvatToken (or use secret.existingSecret)
{{- end }}
{{- end }}

{{/* Why the register Job is not rendered, or "" when it is. */}}
{{- define "cvat-sync.registerSkipReason" -}}
{{- if not .Values.webhookRegistration.enabled }}webhookRegistration.enabled is false
{{- else }}{{ include "cvat-sync.cvatClientSkipReason" . }}
{{- end }}
{{- end }}

{{- define "cvat-sync.hooksServiceAccountName" -}}
{{- if .Values.hooksServiceAccount.create }}
{{- default (printf "%s-cvat-api" (include "cvat-sync.fullname" . | trunc 55 | trimSuffix "-")) .Values.hooksServiceAccount.name }}
{{- else }}
{{- default "default" .Values.hooksServiceAccount.name }}
{{- end }}
{{- end }}

{{/* PromQL label matchers of this release's series. */}}
{{- define "cvat-sync.seriesSelector" -}}
{{- default (printf "namespace=%q,job=%q" .Release.Namespace (include "cvat-sync.fullname" .)) .Values.metrics.rules.selector }}
{{- end }}

{{/*
Pod selectors of CVAT's webhook senders (the webhook worker delivers events, the server sends
pings), as a YAML list of LabelSelectors. Labels as CVAT's chart renders them:
  current: templates/cvat_backend/worker_webhooks/deployment.yml and server/deployment.yml
           (app: cvat-app, tier: backend, component: worker-webhooks | server)
  legacy:  templates/cvat_backend/cvat_worker_webhooks/deployment.yml
           (app: cvat-app-worker-webhooks, tier: backend, component: worker-webhooks)
With legacy and any the server is matched by tier and component alone (the server's app label
of older charts is not pinned here).
Both add app.kubernetes.io/instance: <CVAT's release> (its cvat.labels helper).
*/}}
{{- define "cvat-sync.cvatSenderSelectors" -}}
{{- $np := .Values.networkPolicy }}
{{- $sel := list }}
{{- if $np.cvatPodSelectors }}
{{- $sel = $np.cvatPodSelectors }}
{{- else }}
{{- $inst := dict }}
{{- with $np.cvatRelease }}{{ $_ := set $inst "app.kubernetes.io/instance" . }}{{ end }}
{{- $worker := dict "tier" "backend" "component" "worker-webhooks" }}
{{- $server := dict "tier" "backend" "component" "server" }}
{{- if has $np.cvatChartLayout (list "any" "current") }}
{{- $sel = append $sel (dict "matchLabels" (merge (dict "app" "cvat-app") $worker $inst)) }}
{{- end }}
{{- if has $np.cvatChartLayout (list "any" "legacy") }}
{{- $sel = append $sel (dict "matchLabels" (merge (dict "app" "cvat-app-worker-webhooks") $worker $inst)) }}
{{- end }}
{{- if eq $np.cvatChartLayout "current" }}
{{- $sel = append $sel (dict "matchLabels" (merge (dict "app" "cvat-app") $server $inst)) }}
{{- else }}
{{- $sel = append $sel (dict "matchLabels" (merge (dict) $server $inst)) }}
{{- end }}
{{- end }}
{{- toYaml $sel }}
{{- end }}

{{/* Where the Secret's files are mounted. */}}
{{- define "cvat-sync.secretDir" -}}/var/run/secrets/cvat-sync{{- end }}

{{/* Restricted container securityContext (Pod Security Standard "restricted"). */}}
{{- define "cvat-sync.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "cvat-sync.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
fsGroup: {{ .Values.podSecurityContext.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Environment shared by the server, the hook Job and the test Pod: the ConfigMap, GOMEMLIMIT, extraEnv. */}}
{{- define "cvat-sync.env" -}}
envFrom:
  - configMapRef:
      name: {{ include "cvat-sync.fullname" . }}
env:
  # Let the Go runtime collect garbage before the kernel kills the container.
  - name: GOMEMLIMIT
    valueFrom:
      resourceFieldRef:
        resource: limits.memory
        divisor: "1"
  {{- include "cvat-sync.credentialEnv" . | nindent 2 }}
  {{- with .Values.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* Volumes shared by every pod of the chart: the Secret's files, the data dir, /tmp. */}}
{{- define "cvat-sync.volumes" -}}
- name: secrets
  secret:
    secretName: {{ include "cvat-sync.secretName" . }}
    defaultMode: 0440
- name: data
  emptyDir:
    sizeLimit: {{ .Values.dataDir.sizeLimit }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end }}

{{- define "cvat-sync.volumeMounts" -}}
- name: secrets
  mountPath: {{ include "cvat-sync.secretDir" . }}
  readOnly: true
- name: data
  mountPath: {{ .Values.dataDir.path }}
- name: tmp
  mountPath: /tmp
{{- end }}
