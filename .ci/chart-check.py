#!/usr/bin/env python3
"""Assertions of .ci/chart-check.sh on the chart's renders (stdlib + PyYAML).

  chart-check.py RENDER_DIR CVAT_POD_LABELS    GKE specifics, senders, monitoring, Job, Secret
  chart-check.py --rules RENDER FULL TEST      extract the alert rules (TEST: no annotations)
  chart-check.py --coverage RULES TESTFILE     every alert has a firing and a quiet case
  chart-check.py --mutants RULES TESTFILE OUTDIR  naive variants the tests must catch
  chart-check.py --names RULES DASHBOARD       metric names used (name alert|dashboard)
  chart-check.py --dashboard DASHBOARD         panels show data from the start

The default mode prints one "PASS ..." or "FAIL ..." line per check and exits 1 on a failure.
"""
import json
import re
import sys
from pathlib import Path

import yaml

FAILS = 0


def ok(cond, msg, detail=""):
    global FAILS
    if cond:
        print(f"PASS {msg}")
    else:
        FAILS += 1
        print(f"FAIL {msg}" + (f": {detail}" if detail else ""))
    return cond


def load(path):
    return [d for d in yaml.safe_load_all(Path(path).read_text()) if d]


def kinds(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def one(docs, kind):
    found = kinds(docs, kind)
    return found[0] if len(found) == 1 else None


def matches(selector, labels):
    """A Kubernetes LabelSelector (matchLabels + matchExpressions) against a label set."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        k, op, vals = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(k) not in vals:
            return False
        if op == "NotIn" and k in labels and labels[k] in vals:
            return False
        if op == "Exists" and k not in labels:
            return False
        if op == "DoesNotExist" and k in labels:
            return False
    return True


def env_of(container):
    return {e["name"]: e for e in container.get("env") or []}


# ---- default mode --------------------------------------------------------------------------
HEALTH = {"35.191.0.0/16", "130.211.0.0/22"}
PUBLIC_URL = {
    "default": "http://cvat-sync.cvat.svc.cluster.local:8080",
    "values-ingress-external": "https://cvat-sync.example.com",
    "values-gke-internal": "https://cvat-sync.internal.example.com",
    "x-internal-http": "http://cvat-sync.internal.example.com",
    "values-full": "https://cvat-sync.example.com",
    "values-umbrella": "http://cvat-sync.cvat.svc.cluster.local:8080",
}
LAYOUT = {"x-layout-current": "current", "values-legacy-cvat": "legacy"}
STACK = {"values-full": "prometheus-operator", "layered-gke-full": "prometheus-operator",
         "values-legacy-cvat": "prometheus-operator", "values-gke": "gmp", "values-umbrella": "gmp",
         "values-gke-internal": "gmp", "x-layout-current": "gmp", "x-internal-http": "gmp",
         "x-required": "gmp", "x-monitoring-none": "none", "default": "none"}
HELM_TIMEOUT = {"values-full": 600, "layered-gke-full": 600}
EXTRA_RULES = {"values-full": 1, "layered-gke-full": 1}  # networkPolicy.extraIngress of the example
NEW_SETTINGS = {
    "default": {"CVAT_SYNC_SYNC_SINCE": "first-start", "CVAT_SYNC_FULL_RECONCILE_INTERVAL": "1h",
                "CVAT_SYNC_MAX_DELETE_FRACTION": "0.5", "CVAT_SYNC_GCS_STATE_PREFIX": "_cvat-sync",
                "CVAT_SYNC_CVAT_AUTH": "auto", "CVAT_SYNC_REDELIVER": "true", "CVAT_SYNC_RECONCILE_INTERVAL": "10m"},
    "values-full": {"CVAT_SYNC_SYNC_SINCE": "720h", "CVAT_SYNC_FULL_RECONCILE_INTERVAL": "6h",
                    "CVAT_SYNC_MAX_DELETE_FRACTION": "0.25", "CVAT_SYNC_GCS_STATE_PREFIX": "prod/_cvat-sync",
                    "CVAT_SYNC_CVAT_AUTH": "token", "CVAT_SYNC_REDELIVER": "false"},
}


def check_render(name, docs, fixtures):
    cms = {c["metadata"]["name"]: c for c in kinds(docs, "ConfigMap")}
    cm = cms.get("cvat-sync") or cms.get("cvat-sync-receiver")
    dep = one(docs, "Deployment")
    np = one(docs, "NetworkPolicy")
    svc = one(docs, "Service")
    full = dep["metadata"]["name"]
    data = cm["data"]
    pod = dep["spec"]["template"]
    receiver = pod["spec"]["containers"][0]

    # ConfigMap: new settings, no credential files.
    for key, want in NEW_SETTINGS.get(name, {}).items():
        ok(data.get(key) == want, f"{name}: ConfigMap {key}={want}", f"is {data.get(key)!r}")
    bad = [k for k in data if k in ("CVAT_SYNC_CVAT_TOKEN_FILE", "CVAT_SYNC_CVAT_PASSWORD_FILE", "CVAT_SYNC_CVAT_TOKEN")]
    ok(not bad, f"{name}: no CVAT credential in the ConfigMap (it comes from the Secret, optional)", str(bad))
    if name in PUBLIC_URL:
        ok(data.get("CVAT_SYNC_PUBLIC_URL") == PUBLIC_URL[name],
           f"{name}: CVAT_SYNC_PUBLIC_URL (what register gives CVAT) is {PUBLIC_URL[name]}",
           f"is {data.get('CVAT_SYNC_PUBLIC_URL')!r}")

    # The CVAT credential: optional from the Secret, so a Secret without it starts the pod.
    for c in [receiver] + [j["spec"]["template"]["spec"]["containers"][0] for j in kinds(docs, "Job")]:
        env = env_of(c)
        for var in ("CVAT_SYNC_CVAT_TOKEN", "CVAT_SYNC_CVAT_PASSWORD"):
            if var in env:
                ref = env[var].get("valueFrom", {}).get("secretKeyRef", {})
                ok(ref.get("optional") is True, f"{name}: {c['name']} takes {var} from Secret {ref.get('name')} key {ref.get('key')}, optional")

    # Ingress: GKE's class annotation, never spec.ingressClassName; what each class needs.
    rules = (np or {}).get("spec", {}).get("ingress", [])
    blocks = {p["ipBlock"]["cidr"] for r in rules for p in r.get("from", []) if "ipBlock" in p}
    for ing in kinds(docs, "Ingress"):
        ann = ing["metadata"].get("annotations") or {}
        cls = ann.get("kubernetes.io/ingress.class")
        ok("ingressClassName" not in ing["spec"] and cls in ("gce", "gce-internal"),
           f"{name}: Ingress class by annotation kubernetes.io/ingress.class={cls}, no spec.ingressClassName")
        paths = [p for r in ing["spec"]["rules"] for p in r["http"]["paths"]]
        ok([(p["path"], p["pathType"]) for p in paths] == [("/webhooks/cvat", "Exact")],
           f"{name}: the Ingress exposes only POST /webhooks/cvat (Exact)")
        ok("cloud.google.com/neg" in (svc["metadata"].get("annotations") or {}),
           f"{name}: Service has cloud.google.com/neg (container-native: the NetworkPolicy sees the load balancer's addresses)")
        mc = kinds(docs, "ManagedCertificate")
        if cls == "gce":
            ok(HEALTH <= blocks, f"{name}: gce: NetworkPolicy admits Google's health-check/GFE ranges {sorted(HEALTH)}", str(sorted(blocks)))
            ok("kubernetes.io/ingress.regional-static-ip-name" not in ann, f"{name}: gce: no regional static IP annotation")
            if ann.get("networking.gke.io/managed-certificates"):
                ok([m["metadata"]["name"] for m in mc] == [ann["networking.gke.io/managed-certificates"]],
                   f"{name}: gce: the ManagedCertificate the Ingress names is rendered")
        else:
            proxy = blocks - HEALTH
            ok(HEALTH <= blocks and len(proxy) == 1,
               f"{name}: gce-internal: NetworkPolicy admits the health-check ranges and the proxy-only subnet {sorted(proxy)}", str(sorted(blocks)))
            ok("kubernetes.io/ingress.global-static-ip-name" not in ann and
               ("kubernetes.io/ingress.regional-static-ip-name" in ann or name == "x-internal-http"),
               f"{name}: gce-internal: regional-static-ip-name, never global-static-ip-name")
            ok(not mc and "networking.gke.io/managed-certificates" not in ann,
               f"{name}: gce-internal: no ManagedCertificate (it does not serve internal load balancers)")
    if not kinds(docs, "Ingress") and np:
        ok(not blocks, f"{name}: no Ingress, so the NetworkPolicy admits no address ranges", str(sorted(blocks)))

    # NetworkPolicy: CVAT's senders of the chosen layout, nothing else; the scraper of the stack.
    stack = STACK.get(name, "none")
    if np:
        layout = LAYOUT.get(name, "any")
        sel = [p["podSelector"] for p in rules[0]["from"]]
        wrong = []
        for f in fixtures:
            want = f["sender"] and layout in f.get("layouts", [])
            if any(matches(s, f["labels"]) for s in sel) != want:
                wrong.append(f"{f['name']} ({'should' if want else 'should not'} be admitted)")
        ok(not wrong, f"{name}: NetworkPolicy senders (layout {layout}) admit exactly CVAT's webhook worker and server of ci/cvat-pod-labels.yaml", "; ".join(wrong))
        own = rules[:len(rules) - EXTRA_RULES.get(name, 0)]
        ok(all(p.get("port") == "http" for r in own for p in r.get("ports", [])), f"{name}: NetworkPolicy's own rules open only the http port")
        prom = [r for r in rules[1:] if any("namespaceSelector" in p and "podSelector" in p for p in r["from"])]
        if stack == "gmp" and prom:
            peer = prom[0]["from"][0]
            ok(peer["namespaceSelector"].get("matchLabels") == {"kubernetes.io/metadata.name": "gmp-system"} and
               peer["podSelector"].get("matchLabels") == {"app.kubernetes.io/name": "collector"},
               f"{name}: gmp: NetworkPolicy admits GMP's collectors (gmp-system, collector)")

    # Monitoring objects by metrics.stack, scraping what the alerts select.
    have = {k: kinds(docs, k) for k in ("ServiceMonitor", "PrometheusRule", "PodMonitoring", "Rules", "ClusterRules")}
    want = {"gmp": {"PodMonitoring"}, "prometheus-operator": {"ServiceMonitor", "PrometheusRule"}, "none": set()}[stack]
    got = {k for k, v in have.items() if v}
    rk = have["Rules"] or have["ClusterRules"]
    if stack == "gmp":
        want = want | {rk[0]["kind"]} if rk else want | {"Rules"}
    ok(got == want, f"{name}: metrics.stack {stack} renders {sorted(want) or 'no monitoring objects'}", f"got {sorted(got)}")
    podlabels = pod["metadata"]["labels"]
    for pm in have["PodMonitoring"]:
        ok(matches(pm["spec"]["selector"], podlabels) and pm["spec"]["endpoints"][0]["port"] in [p["name"] for p in receiver["ports"]]
           and pm["metadata"]["name"] == full,
           f"{name}: PodMonitoring {pm['metadata']['name']} selects the receiver's pods on port http (job label {full})")
    for sm in have["ServiceMonitor"]:
        ok(matches(sm["spec"]["selector"], svc["metadata"]["labels"]) and sm["spec"]["endpoints"][0]["port"] in [p["name"] for p in svc["spec"]["ports"]],
           f"{name}: ServiceMonitor selects the Service {svc['metadata']['name']} (job label) on port http")
    for r in have["PrometheusRule"] + have["Rules"] + have["ClusterRules"]:
        exprs = [x["expr"] for g in r["spec"]["groups"] for x in g["rules"]]
        ok(all(f'job="{svc["metadata"]["name"]}"' in e for e in exprs) and all('namespace="cvat"' in e for e in exprs),
           f"{name}: every alert of the {r['kind']} selects namespace=\"cvat\",job=\"{svc['metadata']['name']}\" (what the scrape labels)")
        if r["kind"] == "ClusterRules":
            ok("namespace" not in r["metadata"], f"{name}: ClusterRules is cluster-scoped (no metadata.namespace)")

    # The register Job: bounded hook that cannot fail the release.
    sas = {s["metadata"]["name"]: s for s in kinds(docs, "ServiceAccount")}
    for job in kinds(docs, "Job"):
        spec, tpl = job["spec"], job["spec"]["template"]["spec"]
        c = tpl["containers"][0]
        args = c.get("args", [])
        ann = job["metadata"].get("annotations") or {}
        wait = next((int(a[len("--wait="):-1]) for a in args if a.startswith("--wait=") and a.endswith("s")), None)
        optional = name != "x-required"
        ok(args[:2] == ["webhook", "register"] and wait is not None and (("--optional" in args) == optional),
           f"{name}: register Job runs {' '.join(args)}", "want webhook register --wait=<N>s" + (" --optional" if optional else ""))
        ok(set(ann.get("helm.sh/hook", "").split(",")) == {"post-install", "post-upgrade"} and
           "before-hook-creation" in ann.get("helm.sh/hook-delete-policy", ""),
           f"{name}: register Job is a post-install,post-upgrade hook replaced on the next run (before-hook-creation)")
        limit = HELM_TIMEOUT.get(name, 300)
        ok(wait is not None and wait + 60 <= spec["activeDeadlineSeconds"] < limit and spec["backoffLimit"] <= 2,
           f"{name}: register Job is bounded: waits {wait}s < activeDeadlineSeconds {spec['activeDeadlineSeconds']}s < helm --timeout {limit}s, backoffLimit {spec['backoffLimit']}")
        ok(tpl["restartPolicy"] == "Never" and any(r.get("action") == "Ignore" for r in spec.get("podFailurePolicy", {}).get("rules", [])),
           f"{name}: register Job: restartPolicy Never; a disrupted pod is retried without spending backoffLimit")
        sa = sas.get(tpl["serviceAccountName"])
        ok(tpl.get("automountServiceAccountToken") is False and sa is not None and
           not any(k.startswith("iam.gke.io/") for k in (sa["metadata"].get("annotations") or {})),
           f"{name}: register Job runs as {tpl['serviceAccountName']}: no Google identity, no API token")
    for p in kinds(docs, "Pod"):
        ok(p["spec"].get("automountServiceAccountToken") is False and p["spec"]["serviceAccountName"] in sas and
           not any(k.startswith("iam.gke.io/") for k in (sas[p["spec"]["serviceAccountName"]]["metadata"].get("annotations") or {})),
           f"{name}: helm test Pod runs without a Google identity")
    return kinds(docs, "Job")


def main_default(rdir, fixture_file):
    fixtures = yaml.safe_load(Path(fixture_file).read_text())["pods"]
    renders = {}
    for f in sorted(Path(rdir).glob("*.yaml")):
        if f.name.startswith("notes-"):
            continue
        renders[f.stem] = load(f)
    jobs = {}
    for name, docs in renders.items():
        jobs[name] = check_render(name, docs, fixtures)
    # Which examples run the Job: every one with a scope and credentials that can exist.
    ok(not jobs.get("default"), "default values: no register Job (no webhook scope, no credentials)")
    for name in ("values-umbrella", "values-existing-secret", "values-gke", "values-gke-internal", "values-ingress-external", "values-legacy-cvat"):
        ok(len(jobs.get(name, [])) == 1, f"{name}: the register Job is rendered")
    # The Secret contract of a fresh umbrella install: no token in any Secret the chart knows of.
    u = renders.get("values-umbrella", [])
    if u:
        dep = one(u, "Deployment")
        vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        env = env_of(dep["spec"]["template"]["spec"]["containers"][0])
        ok(not kinds(u, "Secret") and vols["secrets"]["secret"]["secretName"] == "cvat-sync-credentials" and
           env.get("CVAT_SYNC_CVAT_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef", {}).get("optional") is True,
           "values-umbrella: the receiver starts from a Secret that may lack cvat-token (optional), webhook secret mounted from it")
    # NOTES.
    notes = {}
    for f in Path(rdir).glob("notes-*.yaml"):
        try:
            notes[f.stem[len("notes-"):]] = yaml.safe_load(f.read_text())["data"]["notes"]
        except Exception as e:  # noqa: BLE001 - report any render problem as a failure
            ok(False, f"NOTES of {f.stem} render", str(e))
    expect = {
        "default": ["register Job was NOT rendered: no webhook scope", "/receiver webhook register", "no CVAT"],
        "values-umbrella": ["--wait=120s --optional", "logs job/cvat-sync-register-webhook", "skipped",
                            "/receiver webhook register", "may still lack it", "--allow-address=34.118.230.10"],
        "values-legacy-cvat": ["SMOKESCREEN_OPTS", "layout \"legacy\"", "smokescreen:"],
        "values-gke": ["PodMonitoring", "--wait=120s --optional"],
        "values-gke-internal": ["https://cvat-sync.internal.example.com/webhooks/cvat", "derived from ingress.host"],
    }
    for n, wants in expect.items():
        text = notes.get(n, "")
        missing = [w for w in wants if w not in text]
        ok(text and not missing, f"NOTES for {n} say: {'; '.join(wants)}", f"missing {missing}")
    return 1 if FAILS else 0


# ---- rules ---------------------------------------------------------------------------------
def extract_rules(render, full, test):
    docs = [d for d in load(render) if d.get("kind") in ("PrometheusRule", "Rules", "ClusterRules")]
    if len(docs) != 1:
        print(f"expected one rules object, found {len(docs)}")
        return 1
    groups = docs[0]["spec"]["groups"]
    bad = []
    n = 0
    for g in groups:
        for r in g["rules"]:
            n += 1
            a = r.get("annotations") or {}
            if not (r.get("alert") and r.get("expr") and (r.get("labels") or {}).get("severity") and a.get("summary") and a.get("description")):
                bad.append(r.get("alert") or r.get("expr"))
    if bad:
        print(f"alerts without expr, severity, summary or description: {bad}")
        return 1
    Path(full).write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    for g in groups:
        for r in g["rules"]:
            r.pop("annotations", None)
    Path(test).write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    names = sorted({r["alert"] for g in groups for r in g["rules"]})
    print(f"{docs[0]['kind']}: {len(names)} alerts in {n} rules, each with severity, summary and description")
    return 0


def alerts_of(rules_file):
    return [r for g in yaml.safe_load(Path(rules_file).read_text())["groups"] for r in g["rules"]]


def coverage(rules_file, test_file):
    names = sorted({r["alert"] for r in alerts_of(rules_file)})
    fires, quiet = set(), set()
    for t in yaml.safe_load(Path(test_file).read_text())["tests"]:
        for a in t.get("alert_rule_test", []):
            (fires if a.get("exp_alerts") else quiet).add(a["alertname"])
    lacking = [f"{n} ({'no firing case' if n not in fires else ''}{', ' if n not in fires and n not in quiet else ''}{'no quiet case' if n not in quiet else ''})"
               for n in names if n not in fires or n not in quiet]
    if lacking:
        print("; ".join(lacking))
        return 1
    print(f"all {len(names)} alerts have a case that fires and one that must not: {', '.join(names)}")
    return 0


# Naive forms of the alerts that must stay right across restarts and rollouts.
MUTANTS = [
    ("CvatSyncExportsStalled", None,
     lambda e: 'time() - max(cvat_sync_last_export_success_timestamp_seconds{namespace="cvat",job="cvat-sync"}) > 86400',
     "NoSuccessfulExport as it was: time since the last export alone"),
    ("CvatSyncReconcileFailing", "incremental",
     lambda e: 'time() - max by (kind) (cvat_sync_reconcile_last_success_timestamp_seconds{namespace="cvat",job="cvat-sync",kind="incremental"}) > 3600',
     "reconcile staleness without counting a pod's start"),
    ("CvatSyncDependencyDown", None, lambda e: e.replace("max by", "min by"),
     "dependency down on any pod (min) instead of every pod"),
    ("CvatSyncCVATCredentials", None, lambda e: e.replace("max(", "min("),
     "credentials missing on any pod (min)"),
    ("CvatSyncDeadLettered", None,
     lambda e: 'sum(cvat_sync_dead_lettered_total{namespace="cvat",job="cvat-sync"}) > 0',
     "dead letters counted by value instead of increase()"),
    ("CvatSyncWebhooksUnavailable", None,
     lambda e: 'sum(cvat_sync_webhook_deliveries_total{namespace="cvat",job="cvat-sync",outcome="unavailable"}) > 0',
     "503s counted by value instead of increase()"),
    ("CvatSyncDeletionsBlocked", None, lambda e: 'max(cvat_sync_deletions_blocked{namespace="cvat",job="cvat-sync"}) >= 1',
     "deletions blocked without max_over_time across a restart"),
]


def mutants(rules_file, test_file, outdir):
    """Writes mNN.yaml (the rules with one alert mutated) and mNN.test.yaml (the cases of that alert)."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    tests = yaml.safe_load(Path(test_file).read_text())
    for i, (alert, kind, change, what) in enumerate(MUTANTS):
        groups = yaml.safe_load(Path(rules_file).read_text())["groups"]
        hit = 0
        for g in groups:
            for r in g["rules"]:
                if r.get("alert") == alert and (kind is None or (r.get("labels") or {}).get("kind") == kind):
                    r["expr"] = change(r["expr"])
                    hit += 1
        cases = [t for t in tests["tests"] if any(a["alertname"] == alert for a in t.get("alert_rule_test", []))]
        if hit == 0 or not cases:
            print(f"no rule or no case for {alert} {kind or ''} to mutate")
            return 1
        (out / f"m{i:02d}.yaml").write_text(f"# mutant: {alert}: {what}\n" + yaml.safe_dump({"groups": groups}, sort_keys=False))
        t = dict(tests, rule_files=[f"m{i:02d}.yaml"], tests=cases)
        (out / f"m{i:02d}.test.yaml").write_text(yaml.safe_dump(t, sort_keys=False))
    return 0


def metric_names(rules_file, dashboard):
    names = {}
    for r in alerts_of(rules_file):
        for m in re.findall(r"cvat_sync_[a-z0-9_]+|\bup\{|process_start_time_seconds", r["expr"]):
            names.setdefault(m.rstrip("{"), "alert")
    d = json.loads(Path(dashboard).read_text())
    for p in d["panels"]:
        for t in p.get("targets", []):
            for m in re.findall(r"cvat_sync_[a-z0-9_]+", t["expr"]):
                names.setdefault(m, "dashboard")
    for n in sorted(names):
        print(n, names[n])
    return 0


def dashboard(path):
    d = json.loads(Path(path).read_text())
    problems = []
    n = 0
    for p in d["panels"]:
        if p["type"] == "row":
            continue
        n += 1
        if p.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"{p['title']}: not on the $datasource variable")
        if p["type"] == "stat" and "noValue" not in p["fieldConfig"]["defaults"]:
            problems.append(f"{p['title']}: stat without noValue (shows 'No data')")
        for t in p["targets"]:
            e = t["expr"]
            if 'namespace="$namespace"' not in e:
                problems.append(f"{p['title']}: query not scoped to $namespace")
            if "time() -" in e and "> 0" not in e:
                problems.append(f"{p['title']}: time() minus a timestamp that may be 0 (56 years)")
    for v in d["templating"]["list"]:
        if v["type"] == "query" and "cvat_sync_dependency_up" not in v["definition"]:
            problems.append(f"variable {v['name']}: not from cvat_sync_dependency_up, which exists from the first scrape")
    if problems:
        print("; ".join(problems))
        return 1
    print(f"dashboard: {n} panels on $datasource and $namespace, stats say none/never instead of No data, no time() - 0")
    return 0


def main(argv):
    if argv[:1] == ["--rules"]:
        return extract_rules(*argv[1:4])
    if argv[:1] == ["--coverage"]:
        return coverage(*argv[1:3])
    if argv[:1] == ["--mutants"]:
        return mutants(*argv[1:4])
    if argv[:1] == ["--names"]:
        return metric_names(*argv[1:3])
    if argv[:1] == ["--dashboard"]:
        return dashboard(argv[1])
    return main_default(*argv[:2])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
