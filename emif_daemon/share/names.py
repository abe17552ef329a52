"""Names that become folders and files on every host's file system (docs/protocol.md#names).

A nation or category becomes a folder on APFS, on a Mac-served SMB share and on Linux: it
must be one valid, visible, unambiguous path component on all of them, and every name the
daemon derives from it (outputs, sidecars, claims, temp files, failure records) must stay
within the 255-byte limit of a name.
"""

from __future__ import annotations

import hashlib
import unicodedata

from emif_daemon.share.held import CLAIM_BROKEN_MARK, TEMP_MARK, longest_held_name

MAX_NAME_CHARS = 100
MAX_NAME_BYTES = 255  # one path component, in UTF-8, on APFS, HFS+, ext4 and SMB
# Characters SMB and Windows-formatted volumes refuse in a name, beside '/' and NUL.
SMB_FORBIDDEN = '\\<>:"|?*'
# Device names that SMB servers and Windows clients refuse or mangle, with any extension.
RESERVED = frozenset(
    {"con", "prn", "aux", "nul"} | {f"com{n}" for n in range(10)} | {f"lpt{n}" for n in range(10)}
)
# Invisible or ambiguous: format characters (zero-width, bidi overrides), private use,
# surrogates, unassigned code points, line and paragraph separators.
_BAD_CATEGORIES = {"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"}


def name_problem(name: object) -> str | None:
    """Why `name` cannot be a nation or category folder, or None."""
    if not isinstance(name, str):
        return "must be a string"
    if not name.strip():
        return "must not be empty"
    if len(name) > MAX_NAME_CHARS:
        return f"is {len(name)} characters long, at most {MAX_NAME_CHARS} allowed"
    for bad in ("/", "\\", "\x00"):
        if bad in name:
            return f"contains {bad!r}"
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        return "contains a control character"
    if name in (".", ".."):
        return f"must not be {name!r}"
    if name.startswith("."):
        return "must not start with '.'"
    return _portability_problem(name)


def _portability_problem(name: str) -> str | None:
    """What would make the folder invisible, ambiguous or refused on some volume."""
    for ch in name:
        category = unicodedata.category(ch)
        if category in _BAD_CATEGORIES:
            what = "a surrogate" if category == "Cs" else "an invisible or unassigned character"
            return f"contains {what} (U+{ord(ch):04X}); remove it"
        if ch.isspace() and ch != " ":
            return f"contains a space character other than ' ' (U+{ord(ch):04X})"
        if ch in SMB_FORBIDDEN:
            return f"contains {ch!r}, which SMB shares refuse in names"
    if name != name.strip():
        return "starts or ends with a space, which SMB shares drop"
    if name.endswith("."):
        return "ends with '.', which SMB shares drop"
    if name.split(".", maxsplit=1)[0].strip().lower() in RESERVED:
        return f"{name!r} is a device name SMB shares refuse (CON, PRN, AUX, NUL, COM1, LPT1…)"
    return None


def safe_name(name: str) -> str:
    """The NFC form under which a valid name is stored and compared."""
    return unicodedata.normalize("NFC", name)


def name_key(name: str) -> str:
    """Two names with one key are one folder on a case-insensitive volume (APFS, a share
    served by a Mac) or after the Mac's SMB client decomposed them: compare by this."""
    return unicodedata.normalize("NFC", name).casefold()


def derived_names(nation: str, category: str, index: int, image: int) -> list[str]:
    """Every name the daemon makes from one image of a nation/category: the longest ones
    decide whether the names fit."""
    stem = f"{nation}_{category}_{index}_{image}"
    upscaled = f"{stem}_upscaled_1"
    finals = [f"{stem}.png", f"{stem}.json", f"{upscaled}.png", f"{upscaled}.json", upscaled]
    finals.append(f"{upscaled}_seg_9999.png")
    records = [f"{stem}.png.claim", f"{stem}.png.json", f"{upscaled}.png.claim"]
    records += [f"{upscaled}.png.json", f"{nation}_{category}_{index}.claim"]
    broken = [
        longest_held_name(n, CLAIM_BROKEN_MARK, hidden=False)
        for n in records
        if n.endswith(".claim")
    ]
    temps = [longest_held_name(name, TEMP_MARK) for name in finals]
    return finals + records + broken + temps


def longest_name_bytes(nation: str, category: str, last_index: int, images: int) -> int:
    """Bytes of the longest name derived from a job whose indices end at `last_index`."""
    return max(len(n.encode()) for n in derived_names(nation, category, last_index, images))


def key_component(name: str) -> str:
    """A file name for `name_key(name)`: what records named after a user's name (a batch,
    a nation, a category) are created under, so two spellings a Mac takes for one name are
    one record on every server. Long keys keep a readable head and a hash."""
    key = name_key(name)
    raw = key.encode()
    if len(raw) <= 120 and not key.startswith("."):
        return key
    head = raw[:60].decode(errors="ignore").lstrip(".")
    return f"{head}~{hashlib.sha256(raw).hexdigest()[:16]}"
