#!/usr/bin/env bash
# Install the Debian packages tierlink needs, when running as root and they are missing.
# Usage: scripts/system-deps.sh demo|test
set -euo pipefail
want=(dhtnode)
[ "${1:-demo}" = test ] && want+=(nftables iproute2 coturn conntrack)
declare -A bin_of=([dhtnode]=dhtnode [nftables]=nft [iproute2]=ip [coturn]=turnserver [conntrack]=conntrack)
missing=()
for pkg in "${want[@]}"; do
  command -v "${bin_of[$pkg]}" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "note: missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
  exit 0
fi
echo "installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
