"""A Segment Anything model built from segment_anything's own modules, small enough to run
in seconds on a CPU; random weights. Same interfaces as the real vit_b/l/h models (two
two-way attention blocks in the mask decoder, as theirs).

It can also play a device short of memory: with `EMIF_TINY_SAM_ROOM` set (a test sets it
before the daemon starts, so the segment child inherits it), or `prompt_encoder.room` set, a
decode batch of more prompts than that fails as MPS does when it runs out of memory.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

DIM = 32
ROOM_VARIABLE = "EMIF_TINY_SAM_ROOM"
MPS_OUT_OF_MEMORY = (
    "MPS backend out of memory (MPS allocated: 17.95 GB, other allocations: 1.02 GB, max "
    "allowed: 18.13 GB). Tried to allocate 256.00 MB on private pool. Use "
    "PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0 to disable upper limit for memory allocations "
    "(may cause system failure)."
)


class ShortOfMemory(PromptEncoder):  # type: ignore[misc]  # segment-anything is untyped
    """A prompt encoder whose device has room for `room` prompts per batch (0: any number)."""

    room = 0
    error: type[Exception] = RuntimeError

    def forward(self, points: Any, boxes: Any, masks: Any) -> Any:
        if self.room and points is not None and points[0].shape[0] > self.room:
            raise self.error(MPS_OUT_OF_MEMORY)
        return super().forward(points, boxes, masks)


def build() -> Sam:
    prompt_encoder = ShortOfMemory(
        embed_dim=DIM,
        image_embedding_size=(64, 64),
        input_image_size=(1024, 1024),
        mask_in_chans=8,
    )
    prompt_encoder.room = int(os.environ.get(ROOM_VARIABLE, "0"))
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=1,
            embed_dim=48,
            img_size=1024,
            mlp_ratio=2,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2,
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=False,
            global_attn_indexes=(0,),
            window_size=0,
            out_chans=DIM,
        ),
        prompt_encoder=prompt_encoder,
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=DIM, mlp_dim=64, num_heads=2),
            transformer_dim=DIM,
            iou_head_depth=2,
            iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def save_checkpoint(path: str, seed: int = 0) -> None:
    """A checkpoint file in Meta's format (a plain state dict) with random weights."""
    torch.manual_seed(seed)
    torch.save(build().state_dict(), path)
