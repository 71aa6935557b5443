"""ObjMAE model (paper section 3.4): an MAE-style encoder/decoder that sees only source patches
and predicts only target patches, built from timm `Block` / `PatchEmbed`.

Tokens and shapes (B images, N = (H/p) * (W/p) patches, L = source/target length, D / Dd widths):
  imgs     [B, 3, H, W]        ImageNet-normalised pixels
  src_idx  [B, L]  tgt_idx [B, L']   row-major patch indices over the H/p x W/p grid
  src_valid [B, L] tgt_valid [B, L'] False only for zero-padded slots (paper 3.3 "zero padding")

Encoder: the source patches are gathered *before* the linear patch projection (the discarded and
target patches cost nothing), get the fixed 2-D sin-cos position embedding of their grid position,
and are encoded together with the cls token. A zero-padded source slot (src_valid=False) is a
patch of zero pixels with *no* position embedding, i.e. it carries no information about the image
(it is still a token the others attend to, as in the paper's zero padding).
Decoder: the encoded tokens (+ decoder position embedding at their source positions) followed by
one mask token per target slot carrying the decoder position embedding of its target position
(none for padded target slots). The last L' decoder outputs are the predictions, already in
tgt_idx order: no unshuffle (paper 3.4).
Loss: MSE per target patch (mean over its pixels), averaged over valid target slots only.
`keep` [B, L] (throwout at a fixed length, method/masking.py): slots outside it are left out of attention as
keys in the encoder and the decoder, so every kept token's output equals that of the cut sequence.

Encoder parameter names equal timm's VisionTransformer (`cls_token`, `pos_embed` [1, N+1, D],
`patch_embed.proj.*`, `blocks.i.*`, `norm.*`), so `encoder_state_dict()` loads into
`timm.create_model("vit_small_patch16_224")` with only the classifier head missing.
"""
from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from objmae_ray.config import ModelConfig
from objmae_ray.errors import ConfigError

# Table 1: ViT-S encoder 12 x 384 x 6 heads, decoder 4 x 192 x 3 heads. `timm_arch` names the timm
# family whose registered models (e.g. vit_small_patch16_224) the fine-tuning classifier uses.
PRESETS: dict[str, dict] = {
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6,
                      decoder_embed_dim=192, decoder_depth=4, decoder_num_heads=3,
                      mlp_ratio=4.0, timm_arch="vit_small"),
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3,
                     decoder_embed_dim=96, decoder_depth=2, decoder_num_heads=3,
                     mlp_ratio=4.0, timm_arch="vit_tiny"),
    # Tests and CPU smoke runs only: a step on 32-64 px images takes milliseconds.
    "micro": dict(embed_dim=64, depth=2, num_heads=2,
                  decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
                  mlp_ratio=4.0, timm_arch="vit_tiny"),
}

_ENCODER_KEYS = ("embed_dim", "depth", "num_heads", "mlp_ratio")


def get_preset(preset: str) -> dict:
    """PRESETS[preset], or a one-line ConfigError naming the field."""
    if preset not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    return PRESETS[preset]


def _check_sizes(img_size: int, patch_size: int) -> None:
    if patch_size <= 0 or img_size <= 0 or img_size % patch_size:
        raise ConfigError(f"model.patch_size: {patch_size} does not divide model.img_size {img_size}")


def sincos_pos_embed(grid_size: int, dim: int) -> Tensor:
    """Fixed 2-D sin-cos position embedding with a zero row for the cls token: [1, 1 + grid_size**2, dim].

    Row 1 + n belongs to patch n in row-major order over the grid (timm's `build_sincos2d_pos_embed`).
    """
    if dim % 4:
        raise ConfigError(f"model.preset: width {dim} must be divisible by 4 for 2-D sin-cos position embeddings")
    pos = build_sincos2d_pos_embed([grid_size, grid_size], dim=dim)  # [N, dim]
    return torch.cat([torch.zeros(1, dim), pos], dim=0).unsqueeze(0)


def _gather(x: Tensor, idx: Tensor) -> Tensor:
    """x: [B, N, C], idx: [B, L] -> [B, L, C] (rows of x at idx, per image)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class ObjMAE(nn.Module):
    """Object-wise masked autoencoder with a ViT encoder and a light ViT decoder (Table 1)."""

    def __init__(self, *, img_size: int = 224, patch_size: int = 16, embed_dim: int = 384, depth: int = 12,
                 num_heads: int = 6, decoder_embed_dim: int = 192, decoder_depth: int = 4,
                 decoder_num_heads: int = 3, mlp_ratio: float = 4.0, norm_pix_loss: bool = False):
        super().__init__()
        _check_sizes(img_size, patch_size)
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size ** 2
        self.norm_pix_loss = norm_pix_loss

        # encoder (timm VisionTransformer names)
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

        # decoder
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, self.num_patches + 1, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.Sequential(*[
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True) for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size ** 2 * 3)

        self.initialize_weights()

    def initialize_weights(self) -> None:
        """MAE initialisation: sin-cos position embeddings, xavier linears (patch_embed as a linear), tokens N(0, .02)."""
        self.pos_embed.data.copy_(sincos_pos_embed(self.grid_size, self.pos_embed.shape[-1]))
        self.decoder_pos_embed.data.copy_(sincos_pos_embed(self.grid_size, self.decoder_pos_embed.shape[-1]))
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters timm's optimizer factory keeps out of weight decay (as timm's ViT does)."""
        return {"cls_token", "mask_token", "pos_embed", "decoder_pos_embed"}

    # ---- pixels <-> patches -------------------------------------------------------------------
    def patchify(self, imgs: Tensor) -> Tensor:
        """imgs: [B, 3, H, W] -> [B, N, p*p*3], pixels of a patch in (row, col, channel) order (as MAE)."""
        p, h = self.patch_size, self.grid_size
        if imgs.shape[1:] != (3, self.img_size, self.img_size):
            raise ValueError(f"imgs: expected [B, 3, {self.img_size}, {self.img_size}], got {list(imgs.shape)}")
        x = imgs.reshape(imgs.shape[0], 3, h, p, h, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(imgs.shape[0], h * h, p * p * 3)

    def unpatchify(self, x: Tensor) -> Tensor:
        """x: [B, N, p*p*3] -> imgs [B, 3, H, W] (inverse of `patchify`)."""
        p, h = self.patch_size, self.grid_size
        x = x.reshape(x.shape[0], h, h, p, p, 3)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], 3, h * p, h * p)

    # ---- encoder / decoder ----------------------------------------------------------------------
    def embed_patches(self, patches: Tensor) -> Tensor:
        """patches: [B, L, p*p*3] (patchify order) -> tokens [B, L, D] with `patch_embed.proj` as a linear map.

        Same numbers as the conv on the full image, but only for the gathered patches.
        """
        w = self.patch_embed.proj.weight  # [D, 3, p, p]
        return F.linear(patches, w.permute(0, 2, 3, 1).flatten(1), self.patch_embed.proj.bias)

    @staticmethod
    def _run(blocks: nn.Sequential, x: Tensor, attend: Tensor | None) -> Tensor:
        """x [B, T, D] through `blocks`; attend [B, T] bool: the tokens others may attend to (None: all)."""
        if attend is None:
            return blocks(x)
        mask = attend[:, None, None, :]  # [B, 1, 1, T]: SDPA's boolean key mask
        for block in blocks:
            x = block(x, attn_mask=mask)
        return x

    def forward_encoder(self, imgs: Tensor, src_idx: Tensor, src_valid: Tensor | None = None,
                        keep: Tensor | None = None) -> Tensor:
        """imgs: [B, 3, H, W], src_idx / src_valid / keep: [B, L] -> latent [B, 1 + L, D] (cls first, final norm
        applied)."""
        patches = _gather(self.patchify(imgs), src_idx)  # [B, L, p*p*3]
        pos = self.pos_embed[0, 1:][src_idx]  # [B, L, D]
        if src_valid is not None:  # zero padding: no pixels, no position
            weight = src_valid.unsqueeze(-1).to(patches.dtype)
            patches, pos = patches * weight, pos * weight.to(pos.dtype)
        x = self.embed_patches(patches) + pos
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        attend = None if keep is None else torch.cat([keep.new_ones(keep.shape[0], 1), keep], dim=1)
        x = self._run(self.blocks, torch.cat([cls, x], dim=1), attend)
        return self.norm(x)

    def forward_decoder(self, latent: Tensor, src_idx: Tensor, tgt_idx: Tensor,
                        src_valid: Tensor | None = None, tgt_valid: Tensor | None = None,
                        keep: Tensor | None = None) -> Tensor:
        """latent: [B, 1 + L, D], src_idx [B, L], tgt_idx [B, L'] -> pred [B, L', p*p*3] in tgt_idx order
        (keep [B, L]: L' = L, slots outside it attend but are not attended to)."""
        x = self.decoder_embed(latent)  # [B, 1 + L, Dd]
        pos_table = self.decoder_pos_embed[0, 1:]  # [N, Dd]
        src_pos, tgt_pos = pos_table[src_idx], pos_table[tgt_idx]
        if src_valid is not None:
            src_pos = src_pos * src_valid.unsqueeze(-1).to(src_pos.dtype)
        if tgt_valid is not None:
            tgt_pos = tgt_pos * tgt_valid.unsqueeze(-1).to(tgt_pos.dtype)
        cls = x[:, :1] + self.decoder_pos_embed[:, :1]
        src = x[:, 1:] + src_pos
        tgt = self.mask_token.to(x.dtype) + tgt_pos  # [B, L', Dd]
        attend = None if keep is None else torch.cat([keep.new_ones(keep.shape[0], 1), keep, keep], dim=1)
        x = self._run(self.decoder_blocks, torch.cat([cls, src, tgt], dim=1), attend)
        x = self.decoder_norm(x[:, -tgt_idx.shape[1]:])
        return self.decoder_pred(x)

    def forward_loss(self, imgs: Tensor, pred: Tensor, tgt_idx: Tensor, tgt_valid: Tensor | None = None) -> Tensor:
        """MSE between pred [B, L', p*p*3] and the target patches, mean over valid target slots (0 if none)."""
        target = _gather(self.patchify(imgs), tgt_idx)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((pred.float() - target.float()) ** 2).mean(dim=-1)  # [B, L'] per-patch loss
        if tgt_valid is None:
            return loss.mean()
        weight = tgt_valid.to(loss.dtype)
        return (loss * weight).sum() / weight.sum().clamp(min=1.0)

    def forward(self, imgs: Tensor, src_idx: Tensor, tgt_idx: Tensor,
                src_valid: Tensor | None = None, tgt_valid: Tensor | None = None,
                keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """imgs [B, 3, H, W], src_idx/src_valid [B, L], tgt_idx/tgt_valid [B, L'], keep [B, L] (throwout at a fixed
        length, with src_valid = tgt_valid = keep) -> (loss [], pred [B, L', p*p*3])."""
        latent = self.forward_encoder(imgs, src_idx, src_valid, keep)
        pred = self.forward_decoder(latent, src_idx, tgt_idx, src_valid, tgt_valid, keep)
        return self.forward_loss(imgs, pred, tgt_idx, tgt_valid), pred

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """Encoder weights under timm VisionTransformer names (no decoder, no mask token)."""
        return {k: v for k, v in self.state_dict().items()
                if not (k.startswith("decoder") or k == "mask_token")}


def create_objmae(preset: str = "vit_small", *, img_size: int = 224, patch_size: int = 16,
                  norm_pix_loss: bool = False) -> ObjMAE:
    """ObjMAE of a named preset ("vit_small" is the paper's Table 1)."""
    dims = {k: v for k, v in get_preset(preset).items() if k != "timm_arch"}
    return ObjMAE(img_size=img_size, patch_size=patch_size, norm_pix_loss=norm_pix_loss, **dims)


def objmae_from_config(model: ModelConfig) -> ObjMAE:
    """The ObjMAE a trial's `model` section describes (the one place a config becomes a model)."""
    return create_objmae(model.preset, img_size=model.img_size, patch_size=model.patch_size,
                         norm_pix_loss=model.norm_pix_loss)


def timm_vit_name(preset: str, patch_size: int, img_size: int) -> str:
    """The registered timm model of the preset's family closest to (patch_size, img_size).

    "vit_small", 16, 224 -> "vit_small_patch16_224"; sizes without a registered model fall back to
    `<arch>_patch<p>_224`, then `<arch>_patch16_224` (`create_vit_classifier` passes the real
    img_size / patch_size / dims to timm, which also resamples pretrained weights to them).
    """
    arch = get_preset(preset)["timm_arch"]
    for name in (f"{arch}_patch{patch_size}_{img_size}", f"{arch}_patch{patch_size}_224", f"{arch}_patch16_224"):
        if timm.is_model(name):
            return name
    raise ConfigError(f"model.preset: no timm model registered for {preset!r}")


def create_vit_classifier(preset: str, *, img_size: int, patch_size: int, num_classes: int,
                          encoder_state: dict[str, Tensor] | None = None, pretrained: bool = False,
                          global_pool: str = "avg", **timm_kwargs) -> nn.Module:
    """timm VisionTransformer for fine-tuning / linear probing with the ObjMAE encoder weights.

    `encoder_state` is `ObjMAE.encoder_state_dict()`. Only the head (and, with global_pool="avg",
    fc_norm, as in MAE fine-tuning: timm then drops the final `norm`) are newly initialised; any other
    missing or unexpected key is an error. `pretrained=True` loads timm hub weights first (needs
    internet). Extra keyword arguments (e.g. drop_path_rate) go to `timm.create_model`.
    """
    _check_sizes(img_size, patch_size)
    cfg = get_preset(preset)
    if pretrained and preset == "micro":
        raise ConfigError("model.preset: 'micro' has no pretrained timm weights")
    model = timm.create_model(
        timm_vit_name(preset, patch_size, img_size), pretrained=pretrained, num_classes=num_classes,
        img_size=img_size, patch_size=patch_size, global_pool=global_pool,
        **{k: cfg[k] for k in _ENCODER_KEYS}, **timm_kwargs)
    if encoder_state is not None:
        try:
            missing, unexpected = model.load_state_dict(encoder_state, strict=False)
        except RuntimeError as err:  # shape mismatch, e.g. weights of another img_size / patch_size
            reason = str(err).strip().splitlines()[-1].strip()
            raise ConfigError(f"encoder_state: does not fit {preset} p{patch_size} {img_size}px ({reason})") from None
        new_ok = {k for k, _ in model.named_parameters() if k.startswith(("head.", "fc_norm."))}
        dropped_ok = {"norm.weight", "norm.bias"} if isinstance(model.norm, nn.Identity) else set()
        bad_missing, bad_unexpected = set(missing) - new_ok, set(unexpected) - dropped_ok
        if bad_missing or bad_unexpected:
            raise ConfigError(
                f"encoder_state: does not fit {preset} p{patch_size} {img_size}px "
                f"(missing {sorted(bad_missing)[:4]}, unexpected {sorted(bad_unexpected)[:4]})")
    return model
