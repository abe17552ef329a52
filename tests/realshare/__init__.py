"""A real SMB share on this machine for the multi-host tests: Samba on a loopback address and
one SMB client (FUSE) mount per simulated host, set up by setup.sh and undone by teardown.sh.

Each mount is a separate SMB client with its own caches and connection, like separate Macs:
macsmb.py (the default, which behaves like the Mac's client) or Debian's smbnetfs (for contrast;
setup.sh lists why it is not faithful). A client can die or hang, so a test checks
`mount_problems()` before it blames the daemon, and `heal()` remounts what failed.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLIENTS = ("a", "b", "c")


class ShareUnavailable(Exception):
    """This machine cannot run the share (not root, no FUSE, no packages): tests skip."""


def free_loopback_address() -> str:
    """A 127.x.y.z on which nothing listens on port 445 (libsmbclient knows no other port)."""
    rng = random.Random(os.getpid())
    for _ in range(50):
        addr = f"127.{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((addr, 445)) != 0:
                return addr
    raise RuntimeError("no free loopback address for smbd")


FUSECTL = Path("/sys/fs/fuse/connections")


def abort_fuse(mountpoint: Path) -> bool:
    """Abort the FUSE connection of `mountpoint` (through fusectl, mounted if need be)."""
    conn = ""
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            fields = line.split()
            if fields[4] == str(mountpoint):
                conn = fields[2].partition(":")[2]
    if not conn:
        return False
    if not (FUSECTL / conn).exists():
        subprocess.run(["mount", "-t", "fusectl", "fusectl", str(FUSECTL)], check=False)
    try:
        (FUSECTL / conn / "abort").write_text("1")
    except OSError:
        return False
    return True


@dataclass
class RealShare:
    base: Path
    addr: str
    clients: tuple[str, ...] = CLIENTS
    client: str = "macsmb"  # or "smbnetfs"
    cache: str = "on"  # smbnetfs only
    attr_s: float = 2.0  # macsmb: the kernel's attribute cache
    dir_cache_s: float = 2.0  # macsmb: its listing cache
    timeout_s: float = 180.0

    @property
    def server_dir(self) -> Path:
        """The exported folder itself: the truth, as the server holds it."""
        return self.base / "share"

    def root(self, client: str) -> Path:
        """The share's top as `client` mounts it."""
        mountpoint = self.base / "mnt" / client
        return mountpoint if self.client == "macsmb" else mountpoint / self.addr / "emif"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "REALSHARE_BASE": str(self.base),
            "REALSHARE_ADDR": self.addr,
            "REALSHARE_CLIENTS": " ".join(self.clients),
            "REALSHARE_CACHE": self.cache,
            "REALSHARE_CLIENT": self.client,
            "REALSHARE_PYTHON": sys.executable,
            "REALSHARE_ATTR_S": str(self.attr_s),
            "REALSHARE_DIR_CACHE_S": str(self.dir_cache_s),
        }

    def setup(self) -> RealShare:
        """Start smbd and mount every client; idempotent (only what is missing or dead)."""
        result = subprocess.run(
            ["sh", str(HERE / "setup.sh")],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=self.timeout_s,
            check=False,
        )
        if result.returncode == 3:
            raise ShareUnavailable(result.stderr.strip())
        if result.returncode != 0:
            raise RuntimeError(f"realshare set-up failed ({result.returncode}): {result.stderr}")
        return self

    heal = setup

    def teardown(self, purge: bool = True) -> None:
        subprocess.run(
            ["sh", str(HERE / "teardown.sh"), *(["--purge"] if purge else [])],
            env=self._env(),
            capture_output=True,
            timeout=120,
            check=False,
        )

    def mount_problems(self, timeout: float = 15.0) -> dict[str, str]:
        """client → what is wrong with its mount ("Transport endpoint is not connected", or no
        answer at all), for every client whose mount does not answer a listing.

        Listed in a child process, since a hung FUSE client leaves its callers in
        uninterruptible sleep; a hung mount is aborted (every waiting call, the daemons' too,
        then fails with ENOTCONN), so its processes can be stopped and `heal()` remounts it."""
        problems = {}
        for client in self.clients:
            mountpoint = self.base / "mnt" / client
            probe = subprocess.Popen(
                ["ls", str(self.root(client))],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                _out, err = probe.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                problems[client] = f"hung: a listing got no answer in {timeout:g} s"
                abort_fuse(mountpoint)
                probe.kill()
                probe.communicate(timeout=30)
                continue
            if probe.returncode != 0:
                problems[client] = err.strip() or f"ls exited {probe.returncode}"
        return problems

    def client_log(self, client: str, chars: int = 2000) -> str:
        """The end of the log of `client`'s SMB client."""
        path = self.base / "state" / f"client-{client}" / f"{self.client}.log"
        try:
            return path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""
