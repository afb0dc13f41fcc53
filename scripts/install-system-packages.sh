#!/usr/bin/env bash
# Debian packages pocketcnn needs: the real Fashion-MNIST data, Chromium + ChromeDriver for the
# browser test of the web page, wrk for the serving benchmark, curl for the README examples and
# python3-venv (Debian's own Python, like the container's) for the serving-install test. Installs only what is missing.
set -euo pipefail
packages=(dataset-fashion-mnist chromium chromium-driver wrk curl python3-venv)
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
