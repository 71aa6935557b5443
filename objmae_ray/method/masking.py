"""ObjMAE masking (paper section 3): selection -> division -> alignment, vectorised over the batch.

Pipeline for a batch of B images with N patches each (patch index n is row-major over the grid):

1. **Selection** picks a region per image (`[B, N]` bool):
   - ``object``: one eligible object, uniformly at random (the method);
   - ``inter``: source from one eligible object, target from another (the background, i.e. the
     patches in no object slot, eligible or not, counts as an object when the image has exactly
     one eligible object);
   - ``mae``: the whole image (ObjMAE with this selection is MAE);
   - ``cam``: CAM saliency regions (paper section 4.3 and appendix A). ``cam_select="topk"`` (the
     paper's "we select the patches with the most responsible value"): the 2L most salient patches
     (ties in random order), so that alpha limits the region; ``"threshold"`` (appendix A's object
     region): every patch whose normalised CAM is >= ``cam_threshold``, then cut like any region.
   An object is *eligible* when its object ratio (eq. 1) is >= ``min_ratio`` and it covers at
   least ``MIN_REGION_PATCHES`` patches.
2. **Division** splits an intra region at random and equally into source and target
   (sizes ``ceil(R/2)`` and ``floor(R/2)``: the whole region is used, the odd patch goes to the source).
   ``inter`` needs no division: source = A minus B, target = B minus A (patches covered by both
   objects go to neither side, so source and target never share an object's patch).
3. **Alignment** brings both sides to one length L = ``target_length(alpha, N)`` (both sequences
   have ``alpha*H*W`` patches). Regions longer than L are cut at random in every mode. Shorter ones:
   - ``throwout``: L is lowered to the shortest side in the batch, so nothing is padded. Reading that length
     is a host sync; with ``fixed_length=True`` (the train step) the sequences keep L slots and
     ``Masks.keep`` marks the first ``shortest`` of them: the model leaves the others out of attention and
     loss (ObjMAE.forward ``keep``), which gives the same outputs and loss as the cut sequences;
   - ``zero``: padded slots are invalid (``valid=False``): the model zeroes them, no loss. Their
     index repeats one of the side's own patches, so even an index-only consumer gains no information;
   - ``replicate``: the side's own patches are repeated cyclically (all region patches once, then again);
   - ``random``: filled with random patches of the image outside the selected region(s) (source
     first, then target, from one shared pool, so source and target stay disjoint). When that pool
     runs out (only when 2L > N, minus the overlap for ``inter``), the remaining slots replicate the
     side's own patches.

Fallback: an image with no eligible object (``object``/``inter``), fewer than
``MIN_REGION_PATCHES`` CAM patches (``cam`` with ``threshold``), or an ``inter`` pair whose exclusive parts leave a
side empty uses the whole image (``mae`` selection) and is flagged in ``Masks.fallback``. Nothing crashes.

Everything is torch ops over ``[B, N]``/``[B, K, N]`` tensors (no loop over images), seeded through
``generator``, and runs on the device of the inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from objmae_ray.config import PADDINGS, SELECTIONS
from objmae_ray.errors import ConfigError

__all__ = ["CANONICAL_PADDING", "Masks", "PADDINGS", "SELECTIONS", "padding_applies", "sample_masks", "target_length"]
MIN_REGION_PATCHES = 2  # a region must split into a non-empty source and target
ALPHA_STATS = ("encoder_seen_frac", "target_real_frac", "padded_frac", "alpha_effective")  # Masks.alpha_sums


@dataclass
class Masks:
    """Index tensors for one batch. Source/target slots index patches of the `H/p x W/p` grid."""

    src_idx: torch.LongTensor  # [B, L] patches fed to the encoder
    tgt_idx: torch.LongTensor  # [B, L] patches the decoder predicts
    src_valid: torch.BoolTensor  # [B, L] False only for zero-padded slots
    tgt_valid: torch.BoolTensor  # [B, L] False only for zero-padded slots (zero loss weight)
    fallback: torch.BoolTensor  # [B] image used whole-image ("mae") selection instead
    src_real: torch.LongTensor | None = None  # [B] leading source slots holding a source-region patch (rest: padding)
    tgt_real: torch.LongTensor | None = None  # [B] leading target slots holding a target-region patch
    keep: torch.BoolTensor | None = None  # [B, L] throwout at fixed length only: slots inside the cut length

    def stats(self) -> dict[str, float]:
        """Batch summary for logging: share of fallback images and of zero-padded slots."""
        return {
            "mask_fallback_frac": self.fallback.float().mean().item(),
            "mask_src_pad_frac": (~self.src_valid).float().mean().item(),
            "mask_tgt_pad_frac": (~self.tgt_valid).float().mean().item(),
        }

    def alpha_sums(self, num_patches: int) -> torch.Tensor:
        """What alpha did in this batch, summed over its images (divide by the image count for means), on the
        masks' device (no host sync), in ALPHA_STATS order: `encoder_seen` distinct patches in valid source
        slots / N; `target_real` target slots holding a target-region patch / L; `padded` slots (both sides)
        beyond the region, whatever the padding mode put there / 2L; `alpha_effective` L / N (throwout
        lowers L)."""
        batch, length = self.src_idx.shape
        if self.keep is not None:  # throwout at fixed length: L is the number of kept slots (a [B, 1] tensor)
            length = self.keep.sum(1).float()
        seen = torch.zeros(batch, num_patches, dtype=torch.bool, device=self.src_idx.device)
        seen.scatter_(1, torch.where(self.src_valid, self.src_idx, self.src_idx[:, :1]), True)
        per_image = torch.stack([seen.sum(1) / num_patches, self.tgt_real / length,
                                 (2 * length - self.src_real - self.tgt_real) / (2 * length),
                                 torch.zeros_like(self.tgt_real, dtype=torch.float) + length / num_patches])
        return per_image.float().sum(1)


def target_length(alpha: float, num_patches: int) -> int:
    """Length of the source and of the target sequence: `alpha * H*W` patches, at least 1."""
    return max(1, round(alpha * num_patches))


CANONICAL_PADDING = "zero"  # the padding a configuration is filed under when its padding changes nothing


def padding_applies(selection: str, alpha: float, num_patches: int) -> bool:
    """Whether the padding mode can change a trial. It cannot for selection ``mae`` with
    L = target_length(alpha, N) <= floor(N/2): the whole image divides into ceil(N/2) source and floor(N/2)
    target patches, so no slot is ever padded and every mode gives the same masks, bit for bit (the same
    random draws too). Such configurations are one configuration (padding -> CANONICAL_PADDING)."""
    return not (selection == "mae" and target_length(alpha, num_patches) <= num_patches // 2)


# ----------------------------------------------------------------------------- selection


def eligible_objects(object_patches: torch.Tensor, object_ratio: torch.Tensor, min_ratio: float) -> torch.Tensor:
    """Objects that may be selected.

    object_patches: [B, K, N] bool; object_ratio: [B, K] -> [B, K] bool
    (ratio >= min_ratio and at least MIN_REGION_PATCHES patches; empty slots are never eligible).
    """
    return (object_ratio >= min_ratio) & (object_patches.sum(-1) >= MIN_REGION_PATCHES)


def sample_candidates(candidates: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """Draw k distinct candidates per row, uniformly, in random order.

    candidates: [B, K] bool -> [B, k] long (argmax of i.i.d. uniform scores over the True entries;
    rows with fewer than k candidates get arbitrary picks and must be masked by the caller).
    """
    scores = torch.rand(candidates.shape, generator=generator, device=candidates.device)
    scores = scores.masked_fill(~candidates, -1.0)
    return scores.topk(k, dim=1).indices


def gather_region(object_patches: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
    """object_patches: [B, K, N], choice: [B] -> the chosen object's patches [B, N]."""
    index = choice[:, None, None].expand(-1, 1, object_patches.shape[-1])
    return object_patches.gather(1, index).squeeze(1)


def select_object(
    object_patches: torch.Tensor, object_ratio: torch.Tensor, min_ratio: float, generator: torch.Generator | None
) -> torch.Tensor:
    """One eligible object per image, uniformly. [B, K, N], [B, K] -> region [B, N] (empty if none)."""
    eligible = eligible_objects(object_patches, object_ratio, min_ratio)
    choice = sample_candidates(eligible, 1, generator)[:, 0]
    return gather_region(object_patches, choice) & eligible.any(1, keepdim=True)


def select_cam(saliency: torch.Tensor, cam_threshold: float, cam_select: str = "topk", length: int = 1,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """saliency: [B, N] normalised CAM in 0..1 -> region [B, N].

    "topk": the min(2 * length, N) most salient patches of each image (equal saliencies in random order);
    "threshold": saliency >= cam_threshold.
    """
    if cam_select == "threshold":
        return saliency >= cam_threshold
    noise = torch.rand(saliency.shape, generator=generator, device=saliency.device)
    shuffled = noise.argsort(dim=1)  # random order first, then a stable sort by saliency keeps it among ties
    ranked = shuffled.gather(1, saliency.gather(1, shuffled).argsort(dim=1, descending=True, stable=True))
    top = ranked[:, :min(2 * length, saliency.shape[1])]
    return torch.zeros_like(saliency, dtype=torch.bool).scatter_(1, top, True)


def select_inter(
    object_patches: torch.Tensor, object_ratio: torch.Tensor, min_ratio: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source from one object, target from another (Figure 6).

    object_patches: [B, K, N] bool; object_ratio: [B, K].
    Candidates are the eligible objects plus, for images with exactly one eligible object, the
    background (patches in no object slot). An ordered pair (A, B) is drawn uniformly.
    Returns src_region = A \\ B, tgt_region = B \\ A, selected = A | B (all [B, N]) and ok [B]
    (False: fewer than two candidates or an empty side; the caller falls back).
    """
    eligible = eligible_objects(object_patches, object_ratio, min_ratio)  # [B, K]
    background = ~object_patches.any(1)  # [B, N]
    use_background = (eligible.sum(1) == 1) & (background.sum(1) >= MIN_REGION_PATCHES)
    patches = torch.cat([object_patches, background[:, None]], dim=1)  # [B, K+1, N]
    candidates = torch.cat([eligible, use_background[:, None]], dim=1)  # [B, K+1]
    pair = sample_candidates(candidates, 2, generator)  # [B, 2]
    region_a, region_b = gather_region(patches, pair[:, 0]), gather_region(patches, pair[:, 1])
    src_region, tgt_region = region_a & ~region_b, region_b & ~region_a
    ok = (candidates.sum(1) >= 2) & src_region.any(1) & tgt_region.any(1)
    return src_region, tgt_region, region_a | region_b, ok


# ----------------------------------------------------------------------------- division


def random_order(
    first: torch.Tensor, generator: torch.Generator | None, second: torch.Tensor | None = None
) -> torch.Tensor:
    """Patch indices sorted: `first` patches in random order, then `second`, then the rest.

    first, second: [B, N] bool (disjoint) -> [B, N] long permutation per row.
    """
    tier = (~first).float()
    if second is not None:
        tier = tier + (~first & ~second).float()
    noise = torch.rand(first.shape, generator=generator, device=first.device)  # [0, 1): random order within a tier
    return torch.argsort(2.0 * tier + noise, dim=1)  # tiers 2 apart: float rounding of tier + noise never ties


def divide(region: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random equal division of a region: region [B, N] bool -> (src_region, tgt_region) [B, N] bool.

    The source gets ceil(R/2) region patches, the target the other floor(R/2).
    """
    order = random_order(region, generator)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)  # rank[b, n]: place of patch n in order[b]
    num_src = (region.sum(1, keepdim=True) + 1) // 2
    src_region = region & (rank < num_src)
    return src_region, region & ~src_region


# ----------------------------------------------------------------------------- alignment


def alignment_length(src_region: torch.Tensor, tgt_region: torch.Tensor, alpha: float, padding: str,
                     fixed_length: bool = False) -> tuple[int, torch.Tensor | None]:
    """(L, kept): L = target_length(alpha, N); for throwout the shortest side in the batch, capped at that.

    `fixed_length` (throwout only): L stays target_length and `kept` is the cut length as a [] tensor on the
    device (no host sync); otherwise `kept` is None.
    """
    length = target_length(alpha, src_region.shape[1])
    if padding != "throwout":
        return length, None
    shortest = torch.minimum(src_region.sum(1), tgt_region.sum(1)).min().clamp(max=length)
    if fixed_length:
        return length, shortest
    return int(shortest), None


def align(
    region: torch.Tensor, length: int, padding: str, pool: torch.Tensor, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One side's sequence of exactly `length` patches.

    region: [B, N] bool, >= 1 patch per row (the side's patches); pool: [B, N] bool, disjoint from
    region (patches random padding may add). Returns idx [B, L] long, valid [B, L] bool.
    Slot j < |region| holds a random region patch (longer regions are cut at random); later slots
    are padded as the module docstring describes.
    """
    order = random_order(region, generator, pool if padding == "random" else None)[:, :length]  # [B, L]
    count = region.sum(1, keepdim=True)  # [B, 1]
    slot = torch.arange(length, device=region.device).expand_as(order)  # [B, L]
    replicated = order.gather(1, slot % count)  # region patches repeated cyclically; == order where slot < count
    valid = torch.ones_like(order, dtype=torch.bool)
    if padding == "zero":
        valid = slot < count
    if padding == "random":
        from_pool = slot < count + pool.sum(1, keepdim=True)
        return torch.where(from_pool, order, replicated), valid
    return replicated, valid


# ----------------------------------------------------------------------------- entry point


def sample_masks(
    *,
    batch_size: int,
    num_patches: int,
    alpha: float,
    selection: str,
    padding: str,
    object_patches: torch.Tensor | None = None,
    object_ratio: torch.Tensor | None = None,
    saliency: torch.Tensor | None = None,
    min_ratio: float = 0.05,
    cam_threshold: float = 0.3,
    cam_select: str = "topk",
    generator: torch.Generator | None = None,
    device=None,
    fixed_length: bool = False,
) -> Masks:
    """Source/target patch indices for a batch (selection -> division -> alignment).

    object_patches: [B, K, N] bool, patch n belongs to object k (>= 20% of its pixels);
    object_ratio: [B, K] object ratio (eq. 1), 0 for empty slots (both for "object"/"inter");
    saliency: [B, N] normalised CAM in 0..1 ("cam", regions by `cam_select`). Inputs the selection does
    not use are ignored.
    device: default the inputs' device, else the generator's. Returns Masks with [B, L] tensors,
    L = target_length(alpha, N) (throwout: the batch's shortest side, <= that; with `fixed_length` L stays
    target_length and `keep` [B, L] marks the slots before the cut, so no value is read on the host).
    """
    _check_args(batch_size, num_patches, alpha, selection, padding, object_patches, object_ratio, saliency)
    device = _device(device, object_patches, saliency, generator)
    if selection in ("object", "inter"):
        object_patches, object_ratio = object_patches.to(device).bool(), object_ratio.to(device)
    if selection == "cam":
        saliency = select_cam(saliency.to(device), cam_threshold, cam_select, target_length(alpha, num_patches),
                              generator)
    src_region, tgt_region, selected, fallback = select_and_divide(
        selection, batch_size, num_patches, object_patches, object_ratio, saliency, min_ratio, generator, device,
    )
    length, kept = alignment_length(src_region, tgt_region, alpha, padding, fixed_length)
    pool = ~selected  # random padding only: patches outside every selected region
    src_idx, src_valid = align(src_region, length, padding, pool, generator)
    if padding == "random":
        pool = pool & ~torch.zeros_like(pool).scatter_(1, src_idx, True)  # keep source and target disjoint
    tgt_idx, tgt_valid = align(tgt_region, length, padding, pool, generator)
    src_real, tgt_real = src_region.sum(1).clamp(max=length), tgt_region.sum(1).clamp(max=length)
    keep = None
    if kept is not None:  # throwout at fixed length: slots from the cut on are left out (valid False too)
        keep = torch.arange(length, device=src_idx.device).expand_as(src_idx) < kept
        src_valid, tgt_valid = keep, keep
        src_real, tgt_real = torch.minimum(src_real, kept), torch.minimum(tgt_real, kept)
    return Masks(src_idx, tgt_idx, src_valid, tgt_valid, fallback, src_real, tgt_real, keep)


def select_and_divide(
    selection, batch_size, num_patches, object_patches, object_ratio, cam_region, min_ratio, generator, device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Selection + division with whole-image fallback (cam_region: [B, N] bool from `select_cam`).

    Returns src_region, tgt_region, selected (every patch of the selected region(s), for inter the
    whole of both objects, overlap included), all [B, N] bool, and fallback [B] bool.
    """
    whole = torch.ones(batch_size, num_patches, dtype=torch.bool, device=device)
    if selection == "inter":
        src_region, tgt_region, selected, ok = select_inter(object_patches, object_ratio, min_ratio, generator)
        selected = selected | ~ok[:, None]
        whole_src, whole_tgt = divide(whole, generator)
        src_region = torch.where(ok[:, None], src_region, whole_src)
        tgt_region = torch.where(ok[:, None], tgt_region, whole_tgt)
        return src_region, tgt_region, selected, ~ok
    if selection == "object":
        region = select_object(object_patches, object_ratio, min_ratio, generator)
    elif selection == "cam":
        region = cam_region
    else:  # mae
        region = whole
    fallback = region.sum(1) < MIN_REGION_PATCHES
    region = region | fallback[:, None]
    src_region, tgt_region = divide(region, generator)
    return src_region, tgt_region, region, fallback


def _device(device, object_patches, saliency, generator) -> torch.device:
    if device is not None:
        return torch.device(device)
    for tensor in (object_patches, saliency):
        if tensor is not None:
            return tensor.device
    return generator.device if generator is not None else torch.device("cpu")


def _check_args(
    batch_size, num_patches, alpha, selection, padding, object_patches, object_ratio, saliency
) -> None:
    """One clear line per bad argument (field names as in MaskingConfig)."""
    if selection not in SELECTIONS:
        raise ConfigError(f"masking.selection: {selection!r} is not one of {', '.join(SELECTIONS)}")
    if padding not in PADDINGS:
        raise ConfigError(f"masking.padding: {padding!r} is not one of {', '.join(PADDINGS)}")
    if not 0.0 < alpha <= 1.0:
        raise ConfigError(f"masking.alpha: {alpha} must be in (0, 1]")
    if batch_size < 1 or num_patches < MIN_REGION_PATCHES:
        raise ValueError(
            f"sample_masks: need batch_size >= 1 and num_patches >= 2, got {batch_size}, {num_patches}"
        )
    if selection in ("object", "inter"):
        if object_patches is None or object_ratio is None:
            raise ValueError(f"sample_masks: selection {selection!r} needs object_patches and object_ratio")
        if object_patches.dim() != 3 or tuple(object_patches.shape[::2]) != (batch_size, num_patches):
            raise ValueError(
                f"sample_masks: object_patches must be [B={batch_size}, K, N={num_patches}], "
                f"got {tuple(object_patches.shape)}"
            )
        if object_patches.shape[1] < 1:
            raise ValueError("sample_masks: object_patches needs at least one object slot (K >= 1)")
        if tuple(object_ratio.shape) != tuple(object_patches.shape[:2]):
            raise ValueError(
                f"sample_masks: object_ratio must be [B, K]={tuple(object_patches.shape[:2])}, "
                f"got {tuple(object_ratio.shape)}"
            )
    if selection == "cam":
        if saliency is None:
            raise ValueError("sample_masks: selection 'cam' needs saliency")
        if tuple(saliency.shape) != (batch_size, num_patches):
            raise ValueError(
                f"sample_masks: saliency must be [B={batch_size}, N={num_patches}], got {tuple(saliency.shape)}"
            )
