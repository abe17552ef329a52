#!/bin/sh
# A real SMB share on this machine, mounted once per simulated host, for the multi-host tests
# (tests/test_realshare.py): Samba on a loopback address and one SMB client mount per host.
#
#   REALSHARE_BASE=/tmp/emif-realshare REALSHARE_ADDR=127.0.0.2 tests/realshare/setup.sh
#
# Each mount is its own FUSE file system with its own kernel dentry/attribute cache and its own
# connection to the server, like separate Macs mounting one share. Idempotent: run it again and
# it only (re)does what is missing, dead or hung (a mount that answers "Transport endpoint is
# not connected", or not at all, is remounted), so a harness can heal a client between runs.
# Prints (and writes to $BASE/state/roots) one directory per client: the same folder on the
# server seen through each mount.
#
# Environment:
#   REALSHARE_BASE     everything lives here: state/ (Samba and client config, pids, logs),
#                      share/ (the folder the server exports), mnt/<client>/ (mount points)
#   REALSHARE_ADDR     the loopback address smbd listens on, port 445 (default 127.0.0.1). Any
#                      127.x.y.z works without configuring anything; libsmbclient only ever
#                      connects to port 445 (or 139), so a separate address per session is what
#                      keeps a system Samba or another test session out of the way.
#   REALSHARE_CLIENTS  mount names (default "a b c")
#   REALSHARE_CLIENT   macsmb (default): tests/realshare/macsmb.py, an SMB2 client that behaves
#                      like the Mac's (exclusive create, NFD listings, listing cache), run with
#                      REALSHARE_PYTHON (default .venv/bin/python); REALSHARE_ATTR_S and
#                      REALSHARE_DIR_CACHE_S (default 2 and 2) are its attribute and listing
#                      caches. smbnetfs: Debian's smbnetfs, with the quirks below.
#   REALSHARE_CACHE    smbnetfs only. on: entry/attr/negative cache 10 s (within the 2-30 s the
#                      macOS client keeps attributes); default: libfuse's 1 s; off: no cache
#
# Exit status: 0 ready; 3 this machine cannot do it (not root, no FUSE, packages cannot be
# installed): callers skip; anything else: the set-up failed.
#
# smbnetfs (0.6.3 on libsmbclient), as found on this harness, is not a faithful client:
# - O_CREAT|O_EXCL is not exclusive: three mounts racing to create one name all succeeded in 36
#   of 60 rounds (with its caches off too), so claims, which rest on it, collide.
# - Every open with O_APPEND fails with EIO (its libsmbclient child dies with ENXIO), and a stream
#   of them wrecks the mount: other calls fail with EIO (smbnetfs' negative cache is cut to 1 ms
#   for this, neg_cache_timeout=1; neg_cache=false deadlocks it at start-up) and within a minute
#   mounts hang for good (threads deadlocked on a futex).
# - It cannot do RENAME_NOREPLACE (libfuse 2 answers ENOSYS, the kernel turns it into EINVAL), and
#   its rename replaces an existing target by deleting it first, like macOS smbfs.
# - It answers some listings with EIO now and then, and a mount can die outright ("Transport
#   endpoint is not connected"): check the mounts before blaming the program under test.
# - It keeps no attribute or listing cache of its own; libsmbclient asks the server each time.
# Samba itself freezes the write time clients see on a handle kept open: a file rewritten through
# one open fd does not look modified to other clients until it is closed.
set -eu

REPO=$(cd "$(dirname "$0")/../.." && pwd)
CLIENT=${REALSHARE_CLIENT:-macsmb}
PYTHON=${REALSHARE_PYTHON:-$REPO/.venv/bin/python}
ATTR_S=${REALSHARE_ATTR_S:-2}
DIR_CACHE_S=${REALSHARE_DIR_CACHE_S:-2}
BASE=${REALSHARE_BASE:-/tmp/emif-realshare}
ADDR=${REALSHARE_ADDR:-127.0.0.1}
CLIENTS=${REALSHARE_CLIENTS:-"a b c"}
CACHE=${REALSHARE_CACHE:-on}
STATE=$BASE/state
SHARE=$BASE/share
MNT=$BASE/mnt
USER_NAME=emifshare          # the share's Unix and Samba user
PASSWORD=emif-realshare      # loopback only

cannot() { echo "realshare: $*" >&2; exit 3; }
case "$CACHE" in on|off|default) ;; *) echo "REALSHARE_CACHE must be on, off or default" >&2; exit 2;; esac
case "$CLIENT" in macsmb|smbnetfs) ;; *) echo "REALSHARE_CLIENT must be macsmb or smbnetfs" >&2; exit 2;; esac
[ "$(id -u)" = 0 ] || cannot "needs root (smbd, mount)"
[ -c /dev/fuse ] || cannot "/dev/fuse is missing: no FUSE on this machine"

# -- packages ------------------------------------------------------------------------------------
need=""
libfuse2=libfuse2  # for fusepy (macsmb); Debian 13 calls it libfuse2t64
apt-cache show libfuse2t64 >/dev/null 2>&1 && libfuse2=libfuse2t64
for p in samba smbclient smbnetfs fuse3 "$libfuse2"; do
  dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
done
if [ -n "$need" ]; then
  command -v apt-get >/dev/null 2>&1 || cannot "missing packages:$need (and no apt-get)"
  echo "realshare: installing$need" >&2
  # policy-rc.d (containers) keeps the packages' own services from starting: we run ours.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $need >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $need >/dev/null 2>&1; } \
    || cannot "cannot install:$need"
fi

if [ "$CLIENT" = macsmb ]; then
  "$PYTHON" -c "import smbclient, fuse" 2>/dev/null \
    || cannot "$PYTHON cannot import smbprotocol and fusepy (with libfuse 2): pip install -e '.[test]'"
fi

# -- the exported folder and its owner -----------------------------------------------------------
id "$USER_NAME" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$USER_NAME"
mkdir -p "$STATE" "$SHARE" "$MNT"
chmod 0755 "$BASE"           # smbd serves the share as $USER_NAME: it must reach the folder
chown "$USER_NAME" "$SHARE"
chmod 0755 "$SHARE"

mounted() { grep -qs " $1 fuse" /proc/mounts; }
# A FUSE mount whose client hangs leaves every caller in uninterruptible sleep (even `timeout`
# cannot kill it): abort its connection through fusectl, which fails the waiting calls with
# ENOTCONN and leaves a dead mount that the loop below remounts.
abort_mount() {
  conn=$(awk -v mp="$1" '$5 == mp { split($3, d, ":"); print d[2] }' /proc/self/mountinfo | tail -n 1)
  [ -n "$conn" ] || return 0
  grep -qs " /sys/fs/fuse/connections fusectl" /proc/mounts \
    || mount -t fusectl fusectl /sys/fs/fuse/connections 2>/dev/null || true
  if [ -w "/sys/fs/fuse/connections/$conn/abort" ]; then
    echo 1 > "/sys/fs/fuse/connections/$conn/abort"
    echo "realshare: $1 hung; its FUSE connection was aborted" >&2
  fi
}
answers() {  # listing $2 (under mount $1) answers within 10 s; a hung mount is aborted
  ls "$2" >/dev/null 2>&1 &
  lp=$!
  i=0
  while kill -0 "$lp" 2>/dev/null; do
    i=$((i + 1))
    if [ $i -gt 100 ]; then abort_mount "$1"; wait "$lp" 2>/dev/null; return 1; fi
    sleep 0.1
  done
  wait "$lp"
}
healthy() { mounted "$1" && answers "$1" "$2"; }
unmount() {
  if grep -qs " $1 " /proc/mounts; then
    fusermount -u "$1" 2>/dev/null || fusermount -u -z "$1" 2>/dev/null || umount -l "$1" 2>/dev/null || true
  fi
}
# The FUSE client of mount $1, started by this script: its pid is on file.
stop_client() {
  pf="$STATE/client.$1.pid"
  [ -f "$pf" ] || return 0
  pid=$(cat "$pf")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 30 ]; do sleep 0.1; i=$((i + 1)); done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pf"
}

# -- smbd on $ADDR:445 ----------------------------------------------------------------------------
S="$STATE/samba"
mkdir -p "$S/lock" "$S/state" "$S/cache" "$S/private" "$S/pid" "$S/log"
conf="$S/smb.conf"
cat > "$conf.new" <<CONF
# emif realshare: one share, loopback only, all state under $S (never /etc/samba).
[global]
  workgroup = WORKGROUP
  netbios name = EMIFREALSHARE
  server role = standalone server
  interfaces = $ADDR/8
  bind interfaces only = yes
  smb ports = 445
  disable netbios = yes
  server min protocol = SMB2_10
  lock directory = $S/lock
  state directory = $S/state
  cache directory = $S/cache
  private dir = $S/private
  pid directory = $S/pid
  ncalrpc dir = $S/ncalrpc
  log file = $S/log/smbd.log
  max log size = 1000
  passdb backend = tdbsam:$S/private/passdb.tdb
  load printers = no
  printing = bsd
  printcap name = /dev/null
  disable spoolss = yes
  # Samba's defaults otherwise: strict sync = yes (fsync = SMB2 FLUSH = fsync on the server),
  # leases and oplocks on.
[emif]
  path = $SHARE
  read only = no
  valid users = $USER_NAME
  force user = $USER_NAME
  create mask = 0644
  directory mask = 0755
CONF
changed=1
if [ -f "$conf" ] && cmp -s "$conf" "$conf.new"; then changed=0; fi
mv "$conf.new" "$conf"
pdbedit -s "$conf" -L 2>/dev/null | grep -q "^$USER_NAME:" \
  || printf '%s\n%s\n' "$PASSWORD" "$PASSWORD" | smbpasswd -c "$conf" -s -a "$USER_NAME" >/dev/null
pidf="$S/pid/smbd.pid"
if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null && [ "$changed" = 1 ]; then
  # a new port or path: a reload would not rebind, so restart (the mounts follow below)
  pid=$(cat "$pidf"); kill "$pid"
  i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
fi
if ! { [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; }; then
  smbd -D -s "$conf"
  i=0
  until smbclient -s "$conf" -U "$USER_NAME%$PASSWORD" "//$ADDR/emif" -c ls >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -lt 100 ] || { echo "realshare: smbd did not come up; see $S/log" >&2; exit 1; }
    sleep 0.2
  done
fi

# -- one client mount per host --------------------------------------------------------------------
case "$CACHE" in
  on)      fuseopts="neg_cache_timeout=1,entry_timeout=10,attr_timeout=10,negative_timeout=10" ;;
  default) fuseopts="neg_cache_timeout=1" ;;
  off)     fuseopts="neg_cache_timeout=1,entry_timeout=0,attr_timeout=0,negative_timeout=0,direct_io" ;;
esac
: > "$STATE/roots.new"
for c in $CLIENTS; do
  home="$STATE/client-$c"            # libsmbclient reads $HOME/.smb/smb.conf
  mp="$MNT/$c"
  mkdir -p "$home/.smb" "$mp"
  if [ "$CLIENT" = macsmb ]; then
    root="$mp"
    want="macsmb:$ADDR:$ATTR_S:$DIR_CACHE_S"
  else
    root="$mp/$ADDR/emif"       # smbnetfs shows //host/share as <mount>/host/share
    want="smb:$CACHE:$ADDR"
  fi
  if [ "$changed" = 0 ] && healthy "$mp" "$root" && [ "$(cat "$STATE/mode.$c" 2>/dev/null)" = "$want" ]; then
    echo "$root" >> "$STATE/roots.new"; continue
  fi
  unmount "$mp"
  stop_client "$c"
  unmount "$mp"   # a mount whose client was stuck unmounts only once that client is gone
  if [ "$CLIENT" = macsmb ]; then
    PYTHONPATH="$REPO" setsid "$PYTHON" -m tests.realshare.macsmb "$ADDR" emif "$mp" \
      --user "$USER_NAME" --password "$PASSWORD" --attr-s "$ATTR_S" --dir-cache-s "$DIR_CACHE_S" \
      >> "$home/macsmb.log" 2>&1 < /dev/null &
    echo $! > "$STATE/client.$c.pid"
    log="$home/macsmb.log"
  else
    cat > "$home/.smb/smb.conf" <<CONF
[global]
  client min protocol = SMB2_10
  client max protocol = SMB3
  disable netbios = yes
  smb ports = 445
CONF
    cat > "$home/.smb/smbnetfs.conf" <<CONF
auth "$ADDR/emif" "$USER_NAME" "$PASSWORD"
smb_query_browsers "false"
use_libsecret "false"
stat_workaround_depth 0
show_hidden_hosts "true"
host $ADDR visible=true
log_file "$home/smbnetfs.log"
CONF
    chmod 600 "$home/.smb/smbnetfs.conf"
    args="config=$home/.smb/smbnetfs.conf,$fuseopts"
    HOME="$home" smbnetfs "$mp" -o "$args"   # daemonizes (its -f mode does not mount)
    log="$home/smbnetfs.log"
  fi
  i=0
  until healthy "$mp" "$root"; do
    i=$((i + 1)); [ $i -lt 100 ] || { echo "realshare: mount $mp does not answer; see $log" >&2; exit 1; }
    sleep 0.2
  done
  if [ "$CLIENT" = smbnetfs ]; then
    # its pid, for teardown.sh: once it answers, the process that launched it is gone and the
    # oldest one with exactly this command line (this client's own mount point and config) is
    # the daemon; its libsmbclient children are younger
    pgrep -o -x -f "smbnetfs $mp -o $args" > "$STATE/client.$c.pid" || true
  fi
  echo "$want" > "$STATE/mode.$c"
  echo "$root" >> "$STATE/roots.new"
done
mv "$STATE/roots.new" "$STATE/roots"
cat "$STATE/roots"
