"""The per-user LaunchAgent: render the template, install and uninstall it.

launchd opens the agent's log files and working folder before the program starts, at
login, possibly before the share is mounted: they are on the local disk (logs under
~/Library/Logs/emif-daemon/), and the daemon itself waits for the share. (README.md
#running-unattended-on-a-mac; docs/protocol.md#the-root)
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from string import Template
from xml.sax.saxutils import escape

from emif_daemon.errors import NotMacOS
from emif_daemon.share.atomic import atomic_write

LABEL = "com.emif.daemon"
# Shipped as package data: launchd/com.emif.daemon.plist, linked into this package.
TEMPLATE = f"{LABEL}.plist"
DEFAULT_PATH = "/opt/homebrew/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
UNLOAD_WAIT_S = 25.0  # ExitTimeOut + 5 s
BOOTSTRAP_TRIES = 3


def emif_executable() -> str:
    """The installed `emif` beside this interpreter (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "emif"
    if beside.exists():
        return str(beside.absolute())
    found = shutil.which("emif")
    return str(Path(found).absolute()) if found else str(beside.absolute())


def template_text() -> str:
    return (resources.files("emif_daemon.macos") / TEMPLATE).read_text(encoding="utf-8")


def log_dir(home: Path) -> Path:
    """launchd's own stdout/stderr of the agent: local, so it can always open them."""
    return home / "Library" / "Logs" / "emif-daemon"


def interpreter() -> str:
    """The binary macOS's privacy controls (TCC) hold responsible for the agent's file
    access: the real interpreter behind the venv's `python` symlink."""
    return os.path.realpath(sys.executable)


def network_volume_problems(paths: dict[str, Path], root: Path) -> list[str]:
    """What launchd would have to reach on a share at login, before it is mounted."""
    problems = []
    shared = os.path.realpath(root)
    for what, path in paths.items():
        real = os.path.realpath(path)
        if real.startswith(("/Volumes/", shared + os.sep)) or real == shared:
            problems.append(
                f"{what} {path} is on a network volume; launchd needs it at login, before the "
                "share is mounted: keep it on this Mac's disk"
            )
    return problems


def render(
    *,
    config: Path,
    root: Path,
    emif: str | None = None,
    label: str = LABEL,
    home: Path | None = None,
) -> str:
    """The plist for this machine; every path absolute. Validated by parsing it back."""
    config = config.resolve()
    values = {
        "label": label,
        "emif": emif or emif_executable(),
        "config": str(config),
        "workdir": str(config.parent),
        "logdir": str(log_dir(home or Path.home())),
        "path": os.pathsep.join(
            dict.fromkeys([str(Path(sys.executable).parent), *DEFAULT_PATH.split(":")])
        ),
    }
    text = Template(template_text()).substitute({k: escape(v) for k, v in values.items()})
    plistlib.loads(text.encode())  # raises if the result is not a valid plist
    return text


def agent_path(home: Path, label: str = LABEL) -> Path:
    return home / "Library" / "LaunchAgents" / f"{label}.plist"


Runner = Callable[[list[str]], subprocess.CompletedProcess[str]]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def install(
    text: str,
    *,
    home: Path,
    label: str = LABEL,
    platform: str = sys.platform,
    run: Runner = _run,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Write ~/Library/LaunchAgents/<label>.plist and load it into the GUI session."""
    if platform != "darwin":
        raise NotMacOS
    path = agent_path(home, label)
    domain = f"gui/{os.getuid()}"
    service = f"{domain}/{label}"
    log_dir(home).mkdir(parents=True, exist_ok=True)
    # A label once disabled stays disabled until enabled; bootout is asynchronous, and a
    # bootstrap right after it fails with 5 or 37 (docs/macos.md#running-under-launchd).
    run(["launchctl", "enable", service])
    run(["launchctl", "bootout", service])  # not loaded yet is fine
    deadline = time.monotonic() + UNLOAD_WAIT_S
    while run(["launchctl", "print", service]).returncode == 0:
        if time.monotonic() > deadline:
            raise OSError(f"launchctl bootout {service}: still loaded after {UNLOAD_WAIT_S:g} s")
        sleep(0.5)
    atomic_write(path, text.encode())
    for attempt in range(1, BOOTSTRAP_TRIES + 1):
        result = run(["launchctl", "bootstrap", domain, str(path)])
        if result.returncode == 0:
            return path
        if attempt < BOOTSTRAP_TRIES:
            sleep(2.0)
    raise OSError(
        f"launchctl bootstrap {domain} {path} failed {BOOTSTRAP_TRIES} times "
        f"(exit {result.returncode}): {result.stderr.strip()}"
    )


def uninstall(
    *, home: Path, label: str = LABEL, platform: str = sys.platform, run: Runner = _run
) -> Path | None:
    """Unload the agent and remove its plist; None if it was not installed."""
    if platform != "darwin":
        raise NotMacOS
    path = agent_path(home, label)
    run(["launchctl", "bootout", f"gui/{os.getuid()}/{label}"])
    if not path.exists():
        return None
    path.unlink()
    return path
