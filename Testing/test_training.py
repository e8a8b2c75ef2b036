"""Training: ingestion, partial-label loss, exact resume, DDP (gloo), incremental tasks, MedContext.

Everything runs on CPU with a tiny network on 32^3 synthetic volumes (4 mm), in seconds each.
"""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml

from HermesSegmentLib.errors import HermesError
from HermesSegmentLib.training import checkpoint, datasets
from HermesSegmentLib.training.config import load_config
from HermesSegmentLib.training.losses import partial_label_loss
from HermesSegmentLib.training.medcontext import consistency_loss, mask_patches
from HermesSegmentLib.training.trainer import Trainer

TINY_MODEL = {"base_channels": 8, "blocks_per_stage": [1, 1, 1, 1], "fusion_depths": [1, 1, 1, 1, 1],
              "modality_tokens": 4, "head_dim": 16}


def _write_case(folder: Path, case: str, rng: np.random.Generator, modality: str, shapes: dict[int, str]) -> None:
    """A 32^3 volume at 4 mm: a body block with a sphere and a box inside, and its label map."""
    z, y, x = np.mgrid[:32, :32, :32]
    label = np.zeros((32, 32, 32), np.uint8)
    centre = rng.integers(11, 21, 3)
    for value, shape in shapes.items():
        if shape == "sphere":
            label[(z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 < 36] = value
        else:
            label[4:10, 4:12, 20:28] = value
    background, body = (-1000.0, 40.0) if modality == "CT" else (0.0, 300.0)
    image = np.full(label.shape, background, np.float32)
    image[2:30, 2:30, 2:30] = body
    image[label == 1] += 120.0
    image[label == 2] -= 60.0 if modality == "CT" else -400.0
    image += rng.normal(0, 5, image.shape).astype(np.float32)
    for array, path in ((image, folder / "imagesTr" / f"{case}_0000.nii.gz"),
                        (label, folder / "labelsTr" / f"{case}.nii.gz")):
        itk = sitk.GetImageFromArray(array)
        itk.SetSpacing((4.0, 4.0, 4.0))
        sitk.WriteImage(itk, str(path))


def _write_dataset(root: Path, name: str, modality: str, shapes: dict[int, str], cases: int = 3, seed: int = 0) -> Path:
    folder = root / name
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(seed)
    for i in range(cases):
        _write_case(folder, f"case_{i:03d}", rng, modality, shapes)
    return folder


@pytest.fixture
def tiny_data(tmp_path):
    """Two partially labelled datasets: CT {1: liver, 2: spleen}, MR {1: liver, 2: kidney_left}."""
    _write_dataset(tmp_path / "data", "CTset", "CT", {1: "sphere", 2: "box"})
    _write_dataset(tmp_path / "data", "MRset", "MR", {1: "sphere", 2: "box"}, seed=1)
    return tmp_path / "data"


def _config_file(tmp_path: Path, data: Path, **overrides) -> Path:
    raw = {
        "name": "tiny-trained", "data_root": str(data), "output": str(tmp_path / "run"),
        "datasets": [
            {"name": "CTset", "path": "CTset", "modality": "CT", "labels": {1: "liver", 2: "spleen"}},
            {"name": "MRset", "path": "MRset", "modality": "MR", "labels": {1: "liver", 2: "kidney_left"}, "weight": 2},
        ],
        "model": TINY_MODEL, "window": [32, 32, 32], "spacing": [4.0, 4.0, 4.0], "steps": 4, "batch_size": 2,
        "lr": 0.003, "warmup_steps": 2, "seed": 3, "val_fraction": 0.34, "checkpoint_every": 2, "log_every": 1,
    }
    raw.update(overrides)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _trainer(tmp_path, data, resume=False, **overrides) -> Trainer:
    torch.set_num_threads(1)  # bitwise-reproducible CPU kernels across the compared runs
    return Trainer(load_config(_config_file(tmp_path, data, **overrides)), resume=resume, show_progress=False)


# ----------------------------------------------------------------------------- config and ingestion

def test_config_errors_are_one_line(tmp_path, tiny_data):
    def error_for(**overrides) -> str:
        with pytest.raises(HermesError) as info:
            load_config(_config_file(tmp_path, tiny_data, **overrides))
        assert "\n" not in str(info.value)
        return str(info.value)

    good = yaml.safe_load(_config_file(tmp_path, tiny_data).read_text())["datasets"]
    assert "folder not found" in error_for(datasets=[{**good[0], "path": "nope"}])
    assert "unknown target" in error_for(datasets=[{**good[0], "labels": {1: "livver"}}]).lower()
    assert "label value 0" in error_for(datasets=[{**good[0], "labels": {0: "liver"}}])
    assert "multiples of 16" in error_for(window=[30, 32, 32])
    assert "unknown key 'stepz'" in error_for(stepz=3)
    assert "'weights_dtype' must be one of float32, float16, bfloat16" in error_for(weights_dtype="float8")
    assert "'recall_until' must be between 0.0 and 1.0" in error_for(recall_until=1.5)
    reversed_clip = {"CT": {"method": "clip_zscore", "clip": [100, -100]}}
    assert "'clip' must be [low, high]" in error_for(normalization=reversed_clip)


def test_ingestion_of_generated_phantoms_is_cached(tmp_path, monkeypatch):
    from HermesSegmentLib import phantoms

    phantoms.write_pseudo_datasets(tmp_path / "ph", cases_per_dataset=2, datasets=["PhantomMR_T1"], max_voxels=40000)
    config = load_config(tmp_path / "ph" / "phantom_config.yaml", output=tmp_path / "run")
    config = dataclasses.replace(config, spacing=(8.0, 8.0, 8.0), window=(32, 32, 32))
    assert config.targets == ("liver", "spleen", "kidney_left", "kidney_right")
    train = datasets.load_cases(config, "train")
    val = datasets.load_cases(config, "val")
    assert len(train) == 1 and len(val) == 1
    case = train[0]
    assert case.image.dtype == np.float32 and case.image.shape == case.label.shape
    assert set(np.unique(case.label)) <= {0, 1, 2, 3, 4} and (np.asarray(case.label) > 0).any()
    assert abs(float(np.mean(case.image))) < 1.5  # z-scored by the inference preprocessing

    def fail(*args, **kwargs):
        raise AssertionError("preprocessed again despite a valid cache entry")

    monkeypatch.setattr(datasets, "preprocess_case", fail)
    again = datasets.load_cases(config, "train")
    np.testing.assert_array_equal(again[0].image, case.image)

    # The model's normalisation (a fine-tuned package's own) decides, not the default: a new cache entry.
    monkeypatch.undo()
    clipped = datasets.load_cases(config, "train", normalizations={
        "MR-T1": {"method": "percentile_clip_zscore", "percentiles": [40.0, 60.0]}})
    assert not np.array_equal(clipped[0].image, case.image)


def test_unknown_label_value_in_data_is_a_one_line_error(tmp_path, tiny_data):
    config = load_config(_config_file(tmp_path, tiny_data, datasets=[
        {"name": "CTset", "path": "CTset", "modality": "CT", "labels": {1: "liver"}}]))
    with pytest.raises(HermesError, match="label value 2 is not in the config's labels"):
        datasets.load_cases(config, "train")


def test_target_masks_let_a_value_belong_to_several_targets(tmp_path, tiny_data):
    config = load_config(_config_file(tmp_path, tiny_data, datasets=[
        {"name": "CTset", "path": "CTset", "modality": "CT", "labels": {1: "liver", 2: ["liver_tumor", "liver"]}}]))
    label = np.array([0, 1, 2], np.uint8)
    masks = datasets.target_masks(label, config.datasets[0], ["liver", "liver_tumor"])
    np.testing.assert_array_equal(masks, [[0, 1, 1], [0, 0, 1]])


def _fit(trainer: Trainer, time_limit: float | None = None) -> Path:
    """``trainer.fit(time_limit)``, which must run to its end and export a package."""
    package = trainer.fit(time_limit)
    assert package is not None, "fit() stopped before exporting a package"
    return package


def _write_cases_file(folder: Path, entries: dict) -> None:
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "round": 1, "square": 2}}))
    (folder / "cases.json").write_text(json.dumps(entries))


@pytest.mark.parametrize("query", ["modality", "annotated_subset"])
def test_unannotated_targets_of_a_case_are_never_trained_nor_scored(tmp_path, tiny_data, query):
    """cases.json: case_001 annotates only the sphere ('round' = liver), its box (spleen) is
    unknown. Its label map lacks the box, as a real partially contoured case would, so training it
    on spleen would teach background where a spleen is; case_002 is in another split and left out.
    (With the modality query spleen is asked in case_001's crops too, but without loss.)"""
    folder = tiny_data / "CTset"
    label_path = folder / "labelsTr" / "case_001.nii.gz"
    label = sitk.ReadImage(str(label_path))
    array = sitk.GetArrayFromImage(label)
    array[array == 2] = 0
    stripped = sitk.GetImageFromArray(array)
    stripped.CopyInformation(label)
    sitk.WriteImage(stripped, str(label_path))
    _write_cases_file(folder, {"case_000": {"annotated": ["round", "square"], "split": "train"},
                               "case_001": {"annotated": ["round"], "split": "train"},
                               "case_002": {"annotated": ["round", "square"], "split": "test"}})
    overrides = {"datasets": [{"name": "CTset", "path": "CTset", "modality": "CT", "labels": {1: "liver", 2: "spleen"},
                               "splits": ["train"]}], "val_fraction": 0.0, "batch_size": 8, "query": query}
    trainer = _trainer(tmp_path, tiny_data, **overrides)
    trainer.prepare_data()
    assert trainer.sampler is not None and trainer.train_cases is not None  # prepare_data made them
    assert {c.files.case: c.annotated for c in trainer.train_cases} == {"case_000": ("liver", "spleen"),
                                                                          "case_001": ("liver",)}
    spleen = trainer.plan.per_dataset[0]["spleen"]
    trained: dict[str, set[int]] = {"case_000": set(), "case_001": set()}
    for _ in range(12):
        batch = trainer.sampler.batch()
        for case, queries, valid in zip(batch.cases, batch.queries.tolist(), batch.valid.tolist()):
            trained[case.split("/")[1]] |= {q for q, v in zip(queries, valid) if v}
    assert spleen in trained["case_000"] and spleen not in trained["case_001"]
    # Validation scores only what a case annotates.
    truth = datasets.target_masks(np.asarray(trainer.train_cases[1].label), trainer.config.datasets[0], ["liver"])
    assert truth.any()
    from HermesSegmentLib.training.trainer import case_dice
    scores = case_dice(trainer.ema, trainer.train_cases[1], trainer.config.datasets[0], trainer.plan.per_dataset[0],
                       (32, 32, 32), 0.25, torch.device("cpu"), list(trainer.train_cases[1].annotated))
    assert set(scores) == {"liver"}


def test_cases_file_mistakes_are_one_line_errors(tmp_path, tiny_data):
    folder = tiny_data / "CTset"

    def error_for(entries, **dataset) -> str:
        _write_cases_file(folder, entries)
        spec = {"name": "CTset", "path": "CTset", "modality": "CT", "labels": {1: "liver", 2: "spleen"}, **dataset}
        with pytest.raises(HermesError) as info:
            datasets.find_cases(load_config(_config_file(tmp_path, tiny_data, datasets=[spec])).datasets[0])
        assert "\n" not in str(info.value)
        return str(info.value)

    every = {f"case_{i:03d}": {"annotated": ["round"]} for i in range(3)}
    assert "neither a label of dataset.json" in error_for({**every, "case_000": {"annotated": ["rond"]}})
    assert "missing from cases.json" in error_for({"case_000": {"annotated": ["round"]}})
    assert "'annotated' list" in error_for({**every, "case_001": {"split": "train"}})
    assert "no case of split" in error_for(every, splits=["validation"])
    (folder / "cases.json").unlink()
    with pytest.raises(HermesError, match="'splits' needs a cases.json"):
        load_config(_config_file(tmp_path, tiny_data, datasets=[
            {"name": "CTset", "path": "CTset", "modality": "CT", "labels": {1: "liver"}, "splits": ["train"]}]))


def test_prepared_datasets_train_without_simpleitk_and_keep_only_the_trained_cases(tmp_path, tiny_data, monkeypatch):
    from HermesSegmentLib.cli import main

    _write_cases_file(tiny_data / "CTset", {"case_000": {"annotated": ["round", "square"], "split": "train"},
                                            "case_001": {"annotated": ["round"], "split": "train"},
                                            "case_002": {"annotated": ["round", "square"], "split": "held-out"}})
    datasets_ = [{"name": "CTset", "path": "CTset", "modality": "CT", "labels": {1: "liver", 2: "spleen"},
                  "splits": ["train"]},
                 {"name": "MRset", "path": "MRset", "modality": "MR", "labels": {1: "liver", 2: "kidney_left"}}]
    config_path = _config_file(tmp_path, tiny_data, datasets=datasets_)
    packed = tmp_path / "packed"
    assert main(["train", str(config_path), "--prepare", str(packed)]) == 0
    assert sorted(p.name for p in (packed / "CTset").iterdir()) == [
        "case_000.image.xz", "case_000.label.xz", "case_001.image.xz", "case_001.label.xz", "prepared.json"]
    original = {(c.files.dataset, c.files.case): c for split in ("train", "val")
                for c in datasets.load_cases(load_config(config_path), split)}

    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # what a GPU server without the imaging stack has
    config = load_config(config_path, data_root=packed)
    loaded = datasets.load_cases(config, "train") + datasets.load_cases(config, "val")
    assert {(c.files.dataset, c.files.case) for c in loaded} == set(original)
    for case in loaded:
        before = original[(case.files.dataset, case.files.case)]
        assert case.annotated == before.annotated
        np.testing.assert_array_equal(case.label, before.label)
        np.testing.assert_allclose(case.image, before.image, atol=0.5 / 64 + 1e-6)
    trainer = Trainer(config, show_progress=False)
    assert np.isfinite(trainer.train_step()["loss"])
    with pytest.raises(HermesError, match="prepared with spacing"):
        datasets.load_cases(dataclasses.replace(config, spacing=(2.0, 2.0, 2.0)), "train")


def test_train_command_runs_from_a_prepared_folder_where_simpleitk_cannot_be_imported(tmp_path, tiny_data):
    """The whole `train` command, in a fresh interpreter whose SimpleITK import fails (a GPU server)."""
    import os
    import subprocess

    from HermesSegmentLib import models
    from HermesSegmentLib.cli import main

    config_path = _config_file(tmp_path, tiny_data, steps=2, weights_dtype="float16")
    packed = tmp_path / "packed"
    assert main(["train", str(config_path), "--prepare", str(packed)]) == 0
    shim = tmp_path / "no_simpleitk"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['SimpleITK'] = None\n", encoding="utf-8")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), str(repo / "HermesSegment")]),
           "OMP_NUM_THREADS": "1"}
    probe = subprocess.run([sys.executable, "-c", "import SimpleITK"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "SimpleITK" in probe.stderr  # the shim does block the import
    out = tmp_path / "run-packed"
    run = subprocess.run([sys.executable, "-m", "HermesSegmentLib.cli", "train", str(config_path), "--data-root",
                          str(packed), "--out", str(out), "--device", "cpu"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (out / "tiny-trained.safetensors").is_file() and (out / "validation.json").is_file()
    assert models.weights_dtype(out / "tiny-trained.safetensors") == "float16"  # the config's weights_dtype


_WORKERS_CHECK = """
import multiprocessing, sys
import numpy as np, torch
from HermesSegmentLib.training.config import load_config
from HermesSegmentLib.training.trainer import Trainer

torch.set_num_threads(1)
trainer = Trainer(load_config(sys.argv[1]), show_progress=False)
trainer.prepare_data()
seen = {next(trainer.batches).cases for _ in range(4)}
assert len(seen) > 1 and all(len(cases) == 2 for cases in seen), seen
assert np.isfinite(trainer.train_step()["loss"])
workers = multiprocessing.active_children()
assert len(workers) >= 2, workers
trainer.close()  # what fit() does when training ends: no worker outlives it
for worker in workers:
    worker.join(timeout=60)
assert not any(worker.is_alive() for worker in workers)
"""


def test_worker_processes_make_the_batches(tmp_path, tiny_data):
    """In a fresh interpreter: the workers are forked, and forking this test process (Qt, VTK,
    OpenVINO and thread pools loaded by the tests before) made the whole run crash (SIGSEGV) when
    the workers were torn down."""
    import os
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo / "HermesSegment"), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", _WORKERS_CHECK, str(_config_file(tmp_path, tiny_data, workers=2))],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]


# ----------------------------------------------------------------------------- losses

def test_partial_label_loss_ignores_unannotated_and_padded_tasks():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, 8)
    masks = (torch.rand(2, 3, 8, 8, 8) > 0.5).float()
    valid = torch.tensor([[True, True, False], [True, False, False]])
    reference = partial_label_loss(logits, masks, valid)
    changed = logits.clone()
    changed[~valid] = torch.randn_like(changed[~valid]) * 100
    changed_masks = masks.clone()
    changed_masks[~valid] = 1 - changed_masks[~valid]
    assert torch.equal(partial_label_loss(changed, changed_masks, valid), reference)
    annotated = logits.clone()
    annotated[0, 1] += 5.0
    assert not torch.isclose(partial_label_loss(annotated, masks, valid), reference)
    # the mean is over annotated tasks only: padding does not dilute it
    only_first = partial_label_loss(logits[:1, :2], masks[:1, :2], valid[:1, :2])
    assert torch.isclose(partial_label_loss(logits[:1], masks[:1], valid[:1]), only_first)


def test_the_recall_term_pushes_an_unseen_small_target_up_where_dice_and_bce_barely_do():
    """All logits at -20 (a task the network does not see yet), a 27-voxel target in a 32^3 window:
    BCE + Dice move the target's logits by almost nothing; the recall term by |target|-independent amounts."""
    logits = torch.full((1, 1, 32, 32, 32), -20.0, requires_grad=True)
    masks = torch.zeros((1, 1, 32, 32, 32))
    masks[0, 0, 10:13, 10:13, 10:13] = 1
    valid = torch.ones((1, 1), dtype=torch.bool)
    push: dict[float, float] = {}
    for weight in (0.0, 0.1):
        logits.grad = None
        partial_label_loss(logits, masks, valid, weight).backward()
        assert logits.grad is not None
        push[weight] = -float(logits.grad[masks > 0].sum())
    assert push[0.1] > 100 * push[0.0] and push[0.1] > 0.09
    # found targets: the term is small (it fades as the target's voxels reach p = 1)
    found = torch.where(masks > 0, torch.tensor(8.0), torch.tensor(-8.0))
    assert float(partial_label_loss(found, masks, valid, 0.1) - partial_label_loss(found, masks, valid)) < 1e-3


def test_the_recall_term_is_on_for_the_first_recall_until_of_the_steps_only(tmp_path, tiny_data, monkeypatch):
    """recall_until 0.5 of 4 steps: the loss gets recall_weight at steps 0-1 and 0 at steps 2-3."""
    from HermesSegmentLib.training import trainer as trainer_module

    used: list[float] = []

    def recording_loss(logits, masks, valid, recall_weight=0.0):
        used.append(recall_weight)
        return partial_label_loss(logits, masks, valid, recall_weight)

    monkeypatch.setattr(trainer_module, "partial_label_loss", recording_loss)
    trainer = _trainer(tmp_path, tiny_data, steps=4, recall_weight=0.3, recall_until=0.5)
    for _ in range(4):
        trainer.train_step()
    assert used == [0.3, 0.3, 0.0, 0.0]


def test_queries_are_random_subsets_of_annotated_targets(tmp_path, tiny_data):
    trainer = _trainer(tmp_path, tiny_data, batch_size=8, query="annotated_subset")
    trainer.prepare_data()
    assert trainer.sampler is not None and trainer.train_cases is not None  # prepare_data made them
    batch = trainer.sampler.batch()
    assert batch.queries.shape == (8, 2) and batch.masks.shape == (8, 2, 32, 32, 32)
    assert torch.equal(batch.valid, batch.queries >= 0)
    assert (batch.masks[~batch.valid] == 0).all()
    tasks = trainer.plan.per_dataset
    for queries, dataset in zip(batch.queries.tolist(), batch.dataset.tolist()):
        asked = [q for q in queries if q >= 0]
        assert asked and set(asked) <= set(tasks[dataset].values())
    assert (batch.valid.sum(1) == 1).any() and (batch.valid.sum(1) == 2).any()


def _with_second_ct_dataset(data: Path) -> list[dict]:
    """tiny_data's datasets plus CTset2 annotating aorta and spleen: CT's tasks come from two datasets."""
    _write_dataset(data, "CTset2", "CT", {1: "sphere", 2: "box"}, seed=2)
    return [{"name": "CTset", "path": "CTset", "modality": "CT", "labels": {1: "liver", 2: "spleen"}},
            {"name": "MRset", "path": "MRset", "modality": "MR", "labels": {1: "liver", 2: "kidney_left"}},
            {"name": "CTset2", "path": "CTset2", "modality": "CT", "labels": {1: "aorta", 2: "spleen"}}]


def test_the_modality_query_asks_every_task_of_the_modality_and_scores_only_the_annotated(tmp_path, tiny_data):
    trainer = _trainer(tmp_path, tiny_data, datasets=_with_second_ct_dataset(tiny_data), query="modality",
                       batch_size=6)
    trainer.prepare_data()
    assert trainer.sampler is not None and trainer.train_cases is not None  # prepare_data made them
    tasks = trainer.plan.per_dataset
    ct_query = sorted({*tasks[0].values(), *tasks[2].values()})
    assert len(ct_query) == 3  # liver, spleen, aorta
    seen = set()
    for _ in range(4):
        batch = trainer.sampler.batch()
        modalities = {trainer.config.datasets[d].modality for d in batch.dataset.tolist()}
        assert len(modalities) == 1  # no padding: every crop of a batch asks the same query
        seen |= modalities
        expected = ct_query if modalities == {"CT"} else sorted(tasks[1].values())
        assert batch.queries.tolist() == [expected] * 6
        for i, dataset in enumerate(batch.dataset.tolist()):
            positions = [expected.index(index) for index in tasks[dataset].values()]
            assert sorted(np.flatnonzero(batch.valid[i].numpy()).tolist()) == sorted(positions)
            assert (batch.masks[i][~batch.valid[i]] == 0).all()
        assert batch.masks[batch.valid].sum() > 0
    assert seen == {"CT", "MR"}


def test_a_model_trained_on_the_modality_query_is_asked_it_by_the_engine(tmp_path, tiny_data, capsys):
    from HermesSegmentLib import models
    from HermesSegmentLib.pipeline import segment_image

    trainer = _trainer(tmp_path, tiny_data, datasets=_with_second_ct_dataset(tiny_data), query="modality", steps=2)
    loaded = models.load(_fit(trainer))
    tasks = trainer.plan.per_dataset
    assert loaded.manifest["queries"] == {"CT": sorted({*tasks[0].values(), *tasks[2].values()}),
                                          "MR": sorted(tasks[1].values())}
    assert loaded.query("CT") == loaded.manifest["queries"]["CT"]
    from HermesSegmentLib.cli import main as cli_main

    assert cli_main(["models", "info", str(loaded.path)]) == 0
    assert "all the tasks trained together for its modality (CT 3, MR 2 tasks)" in capsys.readouterr().out
    image = sitk.ReadImage(str(tiny_data / "CTset" / "imagesTr" / "case_000_0000.nii.gz"))
    alone = segment_image(image, modality="CT", targets=["spleen"], model=loaded, device="cpu", precision="float32")
    both = segment_image(image, modality="CT", targets=["liver", "spleen"], model=loaded, device="cpu",
                         precision="float32")
    shape = image.GetSize()[::-1]
    assert np.array_equal(alone.masks[0].full(shape), both.masks[1].full(shape))
    # A package whose query lacks a target it offers cannot be loaded.
    broken = json.loads(json.dumps(loaded.manifest))
    broken["queries"]["CT"] = broken["queries"]["CT"][:1]
    broken["defaults"]["CT"] = {t["target"]: t["index"] for t in broken["tasks"] if t["target"] in ("liver", "spleen")}
    with pytest.raises(HermesError, match="queries"):
        models.validate_manifest(broken, "broken")


def test_crops_reach_past_the_body_and_keep_their_foreground_voxel(tmp_path, tiny_data):
    trainer = _trainer(tmp_path, tiny_data)
    trainer.prepare_data()
    assert trainer.sampler is not None and trainer.train_cases is not None  # prepare_data made them
    sampler, case = trainer.sampler, trainer.train_cases[0]
    shape = np.array(case.image.shape)
    air = float(np.min(case.image))
    marker = np.zeros(shape, np.uint8)
    reached_outside = 0
    for _ in range(40):
        image, _, _ = sampler._crop(case, None)
        assert image.shape == (32, 32, 32)
        reached_outside += bool((image == air).all(axis=(1, 2)).any())
    assert reached_outside > 0  # random windows also see air beyond the cached body crop
    for voxel in (np.zeros(3, int), shape - 1, shape // 2):
        marker[:] = 0
        marker[tuple(voxel)] = 7
        centred = dataclasses.replace(case, label=marker)
        for _ in range(20):  # jittered, but the voxel the crop was drawn for stays inside it
            _, label, _ = sampler._crop(centred, voxel)
            assert label.shape == (32, 32, 32) and (label == 7).sum() == 1


def test_slab_crops_look_like_a_partial_scan_and_keep_their_foreground_voxel(tmp_path, tiny_data):
    trainer = _trainer(tmp_path, tiny_data, slab_fraction=1.0)
    trainer.prepare_data()
    assert trainer.sampler is not None and trainer.train_cases is not None  # prepare_data made them
    sampler = trainer.sampler
    rng = np.random.default_rng(0)
    axes = []
    for _ in range(40):
        crop = rng.normal(size=(32, 32, 32)).astype(np.float32)  # never equal to the air value
        keep = rng.integers(0, 32, 3)
        label = np.zeros((32, 32, 32), np.uint8)
        label[tuple(keep)] = 7
        image, out_label = sampler._as_slab(crop, label + 1, -9.0, keep)
        assert out_label[tuple(keep)] == 8  # the voxel the crop was drawn for stays in the slab
        air = image == -9.0
        axis = next(a for a in range(3) if air.all(axis=tuple(o for o in range(3) if o != a)).any())
        other = tuple(o for o in range(3) if o != axis)
        kept = np.flatnonzero(~air.all(axis=other))
        assert kept[-1] - kept[0] + 1 == kept.size >= 4  # one contiguous slab ...
        assert (air | (image == crop)).all() and (out_label[air] == 0).all()  # ... air and background beyond it
        axes.append(axis)
    assert axes.count(0) > len(axes) / 2  # mostly along z, the length of a scan
    assert trainer.sampler.batch().image.shape == (2, 1, 32, 32, 32)
    # A per-volume normalisation is redone on the slab, as the engine does on a scan of that slab.
    from HermesSegmentLib.training.sampling import renormalized

    percentile = {"method": "percentile_clip_zscore", "percentiles": [2.0, 98.0]}
    values = rng.normal(3.0, 2.0, size=(8, 32, 32)).astype(np.float32)
    again = renormalized(values, percentile)
    assert abs(float(again.mean())) < 1e-3 and abs(float(again.std()) - 1.0) < 1e-3
    assert renormalized(values, {"method": "clip_fixed_zscore"}) is values  # fixed statistics: unchanged
    from HermesSegmentLib.preprocess.normalization import NORMALIZATIONS
    from HermesSegmentLib.training.sampling import PER_VOLUME_NORMALIZATIONS
    assert set(PER_VOLUME_NORMALIZATIONS) == {m for m, cls in NORMALIZATIONS.items() if cls.per_volume}
    image, _ = sampler._as_slab(rng.normal(3.0, 2.0, size=(32, 32, 32)).astype(np.float32),
                                np.zeros((32, 32, 32), np.uint8), -9.0, None, percentile)
    air = image == image.min()
    axis = next(a for a in range(3) if air.all(axis=tuple(o for o in range(3) if o != a)).any())
    padded = air.all(axis=tuple(o for o in range(3) if o != axis))
    assert abs(float(image.take(np.flatnonzero(~padded), axis).mean())) < 0.05  # the slab alone is z-scored


def test_query_consistency_compares_shared_tasks_and_is_blind_to_query_order(tiny_config):
    from HermesSegmentLib.network import HermesNetwork
    from HermesSegmentLib.training.losses import query_consistency_loss

    logits = torch.randn(2, 3, 4, 4, 4)
    other = torch.randn(2, 2, 4, 4, 4)
    match = torch.tensor([[1, -1, 0], [-1, -1, -1]])
    expected = ((logits[0, 0] - other[0, 1]).pow(2).mean() + (logits[0, 2] - other[0, 0]).pow(2).mean()) / 2
    assert torch.isclose(query_consistency_loss(logits, other, match), expected)
    # The network has no token positions: the same tasks asked in another order give the same logits.
    torch.manual_seed(0)
    network = HermesNetwork(tiny_config).eval()
    image = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        first, _ = network(image, torch.tensor([[0, 2, 4]]), torch.tensor([[1]]))
        second, _ = network(image, torch.tensor([[4, 0, 2]]), torch.tensor([[1]]))
    assert query_consistency_loss(first, second, torch.tensor([[1, 2, 0]])) < 1e-8


def test_query_consistency_draws_overlapping_second_queries_and_trains(tmp_path, tiny_data):
    trainer = _trainer(tmp_path, tiny_data, batch_size=6, query="annotated_subset", query_consistency=1.0)
    trainer.prepare_data()
    assert trainer.sampler is not None and trainer.train_cases is not None  # prepare_data made them
    batch = trainer.sampler.batch()
    second, match = trainer.sampler.alternative_queries(batch.queries, batch.dataset)
    for first, other, slots, dataset in zip(batch.queries.tolist(), second.tolist(), match.tolist(),
                                            batch.dataset.tolist()):
        asked = [q for q in other if q >= 0]
        assert asked and set(asked) <= set(trainer.plan.per_dataset[dataset].values())
        assert any(s >= 0 for s in slots)
        assert all(s < 0 or other[s] == q for q, s in zip(first, slots))
    terms = trainer.train_step()
    assert terms["query_consistency"] > 0 and np.isfinite(terms["loss"])
    with pytest.raises(HermesError, match="query_consistency"):
        _trainer(tmp_path / "bad", tiny_data, query_consistency=-1)


# ----------------------------------------------------------------------------- trainer

def test_a_few_steps_reduce_the_loss(tmp_path, tiny_data):
    trainer = _trainer(tmp_path, tiny_data, steps=24, augment=False, foreground_fraction=1.0, lr=0.01)
    losses = [trainer.train_step()["segmentation"] for _ in range(24)]
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.1


def test_resume_gives_the_same_next_steps_as_an_uninterrupted_run(tmp_path, tiny_data):
    straight = _trainer(tmp_path / "a", tiny_data)
    expected = [straight.train_step()["loss"] for _ in range(4)]

    first = _trainer(tmp_path / "b", tiny_data)
    for _ in range(2):
        first.train_step()
    first.save_checkpoint()
    resumed = _trainer(tmp_path / "b", tiny_data, resume=True)
    assert resumed.step == 2
    got = [resumed.train_step()["loss"] for _ in range(2)]
    np.testing.assert_allclose(got, expected[2:], rtol=1e-5, atol=1e-6)
    for name, value in straight.ema.state_dict().items():
        torch.testing.assert_close(resumed.ema.state_dict()[name], value, rtol=1e-5, atol=1e-6)


def test_a_time_limit_fixes_the_number_of_steps_after_measuring_the_pace(tmp_path, tiny_data, monkeypatch):
    from HermesSegmentLib.training import trainer as trainer_module

    clock = [1000.0]
    monkeypatch.setattr(trainer_module.time, "time", lambda: clock[0])
    trainer = _trainer(tmp_path, tiny_data, steps=500, checkpoint_every=1000, log_every=1000)
    step = trainer.train_step

    def one_second_step():
        clock[0] += 1.0
        return step()

    monkeypatch.setattr(trainer, "train_step", one_second_step)
    reserve = trainer_module._EXPORT_RESERVE
    path = _fit(trainer, time_limit=reserve + 45)  # 45 s of training at 1 s per step
    assert trainer.step == trainer.config.steps == 45
    assert trainer.scheduler.get_last_lr()[0] == 0.0  # the schedule decayed over the new count
    from HermesSegmentLib import models
    assert models.read_manifest(path)["provenance"]["steps"] == 45


def test_a_time_limit_is_kept_when_the_pace_changes_after_it_was_measured(tmp_path, tiny_data, monkeypatch):
    """The pace is measured again every tenth of the run. 1 s per step while it is first measured,
    then 2 s (another process started): the run plans 100 steps, then fewer, and ends near its
    100 s (the first plan alone: 160 s). 2 s per step, then 0.5 s: it plans 150, then more, but
    never more than the config's 200 steps. The schedule decays to zero over the final count."""
    from HermesSegmentLib.training import trainer as trainer_module

    reserve = trainer_module._EXPORT_RESERVE
    clock = [0.0]
    monkeypatch.setattr(trainer_module.time, "time", lambda: clock[0])
    cases = {"slower": (lambda step: 1.0 if step < 40 else 2.0, 500, 100.0),
             "faster": (lambda step: 2.0 if step < 40 else 0.5, 200, 300.0)}
    for name, (seconds, config_steps, budget) in cases.items():
        clock[0] = 1000.0
        trainer = _trainer(tmp_path / name, tiny_data, steps=config_steps, checkpoint_every=1000, log_every=1000)

        def timed_step(trainer=trainer, seconds=seconds):
            # Only the clock, the step count and the schedule matter here: no batch, no gradients.
            clock[0] += seconds(trainer.step)
            trainer.optimizer.step()
            trainer.scheduler.step()
            trainer.step += 1
            return dict.fromkeys(trainer_module._LOG_COLUMNS[2:-1], 0.0)

        monkeypatch.setattr(trainer, "train_step", timed_step)
        _fit(trainer, time_limit=reserve + budget)
        assert trainer.step == trainer.config.steps
        assert trainer.scheduler.get_last_lr()[0] == 0.0
        if name == "slower":
            assert 60 < trainer.step < 80 and clock[0] - 1000.0 <= budget + 5
        else:
            assert trainer.step == config_steps and clock[0] - 1000.0 <= budget


def test_stop_after_pauses_with_a_checkpoint_and_resume_finishes_the_same_schedule(tmp_path, tiny_data):
    paused = _trainer(tmp_path, tiny_data, steps=4)
    assert paused.fit(stop_after=2) is None
    assert checkpoint.load(tmp_path / "run" / "checkpoint")[1]["step"] == 2
    assert not (tmp_path / "run" / "tiny-trained.safetensors").exists()
    resumed = _trainer(tmp_path, tiny_data, resume=True, steps=4)
    assert resumed.fit() is not None and resumed.step == 4


def test_resume_without_checkpoint_is_a_one_line_error(tmp_path, tiny_data):
    with pytest.raises(HermesError, match="no checkpoint to resume"):
        _trainer(tmp_path, tiny_data, resume=True)


def test_fit_exports_a_package_with_measured_dice(tmp_path, tiny_data):
    from HermesSegmentLib import models

    trainer = _trainer(tmp_path, tiny_data, steps=2, offer_min_dice=0.99)
    path = _fit(trainer)
    model = models.load(path)
    manifest = model.manifest
    assert [t["target"] for t in manifest["tasks"]] == ["liver", "spleen", "kidney_left"]
    assert manifest["architecture"]["num_task_priors"] == 3
    assert {m["key"] for m in manifest["modalities"]} == {"CT", "MR"}
    provenance = manifest["provenance"]
    assert provenance["seed"] == 3 and provenance["steps"] == 2
    dice = provenance["metrics"]["validation_dice"]
    assert set(dice) == {"CT", "MR"} and set(dice["MR"]) == {"liver", "kidney_left"}
    for modality, targets in manifest["defaults"].items():  # only what measured >= 0.99 is offered
        assert all(dice[modality][t] >= 0.99 for t in targets)
    log = (tmp_path / "run" / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("step,lr,loss") and len(log) == 3
    validation = json.loads((tmp_path / "run" / "validation.json").read_text())
    assert validation["validation_cases"] == {"CTset": 1, "MRset": 1}
    tensors, state = checkpoint.load(tmp_path / "run" / "checkpoint")
    assert state["step"] == 2 and any(k.startswith("optim.") for k in tensors)


def test_the_configs_normalisation_is_trained_on_and_recorded_and_fine_tuning_inherits_the_packages(
        tmp_path, tiny_data, tiny_package):
    from HermesSegmentLib import models

    fixed = {"method": "clip_zscore", "clip": [-300.0, 300.0]}
    trainer = _trainer(tmp_path / "a", tiny_data, steps=1, normalization={"CT": fixed})
    assert trainer.config.normalization_for("CT") == fixed
    manifest = models.read_manifest(_fit(trainer))
    entries = {m["key"]: m["normalization"] for m in manifest["modalities"]}
    assert entries["CT"] == fixed and entries["MR"]["method"] == "percentile_clip_zscore"
    # the cases were preprocessed with that normalisation, not the default one
    assert trainer.train_cases is not None
    case = next(c for c in trainer.train_cases if c.files.dataset == "CTset")
    spec = trainer.config.datasets[case.dataset_index]
    with_fixed, _ = datasets.preprocess_case(case.files, spec, trainer.config.spacing, fixed)
    with_default, _ = datasets.preprocess_case(case.files, spec, trainer.config.spacing)
    np.testing.assert_array_equal(case.image, with_fixed)
    assert not np.allclose(with_fixed, with_default)
    base = models.read_manifest(tiny_package)
    base["modalities"][0]["normalization"] = {"method": "clip_zscore", "clip": [-100.0, 100.0]}
    edited = models.save(tmp_path / "base.safetensors", models.load(tiny_package).network.state_dict(), base)
    tuned = Trainer(load_config(_config_file(tmp_path / "b", tiny_data)), init=edited, show_progress=False)
    assert tuned.config.normalization_for("CT") == {"method": "clip_zscore", "clip": [-100.0, 100.0]}


def test_cli_reports_config_mistakes_as_errors(tmp_path, capsys):
    from HermesSegmentLib.cli import main

    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "error: training config not found" in capsys.readouterr().err


def test_cli_overrides_steps_learning_rate_and_query_consistency(tmp_path, tiny_data, capsys):
    from HermesSegmentLib.cli import main

    config = _config_file(tmp_path, tiny_data, query="annotated_subset")
    assert main(["train", str(config), "--lr", "0"]) == 2
    assert "error: command line: 'lr' must be a positive number" in capsys.readouterr().err
    assert main(["train", str(config), "--query-consistency", "-1"]) == 2
    assert "error: command line: 'query_consistency' must be a number >= 0" in capsys.readouterr().err
    torch.set_num_threads(1)
    assert main(["train", str(config), "--steps", "2", "--lr", "0.0005", "--query-consistency", "1",
                 "--device", "cpu"]) == 0
    _, state = checkpoint.load(tmp_path / "run" / "checkpoint")
    assert state["step"] == 2 and state["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(0.0005)
    log = (tmp_path / "run" / "train_log.csv").read_text().splitlines()
    column = log[0].split(",").index("query_consistency")
    assert any(float(row.split(",")[column]) > 0 for row in log[1:])



@pytest.mark.parametrize("extra, expected", [
    (["--out", "{file}"], "is a file"),
    (["--prepare", "{file}"], "is a file"),
    (["--prepare", "{data}"], "would write into the dataset folder"),  # the packed files among the images
    (["--time-limit", "-5"], "--time-limit must be a positive"),
    (["--stop-after", "0"], "--stop-after must be a step number"),
])
def test_cli_refuses_outputs_it_cannot_or_must_not_write_before_the_work(tmp_path, tiny_data, capsys, extra, expected):
    from HermesSegmentLib.cli import main

    config = _config_file(tmp_path, tiny_data)
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    listing = sorted(p.relative_to(tiny_data) for p in tiny_data.rglob("*"))
    extra = [value.format(file=a_file, data=tiny_data) for value in extra]
    assert main(["train", str(config), "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and expected in err and "\n" not in err
    assert sorted(p.relative_to(tiny_data) for p in tiny_data.rglob("*")) == listing  # the data untouched
    assert a_file.read_text() == "mine" and not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- incremental

def test_adding_a_target_keeps_old_tasks_unchanged(tmp_path, tiny_data, tiny_package):
    from HermesSegmentLib import models

    old = models.load(tiny_package).network
    # CTset annotates liver and spleen (known to the package) and, here, stomach (new).
    trainer = _trainer(tmp_path, tiny_data, datasets=[
        {"name": "CTset", "path": "CTset", "modality": "CT", "labels": {1: "liver", 2: "stomach"}}])
    trainer = Trainer(trainer.config, init=tiny_package, show_progress=False)
    assert trainer.plan.per_dataset == [{"liver": 0, "stomach": 6}]
    assert trainer.network_config.num_task_priors == 7
    base = {m["key"]: m["normalization"] for m in models.read_manifest(tiny_package)["modalities"]}
    assert trainer._normalizations() == {"CT": base["CT"], "MR": base["MR"]}  # the package's, for its data
    new = trainer.ema  # untrained: the package's weights plus the appended rows
    for name, value in old.state_dict().items():
        grown = new.state_dict()[name]
        if name.endswith("task_prior"):
            assert torch.equal(grown[:6], value[:6]) and torch.equal(grown[-1], value[-1])
        else:
            assert torch.equal(grown, value)
    image = torch.randn(1, 1, 32, 32, 32)
    queries = torch.tensor([[0, 1, 2, -1]])
    modality = torch.tensor([[0]])
    with torch.no_grad():
        torch.testing.assert_close(new(image, queries, modality)[0], old(image, queries, modality)[0], rtol=0, atol=0)


@pytest.mark.parametrize("grown", [
    {"blocks_per_stage": [2, 1, 2, 3], "fusion_depths": [1, 2, 1, 1, 2]},
    {"base_channels": 16},
    {"base_channels": 24, "blocks_per_stage": [1, 2, 1, 1], "fusion_depths": [2, 1, 1, 1, 1]},
])
def test_fine_tuning_into_a_grown_network_starts_from_the_packages_outputs_and_trains_what_was_added(
        tmp_path, tiny_data, tiny_package, grown):
    from HermesSegmentLib import models

    old = models.load(tiny_package).network
    # CTset annotates liver (known to the package) and, here, stomach (new): a task-prior row is added too
    trainer = _trainer(tmp_path, tiny_data, steps=1, model={**TINY_MODEL, **grown}, datasets=[
        {"name": "CTset", "path": "CTset", "modality": "CT", "labels": {1: "liver", 2: "stomach"}}])
    trainer = Trainer(trainer.config, init=tiny_package, show_progress=False)
    config = trainer.network_config
    assert [getattr(config, key) for key in grown] == [tuple(v) if isinstance(v, list) else v for v in grown.values()]
    new = trainer.ema
    image = torch.randn(1, 1, 32, 32, 32)
    queries, modality = torch.tensor([[0, 1, 2, -1]]), torch.tensor([[0]])
    with torch.no_grad():
        before, after = old(image, queries, modality), new(image, queries, modality)
    torch.testing.assert_close(after[0], before[0], rtol=1e-4, atol=1e-4)  # task logits
    torch.testing.assert_close(after[1], before[1], rtol=1e-4, atol=1e-4)  # modality logits
    manifest = models.load(_fit(trainer)).manifest
    assert manifest["architecture"]["base_channels"] == config.base_channels
    trained = trainer.network.state_dict()
    if "blocks_per_stage" in grown:  # a new block's zero branch moved in one step
        assert trained[f"down4.conv.{config.blocks_per_stage[3]}.conv2.conv.weight"].abs().sum() > 0
    if config.base_channels > 8:  # the copies of a channel were split unevenly, so they learn apart
        weight, n = trained["inc.conv1.weight"], 8
        assert not torch.equal(weight[:n], weight[n:2 * n])


@pytest.mark.parametrize("model, message", [
    ({"modality_tokens": 5}, "the config's model has modality_tokens 5 but the --init package has 4"),
    ({"head_dim": 8}, "head_dim 8 but the --init package has 16"),
    ({"blocks_per_stage": [1, 1, 0, 1]}, "blocks_per_stage [1, 1, 0, 1] but the --init package has [1, 1, 1, 1]"),
])
def test_fine_tuning_refuses_a_model_it_cannot_grow_into(tmp_path, tiny_data, tiny_package, model, message):
    config = _trainer(tmp_path, tiny_data, model={**TINY_MODEL, **model}).config
    with pytest.raises(HermesError, match=re.escape(message)):
        Trainer(config, init=tiny_package, show_progress=False)


def test_fine_tuning_exports_old_and_new_tasks_and_withdraws_what_measures_too_low(tmp_path, tiny_data, tiny_package):
    from HermesSegmentLib import models

    trainer = _trainer(tmp_path, tiny_data, steps=1, offer_min_dice=1.0, datasets=[
        {"name": "CTset", "path": "CTset", "modality": "CT", "labels": {1: "liver", 2: "stomach"}}])
    trainer = Trainer(trainer.config, init=tiny_package, show_progress=False)
    manifest = models.load(_fit(trainer)).manifest
    assert [t["index"] for t in manifest["tasks"]] == [0, 1, 2, 3, 6]
    assert manifest["tasks"][-1]["target"] == "stomach"
    # liver was re-measured on CT (below a perfect 1.0 after one step): withdrawn; spleen and kidney_left were
    # not trained here and stay offered; MR is untouched.
    assert manifest["defaults"] == {"CT": {"spleen": 1, "kidney_left": 2}, "MR": {"liver": 3}}
    assert manifest["provenance"]["fine_tuned_from"]["name"] == "tiny"


# ----------------------------------------------------------------------------- MedContext

def test_medcontext_masks_patches_and_its_loss_trains_the_student(tmp_path, tiny_data):
    image = torch.randn(2, 1, 32, 32, 32)
    masked = mask_patches(image, np.random.default_rng(0), ratio=0.5, patch=8)
    changed = (masked != image).float().mean().item()
    assert 0.3 < changed < 0.7

    trainer = _trainer(tmp_path, tiny_data, medcontext=True, medcontext_weight=1.0)
    terms = trainer.train_step()
    assert terms["consistency"] > 0
    network, teacher = trainer.network, trainer.ema
    queries, modality, valid = torch.tensor([[0, -1]] * 2), torch.tensor([[0]] * 2), torch.tensor([[True, False]] * 2)
    with torch.no_grad():
        target = teacher(image, queries, modality)[0] + 1.0
    network.zero_grad()
    loss = consistency_loss(network(masked, queries, modality)[0], target, valid)
    loss.backward()
    assert loss.item() > 0
    assert network.inc.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


# ----------------------------------------------------------------------------- DDP

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, config_path: str, port: int, out: str) -> None:
    import os

    from HermesSegmentLib.training import distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    context = distributed.init("cpu")
    try:
        trainer = Trainer(load_config(config_path), context=context, show_progress=False)
        losses = [trainer.train_step()["loss"] for _ in range(2)]
        trainer.save_checkpoint()
        torch.save({"weights": trainer.network.state_dict(), "losses": losses}, f"{out}/rank{rank}.pt")
    finally:
        distributed.shutdown(context)


@pytest.mark.slow
def test_two_process_gloo_ddp_keeps_ranks_identical(tmp_path, tiny_data):
    import torch.multiprocessing as mp

    config = _config_file(tmp_path, tiny_data, batch_size=1)
    mp.spawn(_ddp_worker, args=(str(config), _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["losses"] != ranks[1]["losses"]  # each rank drew its own batches
    for name, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][name]), name
    _, state = checkpoint.load(tmp_path / "run" / "checkpoint")
    assert state["world_size"] == 2 and len(state["samplers"]) == 2
    assert state["samplers"][0] != state["samplers"][1]
