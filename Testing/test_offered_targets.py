"""tools/set_offered_targets.py: the demo model's offered pairs come from Dice measured on unseen
test cases through the whole pipeline, and a package that reaches no bar is refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from HermesSegmentLib import models, phantoms
from HermesSegmentLib.cli import main as cli_main
from HermesSegmentLib.errors import HermesError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import set_offered_targets

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "HermesSegment" / "Resources" / "Models" / "hermes-demo.safetensors"

pytestmark = pytest.mark.slow  # the demo model on real-size phantoms, through the whole pipeline


@pytest.fixture(scope="module")
def mr_test_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("test_data")
    phantoms.write_pseudo_datasets(folder, cases_per_dataset=1, seed=1000, datasets=["PhantomMR_T1"],
                                   max_voxels=60000)
    return folder


def test_every_trained_pair_is_measured_offered_or_not(mr_test_data):
    measured = set_offered_targets.measure(models.load(DEMO), mr_test_data / "phantom_config.yaml", mr_test_data,
                                           progress=lambda message: None)
    assert measured["test_cases"] == {"PhantomMR_T1": 1}
    for metric in ("test_dice", "test_dice_raw"):
        assert set(measured[metric]) == {"MR-T1"}
        assert set(measured[metric]["MR-T1"]) == {"liver", "spleen", "kidney_left", "kidney_right"}
        assert all(0.0 <= d <= 1.0 for d in measured[metric]["MR-T1"].values())
    # A real model on a real (small) phantom: the liver is found, at about its size.
    assert measured["test_dice"]["MR-T1"]["liver"] > 0.5
    assert 0.5 < measured["volume_ratio"]["MR-T1"]["liver"] < 2.0
    (case,) = measured["per_case"].values()
    assert case["volume_ratio"]["liver"] == pytest.approx(measured["volume_ratio"]["MR-T1"]["liver"], abs=1e-3)


def test_a_split_of_a_partially_annotated_dataset_is_the_test_set(mr_test_data, tmp_path):
    """With a cases.json (OpenKBP-like): only the cases of --split are measured, and in each only
    the structures it annotates; without --split the measurement refuses to guess."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(mr_test_data, data)
    folder = data / "Dataset503_PhantomMR_T1"
    case = sorted(p.name for p in (folder / "labelsTr").iterdir())[0].split(".")[0]
    (folder / "cases.json").write_text(json.dumps({case: {"split": "validation", "annotated": ["liver"]}}))
    config = data / "phantom_config.yaml"
    measured = set_offered_targets.measure(models.load(DEMO), config, data, "validation", progress=lambda message: None)
    assert measured["test_cases"] == {"PhantomMR_T1": 1}
    assert set(measured["test_dice"]["MR-T1"]) == {"liver"}
    assert list(measured["per_case"]) == [f"PhantomMR_T1/{case}"]
    with pytest.raises(HermesError, match="--split"):
        set_offered_targets.measure(models.load(DEMO), config, data, progress=lambda message: None)
    with pytest.raises(HermesError, match="no case of split"):
        set_offered_targets.measure(models.load(DEMO), config, data, "train", progress=lambda message: None)

    # --dataset: one dataset of a config whose other datasets are not in the test folder
    raw = yaml.safe_load(config.read_text())
    raw["datasets"].append({**raw["datasets"][0], "name": "Elsewhere", "path": "Dataset999_NotHere"})
    config.write_text(yaml.safe_dump(raw))
    only = set_offered_targets.measure(models.load(DEMO), config, data, "validation", progress=lambda message: None,
                                       only=("PhantomMR_T1",))
    assert only["test_dice"] == measured["test_dice"]
    with pytest.raises(HermesError, match="folder not found"):
        set_offered_targets.measure(models.load(DEMO), config, data, "validation", only=("Elsewhere",))
    with pytest.raises(HermesError, match="no dataset 'Typo'.*PhantomMR_T1, Elsewhere"):
        set_offered_targets.measure(models.load(DEMO), config, data, "validation", only=("Typo",))


def test_the_bar_decides_what_is_offered(mr_test_data, tmp_path, capsys):
    out = tmp_path / "offered.safetensors"
    assert set_offered_targets.main([str(DEMO), "--config", str(mr_test_data / "phantom_config.yaml"),
                                     "--test-data", str(mr_test_data), "--min-dice", "0.0", "--version", "9.9",
                                     "--out", str(out)]) == 0
    loaded = models.load(out)
    metrics = loaded.manifest["provenance"]["metrics"]
    assert loaded.manifest["version"] == "9.9" and metrics["offer_min_dice"] == 0.0
    assert set(loaded.targets_for("MR-T1")) == set(metrics["test_dice"]["MR-T1"])
    assert list(loaded.manifest["defaults"]) == ["MR-T1"]  # only what the test data measured
    capsys.readouterr()
    assert cli_main(["models", "info", str(out)]) == 0
    shown = capsys.readouterr().out
    liver = metrics["test_dice"]["MR-T1"]["liver"]
    assert f"liver ({liver:.2f})" in shown and "on 1 test cases never trained on" in shown
    weights, original = load_file(str(out)), load_file(str(DEMO))
    assert weights.keys() == original.keys() and all(torch.equal(weights[k], original[k]) for k in weights)

    manifest = models.read_manifest(DEMO)
    scores = metrics["test_dice"]["MR-T1"]
    bar = sorted(scores.values())[1]  # between the worst pair and the rest
    offered = set_offered_targets.offer(manifest, {**metrics, "test_dice": {"MR-T1": scores}}, bar, "here")
    assert set(offered["defaults"]["MR-T1"]) == {t for t, d in scores.items() if d >= bar}
    with pytest.raises(HermesError, match="no \\(modality, target\\) pair reaches Dice 1.01"):
        set_offered_targets.offer(manifest, metrics, 1.01, "here")
    # A pair at the bar whose mask changes on a partial scan is not offered; unchecked pairs are.
    slabs = {"MR-T1": {"liver": 0.5, "spleen": 0.95}}
    offered = set_offered_targets.offer(manifest, {**metrics, "test_dice": {"MR-T1": scores}}, 0.0, "here", slabs, 0.9)
    assert set(offered["defaults"]["MR-T1"]) == set(scores) - {"liver"}
    assert offered["provenance"]["metrics"]["offer_min_slab_dice"] == 0.9


def test_the_slab_check_measures_only_the_pairs_at_the_bar():
    measured = {"test_dice": {"MR-T1": {"liver": 0.9, "spleen": 0.1}}}
    minima = set_offered_targets.measure_slabs(models.load(DEMO), measured, 0.85, cases=1, progress=lambda _: None)
    assert list(minima) == ["MR-T1"] and list(minima["MR-T1"]) == ["liver"]
    assert 0.0 <= minima["MR-T1"]["liver"] <= 1.0


def test_the_offer_can_come_from_earlier_reports_of_disjoint_test_sets(tmp_path, capsys):
    phantom_report = {"test_dice": {"MR-T1": {"liver": 0.9, "spleen": 0.5}}, "test_cases": {"PhantomMR_T1": 3},
                      "per_case": {"PhantomMR_T1/a": {}}, "volume_ratio": {"MR-T1": {"liver": 1.1}}}
    real_report = {"test_dice": {"CT": {"liver": 0.86}}, "test_cases": {"RealCT": 2}, "per_case": {"RealCT/b": {}}}
    reports = []
    for name, report in (("phantoms.json", phantom_report), ("real.json", real_report)):
        reports.append(tmp_path / name)
        reports[-1].write_text(json.dumps(report), encoding="utf-8")
    out = tmp_path / "offered.safetensors"
    assert set_offered_targets.main([str(DEMO), "--measured", *map(str, reports), "--out", str(out)]) == 0
    loaded = models.load(out)
    assert loaded.targets_for("MR-T1") == ["liver"] and loaded.targets_for("CT") == ["liver"]
    assert loaded.manifest["provenance"]["metrics"]["test_cases"] == {"PhantomMR_T1": 3, "RealCT": 2}
    assert set_offered_targets.merge_reports([phantom_report, real_report])["volume_ratio"] == {"MR-T1": {"liver": 1.1}}
    with pytest.raises(HermesError, match="MR-T1 liver is measured in two reports"):
        set_offered_targets.merge_reports([phantom_report, phantom_report])
    with pytest.raises(SystemExit):
        set_offered_targets.main([str(DEMO), "--config", "x.yaml"])  # neither a test set nor reports
    assert "--measured REPORT" in capsys.readouterr().err


def test_trained_pairs_keep_to_the_query_the_engine_asks(tiny_manifest):
    """A task the package learned for a modality but does not ask there (not in its ``queries``) is
    not a pair to measure: the engine could not ask it."""
    assert set_offered_targets.trained_pairs(tiny_manifest)["CT"] == {"liver": 0, "spleen": 1, "kidney_left": 2}
    asked = {**tiny_manifest, "queries": {"CT": [0, 2], "MR": [3]}}
    assert set_offered_targets.trained_pairs(asked) == {"CT": {"liver": 0, "kidney_left": 2}, "MR": {"liver": 3}}
