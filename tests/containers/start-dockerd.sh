#!/bin/sh
# Start a Docker engine for tests/containers/ when none answers, the way this machine (and CI) can run one:
# no bridge network and no iptables rules (tests/containers/daemon.json), every container on the host's
# network. `make test` runs this before pytest; .ci/run installs docker.io first. Exits 0 when an engine
# answers (already, or once started), 1 with the reason otherwise; the container tests then skip
# (or fail, under VAESERVE_CONTAINER_TESTS=require).
set -u
here=$(cd "$(dirname "$0")" && pwd)
docker=/usr/bin/docker
[ -x "$docker" ] || docker=$(command -v docker) || { echo "start-dockerd: no docker client installed"; exit 1; }
if "$docker" version >/dev/null 2>&1; then
  exit 0
fi
dockerd=$(command -v dockerd) || { echo "start-dockerd: dockerd is not installed (apt-get install docker.io)"; exit 1; }
if [ "$(id -u)" != 0 ]; then
  echo "start-dockerd: not root, so no Docker engine can be started here"
  exit 1
fi
log="${TMPDIR:-/tmp}/vaeserve-dockerd.log"
# setsid: the engine outlives this script and make; it keeps its images (the layer cache) in /var/lib/docker.
setsid "$dockerd" --config-file "$here/daemon.json" >"$log" 2>&1 </dev/null &
i=0
while [ $i -lt 60 ]; do
  if "$docker" version >/dev/null 2>&1; then
    echo "start-dockerd: started dockerd ($dockerd, pid $!, log $log)"
    exit 0
  fi
  i=$((i + 1))
  sleep 0.5
done
echo "start-dockerd: dockerd did not answer within 30 s; the end of $log:"
tail -n 20 "$log"
exit 1
