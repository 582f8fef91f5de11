#!/bin/bash
# Roomy's main job, shown on a local lab (runs inside the VM; started by
# scripts/lab.sh): dockerd 20.10 on overlay2 with its data root on XFS
# mounted prjquota, a container "web" created with --storage-opt size=1G,
# `roomyctl resize web 4G` while it runs; then the same on devicemapper, a
# container "node" with a 2G disk grown to 16G.
set -uo pipefail
cd "$(dirname "$0")" || exit 1
# shellcheck source=lib.sh
. ./lib.sh

BIN=${ROOMY_BIN:?set ROOMY_BIN to the directory holding roomy-agent and roomyctl}
# shellcheck disable=SC2034 # read by lib.sh
NAME=lab
# Bold prompts on a terminal only.
if [[ -t 1 ]]; then B=$'\033[1m' N=$'\033[0m'; else B='' N=''; fi
say() { printf '\n%s$ %s%s\n' "$B" "$*" "$N"; }
docker() { /usr/bin/docker "$@"; }
show() { say "$*"; "$@"; }
ctl() { show "$BIN/roomyctl" --agent "unix://$LAB/lab/agent.sock" "$@"; }

lab_init >/dev/null || exit 1

say "# overlay2, Docker's usual driver: data root on XFS mounted prjquota"
NAME=web
xfs_quota_root web 8G >/dev/null || exit 1
dockerd_launch web --storage-driver overlay2 >/dev/null || exit 1
image_import
agent_start || exit 1
wctl() { show "$BIN/roomyctl" --agent "unix://$LAB/web/agent.sock" "$@"; }
show docker run -d --name web --storage-opt size=1G roomy/busybox sleep 1d
show docker exec web sh -c 'dd if=/dev/urandom of=/important.bin bs=1M count=64 2>/dev/null; md5sum /important.bin'
show docker exec web df -h /
wctl ls
wctl resize web 4G
show docker exec web df -h /
show docker exec web md5sum /important.bin
wctl inspect web
say "docker restart web"
docker restart -t 1 web >/dev/null
show docker exec web df -h /
agent_stop
dockerd_stop web >/dev/null

say "# devicemapper (Docker up to 24)"
NAME=lab
dockerd_start lab xfs >/dev/null || exit 1
image_import
agent_start || exit 1

show docker run -d --name node roomy/busybox sleep 1d
show docker exec node sh -c 'dd if=/dev/urandom of=/important.bin bs=1M count=64 2>/dev/null; md5sum /important.bin'
show docker exec node df -h /
ctl ls
ctl resize node 16G
show docker exec node df -h /
show docker exec node md5sum /important.bin
ctl inspect node
ctl pool ls
say "docker restart node   (where the plain dmsetup recipe leaves the container unable to start)"
docker restart -t 1 node >/dev/null
show docker exec node df -h /
ctl ls
agent_stop
dockerd_stop lab >/dev/null
