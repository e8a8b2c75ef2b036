"""What the README promises a user who makes a mistake: one readable line, the right exit status,
and a message that helps (found by walking the README as a new user would)."""

from __future__ import annotations

from pathlib import Path

import pytest

from HermesSegmentLib.cli import Interrupted
from HermesSegmentLib.cli import main as cli_main
from HermesSegmentLib.errors import HermesError
from HermesSegmentLib.pipeline import SegmentOptions

REPO = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO / "HermesSegment" / "Resources" / "Models" / "hermes-demo.safetensors"


@pytest.mark.parametrize("option, value, message", [
    ("--threshold", "2", "--threshold must be in (0, 1]"),
    ("--threshold", "0", "--threshold must be in (0, 1]"),
    ("--batch-size", "-1", "--batch-size must be 1 or more"),
    ("--overlap", "1.5", "--overlap must be in [0, 1)"),
])
def test_segment_refuses_impossible_option_values_before_any_case(tmp_path, capsys, option, value, message):
    # Before: --threshold 2 wrote empty masks with status 0; --batch-size -1 failed every case with an
    # "unexpected IndexError ... (please report this)".
    code = cli_main(["segment", str(tmp_path / "missing.nii.gz"), "--modality", "CT", "--out", str(tmp_path / "out"),
                     option, value])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "missing.nii.gz" not in err


def test_console_api_checks_the_same_values():
    with pytest.raises(HermesError, match="--threshold"):
        SegmentOptions(threshold=1.5).check()
    with pytest.raises(HermesError, match="--batch-size"):
        SegmentOptions(batch_size=-2).check()
    SegmentOptions(threshold=1.0, batch_size=0, overlap=0.0).check()  # 0: from memory, as the panel's Automatic


@pytest.mark.skipif(not DEMO_MODEL.exists(), reason="the demo model package is not built yet")
def test_a_target_the_model_does_not_offer_lists_what_it_offers():
    from HermesSegmentLib.models import load
    from HermesSegmentLib.pipeline.segment import resolve_targets

    model = load(DEMO_MODEL)
    offered = model.targets_for("CT")
    with pytest.raises(HermesError) as caught:
        resolve_targets(model, "CT", "liver,spleen")
    message = str(caught.value)
    assert "did you mean" not in message  # 'spleen' is spelt right; before, it suggested liver and the lungs
    assert "'spleen'" in message and all(target in message for target in offered)


def test_a_catalog_model_that_is_not_installed_names_its_links(capsys):
    from HermesSegmentLib.models import list_models, resolve

    listing = next(m for m in list_models() if m.name == "hermes-r")
    assert not listing.available and listing.weights_links
    with pytest.raises(HermesError) as caught:
        resolve("hermes-r")
    assert all(url in str(caught.value) for _title, url in listing.weights_links)  # "the links below" it speaks of
    assert cli_main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert all(f"{title}: {url}" in out for title, url in listing.weights_links)


def test_a_pytorch_checkpoint_given_as_a_model_points_to_import_upstream(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    for legacy in (False, True):
        path = tmp_path / f"hermes_r_{legacy}.pth"
        torch.save({"weights": torch.zeros(2)}, path, _use_new_zipfile_serialization=not legacy)
        assert cli_main(["models", "info", str(path)]) == 2
        err = capsys.readouterr().err
        assert "PyTorch checkpoint" in err and "models import-upstream" in err and err.count("\n") == 1


@pytest.mark.skipif(not DEMO_MODEL.exists(), reason="the demo model package is not built yet")
def test_serve_stopped_by_sigterm_is_a_clean_stop(tmp_path, monkeypatch, capsys):
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")

    def stopped(self, sockets=None):  # what uvicorn does on SIGTERM: shut down, then raise the signal again
        for sock in sockets or ():
            sock.close()
        raise Interrupted()

    monkeypatch.setattr(uvicorn.Server, "run", stopped)
    code = cli_main(["serve", "--port", "0", "--device", "cpu", "--work-dir", str(tmp_path),
                     "--token", "a-test-token-of-enough-length"])
    captured = capsys.readouterr()
    assert code == 0 and "server stopped" in captured.out and "error" not in captured.err


def test_the_client_hint_of_a_server_on_every_interface_names_a_reachable_host():
    # Before: `serve --host 0.0.0.0` told clients to use http://0.0.0.0:PORT, which no client can reach.
    import socket

    from HermesSegmentLib.cli.serve import client_url

    assert client_url("0.0.0.0", 8000) == f"http://{socket.getfqdn()}:8000"
    assert client_url("::", 8000) == f"http://{socket.getfqdn()}:8000"
    assert client_url("10.1.2.3", 8000) == "http://10.1.2.3:8000"
    assert client_url("::1", 8000) == "http://[::1]:8000"


@pytest.mark.parametrize("command", [["models", "info", "{folder}"], ["models", "verify", "{folder}"],
                                     ["models", "add", "{folder}"]])
def test_a_folder_given_as_a_model_file_says_so(tmp_path, capsys, command):
    # Before: "model file not found: FOLDER", for a folder that exists.
    code = cli_main([part.format(folder=tmp_path) for part in command])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"error: {tmp_path} is a folder; give the model's .safetensors file"


def test_downloading_an_unknown_model_says_so_without_an_empty_progress_bar(capsys, monkeypatch, tmp_path):
    # Before: an empty progress bar, then "model 'no-such-model' has no download address and checksum".
    monkeypatch.setenv("HERMES_SEGMENT_HOME", str(tmp_path))
    assert cli_main(["models", "download", "no-such-model"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: unknown model 'no-such-model'; `hermes-segment models list` shows the catalog"


def test_verify_with_a_checksum_that_is_not_one_says_so(tmp_path, capsys):
    # Before: "SHA-256 mismatch (got ..., expected zz)", as if the file were damaged.
    assert cli_main(["models", "verify", str(DEMO_MODEL), "--sha256", "zz"]) == 2
    assert "is not a SHA-256 digest" in capsys.readouterr().err
