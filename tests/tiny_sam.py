"""A Segment Anything model built from segment_anything's own modules, small enough to run
in seconds on a CPU; random weights. Same interfaces as the real vit_b/l/h models."""

from __future__ import annotations

from functools import partial

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

DIM = 32


def build() -> Sam:
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
        prompt_encoder=PromptEncoder(
            embed_dim=DIM,
            image_embedding_size=(64, 64),
            input_image_size=(1024, 1024),
            mask_in_chans=8,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=DIM, mlp_dim=64, num_heads=2),
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
