#!/usr/bin/env bash
# Build a local stand-in for python:3.11-slim (no registry access needed):
# debootstrap a minimal bookworm with python3 + venv and `docker import` it.
# Usage: base-image.sh [TAG]   (default fedimdb/python-base:bookworm)
#   DEBIAN_MIRROR         override the mirror (default: read from apt sources)
#   BASE_IMAGE_EXTRA_PKGS extra comma-separated packages for --include
set -euo pipefail

TAG="${1:-fedimdb/python-base:bookworm}"
SUITE=bookworm
PKGS="python3,python3-venv,ca-certificates${BASE_IMAGE_EXTRA_PKGS:+,$BASE_IMAGE_EXTRA_PKGS}"

log() { echo "[base-image] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"
command -v debootstrap >/dev/null || die "debootstrap missing (run install-docker.sh)"
docker info >/dev/null 2>&1 || die "docker daemon not answering (run install-docker.sh)"

if docker image inspect "$TAG" >/dev/null 2>&1; then
  log "image $TAG already present"; exit 0
fi

# Mirror: URIs of the deb822 stanza whose Suites list has exactly "bookworm".
mirror="${DEBIAN_MIRROR:-}"
if [ -z "$mirror" ] && [ -r /etc/apt/sources.list.d/debian.sources ]; then
  mirror=$(awk -v s="$SUITE" '
    /^[ \t]*$/ { if (ok && uri) { print uri; found = 1; exit } ok = 0; uri = ""; next }
    /^URIs:/   { uri = $2 }
    /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) ok = 1 }
    END        { if (!found && ok && uri) print uri }' /etc/apt/sources.list.d/debian.sources)
fi
if [ -z "$mirror" ] && [ -r /etc/apt/sources.list ]; then
  mirror=$(awk -v s="$SUITE" '$1 == "deb" && $3 == s { print $2; exit }' /etc/apt/sources.list)
fi
mirror="${mirror:-http://deb.debian.org/debian}"

root=$(mktemp -d /var/tmp/base-image.XXXXXX)
trap 'rm -rf "$root"' EXIT
log "debootstrap $SUITE from $mirror (include: $PKGS)"
start=$SECONDS
ok=0
for attempt in 1 2 3; do
  if debootstrap --variant=minbase --include="$PKGS" "$SUITE" "$root/rootfs" "$mirror" \
      >"$root/debootstrap.log" 2>&1; then ok=1; break; fi
  log "debootstrap attempt $attempt failed:"; tail -n 20 "$root/debootstrap.log" >&2
  [ -f "$root/rootfs/debootstrap/debootstrap.log" ] && tail -n 20 "$root/rootfs/debootstrap/debootstrap.log" >&2
  rm -rf "$root/rootfs"; sleep $((attempt * 10))
done
((ok)) || die "debootstrap failed 3 times"
log "debootstrap took $((SECONDS - start)) s"

# Slim down and make it look like python:3.11-slim (`python` on PATH).
rm -rf "$root"/rootfs/var/cache/apt/archives/*.deb "$root"/rootfs/var/lib/apt/lists/* \
  "$root"/rootfs/usr/share/doc/* "$root"/rootfs/usr/share/man/*
ln -sf /usr/bin/python3 "$root/rootfs/usr/local/bin/python"

tar -C "$root/rootfs" --numeric-owner -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  - "$TAG" >/dev/null
docker run --rm --network none "$TAG" sh -ec \
  'python3 -m venv /tmp/v && /tmp/v/bin/python -m pip --version >/dev/null && python --version' >&2 \
  || die "sanity check of $TAG failed (python3 -m venv)"
log "built $TAG in $((SECONDS - start)) s, size $(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}')"
