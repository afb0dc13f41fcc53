#!/usr/bin/env bash
# Debian packages pocketcnn needs, by what needs them; installs only what is missing.
#   scripts/install-system-packages.sh data      the real Fashion-MNIST files (make train, make run)
#   scripts/install-system-packages.sh browser   Chromium + ChromeDriver (the web page's tests, the README screenshot)
#   scripts/install-system-packages.sh test      curl (the README's examples), python3-venv (the serving-install test),
#                                                HAProxy and iproute2 (replicas behind a load balancer, two hosts)
#   scripts/install-system-packages.sh bench     wrk (the serving benchmark)
# Several groups may be given at once. `make serve` needs none of them.
set -euo pipefail
declare -A group=(
  [data]="dataset-fashion-mnist"
  [browser]="chromium chromium-driver"
  [test]="curl python3-venv haproxy iproute2"
  [bench]="wrk"
)
packages=()
for name in "$@"; do
  [ -n "${group[$name]:-}" ] || { echo "unknown package group '$name' (data, browser, test, bench)" >&2; exit 2; }
  read -r -a members <<< "${group[$name]}"
  packages+=("${members[@]}")
done
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "System packages present: ${packages[*]}"
  exit 0
fi
command="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
  echo "Installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  echo "Installing system packages with sudo: ${missing[*]}"
  sudo DEBIAN_FRONTEND=noninteractive sh -c "$command"
else
  echo "Missing system packages: ${missing[*]}" >&2
  echo "Install them as root, then run make again:" >&2
  echo "    sudo sh -c '$command'" >&2
  exit 1
fi
