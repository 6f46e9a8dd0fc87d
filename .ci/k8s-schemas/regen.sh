#!/usr/bin/env bash
# .ci/k8s-schemas/regen.sh OUT [base|extra|all]: writes kubeconform schemas for Kubernetes
# $K8S_VERSION (default 1.33.13) to OUT/v<version>-standalone{,-strict}/, with gen/ (a copy of
# the steering repo's shared/tools/k8s-schemas/gen, unchanged, so a clone without ../shared can
# make the same files).
#
#   base   the kinds of the shared offline cache (shared/tools/k8s-schemas): the built-in kinds
#          the chart renders, ServiceMonitor, ManagedCertificate, BackendConfig, FrontendConfig
#   extra  the kinds the shared cache lacks: PrometheusRule (prometheus-operator's CRD) and
#          Google Cloud Managed Service for Prometheus' PodMonitoring, Rules and ClusterRules
#          (sources/monitoring.googleapis.com_*.json, hand-written: prometheus-engine's CRDs are
#          not served by the Go module proxy)
#   all    both (default)
#
# Needs Go and the Go module proxy (k8s.io/kubernetes for the built-in kinds and ObjectMeta,
# 18 MB; prometheus-operator; gke-managed-certs); about 10 s once the modules are cached.
set -euo pipefail

OUT="${1:?usage: regen.sh OUT [base|extra|all]}"
WHAT="${2:-all}"
K8S_VERSION="${K8S_VERSION:-1.33.13}"
PROM_OPERATOR_VERSION="${PROM_OPERATOR_VERSION:-v0.94.1}"
GKE_MANAGED_CERTS_VERSION="${GKE_MANAGED_CERTS_VERSION:-v1.2.12}"

# Built-in kinds the cvat-sync chart renders (plus Pod, for `helm test` hooks): the same list
# as the shared cache's.
KINDS=(
  v1/ConfigMap
  v1/Pod
  v1/Secret
  v1/Service
  v1/ServiceAccount
  apps/v1/Deployment
  autoscaling/v2/HorizontalPodAutoscaler
  batch/v1/Job
  networking.k8s.io/v1/Ingress
  networking.k8s.io/v1/NetworkPolicy
  policy/v1/PodDisruptionBudget
)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$here/sources"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

# Prints the module's extracted directory in the module cache (downloads it if needed).
module_dir() {
  local json dir
  json="$(cd "${TMPDIR:-/tmp}" && GOFLAGS=-mod=mod go mod download -json "$1")" || {
    echo "regen: cannot download $1 from the Go module proxy" >&2
    return 1
  }
  dir="$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')"
  if [ -z "$dir" ] || [ ! -d "$dir" ]; then
    echo "regen: no module folder for $1: $json" >&2
    return 1
  fi
  printf '%s\n' "$dir"
}

# The swagger document is needed in every mode: custom resources get the real ObjectMeta.
k8s="$(module_dir "k8s.io/kubernetes@v${K8S_VERSION}")"
args=(-swagger "$k8s/api/openapi-spec/swagger.json" -kube-version "$K8S_VERSION" -out "$OUT")
sources=("k8s.io/kubernetes@v${K8S_VERSION} api/openapi-spec/swagger.json sha256:$(sha256sum "$k8s/api/openapi-spec/swagger.json" | cut -d' ' -f1)")
case "$WHAT" in
  base | all)
    prom="$(module_dir "github.com/prometheus-operator/prometheus-operator@${PROM_OPERATOR_VERSION}")"
    certs="$(module_dir "github.com/GoogleCloudPlatform/gke-managed-certs@${GKE_MANAGED_CERTS_VERSION}")"
    kinds_csv="$(IFS=,; echo "${KINDS[*]}")"
    sm="$prom/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"
    mc="$certs/deploy/managedcertificates-crd.yaml"
    args+=(-kinds "$kinds_csv" -crd "$sm" -crd "$mc"
      -crd-schema "cloud.google.com/v1/BackendConfig=$src/cloud.google.com_backendconfig_v1.json"
      -crd-schema "cloud.google.com/v1beta1/BackendConfig=$src/cloud.google.com_backendconfig_v1beta1.json"
      -crd-schema "networking.gke.io/v1beta1/FrontendConfig=$src/networking.gke.io_frontendconfig_v1beta1.json")
    sources+=("github.com/prometheus-operator/prometheus-operator@${PROM_OPERATOR_VERSION} example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml sha256:$(sha256sum "$sm" | cut -d' ' -f1)"
      "github.com/GoogleCloudPlatform/gke-managed-certs@${GKE_MANAGED_CERTS_VERSION} deploy/managedcertificates-crd.yaml sha256:$(sha256sum "$mc" | cut -d' ' -f1)")
    ;;&
  extra | all)
    prom="$(module_dir "github.com/prometheus-operator/prometheus-operator@${PROM_OPERATOR_VERSION}")"
    pr="$prom/example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml"
    args+=(-crd "$pr"
      -crd-schema "monitoring.googleapis.com/v1/PodMonitoring=$src/monitoring.googleapis.com_podmonitoring_v1.json"
      -crd-schema "monitoring.googleapis.com/v1/Rules=$src/monitoring.googleapis.com_rules_v1.json"
      -crd-schema "monitoring.googleapis.com/v1/ClusterRules=$src/monitoring.googleapis.com_clusterrules_v1.json")
    sources+=("github.com/prometheus-operator/prometheus-operator@${PROM_OPERATOR_VERSION} example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml sha256:$(sha256sum "$pr" | cut -d' ' -f1)")
    ;;
  base) ;;
  *) echo "regen: want base, extra or all, got $WHAT" >&2; exit 2 ;;
esac

(cd "$here/gen" && GOFLAGS=-mod=mod go run . "${args[@]}")
{
  echo "# Sources of the v${K8S_VERSION} schemas ($WHAT), written by .ci/k8s-schemas/regen.sh"
  printf '%s\n' "${sources[@]}"
  (cd "$src" && for f in *.json; do echo "sources/$f sha256:$(sha256sum "$f" | cut -d' ' -f1)"; done)
} >"$OUT/SOURCES-v${K8S_VERSION}.txt"
