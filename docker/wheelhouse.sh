#!/usr/bin/env bash
# Fill docker/wheelhouse/ with wheels of everything the local CPU image installs (torch, the
# project's dependencies, setuptools for building the project), so the image build needs no index.
# Uses the host's pip, whose config finds the local CPU torch wheel. The project itself is not in
# the wheelhouse: the Dockerfile builds it from code/ in its own, last layer.
# Skipped when the wheelhouse was already built for the same requirement list.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
WH=docker/wheelhouse
STAMP="$WH/.requirements.txt"

# The local base image runs Debian bookworm's python3.11: the wheels must be cp311.
"$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
  echo "wheelhouse: $PY is not Python 3.11 (set PYTHON=...)" >&2
  exit 1
}

reqs="$(printf 'torch==%s\nsetuptools>=68\n%s\n' "$TORCH_VERSION" "$("$PY" docker/requirements.py pyproject.toml tracking)")"
if [[ -f "$STAMP" && "$(<"$STAMP")" == "$reqs" ]] && compgen -G "$WH/torch-$TORCH_VERSION*.whl" >/dev/null; then
  echo "wheelhouse: up to date ($(find "$WH" -name '*.whl' | wc -l) wheels)"
  exit 0
fi

# Build into a fresh folder, reusing wheels already here (--find-links), then swap: the
# wheelhouse ends up holding exactly the current closure, and unchanged wheels are not fetched again.
new="$(mktemp -d "$WH.new.XXXXXX")"
trap 'rm -rf "$new"' EXIT
printf '%s\n' "$reqs" >"$new/requirements.txt"
"$PY" -m pip wheel --quiet --find-links "$WH" -w "$new" -r "$new/requirements.txt"
find "$WH" -maxdepth 1 -name '*.whl' -delete
mv "$new"/*.whl "$WH"/
printf '%s\n' "$reqs" >"$STAMP"
echo "wheelhouse: $(find "$WH" -name '*.whl' | wc -l) wheels, $(du -sh "$WH" | cut -f1)"
