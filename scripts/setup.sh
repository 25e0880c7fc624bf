#!/usr/bin/env bash
# Idempotent set-up shared by `npm test` and `npm run quickstart`: Debian packages,
# npm dependencies, the native addon, the TypeScript build, the test guest and the
# Linux guest image. Each step is skipped when its output is newer than its inputs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE_DIR=${BATON_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/baton}
mkdir -p "$CACHE_DIR"
step() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# 1. Debian packages (only what is missing; apt-get update once per run at most).
PACKAGES=(build-essential python3 busybox-static cpio gzip xz-utils zstd iproute2 iputils-ping
  dbus-daemon qemu-system-x86 libvirt-clients libxml2-utils socat binutils)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then echo "setup: need root to install ${missing[*]} (run as root or install them)" >&2; exit 1; fi
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# 2. npm dependencies, when package-lock.json changed since the last install.
lock_sum=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f node_modules/.baton-lock ] || [ "$(cat node_modules/.baton-lock)" != "$lock_sum" ]; then
  step "npm ci"
  npm ci --no-audit --no-fund
  echo "$lock_sum" > node_modules/.baton-lock
fi

newer() { # newer TARGET SOURCES...: true when TARGET is missing or older than any source
  local target=$1; shift
  [ -e "$target" ] || return 0
  [ -n "$(find "$@" -newer "$target" -print -quit 2>/dev/null)" ]
}

# 3. Native addon.
if newer native/build/Release/baton_native.node native/src native/binding.gyp; then
  step "building native addon"
  npx --no-install node-gyp rebuild --directory=native >"$CACHE_DIR/native-build.log" 2>&1 \
    || { cat "$CACHE_DIR/native-build.log" >&2; exit 1; }
fi

# 4. TypeScript.
if newer dist/.built src tsconfig.json tsconfig.build.json package.json; then
  step "building TypeScript"
  rm -rf dist
  npx --no-install tsc -p tsconfig.build.json
  # baton-hv as one file: its start-up is part of every VM's boot (bin/baton-hv.js).
  npx --no-install esbuild dist/hypervisor/main.js --bundle --platform=node --target=node20 \
    --outfile=dist/baton-hv.js --external:winston --log-level=warning
  node bin/baton-hv.js --write-code-cache
  touch dist/.built
fi

# 5. The ring-3 test guest (a PVH ELF that baton-hv and QEMU both boot).
if [ -f test/guest/Makefile ]; then
  step "building test guest"
  make -s -C test/guest
fi

# 6. The Linux guest image (Debian kernel + busybox initramfs), cached outside git.
if [ -x scripts/build-guest-image.sh ]; then
  BATON_CACHE_DIR="$CACHE_DIR" scripts/build-guest-image.sh
fi
