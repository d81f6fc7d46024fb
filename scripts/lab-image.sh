#!/usr/bin/env bash
# Build the lab base image (a Debian 12 systemd host) locally, without a registry.
#
#   scripts/lab-image.sh            build unless the image already exists
#   scripts/lab-image.sh --force    rebuild the image (reuses the cached rootfs)
#   scripts/lab-image.sh --force --fresh   also debootstrap the rootfs again
#
# Image name: $ZMQRPC_LAB_IMAGE (default localhost/zmqrpc-lab:bookworm). Users with a
# registry can point ZMQRPC_LAB_IMAGE at a stock systemd image and skip this script.
#
# The debootstrap rootfs is cached as a tarball in $ZMQRPC_LAB_CACHE
# (default /var/cache/zmqrpc-lab), keyed by suite, mirror and package list, so a
# rebuild only re-applies the host's files and re-imports (seconds, not minutes).
# Host files copied in at every build: the CA bundle (and local CAs), the Debian
# apt sources this machine uses, its apt network settings (Acquire::*), and its
# global pip configuration, so apt and pip inside the hosts reach what the host reaches.
set -euo pipefail

IMAGE=${ZMQRPC_LAB_IMAGE:-localhost/zmqrpc-lab:bookworm}
CACHE=${ZMQRPC_LAB_CACHE:-/var/cache/zmqrpc-lab}
SUITE=bookworm
# Bump when the in-chroot preparation below changes, to invalidate cached rootfs tarballs.
ROOTFS_RECIPE=4
INCLUDE=systemd,systemd-sysv,python3,python3-apt,sudo,iproute2,ca-certificates,procps
# What the roles install (roles/*/vars/Debian.yml), installed in advance so that every scenario's converge
# finds them present instead of downloading and unpacking them on every host. The roles keep their install
# tasks (a stock systemd image works too); the services stay disabled here, the roles enable what a host needs.
# tcpdump is for the checks, not the roles: the secure scenario captures the lab network's traffic with it.
PRESEED_PACKAGES=(redis-server redis-tools redis-sentinel python3-redis iptables iptables-persistent python3-venv
                  tcpdump)
PRESEED_SERVICES=(redis-server redis-sentinel netfilter-persistent)

force=0
fresh=0
for arg in "$@"; do
    case $arg in
        --force) force=1 ;;
        --fresh) fresh=1 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "lab-image: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

log() { printf 'lab-image: %s\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
    log "run this as root (debootstrap and rootful podman need it)" >&2
    exit 1
fi
for tool in podman debootstrap python3; do
    command -v "$tool" >/dev/null || { log "$tool is missing: run scripts/lab-prereqs.sh first" >&2; exit 1; }
done

# The image carries the recipe it was built from (label zmqrpc.lab.recipe): one of ours (its import comment
# says "zmqrpc lab base") from an older recipe is rebuilt, since a new check may need a package it lacks;
# anyone else's image (ZMQRPC_LAB_IMAGE) is kept.
recipe=$(printf '%s\n' "$ROOTFS_RECIPE" "$SUITE" "$INCLUDE" "${PRESEED_PACKAGES[*]}" | sha256sum | cut -c1-12)
if ((!force)) && podman image exists "$IMAGE"; then
    built_from=$(podman image inspect --format '{{index .Labels "zmqrpc.lab.recipe"}}' "$IMAGE" 2>/dev/null || true)
    comment=$(podman image inspect --format '{{.Comment}}' "$IMAGE" 2>/dev/null || true)
    if [[ $built_from == "$recipe" ]]; then
        log "$IMAGE already exists (recipe $recipe; use --force to rebuild)"
        exit 0
    elif [[ $comment != "zmqrpc lab base"* ]]; then
        log "$IMAGE already exists and was not built by this script: kept (use --force to rebuild)"
        exit 0
    fi
    log "$IMAGE is of an older recipe (${built_from:-unlabelled}, now $recipe): rebuilding"
fi

# --- the host's Debian apt sources --------------------------------------------
# Prints "uri<TAB>suite<TAB>components" for every enabled deb entry of $SUITE,
# $SUITE-updates and $SUITE-security, from sources.list and deb822 *.sources files.
apt_sources() {
    python3 - "$SUITE" <<'PY'
import glob
import re
import sys

suite = sys.argv[1]
wanted = {suite, f"{suite}-updates", f"{suite}-security"}
entries = []


def add(uri, suites, components):
    for s in suites:
        if s in wanted and (uri, s) not in [(u, x) for u, x, _ in entries]:
            entries.append((uri.rstrip("/"), s, components or "main"))


one_line = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
for path in one_line:
    try:
        text = open(path).read()
    except OSError:
        continue
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        line = re.sub(r"\[[^\]]*\]", " ", line)  # drop [arch=... signed-by=...] options
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "deb":
            add(parts[1], [parts[2]], " ".join(parts[3:]))

for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    text = open(path).read()
    for stanza in re.split(r"\n\s*\n", text):
        fields, key = {}, None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            add(uri, fields.get("suites", "").split(), fields.get("components", ""))

for uri, s, components in entries:
    print(f"{uri}\t{s}\t{components}")
PY
}

sources=$(apt_sources)
mirror=$(awk -F'\t' -v s="$SUITE" '$2 == s {print $1; exit}' <<<"$sources")
if [[ -z $mirror ]]; then
    log "found no '$SUITE' entry in /etc/apt/sources.list or /etc/apt/sources.list.d: cannot pick a mirror" >&2
    exit 1
fi
log "mirror from this machine's apt sources: $mirror"

# --- the rootfs, cached -----------------------------------------------------------
key=$(printf '%s\n' "$ROOTFS_RECIPE" "$SUITE" "$mirror" "$INCLUDE" "${PRESEED_PACKAGES[*]}" | sha256sum | cut -c1-12)
tarball=$CACHE/rootfs-$SUITE-$key.tar
mkdir -p "$CACHE"
work=$(mktemp -d "$CACHE/build.XXXXXX")
cleanup() {
    # debootstrap may leave /proc or /sys mounted in the target when it fails
    for m in proc sys dev/pts dev; do
        if mountpoint -q "$work/rootfs/$m" 2>/dev/null; then umount -l "$work/rootfs/$m" || true; fi
    done
    rm -rf "$work"
}
trap cleanup EXIT
rootfs=$work/rootfs

if ((fresh)) || [[ ! -s $tarball ]]; then
    log "debootstrap $SUITE (minbase + $INCLUDE): this takes a minute or two"
    start=$SECONDS
    debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$rootfs" "$mirror" \
        >"$work/debootstrap.log" 2>&1 || {
        tail -n 30 "$work/debootstrap.log" >&2
        log "debootstrap failed (the last lines of its log are above)" >&2
        exit 1
    }
    # Prepare a container host: systemd generates its machine-id at first boot; no
    # downloaded .debs. The package lists stay, as on any installed Debian host (so
    # --check on a fresh host can tell what it would install).
    # The roles' packages: no daemon starts in the chroot (policy-rc.d), iptables-persistent saves no
    # rules (the chroot would see this machine's), and the services are left disabled.
    log "installing the roles' packages: ${PRESEED_PACKAGES[*]}"
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
    printf '%s\n' 'iptables-persistent iptables-persistent/autosave_v4 boolean false' \
        'iptables-persistent iptables-persistent/autosave_v6 boolean false' |
        chroot "$rootfs" debconf-set-selections
    for conf in /etc/apt/apt.conf.d/*; do  # this machine's apt network settings (copied again below)
        if [[ -f $conf ]] && grep -q '^[[:space:]]*Acquire' "$conf"; then
            install -m 0644 "$conf" "$rootfs/etc/apt/apt.conf.d/$(basename "$conf")"
        fi
    done
    [[ -d /etc/apt/auth.conf.d ]] && cp -a /etc/apt/auth.conf.d/. "$rootfs/etc/apt/auth.conf.d/"
    mount -t proc proc "$rootfs/proc"
    chroot "$rootfs" apt-get update -qq >>"$work/debootstrap.log" 2>&1 &&
        DEBIAN_FRONTEND=noninteractive chroot "$rootfs" apt-get install -y -q --no-install-recommends \
            "${PRESEED_PACKAGES[@]}" >>"$work/debootstrap.log" 2>&1 || {
        umount -l "$rootfs/proc" || true
        tail -n 30 "$work/debootstrap.log" >&2
        log "installing ${PRESEED_PACKAGES[*]} failed (the last lines of the log are above)" >&2
        exit 1
    }
    umount -l "$rootfs/proc"
    chroot "$rootfs" systemctl disable --quiet "${PRESEED_SERVICES[@]}"
    rm -f "$rootfs/usr/sbin/policy-rc.d" "$rootfs"/etc/iptables/rules.v4 "$rootfs"/etc/iptables/rules.v6
    : >"$rootfs/etc/machine-id"
    rm -f "$rootfs/var/lib/dbus/machine-id"
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/log/*.log "$rootfs"/tmp/*
    # Units that only make sense on hardware or a console.
    for unit in getty@tty1.service console-getty.service systemd-udevd.service \
                systemd-udevd-control.socket systemd-udevd-kernel.socket \
                systemd-remount-fs.service systemd-firstboot.service; do
        ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
    done
    tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    log "rootfs cached in $tarball ($((SECONDS - start)) s)"
else
    log "reusing cached rootfs $tarball"
    mkdir -p "$rootfs"
    tar -C "$rootfs" --numeric-owner -xf "$tarball"
fi
# keep only the current cache entry
find "$CACHE" -maxdepth 1 -name "rootfs-$SUITE-*.tar" ! -name "$(basename "$tarball")" -delete

# Package lists dated long ago: roles must update the cache themselves
# (apt's cache_valid_time looks at these timestamps).
rm -f "$rootfs/var/lib/apt/periodic/update-success-stamp"
touch -d @0 "$rootfs/var/lib/apt/lists"

# --- host files: CA bundle, apt sources and network settings, pip config -----------
install -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
if compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then
    mkdir -p "$rootfs/usr/local/share/ca-certificates"
    cp -a /usr/local/share/ca-certificates/. "$rootfs/usr/local/share/ca-certificates/"
fi

rm -f "$rootfs/etc/apt/sources.list"
{
    echo "# Debian sources of the machine that built this image (scripts/lab-image.sh)."
    awk -F'\t' '{print "deb " $1 " " $2 " " $3}' <<<"$sources"
} >"$rootfs/etc/apt/sources.list"
for conf in /etc/apt/apt.conf.d/*; do
    [[ -f $conf ]] || continue
    if grep -q '^[[:space:]]*Acquire' "$conf"; then
        install -m 0644 "$conf" "$rootfs/etc/apt/apt.conf.d/$(basename "$conf")"
    fi
done
if [[ -d /etc/apt/auth.conf.d ]]; then
    cp -a /etc/apt/auth.conf.d/. "$rootfs/etc/apt/auth.conf.d/"
fi

[[ -f /etc/pip.conf ]] && install -m 0644 /etc/pip.conf "$rootfs/etc/pip.conf"
if [[ -d /etc/xdg/pip ]]; then
    mkdir -p "$rootfs/etc/xdg/pip"
    cp -a /etc/xdg/pip/. "$rootfs/etc/xdg/pip/"
fi

# --- import -----------------------------------------------------------------------
old_id=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
start=$SECONDS
tar -C "$rootfs" --numeric-owner -c . | podman import \
    --change 'CMD ["/sbin/init"]' \
    --change 'ENV container=podman' \
    --change 'STOPSIGNAL SIGRTMIN+3' \
    --change "LABEL zmqrpc.lab.recipe=$recipe" \
    --message "zmqrpc lab base: Debian $SUITE minbase + systemd, python3, the roles' packages" \
    --quiet - "$IMAGE" >/dev/null
log "imported $IMAGE ($((SECONDS - start)) s)"
# the image this one replaced, now untagged (kept if a container still uses it)
if [[ -n $old_id && $old_id != $(podman image inspect --format '{{.Id}}' "$IMAGE") ]]; then
    podman image rm "$old_id" >/dev/null 2>&1 || true
fi
