#!/usr/bin/env bash
# Render a sweep's report page in headless Chromium and save a screenshot (not part of pytest).
#   scripts/check_html.sh RUN_DIR [OUT.png]
# Writes the report first when RUN_DIR/report/index.html is missing (objmae-report RUN_DIR), installs
# Debian's chromium when no chromium is on PATH (needs root + apt), then screenshots the page offline.
set -euo pipefail
cd "$(dirname "$0")/.."
run_dir="${1:?usage: scripts/check_html.sh RUN_DIR [OUT.png]}"
page="$run_dir/report/index.html"
shot="${2:-$run_dir/report/screenshot.png}"
if [[ ! -f "$page" ]]; then
  "${OBJMAE_VENV:-.venv}/bin/objmae-report" "$run_dir"
fi
browser="$(command -v chromium || command -v chromium-browser || true)"
if [[ -z "$browser" ]]; then
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  browser="$(command -v chromium)"
fi
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
  --disable-sync --no-first-run --user-data-dir="$profile" --screenshot="$shot" --window-size=1280,2000 \
  "file://$(realpath "$page")" 2>/dev/null
test -s "$shot" || { echo "error: $shot: no screenshot written" >&2; exit 1; }
echo "screenshot: $shot"
