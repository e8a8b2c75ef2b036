"""Model packages: save/load, validation, corrupt and foreign files, upstream import, catalog."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from HermesSegmentLib import models
from HermesSegmentLib.cli import main as cli_main
from HermesSegmentLib.errors import HermesError
from HermesSegmentLib.network import HermesNetwork

REFERENCE = Path(__file__).parent / "reference" / "hermes_r_state_dict.tsv"


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message
    return message


def test_save_then_load_gives_identical_network(tiny_package, tiny_config):
    loaded = models.load(tiny_package)
    assert not loaded.network.training
    from safetensors.torch import load_file

    stored = load_file(str(tiny_package))
    for name, tensor in loaded.network.state_dict().items():
        assert torch.equal(tensor, stored[name])
    assert loaded.targets_for("CT") == ["liver", "spleen", "kidney_left"]
    assert loaded.task_index("liver", "MR") == 3
    umask = os.umask(0o022)
    os.umask(umask)
    assert tiny_package.stat().st_mode & 0o777 == 0o666 & ~umask  # readable by a shared model folder's users


def test_half_precision_package_halves_the_file_and_keeps_the_masks(tmp_path, capsys):
    """The bundled demo model stored as float16: half the file, its weights are the float32 ones rounded
    to float16, loaded as float32; on a generated torso every offered CT target's mask is within
    Dice 0.99 of the float32 package's (float32 arithmetic both). bfloat16 too; the dtype is in the header."""
    from HermesSegmentLib.evaluation import dice
    from HermesSegmentLib.phantoms import generate_case
    from HermesSegmentLib.pipeline import segment_image

    original = models.resolve("hermes-demo")
    full = models.load(original)
    assert models.weights_dtype(original) == "float32"
    state, manifest = full.network.state_dict(), full.manifest
    half = models.save(tmp_path / "half.safetensors", state, manifest, dtype="float16")
    brain = models.save(tmp_path / "brain.safetensors", state, manifest, dtype="bfloat16")
    assert (models.weights_dtype(half), models.weights_dtype(brain)) == ("float16", "bfloat16")
    assert half.stat().st_size < 0.52 * original.stat().st_size
    loaded = models.load(half)
    for name, tensor in loaded.network.state_dict().items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, state[name].to(torch.float16).to(torch.float32)), name

    image, _, _ = generate_case(5, "CT", spacing=(3.0, 3.0, 4.0), orientation="LPS", supersample=False)
    shape = image.GetSize()[::-1]
    runs = [segment_image(image, modality="CT", targets="all", model=str(path), device="cpu", precision="float32")
            for path in (original, half, brain)]
    for reference, from_half, from_brain in zip(*(run.masks for run in runs)):
        assert reference.voxels > 0
        assert dice(from_half.full(shape), reference.full(shape)) >= 0.99, reference.key
        assert dice(from_brain.full(shape), reference.full(shape)) >= 0.97, reference.key

    assert cli_main(["models", "info", str(half)]) == 0
    assert "weights:       float16" in capsys.readouterr().out


def test_weights_beyond_float16_and_unknown_dtypes_are_refused(tmp_path, tiny_package):
    loaded = models.load(tiny_package)
    state = dict(loaded.network.state_dict())
    with pytest.raises(HermesError) as error:
        models.save(tmp_path / "x.safetensors", state, loaded.manifest, dtype="float8")
    assert "float32, float16, bfloat16" in one_line(error)
    name = next(iter(state))
    state[name] = state[name].clone().fill_(1e5)
    with pytest.raises(HermesError) as error:
        models.save(tmp_path / "x.safetensors", state, loaded.manifest, dtype="float16")
    assert name in one_line(error) and "bfloat16" in one_line(error)
    assert not (tmp_path / "x.safetensors").exists()
    assert models.save(tmp_path / "x.safetensors", state, loaded.manifest, dtype="bfloat16").is_file()


def test_unknown_target_suggests_the_closest_names(tiny_package):
    loaded = models.load(tiny_package)
    with pytest.raises(HermesError) as error:
        loaded.task_index("livr", "CT")
    assert "did you mean: liver" in one_line(error)


def test_manifest_schema_rejects_a_broken_manifest(tiny_manifest):
    models.validate_manifest(tiny_manifest)
    broken = copy.deepcopy(tiny_manifest)
    del broken["tasks"][0]["terminology"]
    with pytest.raises(HermesError, match="tasks/0"):
        models.validate_manifest(broken)
    wrong_default = copy.deepcopy(tiny_manifest)
    wrong_default["defaults"]["CT"]["liver"] = 1
    with pytest.raises(HermesError, match="defaults"):
        models.validate_manifest(wrong_default)
    bad_window = copy.deepcopy(tiny_manifest)
    bad_window["input"]["window_size_zyx"] = [30, 32, 32]
    with pytest.raises(HermesError, match="window_size_zyx"):
        models.validate_manifest(bad_window)



@pytest.mark.parametrize("normalization", [{"method": "clip_zscore", "clip": [500.0, -991.0]},
                                           {"method": "percentile_clip_zscore", "percentiles": [98.0, 2.0]}])
def test_a_reversed_normalisation_range_or_a_modality_listed_twice_is_refused(tiny_manifest, normalization):
    reversed_range = copy.deepcopy(tiny_manifest)
    reversed_range["modalities"][0]["normalization"] = normalization
    with pytest.raises(HermesError, match="must go from low to high") as error:
        models.validate_manifest(reversed_range)
    assert "\n" not in str(error.value)
    twice = copy.deepcopy(tiny_manifest)
    twice["modalities"].append(copy.deepcopy(twice["modalities"][0]))
    with pytest.raises(HermesError, match="listed twice"):
        models.validate_manifest(twice)


def test_newer_format_version_says_update(tiny_manifest):
    newer = dict(tiny_manifest, format_version=7)
    with pytest.raises(HermesError, match="update HermesSegment"):
        models.validate_manifest(newer)


def test_truncated_corrupt_and_foreign_files_give_one_line_errors(tmp_path, tiny_package):
    data = tiny_package.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(4096))
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(foreign), metadata={"format": "pt"})
    for path, expected in [(truncated, "truncated"), (garbage, "not a valid model package"),
                           (empty, "too short"), (foreign, "not a HermesSegment model package"),
                           (tmp_path / "missing.safetensors", "not found")]:
        with pytest.raises(HermesError) as error:
            models.load(path)
        assert expected in one_line(error), path.name


def test_package_whose_tensors_do_not_match_its_manifest_is_refused(tmp_path, tiny_manifest):
    from safetensors.torch import save_file

    from HermesSegmentLib.network import HermesConfig

    other = HermesNetwork(HermesConfig(base_channels=16, blocks_per_stage=(1, 1, 1, 1), fusion_depths=(1, 1, 1, 1, 1),
                                       num_task_priors=6, modality_tokens=4, head_dim=16))
    path = tmp_path / "mismatch.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path),
              metadata={models.MANIFEST_KEY: json.dumps(tiny_manifest)})
    with pytest.raises(HermesError) as error:
        models.load(path)
    assert "does not match its architecture" in one_line(error)


@pytest.fixture(scope="module")
def upstream_checkpoint(tmp_path_factory):
    """A random-weight, Hermes-R-shaped checkpoint built from the reference names and shapes."""
    torch.manual_seed(0)
    rows = [line.split("\t") for line in REFERENCE.read_text().splitlines() if line and not line.startswith("#")]
    ema = {name: torch.randn(*map(int, shape.split("x"))) for name, shape, _ in rows}
    raw = {name: torch.randn_like(t) for name, t in ema.items()}
    path = tmp_path_factory.mktemp("upstream") / "hermes_r.pth"
    torch.save({"epoch": 200, "model_state_dict": raw, "ema_model_state_dict": ema, "best_dice": 0.85}, path)
    return path, ema


def test_import_upstream_round_trips_every_tensor(tmp_path, upstream_checkpoint, capsys):
    checkpoint, ema = upstream_checkpoint
    out = tmp_path / "hermes-r.safetensors"
    assert cli_main(["models", "import-upstream", str(checkpoint), "--out", str(out)]) == 0
    loaded = models.load(out)
    state = loaded.network.state_dict()
    assert list(state) == list(ema)
    for name, tensor in ema.items():
        assert torch.equal(state[name], tensor), name  # EMA weights preferred, unchanged
    manifest = loaded.manifest
    assert len(manifest["tasks"]) == 71 and manifest["input"]["spacing_zyx_mm"] == [1.5, 1.5, 1.5]
    assert manifest["input"]["window_size_zyx"] == [128, 128, 128]
    assert [m["key"] for m in manifest["modalities"]] == ["CT", "PET", "MR-T1", "MR-T2", "cine-MR", "MR"]
    assert [m["slot"] for m in manifest["modalities"]] == [0, 1, 2, 3, 4, 5]
    ct = next(m for m in manifest["modalities"] if m["key"] == "CT")
    assert ct["normalization"] == {"method": "clip_zscore", "clip": [-991.0, 500.0]}
    assert loaded.task_index("fdg_avid_lesion", "PET") == 70
    assert manifest["provenance"]["upstream_checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    capsys.readouterr()
    assert cli_main(["models", "info", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "Hermes-R" in shown and "128x128x128" in shown


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_whose_pickle_would_run_code_is_refused_unexecuted(tmp_path, capsys):
    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "evil.pth"
    torch.save({"model_state_dict": {"inc.conv1.weight": torch.zeros(1)}, "payload": _Exploit(marker)}, checkpoint)
    with pytest.raises(HermesError) as error:
        models.import_upstream(checkpoint, tmp_path / "out.safetensors")
    assert "refusing to unpickle" in one_line(error)
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()
    assert cli_main(["models", "import-upstream", str(checkpoint), "--out", str(tmp_path / "o.safetensors")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not marker.exists()


def test_checkpoint_with_wrong_shapes_is_refused(tmp_path, tiny_config):
    checkpoint = tmp_path / "small.pth"
    torch.save({"model_state_dict": HermesNetwork(tiny_config).state_dict()}, checkpoint)
    with pytest.raises(HermesError) as error:
        models.import_upstream(checkpoint, tmp_path / "out.safetensors")
    assert "does not match" in one_line(error)
    assert not (tmp_path / "out.safetensors").exists()


def test_non_checkpoint_file_is_refused(tmp_path):
    bogus = tmp_path / "notes.pth"
    bogus.write_text("hello")
    with pytest.raises(HermesError) as error:
        models.import_upstream(bogus, tmp_path / "out.safetensors")
    one_line(error)


def test_verify_checks_sha256(tiny_package, capsys):
    digest = hashlib.sha256(tiny_package.read_bytes()).hexdigest()
    assert cli_main(["models", "verify", str(tiny_package), "--sha256", digest]) == 0
    assert cli_main(["models", "verify", str(tiny_package), "--sha256", "0" * 64]) == 2
    assert "SHA-256 mismatch" in capsys.readouterr().err


def test_download_from_a_file_url_is_verified_before_install(tiny_package):
    digest = hashlib.sha256(tiny_package.read_bytes()).hexdigest()
    path = models.download("tiny", url=tiny_package.as_uri(), sha256=digest)
    assert path == models.user_models_dir() / "tiny.safetensors" and path.read_bytes() == tiny_package.read_bytes()
    path.unlink()
    with pytest.raises(HermesError, match="SHA-256"):
        models.download("tiny", url=tiny_package.as_uri(), sha256="f" * 64)
    assert list(models.user_models_dir().iterdir()) == []  # no partial file left behind


def test_download_over_http_from_a_local_server(tiny_package):
    import functools
    import http.server
    import threading

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format, *args):
            pass

    handler = functools.partial(QuietHandler, directory=str(tiny_package.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/{tiny_package.name}"
        digest = hashlib.sha256(tiny_package.read_bytes()).hexdigest()
        seen = []
        path = models.download("tiny", url=url, sha256=digest, progress=lambda done, total: seen.append(done))
        assert path.is_file() and seen[-1] == tiny_package.stat().st_size
    finally:
        server.shutdown()


def test_add_list_resolve_remove(tiny_package, capsys):
    installed = models.add(tiny_package)
    assert models.resolve("tiny") == installed
    assert cli_main(["models", "list"]) == 0
    listing = capsys.readouterr().out
    assert "tiny" in listing and "hermes-demo" in listing and "hermes-r" in listing
    with pytest.raises(HermesError, match="unknown model"):
        models.resolve("tinny")
    models.remove("tiny")
    assert not installed.exists()
    with pytest.raises(HermesError, match="cannot be removed"):
        models.remove("hermes-demo")


def test_a_package_named_like_a_bundled_model_is_not_added_where_it_would_never_be_used(
        tmp_path, tiny_config, tiny_manifest):
    # Before: it landed in the user folder, and `hermes-demo` still meant the bundled file.
    from HermesSegmentLib.network import HermesNetwork

    package = models.save(tmp_path / "mine.safetensors", HermesNetwork(tiny_config).state_dict(),
                          {**tiny_manifest, "name": "hermes-demo"})
    with pytest.raises(HermesError, match="name of a bundled model"):
        models.add(package)
    assert not (models.user_models_dir() / "hermes-demo.safetensors").exists()


def test_weights_stored_as_float64_are_refused_by_info_verify_and_load_alike(tmp_path, tiny_config, tiny_manifest):
    # Before: `models info` refused a float64 package while `verify` and `segment` used it.
    from safetensors.torch import save_file

    from HermesSegmentLib.network import HermesNetwork

    state = {k: v.double().contiguous() for k, v in HermesNetwork(tiny_config).state_dict().items()}
    path = tmp_path / "f64.safetensors"
    save_file(state, str(path), metadata={models.MANIFEST_KEY: json.dumps(tiny_manifest)})
    for check in (models.weights_dtype, models.load, models.verify):
        with pytest.raises(HermesError, match="stores its weights as F64"):
            check(path)


def test_bundled_catalog_is_valid():
    from HermesSegmentLib.models.catalog import BUNDLED_DIR, load_catalog

    catalog = load_catalog(BUNDLED_DIR / "catalog.json")
    assert {m["name"] for m in catalog["models"]} >= {"hermes-demo", "hermes-r"}
