"""`objmae-sweep validate` refuses a packed store that cannot serve a phase, naming the store: packed from
another dataset kind or source, or without the CAM grids selection 'cam' needs (data/store_check.py)."""
from __future__ import annotations

import textwrap

import pytest

from objmae_ray.data.cli import main as data_main
from objmae_ray.sweep.spec import SpecError, load_spec
from trial_helpers import noise_folder

SPEC = """\
study: stores
objectives: [{{metric: top1, mode: max}}]
sampler: {{kind: list}}
base:
  model: {{preset: micro, img_size: 32, patch_size: 8}}
  masking: {{alpha: 0.25, selection: {selection}}}
  pretrain: {{epochs: 1, warmup_epochs: 0, batch_size: 4, lr: 1.0e-3,
             data: {{kind: {kind}, store: {store}{root}}}}}
  transfer:
    - {{epochs: 1, warmup_epochs: 0, batch_size: 4, lr: 1.0e-3, data: {{kind: folder, store: {store}}}}}
configurations: [{{alpha: 0.25}}]
"""


@pytest.fixture(scope="module")
def folder_store(tmp_path_factory):
    """An ImageFolder (train + val) packed without a CAM cache: RGB + labels only."""
    base = tmp_path_factory.mktemp("folder")
    for split in ("train", "val"):
        noise_folder(base / "src" / split, ("a", "b"), [(40, 48), (36, 36)])
    assert data_main(["pack", "--kind", "folder", "--root", str(base / "src"), "--out", str(base / "store"),
                      "--workers", "1", "--quiet"]) == 0
    other = base / "other"
    for split in ("train", "val"):
        noise_folder(other / split, ("a", "b", "c"), [(40, 48)])
    return base / "store", base / "src", other


def problems(tmp_path, **fields) -> list[str]:
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(SPEC.format(**{"root": "", **fields})))
    try:
        load_spec(path)
    except SpecError as err:
        return err.problems
    return []


def test_a_cam_study_on_a_store_without_cam_grids_is_refused(folder_store, tmp_path):
    store, _, _ = folder_store
    found = problems(tmp_path, selection="cam", kind="folder", store=store)
    assert len(found) == 1 and "pretrain.data.store" in found[0]
    assert f"{store / 'train'}: packed without CAM grids; selection 'cam' needs them" in found[0]


def test_a_store_of_another_kind_or_source_is_refused(folder_store, tmp_path):
    store, source, other = folder_store
    found = problems(tmp_path, selection="object", kind="coco", store=store)
    assert any(f"{store / 'train'}: packed from a 'folder' dataset, not 'coco'" in line for line in found)
    assert problems(tmp_path, selection="mae", kind="folder", store=store, root=f", root: {source}") == []
    found = problems(tmp_path, selection="mae", kind="folder", store=store, root=f", root: {other}")
    assert len(found) == 1 and f"{store / 'train'}: packed from a different source than {other / 'train'}" in found[0]


def test_a_missing_split_is_named_and_an_absent_store_is_left_to_the_workers(folder_store, tmp_path):
    store, _, _ = folder_store
    (tmp_path / "empty").mkdir()
    found = problems(tmp_path, selection="mae", kind="folder", store=tmp_path / "empty")
    assert any("has no packed split 'train' (packed splits: none)" in line for line in found)
    assert problems(tmp_path, selection="mae", kind="folder", store=tmp_path / "on-the-workers") == []
