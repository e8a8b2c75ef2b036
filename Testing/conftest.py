"""Shared fixtures. Tests run on CPU, offline, with tiny networks and generated data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "HermesSegment"))


@pytest.fixture(autouse=True)
def isolated_user_home(tmp_path_factory, monkeypatch):
    """Never read or write the real ~/.hermes-segment during tests."""
    monkeypatch.setenv("HERMES_SEGMENT_HOME", str(tmp_path_factory.mktemp("hermes-home")))


@pytest.fixture
def tiny_config():
    from HermesSegmentLib.network import HermesConfig

    return HermesConfig(base_channels=8, blocks_per_stage=(1, 1, 1, 1), fusion_depths=(1, 1, 1, 1, 1),
                        num_task_priors=6, num_modality_slots=6, modality_tokens=4, head_dim=16)


@pytest.fixture
def tiny_manifest(tiny_config):
    """A valid manifest for ``tiny_config`` with a few CT and MR targets."""
    from HermesSegmentLib.models.manifest import modality_entries, task_entry

    tasks = [task_entry(0, "liver", "toy", ["CT", "MR"]), task_entry(1, "spleen", "toy", ["CT"]),
             task_entry(2, "kidney_left", "toy", ["CT"]), task_entry(3, "liver", "toy_mr", ["MR"])]
    return {
        "format": "hermes-segment-model", "format_version": 1, "name": "tiny", "title": "Tiny test model",
        "version": "0", "description": "random weights", "license": "Apache-2.0",
        "intended_use": "tests only", "architecture": tiny_config.to_manifest(),
        "input": {"window_size_zyx": [32, 32, 32], "spacing_zyx_mm": [4.0, 4.0, 4.0], "orientation": "LPS"},
        "modalities": modality_entries(["CT", "MR"]),
        "tasks": tasks,
        "defaults": {"CT": {"liver": 0, "spleen": 1, "kidney_left": 2}, "MR": {"liver": 3}},
        "provenance": {"source": "random initialisation in a test"},
    }


@pytest.fixture
def tiny_package(tmp_path, tiny_config, tiny_manifest):
    """A tiny random-weight model package on disk."""
    import torch

    from HermesSegmentLib.models import save
    from HermesSegmentLib.network import HermesNetwork

    torch.manual_seed(0)
    return save(tmp_path / "tiny.safetensors", HermesNetwork(tiny_config).state_dict(), tiny_manifest)
