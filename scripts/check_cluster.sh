#!/usr/bin/env bash
# The README's cluster flow for real, on this machine: sshd on 127.0.0.1 with a throwaway key, `ray up`
# on a local-provider config derived from cluster/onprem.yaml (head on loopback, token auth), a worker
# raylet joining with `ray start --address`, then README's steps verbatim: `ray job submit ... objmae-sweep
# search_spaces/smoke.yaml --address auto`, `objmae-export`, `ray down`. Prints "check_cluster: OK" at the end.
#
#   bash scripts/check_cluster.sh            (as root: installs openssh-server and rsync when missing)
#
# `ray up`, `ray down` and `ray stop` end EVERY Ray process on the machine: run it alone
# (flock /tmp/objmae-ray.lock bash scripts/check_cluster.sh), never beside another Ray cluster.
# It leaves nothing behind: sshd is ended by its PID, Ray by `ray down`; the laptop side uses a
# throwaway HOME and the head another one, so this machine's ~/.ray/auth_token and home are left alone.
# Exit codes: 0 ok, 1 a step failed, 3 cannot run here (no root to install sshd/rsync).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
# the environment: OBJMAE_VENV or ./.venv (made by scripts/setup.sh), else the active one ($VIRTUAL_ENV)
VENV="${OBJMAE_VENV:-.venv}"
if [ ! -x "$VENV/bin/objmae-sweep" ] && [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/objmae-sweep" ]; then
  VENV="$VIRTUAL_ENV"
fi
if [ ! -x "$VENV/bin/objmae-sweep" ]; then
  echo "check_cluster: no objmae-ray environment at $VENV: run bash scripts/setup.sh (or set OBJMAE_VENV, or activate one)" >&2
  exit 3
fi
VENV_BIN="$(cd "$VENV/bin" && pwd)"
WORK=$(mktemp -d /tmp/objmae-check-cluster.XXXXXX)
PORT=$("$VENV_BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SSHD_PID=""
CONFIG="$WORK/onprem-loopback.yaml"
log() { echo "check_cluster: $*"; }

need_packages=()
[ -x /usr/sbin/sshd ] || need_packages+=(openssh-server)
command -v rsync >/dev/null || need_packages+=(rsync)
if [ ${#need_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "check_cluster: cannot run: needs ${need_packages[*]} and no root apt-get to install them" >&2
    exit 3
  fi
  log "installing ${need_packages[*]}"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_packages[@]}") >"$WORK/apt.log" 2>&1 \
    || { echo "check_cluster: cannot run: apt-get install ${need_packages[*]} failed (see $WORK/apt.log)" >&2; exit 3; }
fi

# `ray up` / `ray down` leave a config cache and SSH control sockets in /tmp: removed at the end.
tmp_before=$(ls -d /tmp/ray-config-* /tmp/ray_ssh_* 2>/dev/null || true)

cleanup() {
  status=$?
  set +e
  if [ -n "${UP_STARTED:-}" ] && [ -z "${DOWN_DONE:-}" ]; then
    PATH="$VENV_BIN:$PATH" HOME="$WORK/laptop" timeout 120 ray down -y "$CONFIG" >"$WORK/down-cleanup.log" 2>&1
  fi
  if [ -n "$SSHD_PID" ]; then
    kill "$SSHD_PID" 2>/dev/null
    wait "$SSHD_PID" 2>/dev/null
  fi
  for f in $(ls -d /tmp/ray-config-* /tmp/ray_ssh_* 2>/dev/null); do
    grep -qxF "$f" <<<"$tmp_before" || rm -rf "$f"
  done
  rm -f /tmp/cluster-objmae-ray-onprem.state /tmp/cluster-objmae-ray-onprem.lock
  if [ $status -ne 0 ]; then
    log "FAILED (exit $status); logs kept in $WORK"
    tail -n 40 "$WORK"/*.log 2>/dev/null
  else
    rm -rf "$WORK"
  fi
  exit $status
}
trap cleanup EXIT

# ---- sshd on 127.0.0.1 with a throwaway host key and client key ------------------------------------------
mkdir -p "$WORK/ssh" "$WORK/laptop" "$WORK/head" "$WORK/runs"
# The head "machine" is this one seen through our sshd with HOME=$WORK/head: onprem.yaml's `~/objmae-ray`,
# `~/.ray/auth_token` and the launcher's ~/ray_bootstrap_* land there, and its login shell finds this
# checkout's environment (a machine set up for Ray has `ray` on its PATH).
echo "export PATH=$VENV_BIN:\$PATH" >"$WORK/head/.profile"
: >"$WORK/head/.bashrc"
ssh-keygen -q -t ed25519 -N "" -f "$WORK/ssh/host_key"
ssh-keygen -q -t ed25519 -N "" -f "$WORK/ssh/id_ed25519"
cp "$WORK/ssh/id_ed25519.pub" "$WORK/ssh/authorized_keys"
cat >"$WORK/ssh/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $PORT
HostKey $WORK/ssh/host_key
AuthorizedKeysFile $WORK/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile $WORK/ssh/sshd.pid
SetEnv HOME=$WORK/head
EOF
mkdir -p /run/sshd  # privilege-separation directory sshd insists on
/usr/sbin/sshd -D -e -f "$WORK/ssh/sshd_config" 2>"$WORK/sshd.log" &
SSHD_PID=$!
# Ray's SSH has no port option: a ProxyCommand relays to ours (bash /dev/tcp; no netcat needed).
cat >"$WORK/ssh/proxy.sh" <<EOF
#!/usr/bin/env bash
exec 3<>/dev/tcp/127.0.0.1/$PORT
cat <&3 & cat >&3
kill %1 2>/dev/null
EOF
chmod +x "$WORK/ssh/proxy.sh"
for _ in $(seq 50); do
  ssh -q -i "$WORK/ssh/id_ed25519" -o ProxyCommand="$WORK/ssh/proxy.sh" -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null -o BatchMode=yes "$(id -un)@127.0.0.1" true 2>/dev/null && break
  sleep 0.2
done
log "sshd on 127.0.0.1:$PORT (pid $SSHD_PID)"

# ---- the laptop: a throwaway HOME, this checkout's environment ------------------------------------------
export HOME="$WORK/laptop" PATH="$VENV_BIN:$PATH"
ray get-auth-token --generate >/dev/null 2>"$WORK/token.log"   # README step 1: ~/.ray/auth_token

# ---- cluster/onprem.yaml, pointed at this machine ---------------------------------------------------------
# Head on loopback over our sshd, no listed workers (one joins below). Its setup command is replaced:
# `pip install -e ~/objmae-ray` would repoint this environment's install at a copy deleted at the end; the
# environment has the package already. Everything else (file mounts with the token, start commands with
# token auth and Train state tracking, objmae_driver, dashboard on loopback) is onprem.yaml's.
python - "$REPO/cluster/onprem.yaml" "$CONFIG" <<EOF
import sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
config.update(min_workers=0, max_workers=0)
config["auth"] = {"ssh_user": "$(id -un)", "ssh_private_key": "$WORK/ssh/id_ed25519",
                  "ssh_proxy_command": "$WORK/ssh/proxy.sh"}
config["setup_commands"] = ["python -c 'import objmae_ray, ray'"]
yaml.safe_dump(config, open(sys.argv[2], "w"), sort_keys=False)
EOF
python -m objmae_ray.sweep.cluster "$CONFIG" >"$WORK/validate.log" 2>&1 || { cat "$WORK/validate.log"; exit 1; }

log "ray up"
UP_STARTED=1
ray up -y --no-config-cache "$CONFIG" >"$WORK/up.log" 2>&1

# a worker node joins (a machine of onprem.yaml's worker_ips: its token where file_mounts puts it). Its
# own --temp-dir, as on a separate machine: sharing the head's, its runtime-env agent would delete the
# job's unpacked --working-dir (the driver's cwd) when its trials end.
HOME="$WORK/head" RAY_AUTH_MODE=token RAY_TRAIN_ENABLE_STATE_TRACKING=1 \
  ray start --address=127.0.0.1:6379 --num-cpus=2 --temp-dir="$WORK/wt" >"$WORK/worker.log" 2>&1
log "worker raylet joined"

# ---- README, "On a GPU cluster", verbatim but for the address, storage and name -------------------------
if ray job submit --address http://127.0.0.1:8265 --no-wait -- true >"$WORK/noauth.log" 2>&1; then
  log "a job submitted WITHOUT the token was accepted"; exit 1
fi
grep -q "RAY_AUTH_MODE=token\|Token authentication is enabled" "$WORK/noauth.log" \
  || { log "unexpected refusal without a token:"; cat "$WORK/noauth.log"; exit 1; }
log "job without the token refused"
RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
    objmae-sweep search_spaces/smoke.yaml --address auto \
    --storage "$WORK/runs" --name check >"$WORK/job.log" 2>&1 \
  || { log "sweep job failed"; exit 1; }
grep -q "Job 'raysubmit_.*' succeeded" "$WORK/job.log" || { log "job did not succeed"; exit 1; }
log "sweep job succeeded"
objmae-export "$WORK/runs/check" --out "$WORK/best" >"$WORK/export.log" 2>&1
test -s "$WORK/best/encoder.safetensors"
log "exported $(ls "$WORK/best" | tr '\n' ' ')"

ray down -y "$CONFIG" >"$WORK/down.log" 2>&1
DOWN_DONE=1
if HOME="$WORK/head" RAY_AUTH_MODE=token timeout 20 ray status --address 127.0.0.1:6379 >/dev/null 2>&1; then
  log "Ray still answers after ray down"; exit 1
fi
log "OK"
