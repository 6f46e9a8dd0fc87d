{{/* NOTES.txt prints this; .ci/chart-check.sh renders it too, to check what it says. */}}
{{- define "cvat-sync.notes" -}}
{{- $full := include "cvat-sync.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- $np := .Values.networkPolicy -}}
{{- $in := .Values.ingress -}}
{{- $wr := .Values.webhookRegistration -}}
{{- $job := printf "%s-register-webhook" ($full | trunc 46 | trimSuffix "-") -}}
{{- $skip := include "cvat-sync.registerSkipReason" . -}}
cvat-sync {{ include "cvat-sync.imageTag" . }} is installed as {{ $full }} in namespace {{ $ns }}.

CVAT delivers webhooks to:  {{ include "cvat-sync.publicURL" . }}/webhooks/cvat
{{- if and $in.enabled (not .Values.config.publicURL) }}
  (derived from ingress.host; set config.publicURL to override)
{{- end }}
{{- if include "cvat-sync.embedded" . }}

WARNING: no gcp.project: this runs the embedded default (in-process Pub/Sub, archives on an
emptyDir that is lost with the pod). Fine for a trial; for production set gcp.project and the
bucket/topic names (docs/deploy.md).
{{- end }}
{{- if and (not .Values.secret.existingSecret) (not .Values.secret.webhookSecret) }}

WARNING: no webhook secret: the receiver refuses to start without one. Set secret.webhookSecret
(or secret.existingSecret) and upgrade.
{{- end }}
{{- if not (include "cvat-sync.hasCvatCredentials" .) }}

NOTE: no CVAT credentials. The receiver runs and stores every webhook, reports "no CVAT
credentials" in /readyz (cvat_sync_cvat_credentials_ok 0) and exports nothing until it has a
token. Create a personal access token for the service's CVAT user, then set secret.cvatToken
and upgrade (or use secret.existingSecret).
{{- else if .Values.secret.existingSecret }}

The CVAT {{ ternary "password" "token" (eq (include "cvat-sync.authKind" .) "basic") }} comes from key "{{ include "cvat-sync.credentialKey" . }}" of Secret {{ .Values.secret.existingSecret }}, which may still lack it (a
fresh CVAT has no user yet): the receiver starts anyway and reports "no CVAT credentials" in
/readyz. After adding the key: kubectl -n {{ $ns }} rollout restart deploy/{{ $full }}
{{- end }}

1. Let CVAT's Smokescreen proxy reach the receiver. CVAT sends webhooks through Smokescreen,
   which refuses private addresses: without this step every delivery fails with 407 or 502.
{{- if $in.enabled }}
   (Not needed for a CVAT outside this cluster posting to {{ include "cvat-sync.publicURL" . }}.)
{{- end }}
{{- $addr := default "<ClusterIP>" .Values.service.clusterIP }}
{{- if not .Values.service.clusterIP }}
   The Service's ClusterIP is assigned at install. Get it with:

     kubectl -n {{ $ns }} get service {{ $full }} -o jsonpath='{.spec.clusterIP}{"\n"}'

   (To name it before installing, set service.clusterIP to a free address of the cluster's
   service range: gcloud container clusters describe CLUSTER --location LOCATION
   --format='value(servicesIpv4Cidr)'.)
{{- end }}
   Then, in the values of CVAT's release (helm upgrade <cvat-release> <cvat chart> -f ...):

   - CVAT charts with a `smokescreen` key (helm show values <cvat chart> | grep '^smokescreen:'):

       smokescreen:
         opts: "--allow-address={{ $addr }}"

   - older CVAT charts without it: the same option as an environment variable of the server
     (it sends pings) and of the webhooks worker:

       cvat:
         backend:
           server:
             additionalEnv:
               - name: SMOKESCREEN_OPTS
                 value: "--allow-address={{ $addr }}"
           worker:
             webhooks:
               additionalEnv:
                 - name: SMOKESCREEN_OPTS
                   value: "--allow-address={{ $addr }}"
{{- if $np.enabled }}

   The NetworkPolicy admits Prometheus and {{ if $np.cvatPodSelectors }}the pods of networkPolicy.cvatPodSelectors{{ else }}CVAT's webhook worker and server{{ with $np.cvatRelease }} of CVAT's release "{{ . }}"{{ end }},
   labelled as CVAT's chart layout "{{ $np.cvatChartLayout }}" labels them (any = current app: cvat-app and the
   older app: cvat-app-worker-webhooks){{ end }}. If CVAT's release has another name, set
   networkPolicy.cvatRelease; check with:

     kubectl -n {{ $ns }} get pods -l component=worker-webhooks --show-labels
{{- end }}

2. Register the webhook in CVAT.
{{- if $skip }}
   The register Job was NOT rendered: {{ $skip }}.
   Register by hand once CVAT has a user and a token for this service:

     kubectl -n {{ $ns }} exec deploy/{{ $full }} -- /receiver webhook register
{{- else }}
   The post-install/post-upgrade Job runs `receiver webhook register --wait={{ $wr.waitSeconds }}s{{ if $wr.optional }} --optional{{ end }}`:
   it retries while CVAT is unreachable or the token is missing or refused{{ if $wr.optional }}, then gives up
   without failing the release{{ end }}. See what it did (kept {{ $wr.ttlSecondsAfterFinished }}s):

     kubectl -n {{ $ns }} logs job/{{ $job }}

   If it says it skipped the registration (no CVAT credentials yet, CVAT not reachable),
   add the token, restart the receiver, and run it again:

     kubectl -n {{ $ns }} exec deploy/{{ $full }} -- /receiver webhook register
     (or: helm upgrade {{ .Release.Name }} ... --reuse-values, which runs the Job again)
{{- end }}

3. Check a delivery end to end (CVAT -> Smokescreen -> NetworkPolicy -> receiver):

     kubectl -n {{ $ns }} exec deploy/{{ $full }} -- /receiver webhook ping
{{- if and .Values.tests.enabled (not (include "cvat-sync.cvatClientSkipReason" .)) }}
     helm test {{ .Release.Name }} -n {{ $ns }} --logs
{{- end }}

   CVAT's delivery log (Webhooks page, or GET /api/webhooks/<id>/deliveries) should show 200.
   407/502 there means step 1 is missing; 401 means the webhook secrets differ; a timeout
   means the NetworkPolicy drops CVAT's pods.

4. Watch it:

     kubectl -n {{ $ns }} logs deploy/{{ $full }} -f
     kubectl -n {{ $ns }} port-forward svc/{{ $full }} {{ .Values.service.port }}   # then /readyz and /metrics
{{- if eq .Values.metrics.stack "gmp" }}
   Managed Service for Prometheus scrapes it (PodMonitoring {{ $full }}){{ if .Values.metrics.rules.enabled }} and evaluates its
   alerts ({{ .Values.metrics.rules.gmpKind }}); route them with GMP's managed Alertmanager{{ end }}.
{{- else if eq .Values.metrics.stack "prometheus-operator" }}
   prometheus-operator scrapes it (ServiceMonitor {{ $full }}){{ if .Values.metrics.rules.enabled }} and alerts (PrometheusRule {{ $full }}){{ end }};
   your Prometheus must select their labels (metrics.serviceMonitor.labels, metrics.rules.labels).
{{- else }}
   No scrape config or alerts are installed (metrics.stack: none); set metrics.stack to gmp
   (GKE's Managed Service for Prometheus) or prometheus-operator.
{{- end }}
{{- end }}
