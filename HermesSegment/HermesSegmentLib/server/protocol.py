"""What the server and its clients agree on: API prefix, token variable, job states, file names.

Standard library only, so that the client (in Slicer, on a laptop without torch) imports it.
"""

API_PREFIX = "/v1"
API_VERSION = 1
#: Environment variable holding the bearer token, read by ``serve`` and by every client.
TOKEN_ENV = "HERMES_SEGMENT_TOKEN"

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
