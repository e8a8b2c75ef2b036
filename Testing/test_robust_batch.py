"""Issue 11, the `segment` batch: outputs never replace inputs and are never taken for inputs,
re-runs know which input made which output, interrupted runs leave nothing half-done, output
folder problems are found before the work, damaged files fail their case."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import SimpleITK as sitk

from generated_inputs import as_image, body_ct, truncate
from HermesSegmentLib.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]


def segment(inputs, out, model, *extra):
    return cli_main(["segment", *map(str, inputs), "--modality", "CT", "--targets", "liver,spleen",
                     "--model", str(model), "--out", str(out), "--device", "cpu", "--precision", "float32", *extra])


def snapshot(folder: Path) -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def scans(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    sitk.WriteImage(as_image(body_ct(seed=1)), str(folder / "ct.nii.gz"))
    return folder


# --------------------------------------------------------------- 1: outputs are never inputs

def test_output_never_replaces_its_input_whatever_the_options(scans, tiny_package, capsys):
    before = snapshot(scans)
    status = segment([scans], scans, tiny_package, "--format", "nifti", "--overwrite")
    err = capsys.readouterr().err
    assert status == 2, err
    assert "ct.nii.gz" in err and "input" in err and len(err.strip().splitlines()) == 1, err
    assert snapshot(scans) == before


def test_outputs_written_next_to_the_inputs_are_not_taken_for_new_cases(scans, tiny_package, capsys):
    assert segment([scans], scans, tiny_package, "--probabilities") == 0
    written = set(snapshot(scans)) - {"ct.nii.gz"}
    assert "ct.seg.nrrd" in written and any("prob" in n for n in written)
    capsys.readouterr()
    assert segment([scans], scans, tiny_package, "--probabilities") == 0
    err = capsys.readouterr().err
    assert "1 case(s)" in err and "prob" not in err.split("case(s)")[0], err
    assert "skipped" in err


def test_what_is_left_out_of_a_folder_is_said_on_the_warning_channel(scans, tiny_package, capsys):
    from generated_inputs import write_dicom_series

    pytest.importorskip("pydicom")
    write_dicom_series(scans, lambda p: p[..., 2] - 1000.0, positions=[(-94.0, -94.0, 5.0 * k) for k in range(4)])
    assert segment([scans], scans, tiny_package) == 0
    capsys.readouterr()
    assert segment([scans], scans, tiny_package, "--progress-json") == 0
    warnings = [json.loads(line)["warning"] for line in capsys.readouterr().out.splitlines() if '"warning"' in line]
    assert any("left out" in w and "ct.seg.nrrd" in w for w in warnings), warnings  # our output, as JSON
    assert any("DICOM" in w and "IM01_" in w for w in warnings), warnings  # the series beside the image files


def test_a_folder_of_outputs_is_not_segmented_again(scans, tmp_path, tiny_package, capsys):
    out = tmp_path / "out"
    assert segment([scans], out, tiny_package, "--format", "nifti", "--overlap-policy", "per_target",
                   "--probabilities") == 0
    capsys.readouterr()
    before = snapshot(out)
    status = segment([out], tmp_path / "again", tiny_package, "--format", "nifti")
    err = capsys.readouterr().err
    assert status == 2 and "written by hermes-segment" in err, err
    assert snapshot(out) == before and not (tmp_path / "again").exists()


def test_a_mistyped_input_path_fails_the_batch_before_any_case(scans, tmp_path, tiny_package, capsys):
    # Before: the other cases ran, then "error: nosuchdir: nosuchdir: no such file or folder" and exit 1.
    assert segment([scans, tmp_path / "nosuchdir"], tmp_path / "out", tiny_package) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'nosuchdir'}: no such file or folder; check the path", err
    assert not (tmp_path / "out").exists()


def test_the_done_line_names_the_files_written_and_per_target_needs_nifti(scans, tmp_path, tiny_package, capsys):
    # Before: per_target named ct.nii.gz, which it does not write; with seg-nrrd the policy was ignored silently.
    out = tmp_path / "out"
    assert segment([scans], out, tiny_package, "--format", "nifti", "--overlap-policy", "per_target") == 0
    done = capsys.readouterr()
    assert f"-> {out / 'ct_liver.nii.gz'} and 2 more file(s)" in done.out + done.err, done
    assert (out / "ct_liver.nii.gz").is_file() and not (out / "ct.nii.gz").exists()
    assert segment([scans], tmp_path / "nrrd", tiny_package, "--overlap-policy", "per_target") == 2
    assert "--overlap-policy per_target is for --format nifti" in capsys.readouterr().err
    assert not (tmp_path / "nrrd").exists()


@pytest.mark.parametrize("fmt,foreign", [("nifti", "ct.json"), ("seg-nrrd", "ct.seg.nrrd")])
def test_a_file_we_did_not_write_is_never_overwritten(scans, tmp_path, tiny_package, capsys, fmt, foreign):
    out = tmp_path / "out"
    out.mkdir()
    if foreign.endswith(".json"):
        (out / foreign).write_text(json.dumps({"Modality": "CT", "Manufacturer": "a BIDS sidecar"}))
    else:
        sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkUInt8), str(out / foreign))  # e.g. a manual segmentation
    before = snapshot(out)
    status = segment([scans / "ct.nii.gz"], out, tiny_package, "--format", fmt, "--overwrite")
    err = capsys.readouterr().err
    assert status == 2 and foreign in err and "not written by hermes-segment" in err, err
    assert snapshot(out) == before


# ------------------------------------------------------------- 6: re-runs and summary rows

def test_a_rerun_knows_which_input_made_which_output(tmp_path, tiny_package, capsys):
    for site, seed in (("site1", 1), ("site2", 2)):
        (tmp_path / site).mkdir()
        sitk.WriteImage(as_image(body_ct(seed=seed)), str(tmp_path / site / "ct.nii.gz"))
    out = tmp_path / "out"
    assert segment([tmp_path / "site1" / "ct.nii.gz", tmp_path / "site2" / "ct.nii.gz"], out, tiny_package) == 0
    assert {"ct.seg.nrrd", "ct_2.seg.nrrd"} <= set(snapshot(out))
    capsys.readouterr()

    before = snapshot(out)
    assert segment([tmp_path / "site2" / "ct.nii.gz"], out, tiny_package) == 0
    err = capsys.readouterr().err
    assert "ct_2" in err and "skipped" in err, err
    assert snapshot(out) == before

    # site2's scan is replaced by another one: its case is done again, into its own output.
    sitk.WriteImage(as_image(body_ct(seed=3)), str(tmp_path / "site2" / "ct.nii.gz"))
    assert segment([tmp_path / "site2" / "ct.nii.gz"], out, tiny_package) == 0
    after = snapshot(out)
    assert after["ct.seg.nrrd"] == before["ct.seg.nrrd"]
    assert after["ct_2.seg.nrrd"] != before["ct_2.seg.nrrd"]


def test_a_rerun_asking_for_other_targets_is_not_skipped(scans, tmp_path, tiny_package, capsys):
    out = tmp_path / "out"
    assert cli_main(["segment", str(scans), "--modality", "CT", "--targets", "liver", "--model", str(tiny_package),
                     "--out", str(out), "--device", "cpu", "--precision", "float32"]) == 0
    capsys.readouterr()
    assert segment([scans], out, tiny_package) == 0  # liver and spleen now: the one output file exists already
    err = capsys.readouterr().err
    assert "skipped" not in err, err
    assert sitk.ReadImage(str(out / "ct.seg.nrrd")).GetMetaData("Segment1_Name")  # two segments now
    assert segment([scans], out, tiny_package) == 0
    assert "skipped" in capsys.readouterr().err


def test_the_summary_has_one_row_per_case_and_target(scans, tmp_path, tiny_package):
    out = tmp_path / "out"
    for _ in range(3):
        assert segment([scans], out, tiny_package, "--overwrite") == 0
    with open(out / "summary.csv", newline="") as f:
        rows = [(r["case"], r["target"]) for r in csv.DictReader(f)]
    assert sorted(rows) == [("ct", "liver"), ("ct", "spleen")]


# ------------------------------------------------------------------ 7: interrupted runs

def test_a_case_interrupted_between_its_files_is_not_done(scans, tmp_path, tiny_package, monkeypatch, capsys):
    from HermesSegmentLib import writers

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(writers, "write_probability_maps", interrupted)
        assert segment([scans], out, tiny_package, "--probabilities") == 130
    err = capsys.readouterr().err
    assert len([line for line in err.splitlines() if "interrupted" in line]) == 1, err
    assert not [p for p in out.rglob("*") if ".partial-" in p.name]
    assert segment([scans], out, tiny_package, "--probabilities") == 0
    err = capsys.readouterr().err
    assert "skipped" not in err, err
    assert any("prob" in p.name for p in out.iterdir())


@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_stop_cleanly_with_a_distinct_status(tmp_path, tiny_package, sig, status):
    big = tmp_path / "big.nrrd"
    sitk.WriteImage(as_image(body_ct(shape_zyx=(120, 160, 160), seed=4), spacing_xyz=(2.0, 2.0, 2.0)), str(big))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO / "HermesSegment"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "HermesSegmentLib.cli", "segment", str(big), "--modality", "CT",
               "--model", str(tiny_package), "--out", str(out), "--device", "cpu", "--precision", "float32",
               "--no-body-crop", "--overlap", "0.9", "--batch-size", "1", "--progress-json"]
    # Overlap 0.9: thousands of windows, so that the run cannot end before the signal arrives even
    # when this process is scheduled late on a loaded machine. The child gets Ctrl-C's default
    # disposition: a test run started in the background (`make test &`) ignores SIGINT, and Python
    # then leaves it ignored, as a background job should (the run went on to exit 0).
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert child.stdout is not None  # stdout=PIPE
    for line in child.stdout:
        if '"inference"' in line and '"window' in line:
            break
    child.send_signal(sig)
    try:
        _, err = child.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        child.kill()
        raise
    assert child.returncode == status, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0] and "big" in lines[0], err
    left = sorted(p.name for p in out.rglob("*")) if out.exists() else []
    assert left == [], left


# ------------------------------------------------------------- 9: the output folder, first

def test_out_that_is_a_file_fails_before_the_work(scans, tmp_path, tiny_package, capsys):
    (tmp_path / "taken").write_text("a file")
    for out in (tmp_path / "taken", tmp_path / "taken" / "sub"):
        status = segment([scans], out, tiny_package)
        err = capsys.readouterr().err
        assert status == 2 and "--out" in err and len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err


def test_another_table_called_summary_csv_fails_before_the_work(scans, tmp_path, tiny_package, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.csv").write_text("patient,age\n1,42\n")  # the user's own table
    status = segment([scans], out, tiny_package)
    err = capsys.readouterr().err
    assert status == 2 and "summary.csv" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in out.iterdir()) == ["summary.csv"]  # no case was segmented, nothing kept
    assert (out / "summary.csv").read_text() == "patient,age\n1,42\n"


def test_a_read_only_out_fails_before_the_work(scans, tmp_path, tiny_package):
    out = tmp_path / "readonly"
    out.mkdir()
    out.chmod(0o555)
    env = {**os.environ, "PYTHONPATH": str(REPO / "HermesSegment"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "HermesSegmentLib.cli", "segment", str(scans), "--modality", "CT",
               "--model", str(tiny_package), "--out", str(out), "--device", "cpu"]
    preexec = None
    if os.geteuid() == 0:  # root ignores permission bits: drop the two capabilities that let it
        def preexec():
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
                if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: gone after exec
                    raise OSError(ctypes.get_errno(), "prctl")
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env, preexec_fn=preexec, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "--out" in done.stderr and "writ" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "targets in" not in done.stderr and started  # no case was computed


# ---------------------------------------------------------------- 3: a damaged case fails

def test_a_truncated_case_fails_and_the_batch_says_so(scans, tmp_path, tiny_package, capsys):
    sitk.WriteImage(as_image(body_ct(seed=5)), str(scans / "cut.nii.gz"))
    truncate(scans / "cut.nii.gz", 0.5)
    out = tmp_path / "out"
    status = segment([scans], out, tiny_package)
    err = capsys.readouterr().err
    assert status == 1, err
    assert any(line.startswith("error: cut:") and "truncated or damaged" in line for line in err.splitlines()), err
    assert not list(out.glob("cut*"))
    assert "cut" not in (out / "summary.csv").read_text()
