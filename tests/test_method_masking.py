"""ObjMAE masking: selection / division / alignment invariants (paper section 3)."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from objmae_ray.errors import ConfigError
from objmae_ray.method.masking import PADDINGS, SELECTIONS, Masks, sample_masks, select_cam, target_length

MIN_RATIO = 0.05


# ----------------------------------------------------------------------------- helpers


def rect(grid: int, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """[N] bool: a rectangle of patches on a grid x grid image (row-major)."""
    mask = torch.zeros(grid, grid, dtype=torch.bool)
    mask[top : top + height, left : left + width] = True
    return mask.flatten()


def scene(objects: list[list[tuple[torch.Tensor, float]]], num_patches: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image lists of (patches [N], ratio) -> object_patches [B, K, N], object_ratio [B, K]."""
    num_slots = max(1, max(len(image) for image in objects))
    patches = torch.zeros(len(objects), num_slots, num_patches, dtype=torch.bool)
    ratio = torch.zeros(len(objects), num_slots)
    for b, image in enumerate(objects):
        for k, (mask, r) in enumerate(image):
            patches[b, k], ratio[b, k] = mask, r
    return patches, ratio


def random_scene(seed: int, batch: int, grid: int, slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random overlapping rectangles; some slots empty, some objects below min_ratio."""
    gen = torch.Generator().manual_seed(seed)
    randint = lambda lo, hi: int(torch.randint(lo, hi + 1, (), generator=gen))  # noqa: E731
    objects = []
    for _ in range(batch):
        image = []
        for _ in range(randint(0, slots)):
            height, width = randint(1, grid), randint(1, grid)
            mask = rect(grid, randint(0, grid - height), randint(0, grid - width), height, width)
            image.append((mask, float(torch.rand((), generator=gen)) * 0.3))  # ~1/6 below 0.05
        objects.append(image)
    return scene(objects, grid * grid)


def eligible(patches: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """[B, K] objects the spec allows: ratio >= 0.05 and at least 2 patches."""
    return (ratio >= MIN_RATIO) & (patches.sum(-1) >= 2)


def as_set(row: torch.Tensor, keep: torch.Tensor | None = None) -> set[int]:
    return set((row[keep] if keep is not None else row).tolist())


def members(mask: torch.Tensor) -> set[int]:
    """[N] bool -> set of patch indices."""
    return set(mask.nonzero().flatten().tolist())


def masks_for(selection, padding, alpha, patches=None, ratio=None, saliency=None, seed=0, num_patches=None,
              cam_select="topk") -> Masks:
    batch, n = (patches.shape[0], patches.shape[2]) if patches is not None else saliency.shape
    return sample_masks(
        batch_size=batch, num_patches=num_patches or n, alpha=alpha, selection=selection, padding=padding,
        object_patches=patches, object_ratio=ratio, saliency=saliency, cam_select=cam_select,
        generator=torch.Generator().manual_seed(seed),
    )


# ----------------------------------------------------------------------------- properties (hypothesis)


def check_common(m: Masks, batch: int, num_patches: int, alpha: float, padding: str) -> int:
    """Shapes, index range, source/target disjointness, cyclic repetition. Returns L."""
    length = target_length(alpha, num_patches)
    assert m.src_idx.shape == m.tgt_idx.shape == m.src_valid.shape == m.tgt_valid.shape
    assert m.src_idx.dtype == torch.long and m.src_valid.dtype == torch.bool and m.fallback.shape == (batch,)
    assert m.src_idx.shape[0] == batch
    L = m.src_idx.shape[1]
    if padding == "throwout":
        assert 1 <= L <= length
        assert m.src_valid.all() and m.tgt_valid.all()
    else:
        assert L == length
    if padding != "zero":
        assert m.src_valid.all() and m.tgt_valid.all()
    for idx in (m.src_idx, m.tgt_idx):
        assert ((idx >= 0) & (idx < num_patches)).all()
    for b in range(batch):
        src, tgt = m.src_idx[b], m.tgt_idx[b]
        assert not (as_set(src) & as_set(tgt)), "source and target share a patch"
        for side, valid in ((src, m.src_valid[b]), (tgt, m.tgt_valid[b])):
            if padding == "throwout":
                assert len(as_set(side)) == L
            if padding in ("zero", "replicate"):  # all distinct patches first, then repeated cyclically
                distinct = len(as_set(side))
                assert len(as_set(side[:distinct])) == distinct
                assert torch.equal(side, side[torch.arange(L) % distinct])
            if padding == "zero":  # valid slots are a prefix and hold distinct patches
                n_valid = int(valid.sum())
                assert valid[:n_valid].all() and len(as_set(side[:n_valid])) == n_valid
    return L


def random_scenes(test):
    """Property test over random overlapping scenes x every padding mode."""
    return settings(max_examples=150, deadline=None)(given(
        seed=st.integers(0, 2**31 - 1),
        batch=st.integers(1, 5),
        grid=st.integers(2, 8),
        slots=st.integers(1, 5),
        alpha=st.floats(0.01, 1.0),
        padding=st.sampled_from(PADDINGS),
    )(test))


@random_scenes
def test_object_selection_properties(seed, batch, grid, slots, alpha, padding):
    patches, ratio = random_scene(seed, batch, grid, slots)
    m = masks_for("object", padding, alpha, patches, ratio, seed=seed)
    L = check_common(m, batch, grid * grid, alpha, padding)
    ok = eligible(patches, ratio)
    assert torch.equal(m.fallback, ~ok.any(1)), "fallback exactly when no eligible object"
    for b in range(batch):
        if m.fallback[b] or padding == "random":
            continue
        used = as_set(m.src_idx[b]) | as_set(m.tgt_idx[b])
        objects = [members(patches[b, k]) for k in range(patches.shape[1]) if ok[b, k]]
        assert any(used <= obj for obj in objects), "patches outside every eligible object"
        n_src, n_tgt = int(m.src_valid[b].sum()), int(m.tgt_valid[b].sum())
        assert n_src - n_tgt in (0, 1), "division is not equal"
        if padding == "zero" and n_src < L:  # nothing cut: the valid slots are exactly one object
            valid = as_set(m.src_idx[b], m.src_valid[b]) | as_set(m.tgt_idx[b], m.tgt_valid[b])
            assert valid in objects


@random_scenes
def test_inter_selection_properties(seed, batch, grid, slots, alpha, padding):
    patches, ratio = random_scene(seed, batch, grid, slots)
    m = masks_for("inter", padding, alpha, patches, ratio, seed=seed)
    check_common(m, batch, grid * grid, alpha, padding)
    ok = eligible(patches, ratio)
    background = ~patches.any(1)
    for b in range(batch):
        candidates = [members(patches[b, k]) for k in range(patches.shape[1]) if ok[b, k]]
        if len(candidates) == 1 and background[b].sum() >= 2:
            candidates.append(members(background[b]))
        if len(candidates) < 2:
            assert m.fallback[b]
        if m.fallback[b] or padding == "random":
            continue
        src, tgt = as_set(m.src_idx[b]), as_set(m.tgt_idx[b])
        assert any(
            src <= a - c and tgt <= c - a
            for i, a in enumerate(candidates)
            for j, c in enumerate(candidates)
            if i != j
        ), "source and target are not from two different objects (overlap excluded)"


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 5),
    grid=st.integers(2, 8),
    alpha=st.floats(0.01, 1.0),
    padding=st.sampled_from(PADDINGS),
    selection=st.sampled_from(["mae", "cam-threshold", "cam-topk"]),
)
def test_mae_and_cam_properties(seed, batch, grid, alpha, padding, selection):
    saliency = torch.rand(batch, grid * grid, generator=torch.Generator().manual_seed(seed)) ** 3
    selection, _, cam_select = selection.partition("-")
    m = masks_for(selection, padding, alpha, saliency=saliency, seed=seed, cam_select=cam_select or "topk")
    check_common(m, batch, grid * grid, alpha, padding)
    n, length = grid * grid, target_length(alpha, grid * grid)
    if cam_select == "topk":  # the 2L most salient patches (values are distinct almost surely)
        region = saliency >= saliency.sort(1, descending=True).values[:, min(2 * length, n) - 1:min(2 * length, n)]
    else:
        region = saliency >= 0.3 if selection == "cam" else torch.ones_like(saliency, dtype=torch.bool)
    assert torch.equal(m.fallback, region.sum(1) < 2)
    for b in range(batch):
        if not m.fallback[b] and padding != "random":
            assert as_set(m.src_idx[b]) | as_set(m.tgt_idx[b]) <= members(region[b])


# ----------------------------------------------------------------------------- explicit cases


def test_target_length():
    assert target_length(0.34, 196) == 67
    assert target_length(0.5, 196) == 98
    assert target_length(0.25, 784) == 196
    assert target_length(0.001, 196) == 1
    assert target_length(1.0, 49) == 49


@pytest.mark.parametrize("padding", PADDINGS)
def test_mae_alpha_half_is_mae_with_mask_ratio_half(padding):
    saliency = torch.zeros(8, 196)  # unused by "mae"
    m = masks_for("mae", padding, 0.5, saliency=saliency, seed=3)
    assert m.src_idx.shape == (8, 98) and m.src_valid.all() and m.tgt_valid.all() and not m.fallback.any()
    for b in range(8):
        assert torch.equal(torch.cat([m.src_idx[b], m.tgt_idx[b]]).sort().values, torch.arange(196))


@pytest.mark.parametrize("selection", SELECTIONS)
def test_same_seed_same_masks_other_seed_other_masks(selection):
    patches, ratio = random_scene(1, batch=6, grid=8, slots=4)
    saliency = torch.rand(6, 64, generator=torch.Generator().manual_seed(1))
    kwargs = dict(batch_size=6, num_patches=64, alpha=0.25, selection=selection, padding="random",
                  object_patches=patches, object_ratio=ratio, saliency=saliency)
    a = sample_masks(**kwargs, generator=torch.Generator().manual_seed(7))
    b = sample_masks(**kwargs, generator=torch.Generator().manual_seed(7))
    c = sample_masks(**kwargs, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.src_idx, b.src_idx) and torch.equal(a.tgt_idx, b.tgt_idx)
    assert not (torch.equal(a.src_idx, c.src_idx) and torch.equal(a.tgt_idx, c.tgt_idx))


def test_throwout_cuts_to_batch_minimum_and_never_pads():
    grid = 8  # objects of 6, 10, 21 patches -> sides (3, 3), (5, 5), (11, 10) -> L = 3
    patches, ratio = scene([[(rect(grid, 0, 0, 2, 3), 0.1)], [(rect(grid, 2, 2, 2, 5), 0.2)],
                            [(rect(grid, 1, 1, 3, 7), 0.4)]], grid * grid)
    m = masks_for("object", "throwout", 0.5, patches, ratio)
    assert m.src_idx.shape == (3, 3) and m.src_valid.all() and m.tgt_valid.all()
    for b in range(3):
        obj = members(patches[b, 0])
        src, tgt = as_set(m.src_idx[b]), as_set(m.tgt_idx[b])
        assert len(src) == len(tgt) == 3 and src <= obj and tgt <= obj and not src & tgt


def test_throwout_capped_at_target_length():
    grid = 8
    patches, ratio = scene([[(rect(grid, 0, 0, 8, 8), 1.0)], [(rect(grid, 0, 0, 4, 8), 0.5)]], grid * grid)
    m = masks_for("object", "throwout", 0.125, patches, ratio)  # target_length 8 < 16 per side
    assert m.src_idx.shape == (2, 8) and m.src_valid.all()


def seven_patch_object(grid: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """One image, one object of 7 patches (source 4, target 3), plus an ineligible 0.04 object."""
    return scene([[(rect(grid, 0, 0, 1, 7), 0.07), (rect(grid, 5, 0, 3, 3), 0.04)]], grid * grid)


def test_zero_padding_marks_exactly_the_padded_slots():
    patches, ratio = seven_patch_object()
    m = masks_for("object", "zero", 0.1, patches, ratio)  # L = 10
    assert m.src_valid[0].tolist() == [True] * 4 + [False] * 6
    assert m.tgt_valid[0].tolist() == [True] * 3 + [False] * 7
    assert m.stats()["mask_src_pad_frac"] == pytest.approx(0.6)
    assert m.stats()["mask_tgt_pad_frac"] == pytest.approx(0.7)
    valid = as_set(m.src_idx[0], m.src_valid[0]) | as_set(m.tgt_idx[0], m.tgt_valid[0])
    assert valid == members(patches[0, 0])
    # padded slots point at the side's own patches (no extra information even for index-only consumers)
    assert as_set(m.src_idx[0]) == as_set(m.src_idx[0], m.src_valid[0])


def test_replicate_repeats_each_side_evenly():
    patches, ratio = seven_patch_object()
    m = masks_for("object", "replicate", 0.1, patches, ratio)
    src_counts = sorted(torch.bincount(m.src_idx[0], minlength=100)[m.src_idx[0].unique()].tolist())
    tgt_counts = sorted(torch.bincount(m.tgt_idx[0], minlength=100)[m.tgt_idx[0].unique()].tolist())
    assert src_counts == [2, 2, 3, 3] and tgt_counts == [3, 3, 4]
    assert as_set(m.src_idx[0]) | as_set(m.tgt_idx[0]) == members(patches[0, 0])


def test_random_padding_fills_from_outside_the_object():
    patches, ratio = seven_patch_object()
    m = masks_for("object", "random", 0.1, patches, ratio)
    obj = members(patches[0, 0])
    src, tgt = m.src_idx[0].tolist(), m.tgt_idx[0].tolist()
    assert len(set(src)) == len(set(tgt)) == 10 and not set(src) & set(tgt)
    assert set(src[:4]) | set(tgt[:3]) == obj  # region first ...
    assert not (set(src[4:]) | set(tgt[3:])) & obj  # ... then 6 + 7 patches from outside it


def test_random_padding_when_the_pool_runs_out_replicates():
    grid = 4  # object of 4 patches, L = 12: source takes 10 of the 12 outside patches, target gets 2
    patches, ratio = scene([[(rect(grid, 0, 0, 2, 2), 0.25)]], grid * grid)
    m = masks_for("object", "random", 0.75, patches, ratio)
    src, tgt = as_set(m.src_idx[0]), as_set(m.tgt_idx[0])
    assert len(src) == 12 and len(tgt) == 4 and not src & tgt and src | tgt == set(range(16))
    whole = masks_for("mae", "random", 0.75, saliency=torch.zeros(2, 16))  # no pool at all
    for b in range(2):
        assert not as_set(whole.src_idx[b]) & as_set(whole.tgt_idx[b])
        assert len(as_set(whole.src_idx[b])) == len(as_set(whole.tgt_idx[b])) == 8


def test_object_selection_is_uniform_and_skips_small_objects():
    grid, batch = 8, 4000
    objects = [(rect(grid, 0, 0, 2, 4), 0.12), (rect(grid, 0, 4, 2, 4), 0.3), (rect(grid, 2, 0, 2, 8), 0.05),
               (rect(grid, 4, 0, 2, 8), 0.2), (rect(grid, 6, 0, 2, 8), 0.049)]  # last one not eligible
    patches, ratio = scene([objects] * batch, grid * grid)
    patches = torch.cat([patches, torch.zeros(batch, 1, grid * grid, dtype=torch.bool)], 1)  # + empty slot
    ratio = torch.cat([ratio, torch.zeros(batch, 1)], 1)
    m = masks_for("object", "throwout", 0.05, patches, ratio, seed=0)
    object_of_patch = torch.full((grid * grid,), -1)
    for k in range(5):
        object_of_patch[patches[0, k]] = k
    chosen = object_of_patch[m.src_idx[:, 0]]
    assert torch.equal(object_of_patch[m.tgt_idx], chosen[:, None].expand_as(m.tgt_idx))
    counts = torch.bincount(chosen + 1, minlength=7)[1:].float()
    assert counts[4:].sum() == 0 and not m.fallback.any()
    expected = batch / 4
    chi2 = float(((counts[:4] - expected) ** 2 / expected).sum())
    assert chi2 < 16.27  # chi-square, 3 degrees of freedom, p = 0.001


def test_inter_takes_source_and_target_from_two_different_objects():
    grid, batch = 8, 600
    objects = [(rect(grid, 0, 0, 2, 8), 0.25), (rect(grid, 3, 0, 2, 8), 0.25), (rect(grid, 6, 0, 2, 8), 0.25)]
    patches, ratio = scene([objects] * batch, grid * grid)
    object_of_patch = torch.full((grid * grid,), -1)
    for k in range(3):
        object_of_patch[patches[0, k]] = k
    for padding in ("throwout", "zero", "replicate"):
        m = masks_for("inter", padding, 0.25, patches, ratio, seed=1)
        src_obj, tgt_obj = object_of_patch[m.src_idx], object_of_patch[m.tgt_idx]
        assert (src_obj == src_obj[:, :1]).all() and (tgt_obj == tgt_obj[:, :1]).all()
        assert (src_obj[:, 0] != tgt_obj[:, 0]).all() and (src_obj >= 0).all()
        pairs = set(zip(src_obj[:, 0].tolist(), tgt_obj[:, 0].tolist()))
        assert len(pairs) == 6  # every ordered pair of distinct objects occurs


@pytest.mark.parametrize("padding", PADDINGS)
def test_inter_never_uses_patches_shared_by_both_objects(padding):
    grid, batch = 6, 50
    a, c = rect(grid, 0, 0, 3, 4), rect(grid, 1, 2, 4, 4)  # overlap: rows 1-2, columns 2-3
    patches, ratio = scene([[(a, 0.3), (c, 0.4)]] * batch, grid * grid)
    m = masks_for("inter", padding, 0.3, patches, ratio, seed=2)
    overlap = members(a & c)
    assert not m.fallback.any()
    for b in range(batch):
        src, tgt = as_set(m.src_idx[b]), as_set(m.tgt_idx[b])
        assert not (src | tgt) & overlap and not src & tgt
        if padding != "random":
            assert (src <= members(a) and tgt <= members(c)) or (src <= members(c) and tgt <= members(a))


def test_inter_uses_background_when_only_one_object_is_eligible():
    grid, batch = 8, 200
    obj, small = rect(grid, 0, 0, 4, 4), rect(grid, 6, 6, 2, 2)
    patches, ratio = scene([[(obj, 0.25), (small, 0.04)]] * batch, grid * grid)
    m = masks_for("inter", "throwout", 0.1, patches, ratio, seed=4)
    background = members(~(obj | small))
    directions = set()
    for b in range(batch):
        src, tgt = as_set(m.src_idx[b]), as_set(m.tgt_idx[b])
        assert (src <= members(obj) and tgt <= background) or (src <= background and tgt <= members(obj))
        directions.add(src <= members(obj))
    assert directions == {True, False} and not m.fallback.any()


def test_fallback_to_whole_image_for_images_without_eligible_object():
    grid = 4
    patches, ratio = scene([[(rect(grid, 0, 0, 2, 2), 0.04)], [], [(rect(grid, 0, 0, 2, 2), 0.25)]], grid * grid)
    for selection in ("object", "inter"):
        m = masks_for(selection, "zero", 0.5, patches, ratio)
        assert m.fallback.tolist() == [True, True, False]  # inter: the background makes image 2 a pair
        for b in (0, 1):  # whole image, equally divided: MAE with mask ratio 0.5
            assert torch.equal(torch.cat([m.src_idx[b], m.tgt_idx[b]]).sort().values, torch.arange(16))
        assert m.stats()["mask_fallback_frac"] == pytest.approx(2 / 3)


def test_cam_threshold_region_is_saliency_above_threshold():
    saliency = torch.tensor([[0.9, 0.3, 0.29, 0.0, 0.5, 0.31, 0.1, 0.8, 0.0]] * 2)
    saliency[1] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.95, 0.0, 0.0, 0.0, 0.0])  # one patch: cannot split
    m = masks_for("cam", "zero", 1.0, saliency=saliency, cam_select="threshold")
    valid = as_set(m.src_idx[0], m.src_valid[0]) | as_set(m.tgt_idx[0], m.tgt_valid[0])
    assert valid == {0, 1, 4, 5, 7} and m.fallback.tolist() == [False, True]
    assert int(m.src_valid[0].sum()) == 3 and int(m.tgt_valid[0].sum()) == 2


def test_cam_topk_takes_the_most_salient_patches_on_a_ramp():
    """Paper 4.3 ("the patches with the most responsible value"): on a 14 x 14 saliency ramp at alpha 1/16,
    source and target are the 2L = 24 most salient patches, divided at random; the threshold mode keeps every
    patch above 0.3 and cuts at random, so its chosen patches are less salient on average."""
    ramp = torch.linspace(0.0, 1.0, 196)[torch.randperm(196, generator=torch.Generator().manual_seed(1))]
    saliency = ramp.expand(4, -1)
    top = set(saliency[0].argsort(descending=True)[:24].tolist())
    m = masks_for("cam", "zero", 1 / 16, saliency=saliency)
    for b in range(4):
        src, tgt = as_set(m.src_idx[b], m.src_valid[b]), as_set(m.tgt_idx[b], m.tgt_valid[b])
        assert src | tgt == top and not src & tgt and len(src) == len(tgt) == 12
    assert len({tuple(sorted(as_set(m.src_idx[b]))) for b in range(4)}) > 1  # the division is random
    chosen = saliency[0][sorted(top)].mean().item()
    threshold = masks_for("cam", "zero", 1 / 16, saliency=saliency, cam_select="threshold")
    picked = saliency[0][torch.cat([threshold.src_idx[0], threshold.tgt_idx[0]])].mean().item()
    assert chosen == pytest.approx(torch.linspace(0, 1, 196)[-24:].mean().item()) and chosen > 0.93
    assert picked < chosen - 0.2  # a random subset of [0.3, 1] averages about 0.65


def test_cam_topk_breaks_saliency_ties_with_the_generator():
    """A flat saliency map ties every patch, so which 2L patches form the region is drawn from `generator`:
    the same seed gives the same masks, and the region varies from image to image."""
    saliency = torch.full((4, 64), 0.5)  # [B=4, N=64]; alpha 1/16 -> L = 4, region = 2L = 8 patches
    a, b = (masks_for("cam", "zero", 1 / 16, saliency=saliency, seed=5) for _ in range(2))
    assert torch.equal(a.src_idx, b.src_idx) and torch.equal(a.tgt_idx, b.tgt_idx)
    regions = {frozenset(as_set(a.src_idx[i]) | as_set(a.tgt_idx[i])) for i in range(4)}
    assert all(len(region) == 8 for region in regions) and len(regions) > 1


def test_select_cam_defaults_to_topk_of_length_one():
    saliency = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.2]])  # [1, 5]
    assert select_cam(saliency, 0.3).tolist() == [[False, True, False, True, False]]  # 2 * 1 most salient
    assert select_cam(saliency, 0.3, "threshold").tolist() == [[False, True, True, True, False]]  # >= 0.3


def test_bad_arguments_give_one_line_errors():
    patches, ratio = seven_patch_object()
    with pytest.raises(ConfigError, match=r"^masking\.selection: 'objects' is not one of object, inter, mae, cam$"):
        masks_for("objects", "zero", 0.3, patches, ratio)
    with pytest.raises(ConfigError,
                       match=r"^masking\.padding: 'reflect' is not one of throwout, zero, replicate, random$"):
        masks_for("object", "reflect", 0.3, patches, ratio)
    for alpha in (1.5, 0.0, -0.1):
        with pytest.raises(ConfigError, match=rf"^masking\.alpha: {alpha} must be in \(0, 1\]$"):
            masks_for("object", "zero", alpha, patches, ratio)
    masks_for("object", "zero", 1.0, patches, ratio)  # the upper end is allowed
    for batch, n in ((0, 16), (1, 1), (0, 1)):
        with pytest.raises(ValueError, match=rf"^sample_masks: need batch_size >= 1 and num_patches >= 2, got {batch}, {n}$"):
            sample_masks(batch_size=batch, num_patches=n, alpha=0.5, selection="mae", padding="zero")
    two = sample_masks(batch_size=1, num_patches=2, alpha=0.5, selection="mae", padding="zero")  # the smallest grid
    assert (two.src_idx.tolist(), two.tgt_valid.tolist()) in (([[0]], [[True]]), ([[1]], [[True]]))
    for selection in ("object", "inter"):
        for given_ in ({}, {"object_patches": patches}, {"object_ratio": ratio}):
            with pytest.raises(ValueError, match=rf"^sample_masks: selection '{selection}' needs object_patches and "
                                                 "object_ratio$"):
                sample_masks(batch_size=1, num_patches=100, alpha=0.3, selection=selection, padding="zero", **given_)
    with pytest.raises(ValueError, match=r"^sample_masks: object_patches must be \[B=1, K, N=64\], got \(1, 2, 100\)$"):
        masks_for("object", "zero", 0.3, patches, ratio, num_patches=64)
    with pytest.raises(ValueError, match=r"^sample_masks: object_patches needs at least one object slot \(K >= 1\)$"):
        masks_for("inter", "zero", 0.3, patches[:, :0], ratio[:, :0])
    with pytest.raises(ValueError, match=r"^sample_masks: object_ratio must be \[B, K\]=\(1, 2\), got \(1, 4\)$"):
        masks_for("object", "zero", 0.3, patches, ratio.repeat(1, 2))
    with pytest.raises(ValueError, match=r"^sample_masks: selection 'cam' needs saliency$"):
        sample_masks(batch_size=1, num_patches=100, alpha=0.3, selection="cam", padding="zero")
    with pytest.raises(ValueError, match=r"^sample_masks: saliency must be \[B=2, N=16\], got \(2, 15\)$"):
        sample_masks(batch_size=2, num_patches=16, alpha=0.3, selection="cam", padding="zero",
                     saliency=torch.zeros(2, 15))


def test_inter_counts_a_background_of_exactly_two_patches():
    """One eligible object of 2 patches on a 2 x 2 grid: the other 2 patches (the background) are the second
    candidate, so no fallback; source and target are the object and the background."""
    patches, ratio = scene([[(torch.tensor([True, True, False, False]), 0.5)]], 4)
    for seed in range(4):
        m = masks_for("inter", "zero", 0.5, patches, ratio, seed=seed)
        assert not m.fallback.any()
        assert {frozenset(as_set(m.src_idx[0])), frozenset(as_set(m.tgt_idx[0]))} == {frozenset({0, 1}),
                                                                                         frozenset({2, 3})}


@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize("padding", ["zero", "replicate", "random"])  # throwout reads a value (the shortest side)
def test_every_tensor_follows_the_inputs_device(selection, padding):
    """On PyTorch's meta device (shapes only, like a GPU for placement): a tensor made on the CPU default
    inside the masking meets the inputs' tensors and raises, so this checks device placement on a CPU-only
    machine. Inputs on meta, then inputs on the CPU with device="meta"."""
    patches, ratio = random_scene(3, batch=3, grid=4, slots=2)
    saliency = torch.rand(3, 16, generator=torch.Generator().manual_seed(0))
    for device, inputs in (("meta", "meta"), ("meta", "cpu")):
        given_ = ({"saliency": saliency.to(inputs)} if selection == "cam" else  # only what the selection reads
                  {"object_patches": patches.to(inputs), "object_ratio": ratio.to(inputs)} if selection != "mae" else {})
        if selection == "mae" and inputs == "meta":
            continue  # no input tensor to follow
        m = sample_masks(batch_size=3, num_patches=16, alpha=0.25, selection=selection, padding=padding,
                         device=None if inputs == "meta" else device, **given_)
        for t in (m.src_idx, m.tgt_idx, m.src_valid, m.tgt_valid, m.fallback, m.alpha_sums(16)):
            assert t.device.type == "meta"
        assert m.src_idx.shape == m.tgt_valid.shape == (3, 4) and m.fallback.shape == (3,)


def test_without_inputs_or_generator_the_masks_are_on_the_cpu():
    m = sample_masks(batch_size=2, num_patches=16, alpha=0.5, selection="mae", padding="zero")
    assert m.src_idx.device == torch.device("cpu") and m.src_idx.shape == (2, 8)


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
)
def test_runs_on_the_inputs_device_with_its_generator(device):
    patches, ratio = random_scene(5, batch=64, grid=14, slots=6)
    generator = torch.Generator(device=device).manual_seed(0)
    for selection in ("object", "inter"):
        m = sample_masks(batch_size=64, num_patches=196, alpha=0.34, selection=selection, padding="random",
                         object_patches=patches.to(device), object_ratio=ratio.to(device), generator=generator)
        assert m.src_idx.device.type == device and m.tgt_valid.device.type == device
        check_common(Masks(*(t.cpu() for t in (m.src_idx, m.tgt_idx, m.src_valid, m.tgt_valid, m.fallback))),
                     64, 196, 0.34, "random")
    m = sample_masks(batch_size=64, num_patches=196, alpha=0.34, selection="mae", padding="zero",
                     generator=generator)  # no input tensors: the generator's device
    assert m.src_idx.device.type == device and math.isclose(m.stats()["mask_src_pad_frac"], 0.0)
    saliency = torch.rand(64, 196, generator=torch.Generator().manual_seed(0)).to(device)
    m = sample_masks(batch_size=64, num_patches=196, alpha=0.34, selection="cam", padding="zero",
                     saliency=saliency, generator=generator)  # CAM top-k draws its tie-breaking noise there too
    assert m.src_idx.device.type == device and m.alpha_sums(196).device.type == device


@pytest.mark.parametrize("padding, seen", [("zero", 4), ("replicate", 4), ("random", 10)])
def test_alpha_sums_count_what_the_encoder_sees_and_the_padded_slots(padding, seen):
    """A 7-patch object on 100 patches at alpha 0.1 (L = 10): source 4 + target 3 region patches, so 13 of the
    20 slots are padding whatever the mode; the encoder sees 4 distinct patches (zero: 6 invalid slots;
    replicate: the 4 again), or 10 with random padding (6 more from outside the object)."""
    patches, ratio = seven_patch_object()
    m = masks_for("object", padding, 0.1, patches, ratio)
    encoder_seen, target_real, padded, alpha_effective = m.alpha_sums(100).tolist()
    assert encoder_seen == pytest.approx(seen / 100) and target_real == pytest.approx(3 / 10)
    assert padded == pytest.approx(13 / 20) and alpha_effective == pytest.approx(10 / 100)


def test_alpha_sums_under_throwout_lower_l_and_pad_nothing():
    patches, ratio = seven_patch_object()
    m = masks_for("object", "throwout", 0.1, patches, ratio)  # L = min(4, 3) = 3
    assert m.alpha_sums(100).tolist() == pytest.approx([3 / 100, 1.0, 0.0, 3 / 100])


def test_alpha_sums_add_up_per_image_statistics():
    """Two images, zero padding, L = 10 on 100 patches: a 7-patch object (source 4 + target 3) and a 3-patch
    one (source 2 + target 1). Each image's share is computed from its own region, then summed."""
    grid = 10
    patches, ratio = scene([[(rect(grid, 0, 0, 1, 7), 0.07)], [(rect(grid, 5, 0, 1, 3), 0.05)]], grid * grid)
    m = masks_for("object", "zero", 0.1, patches, ratio)
    assert m.src_real.tolist() == [4, 2] and m.tgt_real.tolist() == [3, 1]  # [B]
    encoder_seen, target_real, padded, alpha_effective = m.alpha_sums(100).tolist()
    assert encoder_seen == pytest.approx(4 / 100 + 2 / 100) and target_real == pytest.approx(3 / 10 + 1 / 10)
    assert padded == pytest.approx(13 / 20 + 17 / 20) and alpha_effective == pytest.approx(2 * 10 / 100)


@pytest.mark.parametrize("grid, alpha", [(4, 0.5), (4, 0.25), (5, 0.48), (14, 0.34)])
def test_mae_padding_is_a_no_op_up_to_half_the_patches(grid, alpha):
    """Selection mae with L <= floor(N/2): no slot is padded, so every padding mode gives the same masks, bit for
    bit (padding_applies is False); one patch more and the modes differ (zero marks a padded target slot)."""
    from objmae_ray.method.masking import padding_applies

    n = grid * grid
    saliency = torch.zeros(3, n)  # only gives the batch shape: mae ignores it
    assert target_length(alpha, n) <= n // 2 and not padding_applies("mae", alpha, n)
    runs = [masks_for("mae", padding, alpha, saliency=saliency, seed=5) for padding in PADDINGS]
    for other in runs[1:]:
        for field in ("src_idx", "tgt_idx", "src_valid", "tgt_valid", "fallback"):
            assert torch.equal(getattr(runs[0], field), getattr(other, field)), field
    above = (n // 2 + 1) / n
    assert padding_applies("mae", above, n) and padding_applies("object", alpha, n)
    zero = masks_for("mae", "zero", above, saliency=saliency, seed=5)
    assert not zero.tgt_valid.all()  # the target side (floor(N/2) patches) is padded now
