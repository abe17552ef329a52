"""What the segment model process needs: a small picklable spec, shared by the stage (which
starts the process) and `segment_model` (which runs in it)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import SegmentConfig


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
    box_nms_thresh: float = 0.7  # SAM's default; not a config key

    @classmethod
    def from_config(cls, cfg: SegmentConfig, builder: str = "") -> ModelSpec:
        """The child's spec from the [segment] section: every field the two share, by name."""
        shared = {f.name for f in dataclasses.fields(cls)} & {
            f.name for f in dataclasses.fields(cfg)
        }
        values = {name: getattr(cfg, name) for name in shared}
        values["checkpoint"] = str(cfg.checkpoint)
        return cls(builder=builder, **values)
