#!/usr/bin/env bash
# Quickstart: set-up, then the demo domain through the real `baton` CLI — define, start, wait
# for the guest's ready line, ping it — and how to go on from there. Safe to re-run: a defined
# domain is redefined in place (same name and UUID), a running one is left running, a paused
# one is resumed.
#
# Directories: Baton's defaults (/var/lib/baton, /run/baton, /var/log/baton), so the commands
# printed at the end work as they are; export BATON_STATE_DIR / BATON_RUN_DIR / BATON_LOG_DIR
# first to keep the quickstart elsewhere (then export them for those commands too).
# Network: the demo's TAP is moved into the network namespace `baton-demo` (created when
# missing, kept when the domain stops) with the host end at 10.99.0.1/24 and the guest at
# 10.99.0.2 — no demo traffic in the host's own namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
say() { printf '\033[1m[quickstart]\033[0m %s\n' "$*"; }
die() { printf '\033[1m[quickstart]\033[0m error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root: Baton needs /dev/kvm, TAP devices and network namespaces"
# BATON_SKIP_SETUP=1 skips set-up when it has just run (it rebuilds dist/ when src/ changed).
[ "${BATON_SKIP_SETUP:-}" = 1 ] || bash scripts/setup.sh

export BATON_STATE_DIR=${BATON_STATE_DIR:-/var/lib/baton}
export BATON_RUN_DIR=${BATON_RUN_DIR:-/run/baton}
export BATON_LOG_DIR=${BATON_LOG_DIR:-/var/log/baton}
baton() { node "$ROOT/bin/run.js" "$@"; }

DOMAIN=demo
NETNS=baton-demo
GUEST_IP=10.99.0.2
SERIAL_LOG=$BATON_LOG_DIR/$DOMAIN.serial.log
READY_LINE='baton-testguest: ready'
NET_LINE="ip $GUEST_IP"

say "state in $BATON_STATE_DIR, runtime in $BATON_RUN_DIR, logs in $BATON_LOG_DIR"
say "baton vm define domains/demo.xml"
baton vm define domains/demo.xml

state=$(baton vm domstate "$DOMAIN")
case "$state" in
  running) say "domain '$DOMAIN' is already running: leaving it as it is" ;;
  paused) say "domain '$DOMAIN' is paused: resuming it"; baton vm resume "$DOMAIN" ;;
  *)
    say "baton vm start $DOMAIN"
    started=$(date +%s%N)
    baton vm start "$DOMAIN"
    ;;
esac

say "waiting for the guest's ready line in $SERIAL_LOG"
for _ in $(seq 1 600); do
  if grep -q "$READY_LINE" "$SERIAL_LOG" 2>/dev/null && grep -q "$NET_LINE" "$SERIAL_LOG" 2>/dev/null; then break; fi
  [ "$(baton vm domstate "$DOMAIN")" = "shut off" ] && die "domain '$DOMAIN' stopped during boot; see $BATON_LOG_DIR/$DOMAIN.log"
  sleep 0.1
done
grep -q "$NET_LINE" "$SERIAL_LOG" || die "no '$NET_LINE' line in $SERIAL_LOG after 60 s; see $BATON_LOG_DIR/$DOMAIN.log"
[ -n "${started:-}" ] && say "guest ready $(( ($(date +%s%N) - started) / 1000000 )) ms after 'vm start' began"
sed 's/^/    guest| /' "$SERIAL_LOG"

say "ip netns exec $NETNS ping -c 3 $GUEST_IP"
ip netns exec "$NETNS" ping -c 3 -i 0.2 -W 2 "$GUEST_IP" || die "the guest did not answer ping; see $SERIAL_LOG and $BATON_LOG_DIR/$DOMAIN.log"

if grep -qwE 'vmx|svm' /proc/cpuinfo; then
  linux_note="This host's KVM runs ring-0 code natively: try the Debian guest too (domains/debian.xml)."
else
  linux_note="The Debian guest (domains/debian.xml) is skipped: this host's KVM emulates guest ring 0 (no vmx/svm), so Linux boots in minutes."
fi
BATON=./bin/run.js
ENV_LINE=
if [ "$BATON_STATE_DIR:$BATON_RUN_DIR:$BATON_LOG_DIR" != /var/lib/baton:/run/baton:/var/log/baton ]; then
  ENV_LINE="  export BATON_STATE_DIR=$BATON_STATE_DIR BATON_RUN_DIR=$BATON_RUN_DIR BATON_LOG_DIR=$BATON_LOG_DIR
"
fi
cat <<EOT

The demo guest is running and answers ping at $GUEST_IP (host side: 10.99.0.1 in netns $NETNS).
From $ROOT:
${ENV_LINE}  $BATON vm list                     # Id, Name, State
  $BATON vm console $DOMAIN            # the serial console; Ctrl-] leaves
  ip netns exec $NETNS ping $GUEST_IP    # the guest answers
  $BATON vm suspend $DOMAIN / vm resume $DOMAIN
  $BATON vm shutdown $DOMAIN           # graceful (the guest powers off); vm destroy $DOMAIN pulls the plug
  tail -f $SERIAL_LOG        # everything the guest prints

$linux_note
Re-running npm run quickstart is safe. To remove everything: vm destroy/shutdown $DOMAIN, vm undefine $DOMAIN, ip netns del $NETNS.
EOT
