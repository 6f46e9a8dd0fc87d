# syntax=docker/dockerfile:1
#
# cvat-sync receiver image: a static Go binary on distroless, non-root, no shell.
#
#   docker build --build-arg VERSION="$(git describe --tags --always --dirty)" -t cvat-sync .
#
# The image runs with a read-only root filesystem: the only writable paths it needs are
# CVAT_SYNC_DATA_DIR (used by the embedded default only) and /tmp; the Helm chart in
# deploy/k8s mounts an emptyDir on each. .ci/image-check.sh builds the same layout without
# a Docker daemon and checks it; keep the two in step (it compares USER, ENTRYPOINT, EXPOSE
# and ENV below with what it builds).

# Build stage. Pinned by tag; the Go patch release matches the toolchain CI uses.
# A digest (golang:1.26.8-bookworm@sha256:...) would pin the bytes too, but it cannot be
# resolved offline where this file was written: add it with `crane digest` when you can
# reach the registry, and let a bot (Renovate, Dependabot) keep it current.
FROM --platform=$BUILDPLATFORM golang:1.26.8-bookworm AS build

WORKDIR /src

# Modules first, so the download layer is reused while only the code changes.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download

COPY . .

# Cross-compile for the target platform on the build platform (docker buildx --platform).
ARG TARGETOS=linux
ARG TARGETARCH=amd64
# Stamped into the binary: `receiver version` prints it.
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS="$TARGETOS" GOARCH="$TARGETARCH" \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/receiver ./cmd/receiver \
 && mkdir -p /out/data

# Runtime stage: CA certificates, tzdata, /etc/passwd with nonroot (65532), /tmp; no shell,
# no package manager. Pinned by tag only: the digest could not be resolved offline (see
# above); pin gcr.io/distroless/static-debian12:nonroot@sha256:... in your registry mirror.
FROM gcr.io/distroless/static-debian12:nonroot

ARG VERSION=dev
LABEL org.opencontainers.image.title="cvat-sync receiver" \
      org.opencontainers.image.description="Receives CVAT webhooks and exports task annotations to GCS and Pub/Sub" \
      org.opencontainers.image.source="https://github.com/cvat-sync/cvat-sync" \
      org.opencontainers.image.version="${VERSION}"

COPY --from=build /out/receiver /receiver
# The embedded default's storage; on Kubernetes an emptyDir is mounted over it.
COPY --from=build --chown=65532:65532 /out/data /var/lib/cvat-sync

ENV CVAT_SYNC_LISTEN=:8080 \
    CVAT_SYNC_DATA_DIR=/var/lib/cvat-sync

USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/receiver"]
