"""`hermes-segment serve` as a real uvicorn process on 127.0.0.1 with the demo model.

What a hospital's server must do: the same masks as a local run, for many clients at once;
nothing for a caller without the token; one-line errors for bad uploads while staying healthy;
cancel; and an empty server folder once results have expired.
"""

from __future__ import annotations

import io
import json
import re
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
import SimpleITK as sitk

from serving import AUTH, TOKEN, long_job_ct, phantom_crops, running_server, small_ct

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from HermesSegmentLib.errors import CancelledError, HermesError
from HermesSegmentLib.mask import TargetMask
from HermesSegmentLib.pipeline import SegmentOptions, segment_image
from HermesSegmentLib.server.client import job_request
from HermesSegmentLib.server.jobs import STAGE_SPANS, FairQueue, Job
from HermesSegmentLib.server.protocol import CLIENT_ID_HEADER, CLIENT_ID_PATTERN
from HermesSegmentLib.writers import read_seg_nrrd

EXACT = job_request("CT", "all", SegmentOptions(precision="float32"))  # float32: bit-reproducible masks
HEART = job_request("CT", ["heart"])
MAX_UPLOAD_MB = 1
MAX_VOXELS = 400_000
#: Proxies the module's server trusts: elsewhere, so that the tests' own X-Forwarded-For is ignored.
UNTRUSTED_HERE = "192.0.2.1,10.0.0.0/8"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("server"), "--max-upload-mb", str(MAX_UPLOAD_MB),
                        "--max-voxels", str(MAX_VOXELS), "--max-jobs-per-client", "12",
                        "--forwarded-allow-ips", UNTRUSTED_HERE) as running:
        yield running
    assert not (running.work_dir / "jobs").exists(), "a stopped server leaves no job folder behind"


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    return phantom_crops(tmp_path_factory.mktemp("phantom"), 4)


@pytest.fixture(scope="module")
def local_masks(crops):
    """The masks of a local run (same model and options) of every crop: {path: [(key, offset, mask)]}."""
    return {path: _masks_of(segment_image(sitk.ReadImage(str(path)), modality="CT", targets="all",
                                                  precision="float32", device="cpu"))
            for path in crops}


def _masks_of(result_or_masks) -> list[tuple[str, tuple, np.ndarray]]:
    """(key, offset, array) of each mask cut to its True voxels, so that equal masks compare equal."""
    tight = [TargetMask.cropped(m.array, m.offset_zyx) for m in getattr(result_or_masks, "masks", result_or_masks)]
    return [(m.key, t.offset_zyx, t.array) for m, t in zip(getattr(result_or_masks, "masks", result_or_masks), tight)]


def _same(local, remote) -> bool:
    return [(k, b) for k, b, _ in local] == [(k, b) for k, b, _ in remote] and \
        all(np.array_equal(a, b) for (_, _, a), (_, _, b) in zip(local, remote))


def test_a_job_gives_the_masks_of_a_local_run(server, crops, local_masks, tmp_path):
    stages = []
    status, files = server.client().segment(crops[0], {**EXACT, "format": "nifti", "name": "crop0"}, tmp_path,
                                            progress=lambda stage, fraction, message: stages.append(stage))
    assert sorted(f.name for f in files) == ["crop0.json", "crop0.nii.gz", "summary.csv"]
    status, files = server.client().segment(crops[0], {**EXACT, "name": "crop0"}, tmp_path, exclude=("summary.csv",),
                                            progress=lambda stage, fraction, message: stages.append(stage))
    assert [f.name for f in files] == ["crop0.seg.nrrd"]
    masks, reference = read_seg_nrrd(tmp_path / "crop0.seg.nrrd")
    assert reference.GetSize() == sitk.ReadImage(str(crops[0])).GetSize()
    assert sum(m.voxels for m in masks) > 1000, "the crop holds organs the demo model finds"
    assert _same(local_masks[crops[0]], _masks_of(masks))
    expected_voxels = [int(np.count_nonzero(m)) for _, _, m in local_masks[crops[0]]]
    assert [row["voxels"] for row in status["summary"]] == expected_voxels
    assert "inference" in stages and status["device"] == "cpu"
    assert not list(tmp_path.glob(".partial-*"))
    assert server.job_folders() == [], "the client deletes its job once downloaded"


@pytest.mark.slow
def test_eight_concurrent_clients_all_get_their_own_correct_result(server, crops, local_masks, tmp_path):
    outcomes: dict[int, object] = {}

    def one_client(number: int) -> None:
        path = crops[number % len(crops)]
        try:
            server.client().segment(path, EXACT, tmp_path / str(number))
            received = read_seg_nrrd(tmp_path / str(number) / "case.seg.nrrd")[0]
            outcomes[number] = _same(local_masks[path], _masks_of(received))
        except Exception as error:  # reported by the assertion below
            outcomes[number] = error

    threads = [threading.Thread(target=one_client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert outcomes == {n: True for n in range(8)}


def test_without_the_right_token_every_call_is_refused_and_nothing_runs(server, tmp_path):
    image = tmp_path / "ct.nii.gz"
    sitk.WriteImage(small_ct(), str(image))
    before = server.get("/v1/info").json()["queue"]
    bare_token = {"Authorization": AUTH["Authorization"][7:]}  # no "Bearer "
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, bare_token):
        for method, path in (("GET", "/v1/info"), ("GET", "/v1/jobs/" + "0" * 32), ("DELETE", "/v1/jobs/" + "0" * 32),
                             ("GET", "/v1/jobs/" + "0" * 32 + "/files/case.seg.nrrd")):
            response = requests.request(method, server.url + path, headers=headers, timeout=30)
            assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer", (method, path)
            assert "token" in response.json()["detail"]
        with open(image, "rb") as file:
            response = requests.post(server.url + "/v1/jobs", headers=headers, files={"image": ("ct.nii.gz", file)},
                                     data={"job": '{"modality": "CT", "targets": "all"}'}, timeout=30)
        assert response.status_code == 401
    assert server.get("/v1/info").json()["queue"] == before
    assert server.job_folders() == []
    with pytest.raises(HermesError, match="refused the token"):
        type(server.client())(server.url, "not-the-token-0123456789").info()


def test_an_upload_over_the_limit_is_refused_with_413(server, tmp_path):
    noise = np.random.default_rng(0).integers(-1000, 1000, (60, 150, 150), dtype=np.int16)  # incompressible
    big = tmp_path / "big.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(noise), str(big))
    assert big.stat().st_size > MAX_UPLOAD_MB * 2**20 * 1.5
    with open(big, "rb") as file:
        response = server.post("/v1/jobs", files={"image": ("big.nrrd", file)},
                               data={"job": '{"modality": "CT", "targets": "all"}'})
    assert response.status_code == 413 and "upload limit" in response.json()["detail"]
    with pytest.raises(HermesError, match="over the server's upload limit"):
        server.client().submit(big, EXACT)  # the client checks before it uploads
    # Few bytes but too many voxels: refused from the header, before the image is read.
    many = tmp_path / "many.nii.gz"
    sitk.WriteImage(sitk.Image(100, 100, 50, sitk.sitkInt16), str(many), True)
    with pytest.raises(HermesError, match="500,000 voxels; this server accepts at most 400,000"):
        server.client().submit(many, EXACT)
    assert server.job_folders() == []


def test_bad_uploads_get_one_line_errors_and_the_server_stays_healthy(server, tmp_path):
    def submit(name: str, content: bytes, job: str = '{"modality": "CT", "targets": "all"}') -> requests.Response:
        return server.post("/v1/jobs", files={"image": (name, io.BytesIO(content))}, data={"job": job})

    refused = {
        "garbage": submit("ct.nii.gz", b"this is not an image" * 100),
        "format": submit("ct.png", b"\x89PNG...."),
        "zip": submit("series.zip", b"PK\x03\x04 broken"),
        "options": submit("ct.nii.gz", b"x", '{"modality": "CT", "targets": "livr"}'),
        "model path": submit("ct.nii.gz", b"x", '{"modality": "CT", "options": {"model": "/etc/passwd"}}'),
        "precision": submit("ct.nii.gz", b"x", '{"modality": "CT", "options": {"precision": "fp8"}}'),
        "not json": submit("ct.nii.gz", b"x", "{modality: CT"),
        "option name": submit("ct.nii.gz", b"x", '{"modality": "CT", "options": {"device": "cuda"}}'),
        "case name": submit("ct.nii.gz", b"x", '{"modality": "CT", "name": "../escape"}'),
    }
    for what, response in refused.items():
        detail = response.json()["detail"]
        expected = 422 if what in ("not json", "option name", "case name") else 400
        assert response.status_code == expected and isinstance(detail, str) and "\n" not in detail, (what, detail)
    assert "did you mean: liver" in refused["options"].json()["detail"]
    assert "does not offer the model" in refused["model path"].json()["detail"]

    # A header that reads but voxels that do not: the job fails with one line, the server goes on.
    image = tmp_path / "cut.nrrd"
    sitk.WriteImage(small_ct(), str(image))
    cut = image.read_bytes()[:-3000]
    status = server.post("/v1/jobs", files={"image": ("cut.nrrd", io.BytesIO(cut))},
                         data={"job": '{"modality": "CT", "targets": "all"}'}).json()
    client = server.client()
    with pytest.raises(HermesError, match="could not segment the image") as failure:
        client.wait(status["id"])
    assert "\n" not in str(failure.value) and "Traceback" not in str(failure.value)
    client.delete(status["id"])

    # Names from the request never reach the file system.
    sitk.WriteImage(small_ct(), str(image))
    with open(image, "rb") as file:
        status = server.post("/v1/jobs", files={"image": ("../../../escape.nrrd", file)},
                             data={"job": '{"modality": "CT", "targets": ["heart"]}'}).json()
    final = client.wait(status["id"])
    assert final["files"] == ["case.seg.nrrd", "summary.csv"]
    for name in ("../token", "..%2Ftoken", "%2e%2e%2f%2e%2e%2ftoken", "case.seg.nrrd/../../token"):
        assert server.get(f"/v1/jobs/{status['id']}/files/{name}").status_code == 404, name
    assert not list(server.work_dir.rglob("escape*"))
    client.delete(status["id"])
    assert server.get("/v1/jobs/" + "f" * 32).status_code == 404
    assert server.get("/v1/jobs/not-a-job-id").status_code == 422
    limits = server.get("/v1/info").json()["limits"]
    assert isinstance(limits["max_upload_bytes"], int) and isinstance(limits["max_jobs_per_client"], int)  # were 16.0


def test_a_zipped_dicom_series_is_segmented_like_the_series_read_locally(server, tmp_path):
    from HermesSegmentLib.read import read_image

    series = tmp_path / "series"
    series.mkdir()
    image = sitk.Cast(small_ct(shape_xyz=(40, 40, 12), spacing=(3.5, 3.5, 8.0)), sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(image.GetDepth()):
        plane = image[:, :, z]
        position = "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, z))))
        for tag, value in (("0008|0060", "CT"), ("0020|000e", "1.2.826.0.1.3680043.2.1125.1"),
                           ("0020|0013", str(z + 1)), ("0020|0032", position),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0028|0030", "3.5\\3.5")):
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(series / f"slice{z:03d}.dcm"))
        writer.Execute(plane)
    local = segment_image(read_image(series), modality="CT", targets="all", precision="float32", device="cpu")
    # The client zips the folder.
    status, files = server.client().segment(series, {**EXACT, "name": "series"}, tmp_path / "out")
    assert _same(_masks_of(local), _masks_of(read_seg_nrrd(files[0])[0]))


def test_cancel_stops_a_running_job_and_the_next_job_runs(server, tmp_path):
    client = server.client()
    image = tmp_path / "wide.nrrd"
    sitk.WriteImage(long_job_ct(), str(image))
    job = client.submit(image, job_request("CT", "all", SegmentOptions(overlap=0.9, crop_to_body=False)))

    class CancelAtFirstWindow:
        cancelled = False

    token = CancelAtFirstWindow()

    def progress(stage: str, fraction: float, message: str) -> None:
        if stage == "inference" and fraction > 0:
            token.cancelled = True

    with pytest.raises(CancelledError):
        client.wait(job["id"], progress=progress, cancel=token)
    status = client.status(job["id"])
    while status["state"] == "running":  # stops within one window batch
        status = client.status(job["id"])
    assert status["state"] == "cancelled" and status["files"] == []
    assert server.get(f"/v1/jobs/{job['id']}/files/case.seg.nrrd").status_code == 409
    assert not list((server.work_dir / "jobs" / job["id"]).rglob("*.seg.nrrd"))
    client.delete(job["id"])
    sitk.WriteImage(small_ct(), str(image))
    status, files = client.segment(image, {**HEART, "name": "next"}, tmp_path, exclude=("summary.csv",))
    assert status["state"] == "done" and files[0].name == "next.seg.nrrd"


@pytest.mark.slow
def test_results_expire_and_leave_the_server_folder_empty(tmp_path):
    image = tmp_path / "ct.nrrd"
    sitk.WriteImage(small_ct(), str(image))
    # Kept 3 s: long enough that the result is surely still there when the client's poll sees it done.
    with running_server(tmp_path / "server", "--keep-results", "3", "--max-jobs-per-client", "1") as server:
        client = server.client()
        first = client.submit(image, HEART)
        with pytest.raises(HermesError, match="unfinished jobs on this server, its limit per client"):
            client.submit(image, HEART)  # HTTP 429
        done = client.wait(first["id"])
        assert done["files"] == ["case.seg.nrrd", "summary.csv"] and len(server.job_folders()) == 1
        for _ in range(200):
            if not server.job_folders():
                break
            threading.Event().wait(0.1)
        assert server.job_folders() == []
        assert server.get(f"/v1/jobs/{first['id']}").status_code == 404
    assert not (tmp_path / "server" / "jobs").exists()


def test_the_queue_serves_clients_in_turn():
    queue = FairQueue()
    jobs = [Job(id=str(n), client=client, request=None, folder=Path(".")) for n, client in enumerate("aaab")]
    for job in jobs:
        queue.push(job)
    assert [job.id for job in queue.order()] == ["0", "3", "1", "2"]
    popped = [queue.pop() for _ in range(4)]
    assert [job.id if job else None for job in popped] == ["0", "3", "1", "2"] and queue.pop() is None


# ---------------------------------------------------------------------------------------------- client lanes
def _logged(server, text: str) -> bool:
    """True once the server's log has ``text`` (its output arrives through a pipe, a moment later)."""
    for _ in range(100):
        if any(text in line for line in server.output):
            return True
        threading.Event().wait(0.1)
    return False


def test_clients_behind_one_address_or_proxy_get_lanes_and_limits_of_their_own(tmp_path):
    """Clinicians behind one NAT (one address, their installations' IDs) or behind the reverse
    proxy the README describes (X-Forwarded-For from a trusted address, loopback by default) each
    get their own lane of the fair queue and their own job limit; a forged ID counts as no ID."""
    image, wide = tmp_path / "ct.nrrd", tmp_path / "wide.nrrd"
    sitk.WriteImage(small_ct(), str(image))
    sitk.WriteImage(long_job_ct(shape_xyz=(160, 160, 60)), str(wide))
    with running_server(tmp_path / "server", "--max-jobs-per-client", "2") as server:
        assert _logged(server, "X-Forwarded-For when the request comes from 127.0.0.1,::1"), server.log()
        jobs: list[str] = []

        def submit(headers: dict[str, str], path: Path = image, request: dict = HEART) -> requests.Response:
            with open(path, "rb") as file:
                response = server.post("/v1/jobs", headers={**AUTH, **headers}, files={"image": (path.name, file)},
                                       data={"job": json.dumps(request)})
            if response.status_code == 202:
                jobs.append(response.json()["id"])
            return response

        # One worker, busy with thousands of windows for the whole test: every job below stays queued.
        blocker = submit({CLIENT_ID_HEADER: "blocking-job-lane"}, wide,
                         job_request("CT", "all", SegmentOptions(overlap=0.9, crop_to_body=False)))
        assert blocker.status_code == 202, blocker.text
        for _ in range(600):
            if server.get(f"/v1/jobs/{jobs[0]}").json()["state"] != "queued":
                break
            threading.Event().wait(0.1)
        a, b = {CLIENT_ID_HEADER: "clinician-a-0001"}, {CLIENT_ID_HEADER: "clinician-b-0001"}
        assert [submit(a).status_code for _ in range(2)] == [202, 202]
        refused = submit(a)
        assert refused.status_code == 429 and "limit per client" in refused.json()["detail"]
        first_of_b = submit(b)  # same address, its own lane: served before A's second job
        assert first_of_b.status_code == 202 and first_of_b.json()["queue_position"] == 2
        assert server.get(f"/v1/jobs/{jobs[2]}").json()["queue_position"] == 3
        assert _logged(server, "queued for 127.0.0.1 clinician-b-0001")

        # No ID: the address's own lane. A forged or oversized ID counts as none.
        assert [submit({}).status_code for _ in range(2)] == [202, 202]
        for forged in ("../../etc/passwd", "x" * 65, "short", "two words here"):
            assert submit({CLIENT_ID_HEADER: forged}).status_code == 429, forged

        # Behind a proxy on this computer (trusted by default), X-Forwarded-For names the client.
        proxied = {"X-Forwarded-For": "203.0.113.7"}
        assert [submit(proxied).status_code for _ in range(3)] == [202, 202, 429]
        assert submit({"X-Forwarded-For": "198.51.100.2, 203.0.113.8"}).status_code == 202
        assert _logged(server, "queued for 203.0.113.8") and _logged(server, "queued for 203.0.113.7")

        # Our client sends its installation's ID, kept in the HermesSegment home, or the one it is given.
        from HermesSegmentLib.server.client import installation_client_id

        jobs.append(server.client().submit(image, HEART)["id"])
        assert _logged(server, f"{jobs[-1]} queued for 127.0.0.1 {installation_client_id()}")
        other = server.client(client_id="clinician-c-0001")
        jobs.extend(other.submit(image, HEART)["id"] for _ in range(2))
        with pytest.raises(HermesError, match="limit per client"):
            other.submit(image, HEART)

        assert server.get(f"/v1/jobs/{jobs[0]}").json()["state"] == "running", \
            "the jobs above were all unfinished while they were counted"
        for job_id in reversed(jobs):  # the queued ones first, so that none starts
            server.client().delete(job_id)
        for _ in range(600):
            if not server.job_folders():
                break
            threading.Event().wait(0.1)
        assert server.job_folders() == []


def test_x_forwarded_for_from_an_address_not_trusted_is_ignored(server, tmp_path):
    """Only the proxies given to --forwarded-allow-ips name clients; anyone else's header is ignored
    (the module's server trusts proxies elsewhere, not this computer)."""
    image = tmp_path / "ct.nrrd"
    sitk.WriteImage(small_ct(), str(image))
    assert _logged(server, f"X-Forwarded-For when the request comes from {UNTRUSTED_HERE}")
    with open(image, "rb") as file:
        submitted = server.post("/v1/jobs", headers={**AUTH, "X-Forwarded-For": "203.0.113.7",
                                                     CLIENT_ID_HEADER: "clinician-a-0001"},
                                files={"image": ("ct.nrrd", file)}, data={"job": json.dumps(HEART)})
    assert submitted.status_code == 202
    job_id = submitted.json()["id"]
    assert _logged(server, f"{job_id} queued for 127.0.0.1 clinician-a-0001"), server.log()
    assert not any("203.0.113.7" in line for line in server.output)
    server.client().delete(job_id)


def test_a_lane_is_the_address_and_a_well_formed_client_id():
    from HermesSegmentLib.server.app import client_lane

    assert client_lane("10.0.0.1", "Ab-_0123456789") == "10.0.0.1 Ab-_0123456789"
    assert client_lane("::1", "x" * 64) == "::1 " + "x" * 64
    for forged in (None, "", "short", "x" * 65, "../../etc/passwd", "a b c d e f", "naïve-client-id", "ok-id-123\n"):
        assert client_lane("10.0.0.1", forged) == "10.0.0.1", forged


def test_an_installation_keeps_one_client_id(tmp_path, monkeypatch):
    from HermesSegmentLib.models.catalog import user_home
    from HermesSegmentLib.server.client import ServerClient, installation_client_id

    first = installation_client_id()
    assert re.fullmatch(CLIENT_ID_PATTERN, first) and installation_client_id() == first
    assert (user_home() / "client-id").read_text().strip() == first
    (user_home() / "client-id").write_text("not an id\n")  # damaged: replaced by a new one, kept again
    renewed = installation_client_id()
    assert renewed != first and installation_client_id() == renewed
    monkeypatch.setenv("HERMES_SEGMENT_CLIENT_ID", "slicer-panel-0001")
    assert installation_client_id() == "slicer-panel-0001"
    monkeypatch.setenv("HERMES_SEGMENT_CLIENT_ID", "no/slashes")
    with pytest.raises(HermesError, match="HERMES_SEGMENT_CLIENT_ID must be 8 to 64 letters"):
        installation_client_id()
    monkeypatch.delenv("HERMES_SEGMENT_CLIENT_ID")
    with pytest.raises(HermesError, match="client_id must be 8 to 64 letters"):
        ServerClient("http://127.0.0.1:9", TOKEN, client_id="bad id")
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("HERMES_SEGMENT_HOME", str(blocked / "home"))  # cannot be made: an ID for this process
    assert re.fullmatch(CLIENT_ID_PATTERN, installation_client_id())


def test_serve_refuses_a_forwarded_allow_ips_that_is_not_an_address(tmp_path, monkeypatch, capsys):
    from HermesSegmentLib.cli import main as cli_main
    from HermesSegmentLib.server.settings import ServerSettings

    for value in ("10.0.0.5,proxy.example.org", "10.0.0.1/8", " "):
        assert cli_main(["serve", "--work-dir", str(tmp_path), "--forwarded-allow-ips", value]) == 2
        assert "is not an IP address or network" in capsys.readouterr().err, value
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "localhost")
    assert cli_main(["serve", "--work-dir", str(tmp_path)]) == 2
    assert "$FORWARDED_ALLOW_IPS: 'localhost' is not an IP address" in capsys.readouterr().err
    assert not list(tmp_path.iterdir()), "nothing written (no token) before the options are checked"
    for value in ("*", "", "10.0.0.5, 10.1.0.0/16,::1"):
        ServerSettings(work_dir=tmp_path, forwarded_allow_ips=value)


@pytest.mark.parametrize("extra, expected", [
    (["--port", "-1"], "--port must be 0..65535"),
    (["--port", "70000"], "--port must be 0..65535"),
    (["--work-dir", "{file}"], "is a file; give a folder"),
    (["--max-upload-mb", "-1"], "--max-upload-mb must be more than 0, got -1"),  # was "--max-upload-bytes ... -1048576"
    (["--keep-results", "0"], "--keep-results must be more than 0 seconds"),  # was "keep_results_s must be positive"
])
def test_serve_refuses_a_port_or_work_dir_it_cannot_use_before_anything_is_written(tmp_path, capsys, extra, expected):
    from HermesSegmentLib.cli import main as cli_main

    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    work = tmp_path / "work"
    assert cli_main(["serve", "--work-dir", str(work), *[value.format(file=a_file) for value in extra]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and expected in err and "\n" not in err
    assert not work.exists() and a_file.read_text() == "mine"


def test_a_zip_is_unpacked_under_numbered_names_and_within_its_limit(tmp_path):
    from HermesSegmentLib.server.uploads import UploadTooLarge, unpack_dicom_zip

    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("../../outside.dcm", b"a" * 100)
        zipped.writestr("/abs/path.dcm", b"b" * 100)
        zipped.writestr("bomb.dcm", b"\0" * 5_000_000)  # 5 MB that compress to a few kB
    with pytest.raises(UploadTooLarge):
        unpack_dicom_zip(archive, tmp_path / "small", max_bytes=1_000_000)
    unpack_dicom_zip(archive, tmp_path / "dicom", max_bytes=10_000_000)
    assert sorted(p.name for p in (tmp_path / "dicom").iterdir()) == ["00000.dcm", "00001.dcm", "00002.dcm"]
    assert not (tmp_path.parent / "outside.dcm").exists()


def test_segment_with_server_gives_the_local_outputs_and_resumes(server, crops, local_masks, tmp_path, monkeypatch,
                                                                   capsys):
    from HermesSegmentLib.cli import main as cli_main

    monkeypatch.setenv("HERMES_SEGMENT_TOKEN", TOKEN)
    folder = tmp_path / "cases"
    folder.mkdir()
    for path in crops[:2]:
        (folder / path.name).write_bytes(path.read_bytes())
    command = ["segment", str(folder), "--out", str(tmp_path / "out"), "--modality", "ct", "--precision", "float32",
               "--server", server.url]
    assert cli_main(command) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "crop0.hermes-segment.json", "crop0.seg.nrrd", "crop1.hermes-segment.json", "crop1.seg.nrrd", "summary.csv"]
    for path in crops[:2]:
        remote = read_seg_nrrd(tmp_path / "out" / path.name.replace(".nii.gz", ".seg.nrrd"))[0]
        assert _same(local_masks[path], _masks_of(remote))
    rows = (tmp_path / "out" / "summary.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * len(local_masks[crops[0]])
    assert "hermes-demo on CPU at http://127.0.0.1" in capsys.readouterr().err
    assert cli_main(command) == 0 and capsys.readouterr().err.count("done earlier from this input") == 2

    # Request mistakes stop the batch before any upload, with the server's suggestion.
    assert cli_main([*command, "--targets", "livr", "--overwrite"]) == 2
    assert "did you mean: liver" in capsys.readouterr().err
    assert cli_main([*command, "--device", "cuda"]) == 2
    assert "device (--device) does not apply to a server run" in capsys.readouterr().err
    assert cli_main([*command[:-1], "http://127.0.0.1:9"]) == 2
    assert "cannot reach the server at http://127.0.0.1:9" in capsys.readouterr().err
    assert server.job_folders() == []


def test_segment_with_server_keeps_the_batch_rules(server, crops, tmp_path, monkeypatch, capsys):
    """A server run follows a local batch's rules: outputs beside the inputs never replace them, the
    record names the input, a file hermes-segment did not write stops the batch before any upload,
    and a server's file names never reach outside the case's folder."""
    import json

    from HermesSegmentLib import batch
    from HermesSegmentLib.cli import main as cli_main
    from HermesSegmentLib.server.client import ServerClient

    monkeypatch.setenv("HERMES_SEGMENT_TOKEN", TOKEN)
    folder = tmp_path / "cases"
    folder.mkdir()
    image = folder / crops[0].name
    image.write_bytes(crops[0].read_bytes())
    before = image.read_bytes()
    command = ["segment", str(folder), "--out", str(folder), "--modality", "CT", "--targets", "heart",
               "--server", server.url]
    assert cli_main(command) == 0
    assert image.read_bytes() == before
    record = json.loads((folder / "crop0.hermes-segment.json").read_text())
    assert record["input"] == batch.input_identity(image) and record["request"]["server"] == server.url
    assert [row.split(",")[:2] for row in (folder / "summary.csv").read_text().splitlines()[1:]] == [["crop0", "heart"]]
    assert cli_main(command) == 0 and "done earlier from this input" in capsys.readouterr().err

    (folder / "crop1.nii.gz").write_bytes(crops[1].read_bytes())
    sitk.WriteImage(small_ct(), str(folder / "crop1.seg.nrrd"))  # someone's own file: an input here
    assert cli_main(command) == 2
    assert "crop1.seg.nrrd would replace an input of this batch" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (folder / "crop1.seg.nrrd").rename(other / "crop0.seg.nrrd")
    assert cli_main([*command[:3], str(other), *command[4:]]) == 2
    assert "crop0.seg.nrrd exists and was not written by hermes-segment" in capsys.readouterr().err
    assert server.job_folders() == [] and sorted(p.name for p in other.iterdir()) == ["crop0.seg.nrrd"]

    client = ServerClient(server.url, TOKEN)
    for name in ("../evil.seg.nrrd", "/tmp/evil", ".hidden", "a\\b"):
        with pytest.raises(HermesError, match="not a plain file name"):
            client.download({"id": "0" * 32, "files": [name]}, tmp_path / "downloads")
    assert not (tmp_path / "downloads").exists() and not (tmp_path / "evil.seg.nrrd").exists()


def test_stopping_segment_with_server_cancels_the_job_on_the_server(server, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from serving import REPO

    image = tmp_path / "wide.nrrd"
    sitk.WriteImage(long_job_ct(), str(image))
    env = dict(os.environ, HERMES_SEGMENT_TOKEN=TOKEN, PYTHONPATH=str(REPO / "HermesSegment"))
    process = subprocess.Popen(
        [sys.executable, "-m", "HermesSegmentLib.cli", "segment", str(image), "--out", str(tmp_path / "out"),
         "--modality", "CT", "--overlap", "0.9", "--no-body-crop", "--server", server.url, "--progress-json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None and process.stderr is not None  # both PIPE
    for line in process.stdout:  # wait until the server runs windows
        if '"stage": "inference"' in line:
            break
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 143  # 128 + SIGTERM
    assert "interrupted" in process.stderr.read()
    for _ in range(100):  # the client deleted its job: the server stops it and removes its folder
        if not server.job_folders() and server.get("/v1/info").json()["queue"]["running"] == 0:
            break
        threading.Event().wait(0.1)
    assert server.job_folders() == [] and server.get("/v1/info").json()["queue"] == {"queued": 0, "running": 0}
    assert not (tmp_path / "out" / "wide.seg.nrrd").exists()


@pytest.mark.slicer
def test_console_api_with_server_imports_the_local_segments(server, crops):
    pytest.importorskip("slicer")
    from HermesSegmentLib.slicer.mrml_logic import MRMLLogic
    from test_slicer_logic import _itk_into_volume, segment_voxels

    scene = __import__("slicer").vtkMRMLScene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "crop")
    _itk_into_volume(sitk.ReadImage(str(crops[1])), volume)
    local = MRMLLogic().segment(volume, "CT", "all", precision="float32", device="cpu")
    stages = []
    remote = MRMLLogic().segment(volume, "CT", "all", precision="float32", server=server.url, token=TOKEN,
                                 progress=lambda stage, fraction, message: stages.append(stage))
    owned_local, owned_remote = MRMLLogic.owned_segments(local), MRMLLogic.owned_segments(remote)
    # The client polls every 0.5 s: a small crop may pass through a stage between two polls, so only
    # that the server's stages reached the callback is asserted, not which ones.
    assert list(owned_local) == list(owned_remote) and stages and set(stages) <= {"queued", *STAGE_SPANS}
    for key in owned_local:
        assert segment_voxels(local, owned_local[key]) == segment_voxels(remote, owned_remote[key]), key
    assert sum(segment_voxels(remote, segment)[2] for segment in owned_remote.values()) > 1000
    with pytest.raises(HermesError, match="device \\(--device\\) does not apply to a server run"):
        MRMLLogic().segment(volume, "CT", "all", device="cuda", server=server.url, token=TOKEN)


def test_segment_with_server_needs_no_torch(server, tmp_path):
    """A laptop without PyTorch (or Slicer without the PyTorch extension) can use a server."""
    import os
    import subprocess
    import sys

    from serving import REPO

    image = tmp_path / "ct.nrrd"
    sitk.WriteImage(small_ct(), str(image))
    code = ("import sys; sys.modules['torch'] = None; from HermesSegmentLib.cli import main; "
            f"sys.exit(main(['segment', {str(image)!r}, '--out', {str(tmp_path / 'out')!r}, '--modality', 'CT', "
            f"'--targets', 'heart', '--server', {server.url!r}]))")
    env = dict(os.environ, HERMES_SEGMENT_TOKEN=TOKEN, PYTHONPATH=str(REPO / "HermesSegment"))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "out" / "ct.seg.nrrd").is_file() and (tmp_path / "out" / "summary.csv").is_file()


def test_the_openapi_schema_is_built_from_segment_options(server):
    """/docs and /openapi.json describe the API without the token (they hold no data and run nothing);
    the job request's options are SegmentOptions' fields, less those the server decides."""
    import dataclasses

    from HermesSegmentLib.postprocess import PostprocessOptions

    assert requests.get(server.url + "/docs", timeout=30).ok
    schemas = requests.get(server.url + "/openapi.json", timeout=30).json()["components"]["schemas"]
    assert set(schemas["SegmentOptions"]["properties"]) == \
        {f.name for f in dataclasses.fields(SegmentOptions)} - {"device", "batch_size"}
    assert set(schemas["PostprocessOptions"]["properties"]) == {f.name for f in dataclasses.fields(PostprocessOptions)}
    assert {"modality", "targets", "options", "format", "overlap_policy", "probabilities", "frame", "series",
            "name"} == set(schemas["JobRequest"]["properties"])
