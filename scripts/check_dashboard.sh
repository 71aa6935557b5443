#!/usr/bin/env bash
# Render a run's optuna-dashboard page in headless Chromium and save a screenshot (not part of pytest).
#   scripts/check_dashboard.sh RUN_DIR [OUT.png]
# Starts `objmae-sweep dashboard RUN_DIR` on a free loopback port, renders the study page (the dashboard is
# a JavaScript app: Chromium runs it for up to 20 s of virtual time), checks that the rendered DOM names
# the study and lists its trials, saves the screenshot, and stops the dashboard. Installs Debian's chromium
# when none is on PATH (needs root + apt), as scripts/check_html.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."
run_dir="${1:?usage: scripts/check_dashboard.sh RUN_DIR [OUT.png]}"
shot="${2:-dashboard.png}"
venv="${OBJMAE_VENV:-.venv}"
browser="$(command -v chromium || command -v chromium-browser || true)"
if [[ -z "$browser" ]]; then
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  browser="$(command -v chromium)"
fi
port="$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
log="$(mktemp)"
profile="$(mktemp -d)"
"$venv/bin/python" -m objmae_ray.cli dashboard "$run_dir" --port "$port" >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -rf "$profile" "$log"' EXIT
for _ in $(seq 100); do
  grep -q "^optuna-dashboard: " "$log" && curl -sf "http://127.0.0.1:$port/api/meta" >/dev/null && break
  kill -0 "$server" 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.2
done
url="$(sed -n 's/^optuna-dashboard: \(http[^ ]*\).*/\1/p' "$log")"
flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
       --disable-component-update --disable-sync --user-data-dir="$profile" --virtual-time-budget=20000
       --window-size=1400,1000)
dom="$("$browser" "${flags[@]}" --dump-dom "$url" 2>/dev/null)"
name="$(basename "$run_dir")"
grep -q "$name" <<<"$dom" || { echo "error: the rendered page does not name study $name" >&2; exit 1; }
grep -qi "trial" <<<"$dom" || { echo "error: the rendered page lists no trials" >&2; exit 1; }
"$browser" "${flags[@]}" --screenshot="$shot" "$url" 2>/dev/null
test -s "$shot" || { echo "error: $shot: no screenshot written" >&2; exit 1; }
echo "rendered $url: study $name; screenshot: $shot"
