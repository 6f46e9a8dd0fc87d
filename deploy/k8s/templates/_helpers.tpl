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

{{/* The URL CVAT delivers to: config.publicURL, or this release's Service inside the cluster. */}}
{{- define "cvat-sync.publicURL" -}}
{{- if .Values.config.publicURL }}
{{- .Values.config.publicURL | trimSuffix "/" }}
{{- else }}
{{- printf "http://%s.%s.svc.%s:%d" (include "cvat-sync.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.service.port) }}
{{- end }}
{{- end }}

{{/* True ("true") when the embedded default runs: no GCP project and no emulator. */}}
{{- define "cvat-sync.embedded" -}}
{{- if and (not .Values.gcp.project) (not .Values.gcp.pubsubEmulatorHost) (not .Values.gcp.storageEmulatorHost) }}true{{- end }}
{{- end }}

{{/* Whether the chart can talk to CVAT's API (register / ping): a token or password is configured. */}}
{{- define "cvat-sync.hasCvatCredentials" -}}
{{- if .Values.secret.existingSecret }}
{{- if or (and .Values.secret.keys.cvatToken (not .Values.config.cvatUsername)) (and .Values.secret.keys.cvatPassword .Values.config.cvatUsername) }}true{{- end }}
{{- else if or .Values.secret.cvatToken .Values.secret.cvatPassword }}true{{- end }}
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
