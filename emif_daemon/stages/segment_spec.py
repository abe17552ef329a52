"""What the segment model process needs: a small picklable spec, shared by the stage (which
starts the process) and `segment_model` (which runs in it), and its out-of-memory plan."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from emif_daemon.config.schema import SegmentConfig

GENERATOR_SETTINGS = (
    "points_per_side",
    "pred_iou_thresh",
    "stability_score_thresh",
    "stability_score_offset",
    "box_nms_thresh",
)


@dataclass(frozen=True)
class ModelSpec:
    """What the child process needs to build the model and cut an image (picklable)."""

    model_type: str
    checkpoint: str
    device: str = "auto"
    builder: str = ""  # "module:function" returning an unloaded Sam; "" = the registry's
    points_per_side: int = 32
    points_per_batch: int = 0  # 0: by device, see segment_model.AUTO_BATCH
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    min_area_fraction: float = 0.001
    cutout: str = "square"
    padding: float = 0.05
    box_nms_thresh: float = 0.7  # SAM's defaults; not config keys (benchmarks calibrate them)
    stability_score_offset: float = 1.0

    def generator_settings(self) -> dict[str, Any]:
        """SamAutomaticMaskGenerator's arguments that this spec sets (the batch aside)."""
        return {name: getattr(self, name) for name in GENERATOR_SETTINGS}

    @classmethod
    def from_config(cls, cfg: SegmentConfig, builder: str = "") -> ModelSpec:
        """The child's spec from the [segment] section: every field the two share, by name."""
        shared = {f.name for f in dataclasses.fields(cls)} & {
            f.name for f in dataclasses.fields(cfg)
        }
        values = {name: getattr(cfg, name) for name in shared}
        values["checkpoint"] = str(cfg.checkpoint)
        return cls(builder=builder, **values)


def retry_steps(device: str, batch: int, cpu_batch: int) -> list[tuple[str, int]]:
    """(device, decode batch) to try an image with, in order, when memory runs out: half the
    batch each time down to 1, then the CPU (docs/segment.md#out-of-memory)."""
    steps = [(device, batch)]
    while batch > 1:
        batch //= 2
        steps.append((device, batch))
    if device != "cpu":
        steps.append(("cpu", cpu_batch))
    return steps
