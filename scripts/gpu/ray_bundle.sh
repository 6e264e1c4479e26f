#!/usr/bin/env bash
# Ray for a device call: its wheel (75.6 MiB for 2.60.0, cp312) is more than a call carries (64 MiB), so the
# wheels are installed into a folder here, what a local Ray instance running Python tasks never loads is left out
# (Java jars, the dashboard's web client, RLlib, Tune, Train, Serve, Data, LLM), and the rest is packed with xz.
#
#   scripts/gpu/ray_bundle.sh WHEELS_DIR BUNDLE.tar.xz     every *.whl of WHEELS_DIR (a wheel is a zip of its files)
#   scripts/gpu/ray_bundle.sh --site SITE_DIR BUNDLE.tar.xz   an installed site-packages-like folder instead
#
# On the device: tar xJf BUNDLE -C /tmp/ray-site; PYTHONPATH=...:/tmp/ray-site (scripts/gpu/multigpu.sh does it).
set -euo pipefail
usage() { echo "usage: $0 WHEELS_DIR BUNDLE.tar.xz | --site SITE_DIR BUNDLE.tar.xz" >&2; exit 2; }
[ $# -eq 2 ] || [ $# -eq 3 ] || usage
python=${PYTHON:-python3}
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
if [ "$1" = "--site" ]; then
  [ $# -eq 3 ] || usage
  source=$2 bundle=$3
  for name in ray jsonschema jsonschema_specifications referencing rpds; do
    [ -d "$source/$name" ] || { echo "error: no $name/ in $source" >&2; exit 2; }
    cp -r "$source/$name" "$site/"
  done
else
  [ $# -eq 2 ] || usage
  wheels=$1 bundle=$2
  ls "$wheels"/ray-*.whl > /dev/null 2>&1 || { echo "error: no ray-*.whl in $wheels" >&2; exit 2; }
  for wheel in "$wheels"/*.whl; do
    $python -m zipfile -e "$wheel" "$site"
  done
  # binaries lose their executable bit in a zip extraction; raylet and gcs_server must run
  find "$site/ray/core/src" -type f ! -name '*.py' -exec chmod +x {} +
fi
rm -rf "$site"/ray/{jars,rllib,tune,train,serve,data,llm} "$site/ray/dashboard/client/build"
find "$site" -name __pycache__ -type d -prune -exec rm -rf {} +
mkdir -p "$(dirname "$bundle")"
tar cf - -C "$site" . | xz -T0 -6 > "$bundle.part"
mv "$bundle.part" "$bundle"
echo "packed $(du -sh "$site" | cut -f1) of Ray and jsonschema into $bundle ($(du -h "$bundle" | cut -f1))"
