#!/usr/bin/env bash
# .ci/chart-check.sh: checks of the Helm chart in deploy/k8s, offline after the first run.
#
#   bash .ci/chart-check.sh
#
# Runs from any clone. It installs its own pinned tools on first use and caches them:
#   helm v3.22.0 and kubeconform v0.8.0   go install (as the steering repo's shared/tools/check-chart
#                                          does, into the same cache, so either installs them once)
#   promtool 2.42.0                        from Debian bookworm's prometheus package: the .deb is
#                                          fetched with apt-get download and only usr/bin/promtool is
#                                          unpacked (no install, so no Prometheus daemon is started);
#                                          quick and needs no build. Without apt (not Debian) the
#                                          promtool of PATH is used, or PROMTOOL=/path/to/promtool.
# Kubernetes schemas: the offline cache of the steering repo's shared/tools/k8s-schemas when it
# is beside this repository; otherwise made from the Go module proxy with .ci/k8s-schemas (a copy
# of that generator). The kinds the cache lacks (PrometheusRule, GMP's PodMonitoring, Rules,
# ClusterRules) are always made with .ci/k8s-schemas. The script says which it used.
#
# 1. For the default values and each deploy/k8s/ci/values-*.yaml (except values-typo.yaml), and
#    values-gke.yaml+values-full.yaml layered: helm lint --strict, helm template, kubeconform
#    -strict, and a second render that must be byte-identical (GitOps).
# 2. Values that must be rejected: misspelt keys at several depths, wrong types and enums
#    (values.schema.json), and the template guards.
# 3. What the renders must say on GKE (Python on the rendered YAML): Ingress class by annotation
#    and never spec.ingressClassName; the NetworkPolicy admits the health-check ranges (and the
#    proxy-only subnet for gce-internal) and CVAT's senders of both CVAT chart layouts
#    (ci/cvat-pod-labels.yaml) and nothing else; static IP annotation by class; no
#    ManagedCertificate with gce-internal; config.publicURL derived from ingress.host; GMP or
#    prometheus-operator objects by metrics.stack, scraping what the alerts select; the register
#    Job runs `webhook register --wait=Ns --optional` as a bounded post-install/post-upgrade hook
#    that cannot fail the release (also without a token), with no Google identity; the CVAT token
#    is optional in the Secret; the new settings are in the ConfigMap; NOTES say when the Job is
#    skipped and how to register.
# 4. Alerts: promtool check rules; promtool test rules with ci/alerts.test.yaml for both stacks
#    (every alert has a case that fires and one that must not); mutants of the rollout-sensitive
#    alerts must fail those tests.
# 5. Metrics: every metric the alerts and the dashboard use is defined in the Go code; the real
#    binary (go build ./cmd/receiver, run on its embedded default) is scraped: promtool check
#    metrics on the scrape, and the metrics the alerts read must be there from the start.
# 6. The dashboard is what deploy/k8s/hack/dashboard.py writes, and shows data from the start.
# 7. The umbrella recipe of docs/deploy.md: helm's handling of a dependency's own dependencies,
#    shown with stand-in charts (CVAT's real dependencies need the network).
#
# Environment (all optional): CVAT_SYNC_SHARED (the steering repo's shared/ folder),
# HELM, KUBECONFORM, PROMTOOL (binaries to use), CHECK_CHART_CACHE (helm/kubeconform cache,
# shared with the kit), XDG_CACHE_HOME. Exit status: 0 all passed, 1 a check failed, 2 setup error.
set -uo pipefail

HELM_VERSION="v3.22.0"
KUBECONFORM_VERSION="v0.8.0"
KUBE_VERSION="1.33.13"
PROMTOOL_DEB_VERSION="2.42.0+ds-5+deb12u1"   # Debian bookworm; another revision of 2.42.0 is accepted
PROMTOOL_UPSTREAM="2.42.0"

ROOT="$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel 2>/dev/null ||
  (cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd))"
cd "$ROOT" || exit 2
CHART=deploy/k8s
CI_VALUES="$CHART/ci"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/cvat-sync-ci"
KIT_CACHE="${CHECK_CHART_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/check-chart}"

START=$SECONDS
FAILED=0
PASSED=0
die() { echo "chart-check: $*" >&2; exit 2; }
note() { echo "chart-check: $*"; }
pass() { printf '  PASS  %s\n' "$*"; PASSED=$((PASSED + 1)); }
fail() { printf '  FAIL  %s\n' "$*"; FAILED=$((FAILED + 1)); }
indent() { sed 's/^/        /'; }
section() { printf '== %s (%ds)\n' "$*" "$((SECONDS - START))"; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/chart-check.XXXXXX")" || die "no temp dir"
RPID=""
cleanup() {
  [ -n "$RPID" ] && kill "$RPID" 2>/dev/null && wait "$RPID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

# ---- tools -------------------------------------------------------------------------------
section "tools"
command -v go >/dev/null 2>&1 || die "Go is needed (to install helm and kubeconform and to build the receiver)"
command -v python3 >/dev/null 2>&1 || die "python3 is needed"
if ! python3 -c 'import yaml' 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    note "installing Debian package python3-yaml"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-yaml) >/dev/null 2>&1
  fi
  python3 -c 'import yaml' 2>/dev/null || die "python3 needs PyYAML (Debian: python3-yaml; pip install pyyaml)"
fi

# go_install NAME VERSION PACKAGE LDFLAGS: the cached binary's path, installing it the first
# time. Same build as shared/tools/check-chart (same flags and cache file names).
go_install() {
  local name="$1" version="$2" pkg="$3" ldflags="$4" dest="$KIT_CACHE/bin/$1-$2" tmp try
  if [ -x "$dest" ]; then printf '%s\n' "$dest"; return 0; fi
  mkdir -p "$KIT_CACHE/bin" && tmp="$(mktemp -d "$KIT_CACHE/bin/.install-$name.XXXXXX")" || return 1
  echo "chart-check: installing $name $version: go install $pkg@$version (first run only; helm takes 5 to 12 minutes on 2 cores)" >&2
  for try in 1 2; do
    if (cd "$tmp" && GOBIN="$tmp" GOFLAGS="" CGO_ENABLED=0 timeout 900 go install -trimpath -ldflags "$ldflags" "$pkg@$version") >&2; then
      mv -f "$tmp/$name" "$dest" && rm -rf "$tmp" && printf '%s\n' "$dest" && return 0
    fi
    echo "chart-check: go install $name failed (try $try)" >&2
  done
  rm -rf "$tmp"
  return 1
}
HELM_LDFLAGS="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
HELM_LDFLAGS+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=37"
HELM_LDFLAGS+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=37"
HELM="${HELM:-$(go_install helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm "$HELM_LDFLAGS")}" || die "cannot install helm"
KUBECONFORM="${KUBECONFORM:-$(go_install kubeconform "$KUBECONFORM_VERSION" github.com/yannh/kubeconform/cmd/kubeconform "-s -w -X main.version=$KUBECONFORM_VERSION")}" ||
  die "cannot install kubeconform"
export HELM_CACHE_HOME="$KIT_CACHE/helm-home/cache" HELM_CONFIG_HOME="$KIT_CACHE/helm-home/config" HELM_DATA_HOME="$KIT_CACHE/helm-home/data"

# promtool: PROMTOOL, else the cached one from Debian's package, else fetch that package, else PATH.
promtool_from_deb() {
  local dest="$CACHE/bin/promtool-$PROMTOOL_UPSTREAM" dir="$WORK/deb" ver
  [ -x "$dest" ] && { printf '%s\n' "$dest"; return 0; }
  command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1 || return 1
  mkdir -p "$dir" "$CACHE/bin"
  # apt-get download needs package lists; a fresh machine may have none.
  if ! apt-cache policy prometheus 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    [ "$(id -u)" = 0 ] && apt-get update -qq >/dev/null 2>&1
  fi
  ver="$PROMTOOL_DEB_VERSION"
  if ! apt-cache show "prometheus=$ver" >/dev/null 2>&1; then
    ver="$(apt-cache policy prometheus 2>/dev/null | sed -n 's/^ *Candidate: //p')"
    case "$ver" in "$PROMTOOL_UPSTREAM"+*) echo "chart-check: Debian has prometheus $ver instead of $PROMTOOL_DEB_VERSION (same upstream)" >&2 ;; *) return 1 ;; esac
  fi
  (cd "$dir" && apt-get download -q "prometheus=$ver" >/dev/null 2>&1) || return 1
  dpkg-deb --fsys-tarfile "$dir"/prometheus_*.deb | tar -x -C "$dir" ./usr/bin/promtool || return 1
  mv -f "$dir/usr/bin/promtool" "$dest" && printf '%s\n' "$dest"
}
PROMTOOL="${PROMTOOL:-$(promtool_from_deb || command -v promtool || true)}"
[ -n "$PROMTOOL" ] && [ -x "$PROMTOOL" ] || die "no promtool: on Debian run as root once (apt-get update), or set PROMTOOL to a promtool binary"
note "helm $("$HELM" version --template '{{.Version}}'), kubeconform $("$KUBECONFORM" -v), $("$PROMTOOL" --version 2>&1 | head -n1) ($PROMTOOL)"

# ---- schemas -----------------------------------------------------------------------------
SHARED=""
for cand in "${CVAT_SYNC_SHARED:-}" "$ROOT/../shared" \
  "$(origin="$(git remote get-url origin 2>/dev/null)"; case "$origin" in /*) echo "$origin/../shared" ;; file://*) echo "${origin#file://}/../shared" ;; esac)"; do
  if [ -n "$cand" ] && [ -d "$cand/tools/k8s-schemas/v$KUBE_VERSION-standalone-strict" ]; then
    SHARED="$(cd "$cand" && pwd)"
    break
  fi
done
GEN_KEY="$(cat .ci/k8s-schemas/regen.sh .ci/k8s-schemas/gen/* .ci/k8s-schemas/sources/* | sha256sum | cut -c1-12)"
make_schemas() { # make_schemas WHAT: the folder with schemas of WHAT (base|extra|all), made once
  local dir="$CACHE/k8s-schemas/$GEN_KEY-$1"
  if [ ! -d "$dir/v$KUBE_VERSION-standalone-strict" ]; then
    rm -rf "$dir.tmp"
    K8S_VERSION="$KUBE_VERSION" bash .ci/k8s-schemas/regen.sh "$dir.tmp" "$1" >"$WORK/regen.log" 2>&1 ||
      { cat "$WORK/regen.log" >&2; return 1; }
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
  printf '%s\n' "$dir"
}
if [ -n "$SHARED" ]; then
  BASE_SCHEMAS="$SHARED/tools/k8s-schemas"
  EXTRA_SCHEMAS="$(make_schemas extra)" || die "cannot make the extra schemas with .ci/k8s-schemas/regen.sh"
  note "schemas: the offline cache $BASE_SCHEMAS, plus PrometheusRule and GMP's kinds made by .ci/k8s-schemas ($EXTRA_SCHEMAS)"
else
  BASE_SCHEMAS="$(make_schemas all)" || die "cannot make schemas with .ci/k8s-schemas/regen.sh (needs the Go module proxy)"
  EXTRA_SCHEMAS="$BASE_SCHEMAS"
  note "schemas: no shared/tools/k8s-schemas beside this repository; made from the Go module proxy by .ci/k8s-schemas ($BASE_SCHEMAS)"
fi
KC=(-strict -summary -kubernetes-version "$KUBE_VERSION"
  -schema-location "$BASE_SCHEMAS/{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json"
  -schema-location "$EXTRA_SCHEMAS/{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json")

render() { # render OUT ARGS...: helm template as release cvat-sync in namespace cvat
  local out="$1"
  shift
  "$HELM" template cvat-sync "$CHART" --namespace cvat --kube-version "$KUBE_VERSION" "$@" >"$out" 2>"$out.err"
}

# ---- 1. every example --------------------------------------------------------------------
section "1. lint, render, kubeconform -strict, determinism"
SCEN=("")
for f in "$CI_VALUES"/values-*.yaml; do
  case "$f" in *values-typo.yaml) continue ;; esac
  SCEN+=("$f")
done
SCEN+=("$CI_VALUES/values-gke.yaml,$CI_VALUES/values-full.yaml")
mkdir -p "$WORK/r"
for sc in "${SCEN[@]}"; do
  label="${sc:-default values}"
  args=()
  if [ -n "$sc" ]; then IFS=',' read -r -a files <<<"$sc"; for f in "${files[@]}"; do args+=(-f "$f"); done; fi
  name="$(basename "${sc:-default}" | sed 's/,.*//; s/\.yaml$//')"
  [[ "$sc" == *,* ]] && name="layered-gke-full"
  out="$WORK/r/$name.yaml"
  if lint="$("$HELM" lint --strict --kube-version "$KUBE_VERSION" --namespace cvat "$CHART" ${args[@]+"${args[@]}"} 2>&1)"; then
    pass "$label: helm lint --strict"
  else
    fail "$label: helm lint --strict"; grep -v -E '^==> Linting|^$' <<<"$lint" | indent
  fi
  if ! render "$out" ${args[@]+"${args[@]}"}; then
    fail "$label: helm template"; indent <"$out.err"; rm -f "$out"; continue
  fi
  kinds="$(sed -n 's/^kind:[[:space:]]*//p' "$out" | sort | uniq -c | awk '{printf "%s%s x%s", s, $2, $1; s=", "}')"
  if kc="$(cd "$WORK/r" && "$KUBECONFORM" "${KC[@]}" "$name.yaml" 2>&1)"; then
    pass "$label: kubeconform -strict: $(grep '^Summary' <<<"$kc" | sed 's/^Summary: //') ($kinds)"
  else
    fail "$label: kubeconform -strict"; indent <<<"$kc"
  fi
  if render "$out.again" ${args[@]+"${args[@]}"} && cmp -s "$out" "$out.again"; then
    pass "$label: a second render is byte-identical"
  else
    fail "$label: a second render differs"; diff -u "$out" "$out.again" | head -n 20 | indent
  fi
  rm -f "$out.again" "$out.again.err"
done

# ---- 2. values that must be rejected -------------------------------------------------------
section "2. values that must be rejected"
# expect_reject LABEL PATTERN ARGS...: helm lint --strict and helm template both fail and name
# the cause. expect_guard: a template `fail`, which only helm template (= install) runs.
LINT_TOO=1
expect_guard() { LINT_TOO=0 expect_reject "$@"; }
expect_reject() {
  local label="$1" pattern="$2" lint_rc=0 tmpl_rc=0
  shift 2
  if [ "$LINT_TOO" = 1 ]; then
    "$HELM" lint --strict "$CHART" "$@" >"$WORK/lint.out" 2>&1 || lint_rc=$?
  else
    lint_rc=skipped; echo "$pattern" >"$WORK/lint.out"
  fi
  render "$WORK/tmpl.out" "$@" || tmpl_rc=$?
  cat "$WORK/tmpl.out.err" >>"$WORK/tmpl.out"
  if [ "$lint_rc" != 0 ] && [ "$tmpl_rc" -ne 0 ] && grep -q -E -- "$pattern" "$WORK/tmpl.out" && grep -q -E -- "$pattern" "$WORK/lint.out"; then
    pass "$label: rejected (lint $lint_rc, template $tmpl_rc): $(grep -m1 -o -E -- "$pattern.*" "$WORK/tmpl.out" | cut -c1-100)"
  else
    fail "$label: expected lint and template to fail with /$pattern/ (lint $lint_rc, template $tmpl_rc)"
    tail -n 6 "$WORK/tmpl.out" | indent
  fi
}
GKE=(-f "$CI_VALUES/values-gke.yaml")
expect_reject "values-typo.yaml (autoscaling.enabeld)" "additional properties 'enabeld' not allowed" -f "$CI_VALUES/values-typo.yaml"
expect_reject "top level: replicaCont" "additional properties 'replicaCont' not allowed" --set replicaCont=2
expect_reject "level 3: networkPolicy.prometheus.podSelecter" "additional properties 'podSelecter' not allowed" --set networkPolicy.prometheus.podSelecter.app=x
expect_reject "level 4: metrics.rules.thresholds.pendingOldestAge" "additional properties 'pendingOldestAge' not allowed" --set metrics.rules.thresholds.pendingOldestAge=1
expect_reject "removed key: metrics.prometheusRule (now metrics.stack + metrics.rules)" "additional properties 'prometheusRule' not allowed" --set metrics.prometheusRule.enabled=true
expect_reject "removed key: ingress.className (GKE needs the annotation: ingress.class)" "additional properties 'className' not allowed" --set ingress.className=gce
expect_reject "wrong type: replicaCount=two" "replicaCount" --set replicaCount=two
expect_reject "enum: config.trigger=sometimes" "trigger" --set config.trigger=sometimes
expect_reject "enum: config.cvatAuth=basic" "cvatAuth" --set config.cvatAuth=basic
expect_reject "enum: metrics.stack=datadog" "stack" --set metrics.stack=datadog
expect_reject "enum: ingress.class=nginx" "class" --set ingress.class=nginx
expect_reject "range: config.maxDeleteFraction=1.5" "maxDeleteFraction" --set config.maxDeleteFraction=1.5
expect_reject "pattern: config.syncSince=yesterday" "syncSince" --set config.syncSince=yesterday
expect_guard "guard: 2 replicas on the embedded default" "embedded default" --set replicaCount=2
expect_guard "guard: grace period <= shutdown grace + preStop" "terminationGracePeriodSeconds" \
  --set terminationGracePeriodSeconds=20 --set config.shutdownGraceSeconds=25
expect_guard "guard: ingress without host" "ingress.host" --set ingress.enabled=true
expect_guard "guard: gce-internal without the proxy-only subnet" "proxyOnlySubnetRange" "${GKE[@]}" \
  --set ingress.enabled=true --set ingress.class=gce-internal --set ingress.host=a.example.com --set ingress.managedCertificate.enabled=false
expect_guard "guard: gce-internal with a ManagedCertificate" "ManagedCertificate does not serve internal" "${GKE[@]}" \
  --set ingress.enabled=true --set ingress.class=gce-internal --set ingress.host=a.example.com --set ingress.proxyOnlySubnetRange=10.129.0.0/23
expect_guard "guard: gce-internal with a FrontendConfig SSL policy" "SSL policies apply to external" -f "$CI_VALUES/values-gke-internal.yaml" \
  --set ingress.frontendConfig.enabled=true --set ingress.frontendConfig.sslPolicy=modern
expect_guard "guard: gcp.statePrefix overlaps gcp.prefix" "overlaps gcp.prefix" --set gcp.prefix=cvat --set gcp.statePrefix=cvat/_state
expect_guard "guard: Basic auth without a password" "cvatPassword" --set config.cvatUsername=bot
expect_guard "guard: register deadline shorter than its wait" "must be at least waitSeconds" "${GKE[@]}" --set webhookRegistration.waitSeconds=200
expect_guard "guard: register deadline not below helm's timeout" "must stay below helmTimeoutSeconds" "${GKE[@]}" --set webhookRegistration.activeDeadlineSeconds=300

# ---- 3. what the renders say ---------------------------------------------------------------
section "3. GKE specifics, CVAT's senders, monitoring objects, register Job, Secret contract"
# Extra renders for cases the examples leave out.
render "$WORK/r/x-internal-http.yaml" -f "$CI_VALUES/values-gke-internal.yaml" --set 'ingress.tls=null' || fail "render internal Ingress without TLS"
render "$WORK/r/x-layout-current.yaml" "${GKE[@]}" --set networkPolicy.cvatChartLayout=current || fail "render layout current"
render "$WORK/r/x-monitoring-none.yaml" "${GKE[@]}" --set metrics.stack=none || fail "render metrics.stack none"
render "$WORK/r/x-required.yaml" "${GKE[@]}" --set webhookRegistration.optional=false || fail "render optional=false"
# NOTES: rendered from a copy of the chart with one more template that prints them.
cp -r "$CHART" "$WORK/chart" && printf '%s\n' 'apiVersion: v1' 'kind: ConfigMap' 'metadata: {name: notes}' 'data:' '  notes: |' \
  '{{ include "cvat-sync.notes" . | indent 4 }}' >"$WORK/chart/templates/zz-notes.yaml"
for n in default values-umbrella values-gke values-legacy-cvat values-gke-internal; do
  f=(); [ "$n" = default ] || f=(-f "$CI_VALUES/$n.yaml")
  "$HELM" template cvat-sync "$WORK/chart" -n cvat ${f[@]+"${f[@]}"} --show-only templates/zz-notes.yaml >"$WORK/r/notes-$n.yaml" 2>&1 ||
    fail "render NOTES for $n: $(head -n2 "$WORK/r/notes-$n.yaml")"
done
python3 .ci/chart-check.py "$WORK/r" "$CI_VALUES/cvat-pod-labels.yaml" >"$WORK/assert.out" 2>&1
arc=$?
while IFS= read -r line; do
  case "$line" in
    "PASS "*) pass "${line#PASS }" ;;
    "FAIL "*) fail "${line#FAIL }" ;;
    *) echo "$line" | indent ;;
  esac
done <"$WORK/assert.out"
[ "$arc" -le 1 ] || fail "chart-check.py crashed (status $arc)"

# ---- 4. alerts -----------------------------------------------------------------------------
section "4. alerts: promtool check rules, test rules (both stacks), mutants"
mkdir -p "$WORK/rules"
cp "$CI_VALUES/alerts.test.yaml" "$WORK/rules/"
for stack in prometheus-operator gmp; do
  render "$WORK/rules/render-$stack.yaml" --set metrics.stack="$stack" || { fail "$stack: render"; continue; }
  python3 .ci/chart-check.py --rules "$WORK/rules/render-$stack.yaml" "$WORK/rules/full-$stack.yaml" "$WORK/rules/test-$stack.yaml" \
    >"$WORK/rules/extract.out" 2>&1 || { fail "$stack: rules: $(tail -n3 "$WORK/rules/extract.out")"; continue; }
  pass "$stack: $(cat "$WORK/rules/extract.out")"
  if out="$("$PROMTOOL" check rules "$WORK/rules/full-$stack.yaml" 2>&1)"; then
    pass "$stack: promtool check rules: $(grep -o 'SUCCESS.*' <<<"$out")"
  else
    fail "$stack: promtool check rules"; indent <<<"$out"
  fi
  cp "$WORK/rules/test-$stack.yaml" "$WORK/rules/rules.yaml"
  if out="$(cd "$WORK/rules" && "$PROMTOOL" test rules alerts.test.yaml 2>&1)"; then
    pass "$stack: promtool test rules: $(grep -c '^  - name:' "$CI_VALUES/alerts.test.yaml") cases of ci/alerts.test.yaml"
  else
    fail "$stack: promtool test rules"; indent <<<"$out" | head -n 60
  fi
done
# Every alert has a case that fires and one that must not.
if out="$(python3 .ci/chart-check.py --coverage "$WORK/rules/test-prometheus-operator.yaml" "$CI_VALUES/alerts.test.yaml" 2>&1)"; then
  pass "$out"
else
  fail "alerts without a firing case or a quiet case: $out"
fi
# Mutants: the naive forms of the alerts that must survive restarts and rollouts. Each must make
# promtool test rules fail, which proves the quiet cases tell them apart.
python3 .ci/chart-check.py --mutants "$WORK/rules/test-prometheus-operator.yaml" "$CI_VALUES/alerts.test.yaml" "$WORK/rules/mutants" \
  >"$WORK/mutants.out" 2>&1 || fail "cannot write the mutants: $(cat "$WORK/mutants.out")"
for m in "$WORK"/rules/mutants/m*.test.yaml; do
  [ -f "$m" ] || continue
  what="$(sed -n 's/^# mutant: //p' "${m%.test.yaml}.yaml")"
  if (cd "$WORK/rules/mutants" && "$PROMTOOL" test rules "$(basename "$m")" >/dev/null 2>&1); then
    fail "mutant survives the tests: $what"
  else
    pass "mutant caught by the quiet or firing cases: $what"
  fi
done

# ---- 5. metrics ----------------------------------------------------------------------------
section "5. metric names: the Go code and a live scrape of the receiver"
python3 .ci/chart-check.py --names "$WORK/rules/full-prometheus-operator.yaml" "$CHART/files/dashboard.json" >"$WORK/names" ||
  fail "cannot list the metric names"
missing=""
for m in $(cut -d' ' -f1 "$WORK/names"); do
  base="${m%_bucket}"
  case "$base" in up | process_start_time_seconds) continue ;; esac
  grep -r -q --include='*.go' -F "\"$base\"" internal cmd 2>/dev/null || missing+=" $m"
done
if [ -z "$missing" ]; then
  pass "every metric the alerts and the dashboard use is defined in the Go code ($(wc -l <"$WORK/names") names)"
else
  fail "metrics used by the alerts or the dashboard but defined nowhere in internal/ or cmd/:$missing"
fi

BIN="$CACHE/receiver/receiver"
mkdir -p "$(dirname "$BIN")"
t0=$SECONDS
if (CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath -o "$BIN" ./cmd/receiver) >"$WORK/build.log" 2>&1; then
  note "go build ./cmd/receiver took $((SECONDS - t0))s"
  PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  CLOSED="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  mkdir -p "$WORK/data"
  # The embedded default; CVAT is a closed port on loopback, so the pipeline starts and CVAT is down.
  env -i PATH="$PATH" HOME="$WORK" CVAT_SYNC_DATA_DIR="$WORK/data" CVAT_SYNC_WEBHOOK_SECRET=chart-check \
    CVAT_SYNC_LISTEN="127.0.0.1:$PORT" CVAT_SYNC_CVAT_URL="http://127.0.0.1:$CLOSED" "$BIN" serve >"$WORK/receiver.log" 2>&1 &
  RPID=$!
  get() { python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$1" 2>/dev/null; }
  up=""
  for _ in $(seq 1 120); do
    kill -0 "$RPID" 2>/dev/null || break
    get "http://127.0.0.1:$PORT/healthz" >/dev/null && { up=1; break; }
    sleep 0.25
  done
  if [ -n "$up" ]; then
    # Give the background probes a few seconds to report the dependencies.
    for _ in $(seq 1 20); do
      get "http://127.0.0.1:$PORT/metrics" >"$WORK/metrics.txt"
      grep -q '^cvat_sync_dependency_up' "$WORK/metrics.txt" && break
      sleep 0.5
    done
    kill "$RPID" 2>/dev/null; wait "$RPID" 2>/dev/null; RPID=""
    if out="$("$PROMTOOL" check metrics <"$WORK/metrics.txt" 2>&1)"; then
      pass "promtool check metrics on a live scrape: $(grep -c '^# TYPE' "$WORK/metrics.txt") metric families, no findings"
    else
      fail "promtool check metrics on a live scrape"; indent <<<"$out" | head -n 30
    fi
    # The alerts read these; a series that appears only later keeps its alert silent until then.
    later="cvat_sync_webhook_deliveries_total cvat_sync_webhook_signature_failures_total"
    absent=""
    for m in $(awk '$2=="alert" && $1!="up"{print $1}' "$WORK/names"); do
      case " $later " in *" $m "*) continue ;; esac
      grep -q -E "^$m(\{| )" "$WORK/metrics.txt" || absent+=" $m"
    done
    if [ -z "$absent" ]; then
      pass "every metric the alerts read is in the scrape of a receiver that just started"
    else
      fail "the alerts read metrics a freshly started receiver does not export (not initialised, or not in the code yet):$absent"
    fi
  else
    fail "the receiver did not answer /healthz within 30s; its log:"; tail -n 20 "$WORK/receiver.log" | indent
  fi
else
  fail "go build ./cmd/receiver"; tail -n 20 "$WORK/build.log" | indent
fi

# ---- 6. dashboard --------------------------------------------------------------------------
section "6. dashboard"
if out="$(python3 "$CHART/hack/dashboard.py" --check 2>&1)"; then
  pass "files/dashboard.json is what hack/dashboard.py writes"
else
  fail "$out"
fi
if out="$(python3 .ci/chart-check.py --dashboard "$CHART/files/dashboard.json" 2>&1)"; then
  pass "$out"
else
  fail "dashboard: $out"
fi

# ---- 7. umbrella recipe --------------------------------------------------------------------
section "7. umbrella recipe (stand-in charts: CVAT's dependencies are fetched from the network)"
U="$WORK/umbrella"
mkdir -p "$U/cvat/templates" "$U/postgresql/templates" "$U/umbrella"
printf 'apiVersion: v2\nname: postgresql\nversion: 12.1.0\n' >"$U/postgresql/Chart.yaml"
printf 'apiVersion: v1\nkind: Service\nmetadata: {name: "{{ .Release.Name }}-postgresql"}\nspec: {ports: [{port: 5432}]}\n' >"$U/postgresql/templates/svc.yaml"
printf 'apiVersion: v2\nname: cvat\nversion: 2.56.1\ndependencies:\n  - {name: postgresql, version: "12.1.*", repository: "file://../postgresql", condition: postgresql.enabled}\n' >"$U/cvat/Chart.yaml"
printf 'postgresql: {enabled: true}\n' >"$U/cvat/values.yaml"
printf 'apiVersion: v1\nkind: Service\nmetadata: {name: "{{ .Release.Name }}-backend-service"}\nspec: {ports: [{port: 8080}]}\n' >"$U/cvat/templates/svc.yaml"
printf 'apiVersion: v2\nname: cvat-platform\nversion: 1.0.0\ndependencies:\n  - {name: cvat, version: "*", repository: "file://../cvat"}\n  - {name: cvat-sync, version: "*", repository: "file://%s"}\n' "$ROOT/$CHART" >"$U/umbrella/Chart.yaml"
printf 'cvat-sync:\n  fullnameOverride: cvat-sync\n' >"$U/umbrella/values.yaml"
( "$HELM" dependency update "$U/umbrella" >/dev/null 2>&1 &&
  "$HELM" template cvat "$U/umbrella" -n cvat >"$U/before.yaml" 2>&1 ) || fail "umbrella: dependency update or template failed: $(tail -n2 "$U/before.yaml")"
if ! grep -q 'name: "*cvat-postgresql' "$U/before.yaml" && grep -q 'name: "*cvat-backend-service' "$U/before.yaml"; then
  pass "umbrella: helm dependency update in the umbrella alone renders CVAT without its dependencies, and exits 0 (what docs/deploy.md warns about)"
else
  fail "umbrella: expected no cvat-postgresql without helm dependency update in CVAT's chart"
fi
( "$HELM" dependency update "$U/cvat" >/dev/null 2>&1 && "$HELM" dependency update "$U/umbrella" >/dev/null 2>&1 &&
  "$HELM" template cvat "$U/umbrella" -n cvat >"$U/after.yaml" 2>&1 ) || fail "umbrella: the documented order failed: $(tail -n2 "$U/after.yaml")"
if grep -q 'name: "*cvat-postgresql' "$U/after.yaml" && grep -q 'name: cvat-sync$' "$U/after.yaml"; then
  pass "umbrella: helm dependency update in CVAT's chart first, then in the umbrella: cvat-postgresql and cvat-sync render"
else
  fail "umbrella: the documented order does not render cvat-postgresql and cvat-sync"
fi

# ---- result --------------------------------------------------------------------------------
if [ "$FAILED" -eq 0 ]; then
  echo "chart-check: OK ($((SECONDS - START))s)"
else
  echo "chart-check: FAILED - $FAILED check(s) ($((SECONDS - START))s)"
fi
echo "chart-check: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
