#!/bin/sh
# Undo setup.sh: unmount every client, stop its smbnetfs and the smbd that setup.sh started (by
# the pids on file, nothing else); with --purge also delete $REALSHARE_BASE. The Debian packages
# and the emifshare user stay.
set -u
BASE=${REALSHARE_BASE:-/tmp/emif-realshare}
STATE=$BASE/state

stop_pid() {
  [ -n "$1" ] && kill -0 "$1" 2>/dev/null || return 0
  kill "$1" 2>/dev/null
  i=0
  while kill -0 "$1" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
  kill -9 "$1" 2>/dev/null || true   # a client stuck in a request
}

for mp in "$BASE"/mnt/*; do
  case "$mp" in "$BASE/mnt/*") continue;; esac   # no client at all (a dead mount fails -d)
  c=$(basename "$mp")
  if grep -qs " $mp " /proc/mounts; then
    fusermount -u "$mp" 2>/dev/null || fusermount -u -z "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
  fi
  pf="$STATE/client.$c.pid"
  if [ -f "$pf" ]; then stop_pid "$(cat "$pf")"; rm -f "$pf"; fi
  # a mount whose client was stuck unmounts only once that client is gone
  if grep -qs " $mp " /proc/mounts; then
    fusermount -u "$mp" 2>/dev/null || fusermount -u -z "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
  fi
  rm -f "$STATE/mode.$c"
done
pf="$STATE/samba/pid/smbd.pid"
if [ -f "$pf" ]; then stop_pid "$(cat "$pf")"; rm -f "$pf"; fi
rm -f "$STATE/roots"

if [ "${1:-}" = "--purge" ]; then
  # never delete through a mount that is still there
  if grep -qs " $BASE/mnt/" /proc/mounts; then
    echo "realshare: a mount under $BASE/mnt is still there; not purging" >&2; exit 1
  fi
  rm -rf "$BASE"
fi
echo "realshare: unmounted and stopped" >&2
