"""What the server and its clients agree on: API prefix, token variable, job states, file names.

Standard library only, so that the client (in Slicer, on a laptop without torch) imports it.
"""

from __future__ import annotations

import re

API_PREFIX = "/v1"
API_VERSION = 1
#: Environment variable holding the bearer token, read by ``serve`` and by every client.
TOKEN_ENV = "HERMES_SEGMENT_TOKEN"

#: Header naming the client installation that sends a request: a random ID the installation keeps
#: (``server.client.installation_client_id``, or the Slicer panel's settings), so that the server gives
#: the users behind one NAT or proxy address lanes and job limits of their own (``server.app.client_lane``).
CLIENT_ID_HEADER = "X-Hermes-Client"
#: Environment variable that sets a client's ID (the Slicer panel gives its own to its background runs).
CLIENT_ID_ENV = "HERMES_SEGMENT_CLIENT_ID"
#: What a client ID is: 8 to 64 URL-safe characters (``secrets.token_urlsafe(16)`` makes 22 of them);
#: a request with anything else in the header is counted under its address alone.
CLIENT_ID_PATTERN = r"[A-Za-z0-9_-]{8,64}"


def is_client_id(text: str | None) -> bool:
    """True when ``text`` is a well-formed client ID (:data:`CLIENT_ID_PATTERN`)."""
    return text is not None and re.fullmatch(CLIENT_ID_PATTERN, text) is not None


QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)

#: SegmentOptions fields a job does not choose: the server runs on its own devices, with its own batch size.
SERVER_DECIDES = ("device", "batch_size")

#: The case name of a job that gives none: its files are ``case.seg.nrrd`` and so on.
DEFAULT_CASE_NAME = "case"

#: Single-file formats a job accepts (MHD is left out: its voxels live in a second file), and a
#: zip archive holding the files of one DICOM series.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
DICOM_ZIP_SUFFIX = ".zip"
UPLOAD_SUFFIXES = IMAGE_SUFFIXES + (DICOM_ZIP_SUFFIX,)
