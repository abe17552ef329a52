"""SAM's mask decoder, its image side computed once per image (docs/segment.md#the-shared-decoder).

The automatic generator decodes 1024 point prompts against one image embedding, and SAM's
``MaskDecoder`` repeats that embedding per prompt and projects it again every time. Here,
with the very weights of segment_anything's modules:

- once per model: the dense positional encoding and its projections (keys of every
  token→image attention, queries of every image→token attention);
- once per image: the embedding plus the no-mask dense prompt (the same for every point
  prompt), and the first block's projections of it — keys and values read by the tokens,
  queries that attend to the tokens. Only the first block's: each block's image→token
  attention rewrites the image side with the prompt's tokens;
- per prompt, from the second block on, the image side's projections are folded into the
  seven tokens (q·Wk·x = (Wkᵀq)·x, Σ softmax·(Wv·x) = Wv·(Σ softmax·x)), so no per-prompt
  4096×256 projection is ever made; the output projection is folded into the values;
- the mask head (upscaling and hypernetworks, its 2×2 transposed convolutions as matrix
  products on channels-last pixels) runs only for the prompts asked for: the generator asks
  for those whose predicted IoU lets at least one mask through.

The arithmetic is rearranged, not changed: logits agree with ``MaskDecoder`` to float noise,
which `self_check` verifies at start-up against the installed package, after
`check_internals` has found every attribute used here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import torch
from torch import Tensor, nn

from emif_daemon.errors import StageUnavailable

PINNED_VERSION = "1.0"  # segment-anything, as pinned in pyproject.toml
_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj", "num_heads")
_BLOCK = (
    "self_attn",
    "norm1",
    "cross_attn_token_to_image",
    "norm2",
    "mlp",
    "norm3",
    "cross_attn_image_to_token",
    "norm4",
    "skip_first_layer_pe",
)
_DECODER = (
    "iou_token",
    "mask_tokens",
    "num_mask_tokens",
    "output_upscaling",
    "output_hypernetworks_mlps",
    "iou_prediction_head",
)
SELF_CHECK_TOLERANCE = 1e-3  # of the logits' scale; float noise is ~1e-6


def _required(model: Any) -> list[str]:
    """Dotted paths of every attribute of segment_anything's modules used here."""
    paths = ["mask_threshold", "prompt_encoder.get_dense_pe", "prompt_encoder.no_mask_embed"]
    paths += [f"mask_decoder.{name}" for name in _DECODER]
    paths += ["mask_decoder.transformer.layers", "mask_decoder.transformer.norm_final_attn"]
    paths += [f"mask_decoder.transformer.final_attn_token_to_image.{a}" for a in _ATTENTION]
    layers = getattr(
        getattr(getattr(model, "mask_decoder", None), "transformer", None), "layers", []
    )
    for i in range(len(layers) if isinstance(layers, nn.ModuleList) else 1):
        block = f"mask_decoder.transformer.layers[{i}]"
        paths += [f"{block}.{name}" for name in _BLOCK]
        for attn in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token"):
            paths += [f"{block}.{attn}.{a}" for a in _ATTENTION]
    return paths


def _lookup(model: Any, path: str) -> bool:
    obj = model
    for part in path.split("."):
        name, _, index = part.partition("[")
        if not hasattr(obj, name):
            return False
        obj = getattr(obj, name)
        if index:
            if int(index[:-1]) >= len(obj):
                return False
            obj = obj[int(index[:-1])]
    return True


def installed_version() -> str:
    try:
        return metadata.version("segment-anything")
    except metadata.PackageNotFoundError:
        return "unknown"


def _incompatible(what: str) -> StageUnavailable:
    return StageUnavailable(
        f"the segment stage's shared mask decoder needs {what} (segment-anything "
        f"{PINNED_VERSION}, installed: {installed_version()}); install "
        f"segment-anything=={PINNED_VERSION} as pinned in pyproject.toml"
    )


def check_internals(model: Any) -> None:
    """Fail with the missing attribute's name when segment_anything's internals moved."""
    missing = [path for path in _required(model) if not _lookup(model, path)]
    if missing:
        raise _incompatible(f"{missing[0]}, which this segment_anything model lacks")
    if len(model.mask_decoder.transformer.layers) < 1:
        raise _incompatible("at least one two-way attention block")
    layers = list(model.mask_decoder.output_upscaling)
    convs = layers[0::3] if len(layers) == 5 else []
    if len(convs) != 2 or not all(map(_is_2x2_upscaling, convs)) or not hasattr(layers[1], "eps"):
        raise _incompatible(
            "mask_decoder.output_upscaling to be ConvTranspose2d(kernel 2, stride 2), "
            "LayerNorm2d, activation, ConvTranspose2d(kernel 2, stride 2), activation"
        )


def _is_2x2_upscaling(conv: Any) -> bool:
    return (
        isinstance(conv, nn.ConvTranspose2d)
        and conv.kernel_size == (2, 2)
        and conv.stride == (2, 2)
        and conv.padding == (0, 0)
        and conv.bias is not None
    )


def _heads(x: Tensor, heads: int) -> Tensor:
    """(1, N, I) projections of the image side → (heads, N, I / heads)."""
    return x[0].view(x.shape[1], heads, -1).transpose(0, 1).contiguous()


def _weights(linear: nn.Linear, heads: int) -> Tensor:
    """A projection's weight as (heads, d, C_in), head h being rows h·d … (h+1)·d."""
    return linear.weight.view(heads, -1, linear.weight.shape[1])


def _attend_shared(attn: Any, q_in: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    """Tokens → image where the image's keys/values (heads, N, d) are the same for all."""
    b, t, _ = q_in.shape
    h, _, d = keys.shape
    q = attn.q_proj(q_in).view(b, t, h, d).permute(2, 0, 1, 3).reshape(h, b * t, d)
    weights = torch.bmm(q, keys.transpose(1, 2)).div_(math.sqrt(d)).softmax(-1)
    out = torch.bmm(weights, values).view(h, b, t, d).permute(1, 2, 0, 3)
    return attn.out_proj(out.reshape(b, t, h * d))  # type: ignore[no-any-return]


def _attend(attn: Any, q_in: Tensor, image: Tensor, key_pe: Tensor) -> Tensor:
    """Tokens → a per-prompt image side (B, N, C), its key/value projections folded into
    the tokens; `key_pe` (heads, N, d) is the positional term of the keys with their bias."""
    b, t, c = q_in.shape
    h, n, d = key_pe.shape
    q = attn.q_proj(q_in).view(b, t, h, d).transpose(1, 2)  # (B, h, T, d)
    folded = torch.einsum("bhtd,hdc->bhtc", q, _weights(attn.k_proj, h)).reshape(b, h * t, c)
    pe = torch.bmm(q.transpose(0, 1).reshape(h, b * t, d), key_pe.transpose(1, 2))
    pe = pe.view(h, b, t, n).transpose(0, 1).reshape(b, h * t, n)
    weights = torch.baddbmm(pe, folded, image.transpose(1, 2)).div_(math.sqrt(d)).softmax(-1)
    mixed = torch.bmm(weights, image).view(b, h, t, c)  # Σ softmax·x, then project once
    out = torch.einsum("bhtc,hdc->bthd", mixed, _weights(attn.v_proj, h))
    out = out + attn.v_proj.bias.view(h, d)  # the softmax weights sum to one
    return attn.out_proj(out.reshape(b, t, h * d))  # type: ignore[no-any-return]


def _update_image(attn: Any, image: Tensor, scores: Tensor, v_tokens: Tensor) -> Tensor:
    """Image → tokens from scaled scores (B, h, T, N): the image side plus the attention
    output, whose output projection is folded into the tokens' values (B, h·T, C)."""
    b, h, t, n = scores.shape
    weights = scores.softmax(2).view(b, h * t, n)  # over the tokens, N stays contiguous
    v = attn.v_proj(v_tokens).view(b, t, h, -1)
    out_w = attn.out_proj.weight.view(-1, h, v.shape[-1])  # (C, h, d)
    values = torch.einsum("bthd,chd->bhtc", v, out_w).reshape(b, h * t, -1)
    values = values + attn.out_proj.bias / h  # each head's weights sum to one: h in all
    return torch.baddbmm(image, weights.transpose(1, 2), values)


def _image_attends_shared(
    attn: Any, image: Tensor, queries: Tensor, q_tokens: Tensor, v_tokens: Tensor
) -> Tensor:
    """Image → tokens where the image side and its queries (heads, N, d) are the same for all."""
    b, t, _ = q_tokens.shape
    h, n, d = queries.shape
    k = attn.k_proj(q_tokens).view(b, t, h, d).permute(2, 0, 1, 3).reshape(h, b * t, d)
    scores = torch.bmm(k, queries.transpose(1, 2)).div_(math.sqrt(d))  # (h, B·T, N)
    scores = scores.view(h, b, t, n).transpose(0, 1).contiguous()
    return _update_image(attn, image, scores, v_tokens)


def _image_attends(
    attn: Any, image: Tensor, query_pe: Tensor, q_tokens: Tensor, v_tokens: Tensor
) -> Tensor:
    """Image → tokens for a per-prompt image side, its query projection folded into the keys;
    `query_pe` (heads, N, d) is the positional term of the queries with their bias."""
    b, t, c = q_tokens.shape
    h, n, d = query_pe.shape
    k = attn.k_proj(q_tokens).view(b, t, h, d).transpose(1, 2)  # (B, h, T, d)
    folded = torch.einsum("bhtd,hdc->bhtc", k, _weights(attn.q_proj, h)).reshape(b, h * t, c)
    pe = torch.bmm(k.transpose(0, 1).reshape(h, b * t, d), query_pe.transpose(1, 2))
    pe = pe.view(h, b, t, n).transpose(0, 1).reshape(b, h * t, n)
    scores = torch.baddbmm(pe, folded, image.transpose(1, 2)).div_(math.sqrt(d))
    return _update_image(attn, image, scores.view(b, h, t, n), v_tokens)


def _transposed_conv(conv: nn.ConvTranspose2d, x: Tensor) -> Tensor:
    """A 2×2, stride-2 ConvTranspose2d on channels-last pixels (…, C_in) → (…, 2, 2, C_out):
    each input pixel makes its own 2×2 block, so it is one matrix product."""
    weight = conv.weight.permute(0, 2, 3, 1).flatten(1)  # (C_in, 2·2·C_out)
    assert conv.bias is not None
    out = torch.addmm(conv.bias.repeat(4), x.reshape(-1, x.shape[-1]), weight)
    return out.view(*x.shape[:-1], 2, 2, -1)


def _upscaled_masks(upscaling: Any, image: Tensor, hyper: Tensor, grid: tuple[int, ...]) -> Tensor:
    """MaskDecoder's output_upscaling and hypernetwork product, computed channels-last
    (image: (B, N, C) over the H×W grid; hyper: (B, M, C / 8)) → (B, M, 4H, 4W)."""
    conv1, norm, act1, conv2, act2 = upscaling
    b, (h, w) = image.shape[0], grid
    x = _transposed_conv(conv1, image.view(b, h, w, -1))  # (B, H, W, 2, 2, C/4)
    x = act1(nn.functional.layer_norm(x, norm.weight.shape, norm.weight, norm.bias, norm.eps))
    x = act2(_transposed_conv(conv2, x))  # (B, H, W, i, j, k, l, C/8)
    masks = torch.bmm(x.view(b, -1, x.shape[-1]), hyper.transpose(1, 2))  # (B, pixels, M)
    masks = masks.view(b, h, w, 2, 2, 2, 2, -1).permute(0, 7, 1, 3, 5, 2, 4, 6)
    return masks.reshape(b, -1, 4 * h, 4 * w)  # row 4y + 2i + k, column 4x + 2j + l


@dataclass
class Decoded:
    """The transformer's output for a batch of prompts; masks are made only where asked."""

    iou_preds: Tensor  # (B, 3): the multimask outputs' predicted IoU
    tokens: Tensor  # (B, 3, C): their mask tokens out of the transformer
    image: Tensor  # (B, N, C) the image side after the transformer


class SharedDecoder:
    """``MaskDecoder`` for many point prompts on one image, reusing the model's weights."""

    @torch.no_grad()
    def __init__(self, model: Any) -> None:
        check_internals(model)
        self.model = model
        self.decoder = model.mask_decoder
        self.transformer = model.mask_decoder.transformer
        pe = model.prompt_encoder.get_dense_pe()  # (1, C, H, W), the same for every image
        self.grid = tuple(pe.shape[-2:])
        self.pe = pe.flatten(2).transpose(1, 2)  # (1, N, C)
        self.blocks = self.transformer.layers
        self.key_pe = [self._pe(b.cross_attn_token_to_image, "k_proj") for b in self.blocks]
        self.query_pe = [self._pe(b.cross_attn_image_to_token, "q_proj") for b in self.blocks]
        self.final_key_pe = self._pe(self.transformer.final_attn_token_to_image, "k_proj")
        self.image: Tensor | None = None

    def _pe(self, attn: Any, projection: str) -> Tensor:
        """The positional term of an attention's keys or queries, bias included, per head."""
        return _heads(getattr(attn, projection)(self.pe), attn.num_heads)

    @torch.no_grad()
    def set_image(self, embedding: Tensor) -> None:
        """The first block's image side, from an image embedding (1, C, H, W)."""
        no_mask = self.model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        self.image = (embedding + no_mask).flatten(2).transpose(1, 2).contiguous()
        first = self.blocks[0]
        to_image, to_tokens = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        with_pe = self.image + self.pe
        self.keys0 = _heads(to_image.k_proj(with_pe), to_image.num_heads)
        self.values0 = _heads(to_image.v_proj(self.image), to_image.num_heads)
        self.queries0 = _heads(to_tokens.q_proj(with_pe), to_tokens.num_heads)

    def decode(self, sparse: Tensor) -> Decoded:
        """The two-way transformer and IoU head for point prompts' sparse embeddings."""
        assert self.image is not None, "set_image first"
        decoder = self.decoder
        tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight])
        tokens = torch.cat([tokens.expand(sparse.shape[0], -1, -1), sparse], dim=1)
        queries, image = tokens, self.image
        for i, block in enumerate(self.blocks):
            queries, image = self._block(i, block, queries, tokens, image)
        final = self.transformer.final_attn_token_to_image
        out = _attend(final, queries + tokens, image, self.final_key_pe)
        queries = self.transformer.norm_final_attn(queries + out)
        iou = decoder.iou_prediction_head(queries[:, 0, :])[:, 1:]
        return Decoded(iou, queries[:, 2 : 1 + decoder.num_mask_tokens], image)

    def _block(
        self, i: int, block: Any, queries: Tensor, query_pe: Tensor, image: Tensor
    ) -> tuple[Tensor, Tensor]:
        """TwoWayAttentionBlock.forward, its image side shared (block 0) or folded."""
        if block.skip_first_layer_pe:
            queries = block.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + block.self_attn(q=q, k=q, v=queries)
        queries = block.norm1(queries)
        q = queries + query_pe
        to_image = block.cross_attn_token_to_image
        if i == 0:
            out = _attend_shared(to_image, q, self.keys0, self.values0)
        else:
            out = _attend(to_image, q, image, self.key_pe[i])
        queries = block.norm2(queries + out)
        queries = block.norm3(queries + block.mlp(queries))
        q = queries + query_pe
        to_tokens = block.cross_attn_image_to_token
        if i == 0:
            image = _image_attends_shared(to_tokens, image, self.queries0, q, queries)
        else:
            image = _image_attends(to_tokens, image, self.query_pe[i], q, queries)
        return queries, block.norm4(image)

    def masks(self, decoded: Decoded, rows: Tensor) -> Tensor:
        """Low-res mask logits (len(rows), 3, 4H, 4W) of the chosen prompts, as MaskDecoder's."""
        decoder = self.decoder
        if len(rows) == 0:
            h, w = self.grid
            return decoded.image.new_zeros(0, decoded.tokens.shape[1], 4 * h, 4 * w)
        every = len(rows) == len(decoded.tokens)
        image = decoded.image if every else decoded.image[rows]
        tokens = decoded.tokens if every else decoded.tokens[rows]
        mlps = decoder.output_hypernetworks_mlps
        hyper = torch.stack([mlps[i + 1](tokens[:, i]) for i in range(tokens.shape[1])], dim=1)
        return _upscaled_masks(decoder.output_upscaling, image, hyper, self.grid)

    def __call__(self, sparse: Tensor) -> tuple[Tensor, Tensor]:
        """(low-res logits, predicted IoU) of every prompt, as ``mask_decoder(…, True)``."""
        decoded = self.decode(sparse)
        rows = torch.arange(sparse.shape[0], device=sparse.device)
        return self.masks(decoded, rows), decoded.iou_preds


def self_check(model: Any, prompts: int = 2) -> float:
    """Decode random prompts on a random embedding both ways; fail when they disagree.

    Returns the largest difference, relative to the logits' scale."""
    shared = SharedDecoder(model)  # checks the attributes first
    device = shared.pe.device
    gen = torch.Generator().manual_seed(0)
    embedding = torch.randn(1, shared.pe.shape[-1], *shared.grid, generator=gen).to(device)
    side = model.prompt_encoder.input_image_size[0]
    points = (torch.rand(prompts, 1, 2, generator=gen) * side).to(device)
    labels = torch.ones(prompts, 1, dtype=torch.int, device=device)
    try:
        with torch.inference_mode():
            prompt = model.prompt_encoder(points=(points, labels), boxes=None, masks=None)
            pe = model.prompt_encoder.get_dense_pe()
            masks, iou = model.mask_decoder(embedding, pe, *prompt, multimask_output=True)
            shared.set_image(embedding)
            ours, our_iou = shared(prompt[0])
    except (AttributeError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise _incompatible(f"to decode as MaskDecoder does ({type(exc).__name__}: {exc})") from exc
    scale = max(1.0, float(masks.abs().max()))
    diff = max(float((ours - masks).abs().max()), float((our_iou - iou).abs().max())) / scale
    if not diff <= SELF_CHECK_TOLERANCE:
        raise _incompatible(f"to reproduce MaskDecoder's logits, which differ by {diff:.2g}")
    return diff
