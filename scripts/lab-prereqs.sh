#!/usr/bin/env bash
# Prepare a Debian 12 machine (as root) to run the podman lab: packages, and the
# podman settings this machine needs. Safe to run again: it changes nothing when
# everything is already in place.
#
# Podman settings are detected, not assumed. A probe container (/bin/true in a
# scratch rootfs, `podman run --rootfs`, no image needed) shows what this machine needs:
#   - runtime = "runc" when cgroups run in hybrid mode with a controller on the v2
#     hierarchy (crun refuses: "cgroups in hybrid mode not supported");
#   - default_ulimits when podman's default rlimits (nofile and nproc 1048576) are
#     more than this machine lets a process set (no CAP_SYS_RESOURCE): the largest
#     values the probe accepts, starting from the machine's own hard limits.
# They go to /etc/containers/containers.conf (override with ZMQRPC_CONTAINERS_CONF);
# other settings in that file are left as they are. On a host with cgroup v2 and
# ordinary limits nothing is written.
set -euo pipefail

CONF=${ZMQRPC_CONTAINERS_CONF:-/etc/containers/containers.conf}
PODMAN_RLIMIT_DEFAULT=1048576  # podman 4 sets nofile and nproc to this for root
PACKAGES=(podman runc netavark aardvark-dns conmon debootstrap debian-archive-keyring
          ca-certificates iptables python3 python3-venv make)

log() { printf 'lab-prereqs: %s\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
    log "run this as root (it installs packages and writes $CONF)" >&2
    exit 1
fi

# --- packages ---------------------------------------------------------------
missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [[ $status == installed ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    log "packages already installed"
fi

# --- detection ----------------------------------------------------------------
# A probe container: /bin/true and its libraries in a scratch rootfs, run with
# `podman run --rootfs` (no image and no network needed). It is run with a
# containers.conf that holds only the settings decided so far, so what the
# machine needs is measured, not guessed.
probe_dir=$(mktemp -d)
probe_conf=$(mktemp)
trap 'rm -rf "$probe_dir" "$probe_conf"' EXIT
cp /bin/true "$probe_dir/true"
for lib in $(ldd /bin/true | grep -o '/[^ ]*'); do
    mkdir -p "$probe_dir$(dirname "$lib")"
    cp -L "$lib" "$probe_dir$lib"
done

probe() {  # $1: containers.conf text; prints podman's error, returns its status
    printf '%s\n' "$1" >"$probe_conf"
    CONTAINERS_CONF=$probe_conf podman run --rm --network none --rootfs "$probe_dir" /true 2>&1
}

# crun refuses cgroups in hybrid mode (v1 on /sys/fs/cgroup, v2 on
# /sys/fs/cgroup/unified) when the v2 hierarchy holds a controller.
hybrid_cgroups() {
    [[ $(stat -fc %T /sys/fs/cgroup 2>/dev/null) != cgroup2fs ]] || return 1
    local unified=/sys/fs/cgroup/unified/cgroup.controllers
    [[ -r $unified && -n $(tr -d '[:space:]' <"$unified") ]]
}

runtime_value=""
if hybrid_cgroups; then
    runtime_value='"runc"'
    log "cgroups in hybrid mode with controllers on v2: podman needs runtime runc (crun refuses this)"
elif command -v crun >/dev/null && probe $'[engine]\nruntime = "crun"' | grep -qi 'hybrid'; then
    runtime_value='"runc"'
    log "crun refuses this machine's cgroups: podman needs runtime runc"
fi
engine_conf=""
[[ -n $runtime_value ]] && engine_conf=$'[engine]\nruntime = '"$runtime_value"

hard_limit() {  # $1: ulimit flag; "unlimited" counts as podman's default
    local value
    value=$(ulimit -H "$1")
    [[ $value == unlimited ]] && value=$PODMAN_RLIMIT_DEFAULT
    echo $((value < PODMAN_RLIMIT_DEFAULT ? value : PODMAN_RLIMIT_DEFAULT))
}

ulimits_value=""
if ! err=$(probe "$engine_conf"); then
    if ! grep -qi 'rlimit' <<<"$err"; then
        log "podman cannot run a container on this machine, and not because of rlimits:" >&2
        printf '%s\n' "$err" >&2
        exit 1
    fi
    # Podman's default rlimits are above what this machine lets a process set
    # (no CAP_SYS_RESOURCE). Start from the machine's own hard limits and halve
    # the one runc names (RLIMIT_NPROC is 6, RLIMIT_NOFILE is 7) until it starts.
    nofile=$(hard_limit -n)
    nproc=$(hard_limit -u)
    for _ in $(seq 1 16); do
        ulimits_value="[\"nofile=${nofile}:${nofile}\", \"nproc=${nproc}:${nproc}\"]"
        err=$(probe "$engine_conf"$'\n[containers]\ndefault_ulimits = '"$ulimits_value") && break
        if grep -q 'rlimit type 6' <<<"$err" && ((nproc > 1024)); then
            nproc=$((nproc / 2))
        elif grep -q 'rlimit type 7' <<<"$err" && ((nofile > 1024)); then
            nofile=$((nofile / 2))
        else
            log "podman still fails with default_ulimits = $ulimits_value:" >&2
            printf '%s\n' "$err" >&2
            exit 1
        fi
    done
    log "podman's default rlimits fail here (no CAP_SYS_RESOURCE): podman needs default_ulimits = $ulimits_value"
fi

if [[ -z $runtime_value && -z $ulimits_value ]]; then
    log "podman needs no extra settings on this machine"
else

# --- containers.conf: set only our keys, keep everything else -----------------
mkdir -p "$(dirname "$CONF")"
python3 - "$CONF" "$runtime_value" "$ulimits_value" <<'PY'
import re
import sys
from pathlib import Path

path = Path(sys.argv[1])
wanted = []
if sys.argv[2]:
    wanted.append(("engine", "runtime", sys.argv[2]))
if sys.argv[3]:
    wanted.append(("containers", "default_ulimits", sys.argv[3]))

text = path.read_text() if path.exists() else ""
lines = text.splitlines()


def section_bounds(name):
    """Return (header_index, end_index) of a [name] table, or None."""
    header = re.compile(r"^\s*\[\s*" + re.escape(name) + r"\s*\]\s*(#.*)?$")
    start = next((i for i, line in enumerate(lines) if header.match(line)), None)
    if start is None:
        return None
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"^\s*\[", lines[i])), len(lines))
    return start, end


changes = []
for section, key, value in wanted:
    desired = f"{key} = {value}"
    bounds = section_bounds(section)
    if bounds is None:
        if lines and lines[-1].strip():
            lines.append("")
        lines += [f"[{section}]", desired]
        changes.append(f"added [{section}] {desired}")
        continue
    start, end = bounds
    key_re = re.compile(r"^\s*" + re.escape(key) + r"\s*=")
    idx = next((i for i in range(start + 1, end) if key_re.match(lines[i])), None)
    if idx is None:
        lines.insert(start + 1, desired)
        changes.append(f"added {desired} to [{section}]")
        continue
    # a value may be a multi-line array: replace up to its closing bracket
    last = idx
    if lines[idx].split("=", 1)[1].strip().startswith("[") and "]" not in lines[idx]:
        while last + 1 < end and "]" not in lines[last]:
            last += 1
    current = " ".join(line.strip() for line in lines[idx:last + 1])
    if re.sub(r"\s+", "", current) == re.sub(r"\s+", "", desired):
        continue
    lines[idx:last + 1] = [desired]
    changes.append(f"replaced '{current}' with '{desired}' in [{section}]")

if changes:
    if not text:
        lines.insert(0, "# Written by zmqrpc scripts/lab-prereqs.sh: settings this machine needs for podman.")
    path.write_text("\n".join(lines) + "\n")
    for change in changes:
        print(f"lab-prereqs: {path}: {change}")
else:
    print(f"lab-prereqs: {path} already holds the needed settings")
PY
fi

if ! err=$(podman run --rm --network none --rootfs "$probe_dir" /true 2>&1); then
    log "podman still cannot run a container with $CONF:" >&2
    printf '%s\n' "$err" >&2
    exit 1
fi
log "podman runs containers with $CONF"
