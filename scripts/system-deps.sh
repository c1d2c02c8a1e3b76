#!/usr/bin/env bash
# Install the Debian packages a target needs, only those that are missing.
# Usage: scripts/system-deps.sh test|run|bench
# Safe to run twice; does nothing when everything is present.
set -euo pipefail

case "${1:-test}" in
  test)  want=(mosquitto mosquitto-clients prometheus chromium nginx systemd curl) ;;
  run)   want=() ;;
  bench) want=(mosquitto mosquitto-clients chromium) ;;
  *) echo "usage: $0 test|run|bench" >&2; exit 2 ;;
esac

missing=()
command -v npm >/dev/null 2>&1 || want+=(nodejs npm)  # the dashboard's packages
for pkg in "${want[@]+"${want[@]}"}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Tests start mosquitto and nginx themselves, on ephemeral ports: keep the packages'
# services from starting on 1883 and 80 (policy-rc.d, the Debian way to say so).
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
