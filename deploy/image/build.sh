#!/usr/bin/env bash
# `make image`: fastproxy's container image, built here with buildah from Debian packages.
#
# No registry is needed: the two base images are made with mmdebstrap from Debian's
# archive and unpacked into images in buildah's local storage, then the Dockerfile is built on them
# with --isolation chroot (no container runtime needed):
#   fastproxy-base        Debian's essential set, python3 and iptables (the runtime stage;
#                         iptables for the pod's init step, `fastproxy iptables`)
#   fastproxy-build-base  minbase with the compiler, headers and python3-venv (the build stage)
# Elsewhere `docker build .` builds the same Dockerfile on python:3.11-slim-bookworm.
#
# Environment: IMAGE (default fastproxy:latest), SUITE (default bookworm), REBUILD_BASE=1
# makes the bases again.
set -euo pipefail
cd "$(dirname "$0")/../.."
IMAGE=${IMAGE:-fastproxy:latest}
SUITE=${SUITE:-bookworm}
arch=$(dpkg --print-architecture)

for tool in buildah mmdebstrap; do
  command -v "$tool" >/dev/null || { echo "image: $tool is missing (apt-get install buildah mmdebstrap)" >&2; exit 1; }
done

# Leaves out what a container never reads: documentation, manuals, translations, and
# glibc's iconv modules (Python's codecs do not use them).
slim=(--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
      --aptopt='APT::Install-Recommends "false"'
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
      --dpkgopt='path-exclude=/usr/share/locale/*'
      --dpkgopt="path-exclude=/usr/lib/$(uname -m)-linux-gnu/gconv/*")

base() {  # NAME VARIANT PACKAGES
  if [[ -z "${REBUILD_BASE:-}" ]] && buildah inspect --type image "localhost/$1" >/dev/null 2>&1; then
    return
  fi
  local tar
  tar=$(mktemp --suffix .tar)
  trap 'rm -f "$tar"' RETURN
  echo "image: making $1 ($SUITE, $2: $3)" >&2
  mmdebstrap --quiet --variant="$2" --include="$3" --architectures="$arch" "${slim[@]}" "$SUITE" "$tar"
  local ctr
  ctr=$(buildah from --quiet scratch)
  buildah add --quiet "$ctr" "$tar" / >/dev/null      # a local tar archive is unpacked
  buildah commit --quiet --rm "$ctr" "localhost/$1" >/dev/null
}

base fastproxy-base essential python3,iptables
base fastproxy-build-base minbase python3-venv,python3-dev,gcc,libc6-dev,libssl-dev

# pip in the build stage trusts what the host's pip trusts (an intercepting proxy's CA)
pip_cert=()
if [[ -n "${PIP_CERT:-}" && -f "$PIP_CERT" ]]; then
  pip_cert=(--volume "$PIP_CERT:$PIP_CERT:ro" --build-arg "PIP_CERT=$PIP_CERT")
fi
buildah bud --quiet --isolation chroot --layers "${pip_cert[@]}" \
  --build-arg BASE=localhost/fastproxy-base --build-arg BUILD_BASE=localhost/fastproxy-build-base \
  -t "$IMAGE" -f Dockerfile .
size=$(buildah inspect --type image --format '{{.ImageAnnotations}}' "$IMAGE" >/dev/null; buildah images --format '{{.Size}}' "$IMAGE")
echo "image: built $IMAGE ($size)"
