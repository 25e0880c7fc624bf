#!/usr/bin/env bash
# Builds the Linux guest image that Baton boots: Debian's current kernel (linux-image-amd64)
# and a busybox initramfs with the virtio-pci NIC's modules, into
#   ${BATON_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/baton}/guest-image/<key>/
#     bzImage               the package's /boot/vmlinuz-* (Linux boot protocol)
#     vmlinux               the ELF inside it (entered through its Xen PVH note, if present)
#     initramfs.cpio.gz     newc archive, gzip-compressed
#     initramfs.cpio        the same archive uncompressed (cheaper for an emulated ring 0)
#     cmdline.default       kernel command line suited to this emulating host
#     manifest.json         what went in: package versions, modules, PVH note, sizes
# and points guest-image/current at it. <key> hashes the package versions and the contents of
# this script and of scripts/guest-image/, so the image is rebuilt only when one changes.
# Unattended; needs apt-get (and root only when apt's package lists must be fetched first).
#
# Usage: scripts/build-guest-image.sh [--force]
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
SCRIPT_PATH="$SCRIPT_DIR/$(basename "$0")"
GUEST_FILES_DIR="$SCRIPT_DIR/guest-image"
CACHE_DIR=${BATON_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/baton}
IMAGE_ROOT="$CACHE_DIR/guest-image"
DEB_DIR="$IMAGE_ROOT/debs"

KERNEL_METAPACKAGE=linux-image-amd64
BUSYBOX_PACKAGE=busybox-static
# What a virtio-pci NIC needs; their dependencies are resolved from the modules themselves.
ROOT_MODULES=(virtio_pci virtio_net)

FORCE=0
[ "${1:-}" = --force ] && FORCE=1

step() { printf '[guest-image] %s\n' "$*"; }
die() { printf '[guest-image] error: %s\n' "$*" >&2; exit 1; }

# --- The kernel command line (cmdline.default) --------------------------------------------
# Ring-0 guest code is emulated on this host (~1000x slower than native, see HOST-FACTS.md):
# every option below either skips ring-0 work or avoids an instruction the emulator rejects.
CMDLINE_OPTIONS=(
  console=ttyS0              # kernel messages and /dev/console on the 8250 UART at 0x3f8
  earlyprintk=serial,ttyS0   # messages from before the console driver, so early failures show
  noxsave                    # the host's emulator fails XSAVE/XRSTOR: stay on FXSAVE
  nokaslr                    # fixed addresses: repeatable boots and snapshots, no relocation pass
  mitigations=off            # no PTI CR3 switches, retpolines, buffer clears on every entry
  tsc=reliable               # no clocksource watchdog (a slow emulated guest looks unstable)
  no_timer_check             # skip the IO-APIC timer check, which times busy loops
  lpj=4600000                # preset loops_per_jiffy: no delay-loop calibration (a ring-0 loop)
  nowatchdog                 # no soft/hard lockup detectors: emulated ring 0 looks locked up
  rcupdate.rcu_cpu_stall_suppress=1 # no RCU stall reports for the same reason
  quiet                      # fewer console lines: every character is a UART exit
  init_on_alloc=0            # Debian zeroes every allocated page by default: costly memsets
  cryptomgr.notests          # skip the crypto self-tests run for each algorithm at boot
  clearcpuid=smap,popcnt,cx16,ssse3,sse4_1,sse4_2,aes,pclmulqdq,sha_ni,movbe,gfni,vaes,vpclmulqdq
                             # the kernel's own feature bits decide its alternatives, and on this
                             # host the guest's CPUID shows the host's bits whatever KVM_SET_CPUID2
                             # says: no CLAC/STAC on every entry, no POPCNT, no CMPXCHG16B (which
                             # the emulator rejects) in SLUB, and no SSSE3/SSE4/AES/SHA crypto
                             # paths, whose vector instructions the emulator rejects one by one. (6.1 reports noxsave and nokaslr as
                             # "unknown" because they are parsed early; they do take effect.)
  8250.nr_uarts=1            # register (and probe) only ttyS0, not four legacy UARTs
  i8042.noaux                # no PS/2 mouse port: the i8042 is there for Ctrl-Alt-Del only
  i8042.nomux                # no active-multiplexing probe
  i8042.nopnp                # find the i8042 at its fixed ports without ACPI/PnP tables
  i8042.dumbkbd              # no keyboard commands (LEDs, reset): fewer i8042 round trips
  reboot=k                   # `reboot` pulses the reset line through the i8042 (0xFE): easy to catch
  panic=1                    # a panicked guest resets after 1 s instead of hanging
  ipv6.disable=1             # a quiet link: no router solicitations, DAD or MLD packets that
                             # would mix with the packets network tests count
)

# --- Small helpers ---------------------------------------------------------------------------
# apt_candidate PACKAGE: the version apt would install, or nothing.
apt_candidate() {
  apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" && $2 != "(none)" { print $2 }'
}

# apt_resolve: prints "KERNEL_PACKAGE KERNEL_VERSION BUSYBOX_VERSION" from apt's candidates, the
# kernel package being what the metapackage depends on. One apt-cache run (each one re-reads
# every package list, ~0.5 s here); the metapackage pins its kernel with "(= VERSION)".
apt_resolve() {
  local resolved kernel_package kernel_version busybox_version
  resolved=$(apt-cache show --no-all-versions "$KERNEL_METAPACKAGE" "$BUSYBOX_PACKAGE" 2>/dev/null \
    | awk -v meta="$KERNEL_METAPACKAGE" -v busybox="$BUSYBOX_PACKAGE" '
        /^Package:/ { package = $2 }
        /^Version:/ && package == busybox { busybox_version = $2 }
        /^Depends:/ && package == meta && match($0, /linux-image-[0-9][^ ,]*( \(= [^)]+\))?/) {
          split(substr($0, RSTART, RLENGTH), dep, /[ ()=]+/); kernel = dep[1]; kernel_version = dep[2]
        }
        END { print kernel, (kernel_version == "" ? "-" : kernel_version), busybox_version }') || return 1
  read -r kernel_package kernel_version busybox_version <<< "$resolved"
  [ -n "$kernel_package" ] && [ -n "$busybox_version" ] || return 1
  [ "$kernel_version" != - ] || kernel_version=$(apt_candidate "$kernel_package")
  [ -n "$kernel_version" ] || return 1
  printf '%s %s %s\n' "$kernel_package" "$kernel_version" "$busybox_version"
}

# apt_fingerprint: changes whenever apt's answer could (package lists, sources, pinning), so a
# resolution can be reused without running apt-cache again.
apt_fingerprint() {
  { stat -c '%n %s %Y' /var/lib/apt/lists/* /etc/apt/sources.list /etc/apt/sources.list.d/* \
      /etc/apt/preferences /etc/apt/preferences.d/* 2>/dev/null || true; } | sha256sum | cut -c1-16
}

# deb_file PACKAGE VERSION: the file name `apt-get download` gives (':' of an epoch as %3a).
deb_file() { printf '%s_%s_amd64.deb' "$1" "${2//:/%3a}"; }

# download_deb PACKAGE VERSION: fetch into $DEB_DIR unless already there.
download_deb() {
  local package=$1 version=$2 file partial sandbox=()
  file="$DEB_DIR/$(deb_file "$package" "$version")"
  [ -s "$file" ] && return 0
  step "downloading $package $version ..."
  partial=$(mktemp -d "$DEB_DIR/.download.XXXXXX")
  # As root, apt would drop to the _apt user, which cannot write into a private cache.
  [ "$(id -u)" -eq 0 ] && sandbox=(-o APT::Sandbox::User=root)
  (cd "$partial" && apt-get download -q "${sandbox[@]}" "$package=$version" >/dev/null) \
    || { rm -rf "$partial"; die "apt-get download $package=$version failed"; }
  mv "$partial/$(deb_file "$package" "$version")" "$file"
  rm -rf "$partial"
}

# le_u32 FILE OFFSET / le_u16 FILE OFFSET / u8 FILE OFFSET: little-endian integers from FILE.
le_u32() { od -An -tu4 -j "$2" -N4 "$1" | tr -d ' '; }
le_u16() { od -An -tu2 -j "$2" -N2 "$1" | tr -d ' '; }
u8() { od -An -tu1 -j "$2" -N1 "$1" | tr -d ' '; }
hex_at() { od -An -tx1 -j "$2" -N "$3" "$1" | tr -d ' \n'; } # hex_at FILE OFFSET COUNT

# --- bzImage: the setup header of the Linux x86 boot protocol (Documentation/arch/x86/boot.rst)
SETUP_SECTS_OFFSET=$((0x1f1))      # u8: 512-byte sectors of real-mode setup after the boot sector (0 means 4)
BOOT_MAGIC_OFFSET=$((0x202))       # "HdrS"
BOOT_VERSION_OFFSET=$((0x206))     # u16: protocol version, major << 8 | minor
KERNEL_VERSION_OFFSET=$((0x20e))   # u16: pointer to the version string, minus 0x200
PAYLOAD_OFFSET_OFFSET=$((0x248))   # u32: compressed payload, from the start of protected-mode code (2.08+)
PAYLOAD_LENGTH_OFFSET=$((0x24c))   # u32: its length; for every format but gzip it ends with the
                                   #      uncompressed size (le32), which gzip carries itself
SECTOR_SIZE=512

# Compressed-payload formats by their magic: "magic-hex decompressor".
declare -A PAYLOAD_MAGIC=(
  [xz]="fd377a585a00 xz -dc --single-stream"
  [zstd]="28b52ffd zstd -dc"
  [gzip]="1f8b08 gzip -dc"
  [lzma]="5d0000 xz --format=lzma -dc"
  [bzip2]="425a68 bzip2 -dc"
  [lz4]="02214c18 lz4 -dc"
  [lzo]="894c5a4f lzop -dc"
)

# bzimage_protocol FILE: prints the boot-protocol version as MAJOR.MINOR, or fails if FILE has no setup header.
bzimage_protocol() {
  [ "$(hex_at "$1" "$BOOT_MAGIC_OFFSET" 4)" = 48647253 ] || return 1 # "HdrS"
  local version
  version=$(le_u16 "$1" "$BOOT_VERSION_OFFSET")
  printf '%d.%d' $((version >> 8)) $((version & 0xff))
}

# bzimage_version_string FILE: the kernel's version string from the setup header.
bzimage_version_string() {
  local pointer
  pointer=$(le_u16 "$1" "$KERNEL_VERSION_OFFSET")
  dd if="$1" bs=1 skip=$((pointer + 0x200)) count=256 status=none | tr '\0' '\n' | head -n1
}

# extract_vmlinux BZIMAGE OUT: decompress the kernel ELF that the bzImage carries. The setup
# header says where the payload is; its magic says how it is compressed.
extract_vmlinux() {
  local bzimage=$1 out=$2 setup_sects start length format magic tool expected_size found=""
  setup_sects=$(u8 "$bzimage" "$SETUP_SECTS_OFFSET")
  [ "$setup_sects" -eq 0 ] && setup_sects=4
  start=$(( (setup_sects + 1) * SECTOR_SIZE + $(le_u32 "$bzimage" "$PAYLOAD_OFFSET_OFFSET") ))
  length=$(le_u32 "$bzimage" "$PAYLOAD_LENGTH_OFFSET")
  for format in "${!PAYLOAD_MAGIC[@]}"; do
    magic=${PAYLOAD_MAGIC[$format]%% *}
    if [ "$(hex_at "$bzimage" "$start" $(( ${#magic} / 2 )))" = "$magic" ]; then found=$format; break; fi
  done
  [ -n "$found" ] || die "$bzimage: unknown compressed payload at byte $start (starts $(hex_at "$bzimage" "$start" 8))"
  tool=${PAYLOAD_MAGIC[$found]#* }
  command -v "${tool%% *}" >/dev/null || die "$bzimage: payload is $found but ${tool%% *} is not installed (apt-get install ${tool%% *})"
  expected_size=$(le_u32 "$bzimage" $((start + length - 4)))
  # The trailing size word is not part of the compressed stream (except gzip's own ISIZE).
  [ "$found" = gzip ] || length=$((length - 4))
  dd if="$bzimage" iflag=skip_bytes,count_bytes skip="$start" count="$length" bs=1M status=none | $tool > "$out" \
    || die "$bzimage: $found payload at byte $start did not decompress with '$tool'"
  [ "$(hex_at "$out" 0 4)" = 7f454c46 ] || die "$bzimage: decompressed $found payload is not an ELF file"
  [ "$(stat -c %s "$out")" -eq "$expected_size" ] \
    || die "$bzimage: vmlinux is $(stat -c %s "$out") bytes, the payload says $expected_size"
  VMLINUX_COMPRESSION=$found
}

# has_pvh_note VMLINUX: true when the ELF has XEN_ELFNOTE_PHYS32_ENTRY (owner "Xen", type 18),
# the 32-bit entry point QEMU and Firecracker use for PVH boot.
has_pvh_note() {
  readelf -n --wide "$1" | awk '$1 == "Xen" && /\(0x00000012\)|PHYS32_ENTRY/ { found = 1 } END { exit !found }'
}

# module_depends KO: the module names KO needs, from its .modinfo section.
module_depends() {
  objcopy -O binary --only-section=.modinfo "$1" /dev/stdout \
    | tr '\0' '\n' | sed -n 's/^depends=//p' | tr ',' ' '
}

# module_name PATH: kernel module name of a module file (dashes and underscores are one).
module_name() { local base=${1##*/}; base=${base%%.ko*}; printf '%s' "${base//-/_}"; }

# newc_entry NAME MODE RDEV_MAJOR RDEV_MINOR INODE NLINK: one data-less newc record (a directory
# or a device node), so the archive can hold /dev/console without mknod (and without root).
# Layout: "070701" then 13 fields of 8 hex digits, then the NUL-terminated name padded to 4 bytes.
NEWC_HEADER_SIZE=110
newc_entry() {
  local name=$1 mode=$2 rdev_major=$3 rdev_minor=$4 inode=$5 nlink=$6
  local name_size=$(( ${#name} + 1 ))
  #              ino  mode uid  gid  nlink mtime size maj  min  rmaj rmin namesz check
  printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
    "$inode" "$mode" 0 0 "$nlink" 0 0 0 0 "$rdev_major" "$rdev_minor" "$name_size" 0
  printf '%s\0' "$name"
  head -c $(( (4 - (NEWC_HEADER_SIZE + name_size) % 4) % 4 )) /dev/zero
}
S_IFDIR=$((0040000)); S_IFCHR=$((0020000))

# --- Resolve versions and the cache key -------------------------------------------------------
command -v apt-get >/dev/null || die "apt-get not found: this builder needs Debian's apt"
[ "$(dpkg --print-architecture)" = amd64 ] || die "Debian's $KERNEL_METAPACKAGE guest kernel is amd64; this host is $(dpkg --print-architecture)"
for tool in cpio gzip xz objcopy readelf od flock; do
  command -v "$tool" >/dev/null || die "$tool not found (run scripts/setup.sh, or apt-get install cpio gzip xz-utils binutils)"
done

mkdir -p "$IMAGE_ROOT" "$DEB_DIR"
exec 9>"$IMAGE_ROOT/.lock"
flock 9 # one builder at a time per cache

# resolve_versions: sets KERNEL_PACKAGE, KERNEL_VERSION, BUSYBOX_VERSION, from the memo
# of the last resolution while apt's lists are unchanged.
RESOLUTION_MEMO="$IMAGE_ROOT/apt-resolution"
resolve_versions() {
  local fingerprint memo_fingerprint resolved
  fingerprint=$(apt_fingerprint)
  if [ -f "$RESOLUTION_MEMO" ] \
    && read -r memo_fingerprint KERNEL_PACKAGE KERNEL_VERSION BUSYBOX_VERSION < "$RESOLUTION_MEMO" \
    && [ "$memo_fingerprint" = "$fingerprint" ] && [ -n "$BUSYBOX_VERSION" ]; then
    return 0
  fi
  resolved=$(apt_resolve) || return 1
  read -r KERNEL_PACKAGE KERNEL_VERSION BUSYBOX_VERSION <<< "$resolved"
  printf '%s %s\n' "$fingerprint" "$resolved" > "$RESOLUTION_MEMO.$$"
  mv "$RESOLUTION_MEMO.$$" "$RESOLUTION_MEMO"
}
if ! resolve_versions; then
  if [ "$(id -u)" -eq 0 ]; then
    step "apt does not know $KERNEL_METAPACKAGE/$BUSYBOX_PACKAGE yet: apt-get update ..."
    apt-get update -q >/dev/null || true
  fi
  if ! resolve_versions; then
    if [ -e "$IMAGE_ROOT/current/manifest.json" ]; then
      step "warning: apt cannot resolve $KERNEL_METAPACKAGE or $BUSYBOX_PACKAGE (offline?); keeping $(readlink "$IMAGE_ROOT/current")"
      exit 0
    fi
    die "apt cannot resolve $KERNEL_METAPACKAGE or $BUSYBOX_PACKAGE; run 'apt-get update' as root (Debian 12 main must be in sources.list)"
  fi
fi
KERNEL_RELEASE=${KERNEL_PACKAGE#linux-image-}

GUEST_FILES=(init cmdline.sh inittab console profile)
KEY=$(
  {
    printf '%s %s\n%s %s\n' "$KERNEL_PACKAGE" "$KERNEL_VERSION" "$BUSYBOX_PACKAGE" "$BUSYBOX_VERSION"
    for f in "$SCRIPT_PATH" "${GUEST_FILES[@]/#/$GUEST_FILES_DIR/}"; do
      [ -f "$f" ] || die "missing $f"
      printf '== %s\n' "${f##*/}"; cat "$f"
    done
  } | sha256sum | cut -c1-16
)
IMAGE_DIR="$IMAGE_ROOT/$KEY"
IMAGE_FILES=(bzImage vmlinux initramfs.cpio.gz initramfs.cpio cmdline.default manifest.json)

point_current_at() { # atomically repoint guest-image/current
  ln -sfn "$KEY" "$IMAGE_ROOT/.current.$$"
  mv -T "$IMAGE_ROOT/.current.$$" "$IMAGE_ROOT/current"
}

image_complete() { local f; for f in "${IMAGE_FILES[@]}"; do [ -s "$IMAGE_DIR/$f" ] || return 1; done; }

if [ "$FORCE" -eq 0 ] && image_complete; then
  [ "$(readlink "$IMAGE_ROOT/current" 2>/dev/null)" = "$KEY" ] || point_current_at
  step "up to date: $KEY ($KERNEL_PACKAGE $KERNEL_VERSION, $BUSYBOX_PACKAGE $BUSYBOX_VERSION) in $IMAGE_DIR"
  exit 0
fi

# --- Build in a temporary directory, then rename into place -----------------------------------
started=$(date +%s.%N)
step "building $KEY: $KERNEL_PACKAGE $KERNEL_VERSION, $BUSYBOX_PACKAGE $BUSYBOX_VERSION"
rm -rf "$IMAGE_ROOT"/.build.* "$IMAGE_ROOT"/.current.* "$DEB_DIR"/.download.* # leftovers of a killed build (we hold the lock)
WORK=$(mktemp -d "$IMAGE_ROOT/.build.XXXXXX")
trap 'rm -rf "$WORK" "$IMAGE_ROOT/.current.$$"' EXIT
trap 'exit 130' INT TERM
OUT="$WORK/out"; KROOT="$WORK/kernel"; STAGE="$WORK/initramfs"
mkdir -p "$OUT" "$KROOT" "$STAGE"

download_deb "$KERNEL_PACKAGE" "$KERNEL_VERSION"
download_deb "$BUSYBOX_PACKAGE" "$BUSYBOX_VERSION"
KERNEL_DEB="$DEB_DIR/$(deb_file "$KERNEL_PACKAGE" "$KERNEL_VERSION")"
BUSYBOX_DEB="$DEB_DIR/$(deb_file "$BUSYBOX_PACKAGE" "$BUSYBOX_VERSION")"

# extract_from_kernel_deb PATTERN...: extract matching members (tar wildcards) of the kernel package.
extract_from_kernel_deb() {
  dpkg-deb --fsys-tarfile "$KERNEL_DEB" | tar -x -C "$KROOT" --wildcards "$@" \
    || die "$KERNEL_DEB: could not extract $*"
}
# module_pattern NAME: a tar wildcard for a module file, dashes and underscores alike, any compression.
module_pattern() { printf './lib/modules/%s/kernel/*/%s.ko*' "$KERNEL_RELEASE" "$(printf '%s' "$1" | sed 's/[-_]/[-_]/g')"; }

step "extracting the kernel, its config and the NIC modules from $KERNEL_PACKAGE ..."
MODULE_BASE="lib/modules/$KERNEL_RELEASE"
extract_from_kernel_deb "./boot/vmlinuz-$KERNEL_RELEASE" "./boot/config-$KERNEL_RELEASE" "./$MODULE_BASE/modules.builtin"
KERNEL_CONFIG="$KROOT/boot/config-$KERNEL_RELEASE"

# The module closure: built-in drivers need nothing; the package ships no modules.dep (depmod
# writes it at install time), so dependencies come from each module's .modinfo "depends=".
declare -A MODULE_FILE=() # name -> path under $KROOT/$MODULE_BASE, decompressed
BUILTIN_MODULES=()
is_builtin() { grep -Eq "/$(printf '%s' "$1" | sed 's/[-_]/[-_]/g')\.ko$" "$KROOT/$MODULE_BASE/modules.builtin"; }
pending=("${ROOT_MODULES[@]}")
while [ ${#pending[@]} -gt 0 ]; do
  wanted=()
  for name in "${pending[@]}"; do
    [ -n "${MODULE_FILE[$name]:-}" ] && continue
    if is_builtin "$name"; then
      [[ " ${BUILTIN_MODULES[*]} " == *" $name "* ]] || BUILTIN_MODULES+=("$name")
      continue
    fi
    [[ " ${wanted[*]:-} " == *" $name "* ]] || wanted+=("$name")
  done
  [ ${#wanted[@]} -gt 0 ] || break
  patterns=()
  for name in "${wanted[@]}"; do patterns+=("$(module_pattern "$name")"); done
  extract_from_kernel_deb "${patterns[@]}"
  pending=()
  for name in "${wanted[@]}"; do
    file=$(find "$KROOT/$MODULE_BASE/kernel" -name "$(printf '%s' "$name" | sed 's/[-_]/[-_]/g').ko*" | head -n1)
    [ -n "$file" ] || die "$KERNEL_DEB: module $name not found"
    case "$file" in # Debian 12 ships plain .ko; later releases compress them
      *.ko.xz) xz -d "$file"; file=${file%.xz} ;;
      *.ko.zst) zstd -q -d --rm "$file"; file=${file%.zst} ;;
      *.ko.gz) gzip -d "$file"; file=${file%.gz} ;;
    esac
    MODULE_FILE[$name]=${file#"$KROOT/$MODULE_BASE/"}
    for dep in $(module_depends "$file"); do pending+=("$dep"); done
  done
done

# Load order: dependencies before their users (depth-first from the roots).
LOAD_ORDER=()
declare -A VISITED=()
visit() {
  local name=$1 dep
  [ -n "${VISITED[$name]:-}" ] && return 0
  VISITED[$name]=1
  [ -n "${MODULE_FILE[$name]:-}" ] || return 0 # built-in
  for dep in $(module_depends "$KROOT/$MODULE_BASE/${MODULE_FILE[$name]}"); do visit "$dep"; done
  LOAD_ORDER+=("$name")
}
for name in "${ROOT_MODULES[@]}"; do visit "$name"; done
step "modules in load order: ${LOAD_ORDER[*]}${BUILTIN_MODULES[*]:+ (built in: ${BUILTIN_MODULES[*]})}"

# bzImage and vmlinux.
cp "$KROOT/boot/vmlinuz-$KERNEL_RELEASE" "$OUT/bzImage"
BOOT_PROTOCOL=$(bzimage_protocol "$OUT/bzImage") || die "$KERNEL_DEB: vmlinuz-$KERNEL_RELEASE has no HdrS setup header"
KERNEL_VERSION_STRING=$(bzimage_version_string "$OUT/bzImage")
step "extracting vmlinux from the bzImage (boot protocol $BOOT_PROTOCOL) ..."
extract_vmlinux "$OUT/bzImage" "$OUT/vmlinux"
if has_pvh_note "$OUT/vmlinux"; then
  PVH=true; step "vmlinux ($VMLINUX_COMPRESSION payload) has a Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"
else
  PVH=false; step "vmlinux ($VMLINUX_COMPRESSION payload) has NO Xen PVH entry note: boot the bzImage instead"
fi

# The initramfs tree.
step "assembling the initramfs (busybox, modules, /init) ..."
dpkg-deb --fsys-tarfile "$BUSYBOX_DEB" | tar -x -C "$WORK" ./bin/busybox
mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,etc/baton,lib/baton,proc,sys,run,tmp,root}
chmod 1777 "$STAGE/tmp"; chmod 0700 "$STAGE/root"
install -m 0755 "$WORK/bin/busybox" "$STAGE/bin/busybox"
BUSYBOX_BANNER=$("$STAGE/bin/busybox" 2>&1 | head -n1 || true)
while read -r applet; do
  [ "$applet" = bin/busybox ] || [ -e "$STAGE/$applet" ] || ln -s /bin/busybox "$STAGE/$applet"
done < <("$STAGE/bin/busybox" --list-full)
[ -L "$STAGE/sbin/init" ] && [ -L "$STAGE/bin/sh" ] && [ -L "$STAGE/bin/cttyhack" ] \
  || die "$BUSYBOX_DEB: busybox lacks init, sh or cttyhack"
install -m 0755 "$GUEST_FILES_DIR/init" "$STAGE/init"
install -m 0755 "$GUEST_FILES_DIR/console" "$STAGE/sbin/baton-console"
install -m 0644 "$GUEST_FILES_DIR/cmdline.sh" "$STAGE/lib/baton/cmdline.sh"
install -m 0644 "$GUEST_FILES_DIR/inittab" "$STAGE/etc/inittab"
install -m 0644 "$GUEST_FILES_DIR/profile" "$STAGE/etc/profile"
# Every program the inittab names must be in the image (busybox puts applets in bin/ or sbin/).
grep -v '^#' "$STAGE/etc/inittab" | cut -d: -f4- | awk 'NF { print $1 }' | while read -r program; do
  [ -L "$STAGE$program" ] || [ -e "$STAGE$program" ] || die "inittab runs $program, which the initramfs lacks"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$STAGE/etc/passwd"
printf 'root:x:0:\n' > "$STAGE/etc/group"
printf 'baton-guest\n' > "$STAGE/etc/hostname"
: > "$STAGE/etc/baton/modules"
mkdir -p "$STAGE/$MODULE_BASE"
for name in "${LOAD_ORDER[@]}"; do
  rel=${MODULE_FILE[$name]}
  install -D -m 0644 "$KROOT/$MODULE_BASE/$rel" "$STAGE/$MODULE_BASE/$rel"
  printf '%s\n' "$rel" >> "$STAGE/etc/baton/modules"
done
# A modules.dep for busybox modprobe/modinfo in the guest (deps listed nearest first).
for name in "${LOAD_ORDER[@]}"; do
  deps=()
  for dep in $(module_depends "$KROOT/$MODULE_BASE/${MODULE_FILE[$name]}"); do
    [ -n "${MODULE_FILE[$dep]:-}" ] && deps+=("${MODULE_FILE[$dep]}")
  done
  printf '%s:%s\n' "${MODULE_FILE[$name]}" "${deps[*]:+ ${deps[*]}}"
done > "$STAGE/$MODULE_BASE/modules.dep"
cp "$KROOT/$MODULE_BASE/modules.builtin" "$STAGE/$MODULE_BASE/modules.builtin"
# Fixed timestamps: the same inputs give the same archive bytes.
find "$STAGE" -exec touch -h -d @0 {} +

# The archive: /dev and /dev/console first (the kernel opens /dev/console for /init before
# anything mounts devtmpfs), then the tree in sorted order so directories precede their contents.
{
  newc_entry dev $((S_IFDIR | 0755)) 0 0 $((0xffff0001)) 2
  newc_entry dev/console $((S_IFCHR | 0600)) 5 1 $((0xffff0002)) 1
  (cd "$STAGE" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort \
    | cpio -o -H newc -R 0:0 --reproducible --quiet)
} > "$OUT/initramfs.cpio"
gzip -9 -n -c "$OUT/initramfs.cpio" > "$OUT/initramfs.cpio.gz"
cpio -t --quiet < "$OUT/initramfs.cpio" > "$WORK/initramfs.list" || die "initramfs.cpio: cpio cannot read it back"
grep -qx init "$WORK/initramfs.list" || die "initramfs.cpio: /init missing from the archive"

printf '%s\n' "${CMDLINE_OPTIONS[*]}" > "$OUT/cmdline.default"

size_of() { stat -c %s "$OUT/$1"; }
json_list() { local first=1 item; printf '['; for item in "$@"; do [ $first -eq 1 ] || printf ', '; printf '"%s"' "$item"; first=0; done; printf ']'; }
cat > "$OUT/manifest.json" <<JSON
{
  "key": "$KEY",
  "kernelPackage": "$KERNEL_PACKAGE",
  "kernelPackageVersion": "$KERNEL_VERSION",
  "kernelRelease": "$KERNEL_RELEASE",
  "kernelVersionString": "$KERNEL_VERSION_STRING",
  "bootProtocol": "$BOOT_PROTOCOL",
  "vmlinuxCompression": "$VMLINUX_COMPRESSION",
  "pvhEntryNote": $PVH,
  "busyboxPackageVersion": "$BUSYBOX_VERSION",
  "busybox": "$BUSYBOX_BANNER",
  "modulesInLoadOrder": $(json_list "${LOAD_ORDER[@]}"),
  "builtinModules": $(json_list "${BUILTIN_MODULES[@]}"),
  "kernelConfigVirtio": $(json_list $(grep -E '^CONFIG_(VIRTIO|VIRTIO_PCI|VIRTIO_NET|NET_FAILOVER|FAILOVER)=' "$KERNEL_CONFIG")),
  "sizes": {
    "bzImage": $(size_of bzImage),
    "vmlinux": $(size_of vmlinux),
    "initramfs.cpio.gz": $(size_of initramfs.cpio.gz),
    "initramfs.cpio": $(size_of initramfs.cpio)
  }
}
JSON

# Publish: rename the finished directory into place (atomic), then repoint current.
rm -rf "$IMAGE_DIR" # an incomplete leftover of the same key
mv -T "$OUT" "$IMAGE_DIR"
point_current_at
# Older images and packages are superseded: keep the cache to one image.
for old in "$IMAGE_ROOT"/*; do
  [[ ${old##*/} =~ ^[0-9a-f]{16}$ ]] && [ ! -L "$old" ] && [ "$old" != "$IMAGE_DIR" ] && rm -rf "$old"
done
find "$DEB_DIR" -maxdepth 1 -name '*.deb' ! -name "$(basename "$KERNEL_DEB")" ! -name "$(basename "$BUSYBOX_DEB")" -delete

elapsed=$(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
step "built $KEY in ${elapsed}s: $IMAGE_DIR"
for f in bzImage vmlinux initramfs.cpio.gz initramfs.cpio; do
  printf '[guest-image]   %-18s %10d bytes\n' "$f" "$(stat -c %s "$IMAGE_DIR/$f")"
done
printf '[guest-image]   kernel %s, PVH note: %s\n' "$KERNEL_VERSION_STRING" "$PVH"
