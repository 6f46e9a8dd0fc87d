{{/*
The alert rule groups, shared by the PrometheusRule (prometheus-operator) and GMP's Rules or
ClusterRules. Call with (dict "ctx" . "flavor" "prometheus-operator"|"gmp").

Every alert is right across restarts and rollouts: gauges that a new pod reports as 0 until
its first pass or probe are aggregated with max() over the pods and held by `for`; counters
are read with increase(), which starts each new pod's series at its first sample (the receiver
initialises its labelled series at 0); "since" alerts count a pod's start as a fresh start
(process_start_time_seconds), so a rollout never looks like hours without success.
.ci/chart-check.sh renders these rules and runs `promtool test rules` on them with
deploy/k8s/ci/alerts.test.yaml, which has cases that must fire and cases that must not for
every alert.
*/}}
{{- define "cvat-sync.ruleGroups" -}}
{{- $ctx := .ctx }}
{{- $r := $ctx.Values.metrics.rules }}
{{- $t := $r.thresholds }}
{{- $s := include "cvat-sync.seriesSelector" $ctx }}
{{- $warn := $r.severity }}
{{- $crit := $r.criticalSeverity }}
{{- $c := $ctx.Values.config -}}
- name: cvat-sync
  interval: {{ $r.interval }}
  rules:
    - alert: CvatSyncTargetMissing
      {{- if eq .flavor "gmp" }}
      # A series the receiver always exports: absent when no pod of this release is scraped.
      expr: absent(cvat_sync_dependency_up{ {{- $s -}} })
      {{- else }}
      expr: absent(up{ {{- $s -}} })
      {{- end }}
      for: 10m
      labels:
        severity: {{ $crit }}
      annotations:
        summary: No cvat-sync target is scraped
        description: {{ printf "Nothing scrapes the receiver (%s), so none of its alerts can fire. Check that its pods run, that the %s selects them, and that the NetworkPolicy admits the scraper (networkPolicy.prometheus)." $s (ternary "PodMonitoring" "ServiceMonitor" (eq .flavor "gmp")) | quote }}
    - alert: CvatSyncTargetDown
      expr: up{ {{- $s -}} } == 0
      for: 10m
      labels:
        severity: {{ $warn }}
      annotations:
        summary: A cvat-sync pod cannot be scraped
        description: {{ `Scrapes of {{ $labels.instance }} fail: the pod is not ready or the NetworkPolicy does not admit the scraper (networkPolicy.prometheus).` | quote }}
    - alert: CvatSyncDependencyDown
      # Every pod probes CVAT, GCS and Pub/Sub in the background; max() ignores a pod that has
      # not probed yet (0 at start) while another one reports the dependency up.
      expr: max by (dependency) (cvat_sync_dependency_up{ {{- $s -}} }) == 0
      for: 10m
      labels:
        severity: {{ $warn }}
      annotations:
        summary: {{ `cvat-sync cannot reach {{ $labels.dependency }}` | quote }}
        description: {{ `Every receiver pod has found {{ $labels.dependency }} unreachable for 10 minutes (see /readyz). cvat: exports wait (CVAT_SYNC_CVAT_URL, CVAT's pods); gcs or pubsub: webhooks are answered 503 and nothing is announced (IAM, quotas, Google status).` | quote }}
    - alert: CvatSyncWebhooksUnavailable
      # 503: the event could not be stored. CVAT up to 2.64 never retries; the convergence
      # passes catch the task up later.
      expr: sum(increase(cvat_sync_webhook_deliveries_total{ {{- $s -}} ,outcome="unavailable"}[10m])) > 0
      for: 5m
      labels:
        severity: {{ $crit }}
      annotations:
        summary: cvat-sync answers CVAT's webhooks with 503
        description: {{ `{{ $value | humanize }} deliveries in 10 minutes could not be stored in the inbox (Pub/Sub unreachable or refused: IAM roles/pubsub.publisher on the inbox topic). CVAT shows them as failed; the reconcile passes export the tasks later.` | quote }}
    {{- range $kind, $every := dict "incremental" $c.reconcileInterval "full" $c.fullReconcileInterval }}
    {{- if ne (toString $every) "0" }}
    - alert: CvatSyncReconcileFailing
      # Seconds since the last successful pass of this kind, counting a pod's start as one, so
      # a new pod has the whole threshold for its first pass.
      expr: |
        time() - max by (kind) (
            (cvat_sync_reconcile_last_success_timestamp_seconds{ {{- $s -}} ,kind="{{ $kind }}"} > on (instance) group_left () process_start_time_seconds{ {{- $s -}} })
          or
            (cvat_sync_reconcile_last_success_timestamp_seconds{ {{- $s -}} ,kind="{{ $kind }}"} * 0 + on (instance) group_left () process_start_time_seconds{ {{- $s -}} })
        ) > {{ index $t.reconcileStaleSeconds $kind }}
      for: 10m
      labels:
        severity: {{ $warn }}
        # Also in the series: makes the two rules of this alert distinct for `promtool check rules`.
        kind: {{ $kind }}
      annotations:
        summary: {{ printf "No successful %s reconcile pass for %s" $kind (include "cvat-sync.seconds" (index $t.reconcileStaleSeconds $kind)) | quote }}
        description: {{ printf "The last %s convergence pass that succeeded ended {{ $value | humanizeDuration }} ago (passes every %s); changes made in CVAT without a webhook%s are not exported meanwhile. See cvat_sync_reconcile_passes_total{outcome=\"failed\"|\"partial\"} and the receiver's log (CVAT unreachable, credentials refused, pages that kept failing)." $kind (toString $every) (ternary ", and deletions," "" (eq $kind "full")) | quote }}
    {{- end }}
    {{- end }}
    - alert: CvatSyncExportsStalled
      # Replaces "no successful export for a day": exports only happen when something changed,
      # so an idle day is fine. This fires only while tasks are behind CVAT and nothing was
      # exported for a while. The last-success gauge starts from the bucket's record, so a
      # restart or rollout does not reset it.
      expr: |
        (max(cvat_sync_tasks_behind{ {{- $s -}} }) > 0)
        and on ()
        (time() - max(cvat_sync_last_export_success_timestamp_seconds{ {{- $s -}} }) > {{ $t.exportsStalledSeconds }})
      for: 15m
      labels:
        severity: {{ $warn }}
      annotations:
        summary: cvat-sync has tasks behind CVAT and exports nothing
        description: {{ printf "Tasks are behind CVAT and no export has succeeded for over %s. See CvatSyncExportsFailing, CvatSyncDependencyDown and CvatSyncCVATCredentials, and the receiver's log." (include "cvat-sync.seconds" $t.exportsStalledSeconds) | quote }}
    - alert: CvatSyncTasksBehindTooLong
      expr: max(cvat_sync_tasks_behind_oldest_age_seconds{ {{- $s -}} }) > {{ $t.tasksBehindOldestAgeSeconds }}
      for: 30m
      labels:
        severity: {{ $warn }}
      annotations:
        summary: A CVAT task state has waited too long to be exported
        description: {{ `The oldest task state not yet exported and announced changed in CVAT {{ $value | humanizeDuration }} ago (cvat_sync_tasks_behind tasks behind). Right after a first start with CVAT_SYNC_SYNC_SINCE=all or a date this is the initial sync working through old tasks; otherwise a task keeps failing (cvat_sync_tasks_failing, the log).` | quote }}
    - alert: CvatSyncExportsFailing
      expr: |
        (
          sum(rate(cvat_sync_exports_total{ {{- $s -}} ,outcome="failed"}[15m]))
            /
          clamp_min(sum(rate(cvat_sync_exports_total{ {{- $s -}} }[15m])), 1e-9)
        ) > {{ $t.exportFailureRatio }}
        and
        sum(increase(cvat_sync_exports_total{ {{- $s -}} ,outcome="failed"}[15m])) > 2
      for: 15m
      labels:
        severity: {{ $warn }}
      annotations:
        summary: {{ printf "More than %.0f%% of cvat-sync's exports fail" (mulf $t.exportFailureRatio 100) | quote }}
        description: {{ `{{ $value | humanizePercentage }} of the exports of the last 15 minutes failed. Check the receiver's log, CVAT's API (cvat_sync_cvat_requests_total by code) and the bucket's IAM (roles/storage.objectUser).` | quote }}
    - alert: CvatSyncDeletionsBlocked
      # max_over_time bridges a restart: a new pod reports 0 until its first full pass.
      expr: max(max_over_time(cvat_sync_deletions_blocked{ {{- $s -}} }[15m])) >= 1
      for: 5m
      labels:
        severity: {{ $warn }}
      annotations:
        summary: cvat-sync refused to announce deletions
        description: {{ printf "The last full pass found more than %v of the recorded tasks (and more than 10) gone from CVAT and announced none of them. Usually CVAT_SYNC_CVAT_ORG, the credentials' visibility or CVAT_SYNC_SYNC_SINCE changed; if the deletions are real, set config.maxDeleteFraction: 1 for one full pass." $c.maxDeleteFraction | quote }}
    - alert: CvatSyncCVATCredentials
      expr: max(cvat_sync_cvat_credentials_ok{ {{- $s -}} }) == 0
      for: 10m
      labels:
        severity: {{ $warn }}
      annotations:
        summary: cvat-sync has no working CVAT credentials
        description: {{ printf "CVAT refuses the receiver's credentials, or the Secret %s has no %s key: nothing is exported. Create a token for the service's CVAT user, put it into the Secret, then restart the pods (kubectl rollout restart)." (include "cvat-sync.secretName" $ctx) (ternary $ctx.Values.secret.keys.cvatPassword $ctx.Values.secret.keys.cvatToken (eq (include "cvat-sync.authKind" $ctx) "basic")) | quote }}
    - alert: CvatSyncCVATFailedDeliveries
      expr: max by (status) (cvat_sync_cvat_failed_deliveries{ {{- $s -}} }) > 0
      for: 30m
      labels:
        severity: {{ $warn }}
      annotations:
        summary: {{ `CVAT's log shows failed webhook deliveries ({{ $labels.status }})` | quote }}
        description: {{ `{{ $value }} deliveries of the registered webhook failed in CVAT and were not recovered. proxy (407/502): Smokescreen refuses the receiver's address (smokescreen.opts --allow-address in CVAT's values); timeout (504): the NetworkPolicy drops CVAT's pods (networkPolicy.cvatRelease, cvatChartLayout); 4xx: secrets differ (401) or the URL is wrong; 5xx: the receiver could not store them.` | quote }}
    - alert: CvatSyncDeadLettered
      expr: sum(increase(cvat_sync_dead_lettered_total{ {{- $s -}} }[30m])) > 0
      labels:
        severity: {{ $warn }}
      annotations:
        summary: cvat-sync dead-lettered work
        description: {{ printf "Work items went to the dead-letter topic %s after every attempt failed (by reason: cvat_sync_dead_lettered_total). The convergence passes export those tasks again once the cause is gone." $ctx.Values.gcp.inboxDeadLetterTopic | quote }}
    - alert: CvatSyncPendingTooOld
      expr: max(cvat_sync_pending_oldest_age_seconds{ {{- $s -}} }) > {{ $t.pendingOldestAgeSeconds }}
      for: 10m
      labels:
        severity: {{ $warn }}
      annotations:
        summary: A changed CVAT task has waited too long for its export
        description: {{ `The oldest task held by the coalescer has waited {{ $value | humanizeDuration }} (config.maxWait bounds a healthy wait).` | quote }}
    - alert: CvatSyncSignatureFailures
      expr: sum(increase(cvat_sync_webhook_signature_failures_total{ {{- $s -}} }[5m])) > {{ $t.signatureFailuresPer5m }}
      for: 5m
      labels:
        severity: {{ $warn }}
      annotations:
        summary: Webhook signature failures are spiking
        description: CVAT's webhook secret and the receiver's differ (a rotation half done?), or someone else posts to the receiver.
{{- end }}

{{/* A whole number of seconds as Prometheus writes durations: 3h, 30m, 45s. */}}
{{- define "cvat-sync.seconds" -}}
{{- $n := int . }}
{{- if and (gt $n 0) (eq (mod $n 3600) 0) }}{{ div $n 3600 }}h
{{- else if and (gt $n 0) (eq (mod $n 60) 0) }}{{ div $n 60 }}m
{{- else }}{{ $n }}s
{{- end }}
{{- end }}
