# Kernel command-line parsing for the guest's /init (sourced; busybox ash and bash both run it).
# Kept apart from /init so the host-side tests exercise this very code.
#
# Parameters Baton reads (the kernel ignores unknown dotted parameters, so they reach only us):
#   baton.ip=ADDR/PREFIX   IPv4 address and prefix length for eth0, e.g. baton.ip=10.99.3.2/24
#   baton.gw=ADDR          optional IPv4 default gateway

# cmdline_param NAME [CMDLINE]: print the value of NAME=VALUE from CMDLINE (default: /proc/cmdline).
# The last occurrence wins, as for the kernel's own parameters. Fails when NAME is absent.
cmdline_param() {
  local name="$1" cmdline word value found=1
  if [ $# -ge 2 ]; then cmdline="$2"; else cmdline="$(cat /proc/cmdline)"; fi
  set -f # the command line is data: no pathname expansion of its words
  for word in $cmdline; do
    case "$word" in
      "$name="*) value="${word#*=}"; found=0 ;;
    esac
  done
  set +f
  [ "$found" -eq 0 ] && printf '%s\n' "$value"
}

# ipv4_valid ADDR: true for a dotted quad with every part in 0..255.
ipv4_valid() {
  local IFS=. part
  case "$1" in ''|.*|*.|*..*|*[!0-9.]*) return 1 ;; esac
  set -f; set -- $1; set +f
  [ $# -eq 4 ] || return 1
  for part in "$@"; do
    [ ${#part} -le 3 ] && [ "$part" -le 255 ] || return 1
  done
}

# ipv4_cidr_valid ADDR/PREFIX: true for a valid IPv4 address with a prefix length of 0..32.
ipv4_cidr_valid() {
  local prefix
  case "$1" in */*) ;; *) return 1 ;; esac
  prefix="${1#*/}"
  case "$prefix" in ''|*[!0-9]*) return 1 ;; esac
  [ ${#prefix} -le 2 ] && [ "$prefix" -le 32 ] && ipv4_valid "${1%/*}"
}
