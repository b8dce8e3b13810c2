#!/usr/bin/env bash
# Installs Mesa's software Vulkan driver (lavapipe) so the wgpu kernels can be tested on a machine
# without a GPU. Debian 12's own Mesa (22.3) stops every shader loop after 65535 iterations, which
# silently truncates long scans, so Mesa comes from bookworm-backports (25.x). Does nothing when a
# new enough lavapipe is already installed; elsewhere than Debian 12 it only checks.
set -euo pipefail

have_lavapipe() {
    local version
    version=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)
    [[ -n $version ]] && dpkg --compare-versions "$version" ge 24 && dpkg-query -W libvulkan1 >/dev/null 2>&1
}

if have_lavapipe; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "lavapipe (mesa-vulkan-drivers >= 24, libvulkan1) is missing: run this script as root" >&2
    exit 1
fi
. /etc/os-release
if [[ ${VERSION_CODENAME:-} == bookworm ]]; then
    mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    echo "deb $mirror bookworm-backports main" > /etc/apt/sources.list.d/coil-bookworm-backports.list
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers
else
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libvulkan1
have_lavapipe || { echo "lavapipe install failed: mesa-vulkan-drivers is older than 24" >&2; exit 1; }
