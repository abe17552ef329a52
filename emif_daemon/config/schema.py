"""config.toml → frozen, validated dataclasses.

Every key is optional, with the default given on its field (docs/configuration.md). The
fields carry their constraints too, read generically by the loader: choices as ``Literal``
types, ranges in metadata (``bounded``), path-ness as the ``Path`` type, payload tables in
metadata (``PAYLOAD``). An unknown key, a wrong type or a value out of range is an error that
names the key (``server.max_attempts: expected an integer, got "3"``); all problems are
reported together so a user fixes the file in one go.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from emif_daemon.config.fields import PAYLOAD, bounded, build, choices_of, resolve_include
from emif_daemon.errors import ConfigError
from emif_daemon.servers.drawthings_files import DRAW_THINGS_MODELS

__all__ = [
    "PAYLOAD",
    "Config",
    "bounded",
    "choices_of",
    "load_config",
    "parse_config",
    "resolve_config_path",
    "resolve_include",
]

DEFAULT_PROMPT_TEMPLATE = (
    "{prompt}, (35mm lens photography), extremely detailed, 4k, shot on dslr, "
    "photorealistic, photographic, sharp"
)


@dataclass(frozen=True)
class PathsConfig:
    root: Path = Path("pipeline")


@dataclass(frozen=True)
class ServerConfig:
    url: str = "http://127.0.0.1:7860"
    connect_timeout_s: float = bounded(5.0, 0.1, None)
    read_timeout_s: float = bounded(900.0, 1, None)
    max_attempts: int = bounded(3, 1, 100)
    max_concurrent: int = bounded(1, 1, 64)
    backoff_s: float = bounded(2.0, 0.01, 600)
    # `emif run --once` gives up on a server that does not answer this long (exit 3)
    once_wait_s: float = bounded(300.0, 0, 86_400)
    api_user: str = ""  # HTTP basic auth, as A1111's --api-auth user:password; "": none
    api_password: str = ""
    # Draw Things' files, read when it runs here (docs/servers.md#files-on-draw-things)
    models_folders: tuple[str, ...] = (DRAW_THINGS_MODELS,)


@dataclass(frozen=True)
class GenerateConfig:
    enabled: bool = True
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    negative_prompt: str = ""
    payload: dict[str, Any] = field(default_factory=dict, metadata=PAYLOAD)
    # Images one prompts file may ask for: a typo (count 10000 × 1000 jobs) is refused at
    # validation instead of exhausting memory and the week.
    max_items_per_file: int = bounded(100_000, 1, 10_000_000)
    # Each answer must have detail (grey levels of neighbour difference at 128²) and more
    # than one colour, else the item fails (docs/servers.md#checks-after-each-answer); 0: off
    min_detail: float = bounded(1.0, 0, 255)


@dataclass(frozen=True)
class UpscaleConfig:
    enabled: bool = True
    server_url: str = ""
    expect_size: tuple[int, ...] = (2048, 2048)
    passes: tuple[dict[str, Any], ...] = field(default=(), metadata=PAYLOAD)
    # Each pass's answer against its input, over the whole picture: SSIM of 32×32 grey
    # thumbnails, and the share of its detail kept (docs/servers.md#checks-after-each-answer).
    # Legitimate passes score above 0.8 and 0.85; 0 turns a measure off.
    min_resemblance: float = bounded(0.5, 0, 1)
    min_detail_ratio: float = bounded(0.5, 0, 100)


@dataclass(frozen=True)
class SegmentConfig:
    enabled: bool = True
    model_type: Literal["vit_h", "vit_l", "vit_b"] = "vit_h"
    checkpoint: Path = Path("models/sam_vit_h_4b8939.pth")
    device: Literal["auto", "mps", "cuda", "cpu"] = "auto"
    points_per_side: int = bounded(32, 1, 256)
    # 0: chosen for the device (small batches are faster on a CPU)
    points_per_batch: int = bounded(0, 0, 1024)
    pred_iou_thresh: float = bounded(0.88, 0, 1)
    stability_score_thresh: float = bounded(0.95, 0, 1)
    min_area_fraction: float = bounded(0.001, 0, 1)
    cutout: Literal["square", "canvas"] = "square"
    padding: float = bounded(0.05, 0, 1)
    recycle_after: int = bounded(50, 1, None)


@dataclass(frozen=True)
class WatchConfig:
    mode: Literal["auto", "poll"] = "auto"
    rescan_interval_s: float = bounded(15.0, 0.05, None)
    settle_s: float = bounded(2.0, 0, None)
    # A changed folder is listed again on every rescan this long: a Mac's SMB client
    # serves listings from its cache for 30–60 s (docs/protocol.md#what-is-not-guaranteed).
    listing_cache_s: float = bounded(60.0, 0, 3600)


@dataclass(frozen=True)
class CoordinationConfig:
    host_id: str = ""
    heartbeat_s: float = bounded(15.0, 0.05, None)
    lease_s: float = bounded(120.0, 0.1, None)
    # How late another Mac may see a claim's new mtime (its SMB client caches attributes).
    attribute_cache_s: float = bounded(30.0, 0, 600)


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    file: str = ""
    progress_s: float = bounded(60.0, 0.1, None)


@dataclass(frozen=True)
class MacosConfig:
    prevent_sleep: bool = True


@dataclass(frozen=True)
class ReportConfig:
    watts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NotifyConfig:
    webhook_url: str = ""
    macos_banner: bool = False
    max_retries: int = bounded(8, 0, 100)


@dataclass(frozen=True)
class GalleryConfig:
    enabled: bool = True  # the daemon refreshes the gallery pages its finished work touched


@dataclass(frozen=True)
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    upscale: UpscaleConfig = field(default_factory=UpscaleConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    coordination: CoordinationConfig = field(default_factory=CoordinationConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    macos: MacosConfig = field(default_factory=MacosConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    gallery: GalleryConfig = field(default_factory=GalleryConfig)
    source: Path | None = None  # the file this came from; not a TOML key

    @property
    def upscale_url(self) -> str:
        return self.upscale.server_url or self.server.url


def resolve_config_path(cli_path: str | None) -> Path:
    """`--config PATH`, else `$EMIF_CONFIG`, else `./config.toml`.

    (docs/configuration.md#finding-the-file)
    """
    return Path(cli_path or os.environ.get("EMIF_CONFIG") or "config.toml")


def load_config(path: Path) -> Config:
    """Read and validate a config file; raises ConfigError listing every problem."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"cannot read the config file: {exc.strerror}"], str(path)) from exc
    try:
        table = tomllib.loads(raw.decode("utf-8-sig"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"not valid TOML: {exc}"], str(path)) from exc
    return parse_config(table, base_dir=path.resolve().parent, source=path.resolve())


def parse_config(table: dict[str, Any], *, base_dir: Path, source: Path | None = None) -> Config:
    """Validate a parsed TOML table; pure apart from reading payload includes."""
    problems: list[str] = []
    sections = build(Config, table, "", base_dir, problems)
    if not problems:
        problems += _across_keys(sections)
    if problems:
        raise ConfigError(problems, str(source or ""))
    return dataclasses.replace(sections, source=source)


def _across_keys(cfg: Config) -> list[str]:
    """Rules that tie keys together, or read a value more closely than its type."""
    problems = []
    c = cfg.coordination
    need = 2 * c.heartbeat_s + c.attribute_cache_s
    if c.lease_s < need:
        problems.append(
            f"coordination.lease_s: {c.lease_s:g} s is too short: other Macs may see a live "
            "claim's heartbeat up to heartbeat_s + attribute_cache_s late, and would break "
            f"it; set it to at least 2 × heartbeat_s + attribute_cache_s = {need:g} s"
        )
    urls = {
        "server.url": cfg.server.url,
        "upscale.server_url": cfg.upscale.server_url,
        "notify.webhook_url": cfg.notify.webhook_url,
    }
    for key, url in urls.items():
        if url and not _URL.fullmatch(url):
            problems.append(
                f"{key}: {url!r} is not an http:// or https:// address; write it like "
                "http://127.0.0.1:7860"
            )
    return problems


_URL = re.compile(r"https?://[^/\s:]+(:\d{1,5})?(/\S*)?")
