#!/usr/bin/env bash
# System tools the test suite uses, installed before it runs (README's test command calls this):
#   rsync            scripts/sync_data.sh's directory branch (tests/test_sync_data.py)
#   openssh-server   scripts/check_cluster.sh (`ray up` over loopback SSH; tests/test_launcher.py)
#   prometheus       the metrics test (a real Prometheus scraping the session's Ray metrics)
# Installs only what is missing, with apt-get as root. Without root or apt-get it prints one line naming
# what is missing and exits 0: the tests that need a missing tool then skip, each saying which tool.
set -euo pipefail
missing=()
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system_deps: not installing ${missing[*]} (needs root and apt-get); the tests that use them skip" >&2
  exit 0
fi
log=$(mktemp /tmp/objmae-apt.XXXXXX.log)
if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}") >"$log" 2>&1; then
  echo "system_deps: apt-get install ${missing[*]} failed (see $log); the tests that use them skip" >&2
  exit 0
fi
rm -f "$log"
