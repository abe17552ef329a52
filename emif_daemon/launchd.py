"""The per-user LaunchAgent: render the template, install and uninstall it.

(README.md#running-unattended-on-a-mac)
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from string import Template
from xml.sax.saxutils import escape

from .files import atomic_write

LABEL = "com.emif.daemon"
TEMPLATE = Path(__file__).resolve().parent.parent / "launchd" / f"{LABEL}.plist"
DEFAULT_PATH = "/opt/homebrew/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"


class NotMacOS(Exception):
    """launchctl exists only on macOS."""


def emif_executable() -> str:
    """The installed `emif` beside this interpreter (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "emif"
    if beside.exists():
        return str(beside.absolute())
    found = shutil.which("emif")
    return str(Path(found).absolute()) if found else str(beside.absolute())


def template_text() -> str:
    try:
        return TEMPLATE.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"the LaunchAgent template {TEMPLATE} is missing: install emif-daemon from its "
            "source folder (`pip install -e .`, as `make run` does)"
        ) from exc


def render(*, config: Path, root: Path, emif: str | None = None, label: str = LABEL) -> str:
    """The plist for this machine; every path absolute. Validated by parsing it back."""
    config = config.resolve()
    values = {
        "label": label,
        "emif": emif or emif_executable(),
        "config": str(config),
        "workdir": str(config.parent),
        "logdir": str((root / "logs").resolve()),
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
) -> Path:
    """Write ~/Library/LaunchAgents/<label>.plist and load it into the GUI session."""
    if platform != "darwin":
        raise NotMacOS
    path = agent_path(home, label)
    domain = f"gui/{os.getuid()}"
    run(["launchctl", "bootout", f"{domain}/{label}"])  # not loaded yet is fine
    atomic_write(path, text.encode())
    result = run(["launchctl", "bootstrap", domain, str(path)])
    if result.returncode != 0:
        raise OSError(f"launchctl bootstrap {domain} {path} failed: {result.stderr.strip()}")
    return path


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
