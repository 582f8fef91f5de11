#!/bin/bash
# OCI images of roomy-agent and roomy-controller, made without a registry:
#
#   scripts/image.sh agent|controller [BIN_DIR]
#
# The root holds the binary (from BIN_DIR, else a release build of this
# checkout), the shared libraries it links (found with ldd, so the image
# runs whatever the building host's glibc is), /etc/passwd and the
# directories the daemon uses; for the controller also the host's CA
# bundle, for https webhooks. Nothing else: no shell, no package manager.
# The root is imported with `docker import` into the dockerd of DOCKER_HOST
# (default: /var/run/docker.sock) as roomy/agent:VERSION and :latest (or
# roomy/controller:...); prints the VERSION tag.
#
# How to run the agent from it (the mounts and why): README.md, "Install".
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "image.sh: $*" >&2; exit 1; }
what=${1:-}
case $what in
agent | controller) ;;
*) die "usage: scripts/image.sh agent|controller [BIN_DIR]" ;;
esac
name=roomy-$what
if [[ -n ${2:-} ]]; then
    bin=$(realpath -- "$2")/$name
else
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${ROOMY_BUILD_CACHE:-/var/cache/roomy-build}/target}
    cargo build --release -p "$name" >&2
    bin=$CARGO_TARGET_DIR/release/$name
fi
[[ -x $bin ]] || die "$bin is not an executable: build it first (cargo build --release -p $name) or pass its directory"
command -v docker >/dev/null || die "docker not found: this script imports the image into a dockerd"
version=$("$bin" --version | awk '{print $2}')
[[ -n $version ]] || die "$bin --version printed no version"

root=$(mktemp -d /tmp/roomy-image.XXXXXX)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{usr/bin,etc,tmp,proc,sys,dev,run}
chmod 1777 "$root/tmp"
install -m 0755 "$bin" "$root/usr/bin/$name"
# Every library ldd resolves, at the same path, and the dynamic loader.
while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)
echo 'root:x:0:0:root:/:/usr/bin/nologin' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"

changes=(--change "LABEL org.opencontainers.image.title=$name org.opencontainers.image.version=$version")
if [[ $what == agent ]]; then
    mkdir -p "$root/var/lib/roomy" "$root/run/roomy"
    chmod 0700 "$root/var/lib/roomy"
    changes+=(--change "ENTRYPOINT [\"/usr/bin/$name\"]"
        --change 'CMD ["--socket", "/run/roomy/agent.sock", "--state-dir", "/var/lib/roomy"]')
else
    mkdir -p "$root/etc/roomy" "$root/var/lib/roomy-controller" "$root/etc/ssl/certs"
    [[ -f /etc/ssl/certs/ca-certificates.crt ]] && cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
    changes+=(--change "ENTRYPOINT [\"/usr/bin/$name\"]"
        --change 'CMD ["--config", "/etc/roomy/controller.toml"]')
fi
# The image must start on its own: a missing library shows here, not on a host.
chroot "$root" "/usr/bin/$name" --version >/dev/null ||
    die "the image's root cannot run $name --version (a library ldd did not name?)"

tar -C "$root" --numeric-owner -c . |
    docker import "${changes[@]}" - "roomy/$what:$version" >/dev/null
docker tag "roomy/$what:$version" "roomy/$what:latest"
echo "roomy/$what:$version"
