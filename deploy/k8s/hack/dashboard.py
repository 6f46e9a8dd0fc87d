#!/usr/bin/env python3
"""Writes deploy/k8s/files/dashboard.json, the Grafana dashboard the chart ships.

    python3 deploy/k8s/hack/dashboard.py            # rewrite the file
    python3 deploy/k8s/hack/dashboard.py --check    # exit 1 if the file differs (chart check)

Every panel shows data from the start: the receiver initialises its gauges and the labelled
series it knows at 0, stat panels say "none" or "never" where a query has no data, and "time
since" panels ignore a timestamp of 0 (a fresh install that never exported) instead of showing
56 years. Counters are read with increase()/rate(), so restarts and rollouts do not show as
drops or spikes. Metric names are checked against the Go code by .ci/chart-check.sh.
"""
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "files" / "dashboard.json"
SEL = 'namespace="$namespace",job=~"$job"'
DS = {"type": "prometheus", "uid": "${datasource}"}


def q(expr, legend=None):
    t = {"expr": expr.replace("SEL", SEL)}
    if legend:
        t["legendFormat"] = legend
    return t


def mapping(*pairs):
    """Value mappings for 0/1 gauges: (value, text, color)."""
    return [{"type": "value", "options": {str(v): {"text": t, "color": c, "index": i}
                                          for i, (v, t, c) in enumerate(pairs)}}]


def stat(title, targets, unit="short", no_value="0", mappings=None, thresholds=None, desc=""):
    steps = [{"color": "green", "value": None}]
    for value, color in thresholds or []:
        steps.append({"color": color, "value": value})
    return {"type": "stat", "title": title, "description": desc, "targets": targets,
            "fieldConfig": {"defaults": {"unit": unit, "noValue": no_value, "mappings": mappings or [],
                                         "color": {"mode": "thresholds"},
                                         "thresholds": {"mode": "absolute", "steps": steps}},
                            "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "background", "graphMode": "none", "textMode": "auto"}}


def series(title, targets, unit="short", desc="", stack=False):
    custom = {"drawStyle": "line", "fillOpacity": 10, "showPoints": "never", "spanNulls": False}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    return {"type": "timeseries", "title": title, "description": desc, "targets": targets,
            "fieldConfig": {"defaults": {"unit": unit, "custom": custom}, "overrides": []},
            "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}}}


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


UPDOWN = mapping((1, "up", "green"), (0, "down", "red"))

layout = [
    [row("Health")],
    [
        stat("CVAT reachable", [q('min(cvat_sync_dependency_up{SEL,dependency="cvat"})')], mappings=UPDOWN,
             no_value="unknown", thresholds=[(0, "red"), (1, "green")],
             desc="cvat_sync_dependency_up: every pod probes CVAT in the background; min over the pods."),
        stat("GCS reachable", [q('min(cvat_sync_dependency_up{SEL,dependency="gcs"})')], mappings=UPDOWN,
             no_value="unknown", thresholds=[(0, "red"), (1, "green")]),
        stat("Pub/Sub reachable", [q('min(cvat_sync_dependency_up{SEL,dependency="pubsub"})')], mappings=UPDOWN,
             no_value="unknown", thresholds=[(0, "red"), (1, "green")]),
        stat("CVAT credentials", [q("max(cvat_sync_cvat_credentials_ok{SEL})")],
             mappings=mapping((1, "accepted", "green"), (0, "missing or refused", "red")), no_value="unknown",
             thresholds=[(0, "red"), (1, "green")],
             desc="0: the Secret has no CVAT token (first install) or CVAT refuses it; nothing is exported."),
        stat("Deletions", [q("max(cvat_sync_deletions_blocked{SEL})")],
             mappings=mapping((0, "announced", "green"), (1, "blocked by the guard", "red")), no_value="unknown",
             thresholds=[(1, "red")],
             desc="1: the last full pass would have announced too many deletions (config.maxDeleteFraction) and announced none."),
        stat("Webhooks answered 503 (1h)",
             [q('sum(increase(cvat_sync_webhook_deliveries_total{SEL,outcome="unavailable"}[1h]))')],
             thresholds=[(1, "red")], desc="Events that could not be stored in the inbox; CVAT shows them failed."),
    ],
    [
        stat("Tasks behind CVAT", [q("max(cvat_sync_tasks_behind{SEL})")], thresholds=[(1, "yellow")],
             desc="Tasks in scope whose current CVAT state is not yet exported and announced in every format."),
        stat("Oldest state behind", [q("max(cvat_sync_tasks_behind_oldest_age_seconds{SEL})")], unit="s",
             thresholds=[(3600, "yellow"), (21600, "red")]),
        stat("Since last successful export",
             [q("time() - max(cvat_sync_last_export_success_timestamp_seconds{SEL} > 0)")], unit="s",
             no_value="never", desc="Only worrying while tasks are behind: exports happen when something changed."),
        stat("Tasks in the record", [q("max(cvat_sync_recorded_tasks{SEL})")]),
        stat("Tasks failing (backoff)", [q("sum(cvat_sync_tasks_failing{SEL})")], thresholds=[(1, "yellow")]),
        stat("Dead-lettered (24h)", [q("sum(increase(cvat_sync_dead_lettered_total{SEL}[1d]))")],
             thresholds=[(1, "red")]),
    ],
    [row("CVAT's webhooks")],
    [
        series("Webhook deliveries by outcome",
               [q("sum by (outcome) (rate(cvat_sync_webhook_deliveries_total{SEL}[$__rate_interval]))", "{{outcome}}")],
               unit="reqps", stack=True),
        series("Webhook deliveries by event",
               [q("sum by (event) (rate(cvat_sync_webhook_deliveries_total{SEL}[$__rate_interval]))", "{{event}}")],
               unit="reqps", stack=True),
    ],
    [
        series("Failed deliveries in CVAT's log, by status",
               [q("max by (status) (cvat_sync_cvat_failed_deliveries{SEL})", "{{status}}")],
               desc="proxy: Smokescreen refused the address (smokescreen.opts); timeout: NetworkPolicy; 4xx: secret or URL; 5xx: not stored."),
        series("Redeliveries asked of CVAT",
               [q("sum by (outcome) (increase(cvat_sync_cvat_redeliveries_total{SEL}[$__rate_interval]))", "{{outcome}}")]),
    ],
    [
        series("Signature failures by reason",
               [q("sum by (reason) (increase(cvat_sync_webhook_signature_failures_total{SEL}[$__rate_interval]))", "{{reason}}")]),
        series("Webhook answer latency (POST /webhooks/cvat)", [
            q('histogram_quantile(0.95, sum by (le) (rate(cvat_sync_http_request_duration_seconds_bucket{SEL,route="/webhooks/cvat"}[$__rate_interval])))', "p95"),
            q('histogram_quantile(0.99, sum by (le) (rate(cvat_sync_http_request_duration_seconds_bucket{SEL,route="/webhooks/cvat"}[$__rate_interval])))', "p99"),
        ], unit="s", desc="CVAT gives up after 10 s."),
    ],
    [row("Convergence")],
    [
        series("Tasks behind CVAT", [q("max(cvat_sync_tasks_behind{SEL})", "behind"),
                                     q("sum(cvat_sync_tasks_failing{SEL})", "failing (backoff)")]),
        series("Oldest state behind", [q("max(cvat_sync_tasks_behind_oldest_age_seconds{SEL})", "age")], unit="s"),
    ],
    [
        series("Reconcile passes by kind and outcome",
               [q("sum by (kind, outcome) (increase(cvat_sync_reconcile_passes_total{SEL}[$__rate_interval]))", "{{kind}} {{outcome}}")]),
        series("Since the last successful pass",
               [q("time() - max by (kind) (cvat_sync_reconcile_last_success_timestamp_seconds{SEL} > 0)", "{{kind}}")],
               unit="s", desc="Empty for a kind until a pod completes its first pass of it."),
    ],
    [
        series("Tasks enqueued by the passes, by reason",
               [q("sum by (reason) (increase(cvat_sync_reconcile_enqueued_total{SEL}[$__rate_interval]))", "{{reason}}")]),
        series("Pending (coalescing) tasks", [q("sum(cvat_sync_pending_tasks{SEL})", "pending"),
                                              q("max(cvat_sync_pending_oldest_age_seconds{SEL})", "oldest age (s)")]),
    ],
    [row("Exports")],
    [
        series("Exports by format and outcome",
               [q("sum by (format, outcome) (rate(cvat_sync_exports_total{SEL}[$__rate_interval]))", "{{format}} {{outcome}}")],
               unit="ops"),
        series("Export duration", [
            q("histogram_quantile(0.5, sum by (le) (rate(cvat_sync_export_duration_seconds_bucket{SEL}[$__rate_interval])))", "p50"),
            q("histogram_quantile(0.95, sum by (le) (rate(cvat_sync_export_duration_seconds_bucket{SEL}[$__rate_interval])))", "p95"),
            q("histogram_quantile(0.99, sum by (le) (rate(cvat_sync_export_duration_seconds_bucket{SEL}[$__rate_interval])))", "p99"),
        ], unit="s"),
    ],
    [
        series("From first event to export announced", [
            q("histogram_quantile(0.5, sum by (le) (rate(cvat_sync_event_to_export_seconds_bucket{SEL}[$__rate_interval])))", "p50"),
            q("histogram_quantile(0.95, sum by (le) (rate(cvat_sync_event_to_export_seconds_bucket{SEL}[$__rate_interval])))", "p95"),
        ], unit="s"),
        series("Export bytes by format",
               [q("sum by (format) (rate(cvat_sync_export_bytes_total{SEL}[$__rate_interval]))", "{{format}}")], unit="Bps"),
    ],
    [
        series("GCS writes and outbox publishes by outcome", [
            q("sum by (outcome) (rate(cvat_sync_sink_writes_total{SEL}[$__rate_interval]))", "gcs {{outcome}}"),
            q("sum by (kind, outcome) (rate(cvat_sync_outbox_publishes_total{SEL}[$__rate_interval]))", "outbox {{kind}} {{outcome}}"),
        ], unit="ops"),
        series("Dead-lettered work by reason",
               [q("sum by (reason) (increase(cvat_sync_dead_lettered_total{SEL}[$__rate_interval]))", "{{reason}}")]),
    ],
    [
        series("CVAT API calls by endpoint and code",
               [q("sum by (endpoint, code) (rate(cvat_sync_cvat_requests_total{SEL}[$__rate_interval]))", "{{endpoint}} {{code}}")],
               unit="reqps"),
        series("Inbox items by kind and retries",
               [q("sum by (kind) (rate(cvat_sync_inbox_items_total{SEL}[$__rate_interval]))", "{{kind}}"),
                q("sum(rate(cvat_sync_export_retries_total{SEL}[$__rate_interval]))", "export retries"),
                q("sum(rate(cvat_sync_coalesced_events_total{SEL}[$__rate_interval]))", "coalesced events")],
               unit="ops"),
    ],
]


def build():
    panels, y, pid = [], 0, 1
    for line in layout:
        if line[0]["type"] == "row":
            p = dict(line[0], id=pid, gridPos={"x": 0, "y": y, "w": 24, "h": 1})
            panels.append(p)
            pid, y = pid + 1, y + 1
            continue
        w = 24 // len(line)
        h = 4 if line[0]["type"] == "stat" else 8
        for i, p in enumerate(line):
            p = dict(p, id=pid, datasource=DS, gridPos={"x": i * w, "y": y, "w": w, "h": h})
            for j, t in enumerate(p["targets"]):
                t["refId"] = chr(ord("A") + j)
                t["datasource"] = DS
            panels.append(p)
            pid += 1
        y += h
    var = lambda name, label, query: {
        "name": name, "type": "query", "label": label, "datasource": DS, "refresh": 2, "current": {},
        "query": {"query": query, "refId": name}, "definition": query, "includeAll": name == "job",
        "multi": False, "sort": 1}
    return {
        "title": "cvat-sync", "uid": "cvat-sync", "tags": ["cvat", "cvat-sync"], "timezone": "browser",
        "schemaVersion": 39, "version": 2, "editable": True, "refresh": "1m",
        "time": {"from": "now-24h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source", "current": {}},
            # cvat_sync_dependency_up exists from a pod's first scrape, so the variables fill at once.
            var("namespace", "Namespace", "label_values(cvat_sync_dependency_up, namespace)"),
            var("job", "Release", 'label_values(cvat_sync_dependency_up{namespace="$namespace"}, job)'),
        ]},
        "panels": panels,
    }


def main():
    text = json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
    if "--check" in sys.argv[1:]:
        if OUT.read_text() != text:
            print(f"{OUT} is not what {Path(__file__).name} writes: run python3 deploy/k8s/hack/dashboard.py")
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
