"""CT in Hounsfield units, or a clear word: the model's CT normalisation clips to [-991, 500] HU,
so a CT in other units is silently flattened (raw stored values, air at 0: everything above
-524 HU becomes one value).

From the pixel type and the value range (a strided sample), :func:`to_hounsfield`:

Padding (one value below -1024 that fills the outside of the scan circle: -2000, -2048, -3024,
-32768, stored or in HU) is left out of the value range first, so that stored values padded with
-2000 are not taken for HU because of their padding.

- **passes** a CT with air below -500 (Hounsfield units; padding at -1024, -2048 or -3024 too);
- **converts**, with a warning, values with air near 0 and most of the body within 150 of 1024
  (water): stored values whose rescale (slope 1, intercept -1024, the common CT encoding) was never
  applied -- a DICOM converter that dropped (0028,1052). Air's noise may dip below 0 (signed
  storage, an offset of 1000): then water must also fill a fifth of the image;
- **refuses**, with advice, what cannot be turned back into HU: 8-bit images (uint8, int8, or
  integer values that span at most 256 steps: a windowed export, a screenshot, a PNG/JPEG stack),
  values within [-1, 1] or spanning less than 20 (a normalised or standardised image), and values
  >= 0 that do not look like stored CT;
- **warns** when no air is found at all (a crop inside the body, or units we cannot tell).
"""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk

from ..errors import HermesError

log = logging.getLogger(__name__)

#: The common CT rescale intercept (DICOM (0028,1052)) with slope 1.
STORED_OFFSET = 1024
_AIR_HU = -500.0
#: Beyond this no CT value is a Hounsfield unit (extended-scale metal reaches about 30000): a scaled image.
MAX_ABS_HU = 100_000.0
_SOFT_TISSUE_HALF_WIDTH = 150.0  # fat (-100 HU) to muscle and organs (+60 HU), with a margin


def to_hounsfield(image: sitk.Image, name: str = "the image") -> sitk.Image:
    """``image`` in Hounsfield units: itself, converted (warning), or :class:`HermesError`."""
    view = sitk.GetArrayViewFromImage(image)
    step = max(1, int(round((view.size / 2_000_000) ** (1 / 3))))
    sample = np.asarray(view[::step, ::step, ::step], dtype=np.float32)
    lo, hi = float(sample.min()), float(sample.max())
    if lo < -STORED_OFFSET and np.any(sample > lo):  # padding outside the scan circle: not a value of the scan
        sample = sample[sample > lo]
    scan_lo = float(sample.min())
    integer = np.issubdtype(view.dtype, np.integer)
    advice = "export the original DICOM, or a NIfTI/NRRD in Hounsfield units (air -1000, water 0), and retry"
    if view.dtype.itemsize == 1 or (integer and hi - lo <= 255):
        raise HermesError(f"{name}: CT values {lo:g}..{hi:g} ({view.dtype}) look like an 8-bit windowed export "
                          f"(a screenshot, a PNG/JPEG stack): Hounsfield units cannot be recovered from it; {advice}")
    if (-1.0 <= lo and hi <= 1.0) or hi - scan_lo < 20.0:
        raise HermesError(f"{name}: CT values {lo:g}..{hi:g} look normalised (not Hounsfield units); {advice}")
    if max(-scan_lo, hi) > MAX_ABS_HU:
        raise HermesError(f"{name}: CT values {scan_lo:g}..{hi:g} are far beyond any Hounsfield unit (air -1000, "
                          f"bone up to about 3000, metal on an extended scale up to about 30000); {advice}")
    if scan_lo < _AIR_HU:
        return image
    body = sample[sample > STORED_OFFSET + _AIR_HU]
    air = np.mean(sample < STORED_OFFSET + _AIR_HU)
    water = np.abs(body - STORED_OFFSET) <= _SOFT_TISSUE_HALF_WIDTH
    tissue = np.mean(water) if body.size else 0.0
    if air > 0.01 and tissue >= 0.5 and (scan_lo >= 0 or np.sum(water) >= 0.2 * sample.size):
        log.warning("%s: CT values %g..%g look like stored scanner values whose rescale was never applied (air "
                    "at 0, water at %d): converted to Hounsfield units by subtracting %d; if the scanner used "
                    "another rescale intercept, convert the image to Hounsfield units yourself", name, lo, hi,
                    STORED_OFFSET, STORED_OFFSET)
        if not integer:
            return image - STORED_OFFSET
        fits = np.iinfo(np.int16).min <= lo - STORED_OFFSET and hi - STORED_OFFSET <= np.iinfo(np.int16).max
        return sitk.Cast(image, sitk.sitkInt16 if fits else sitk.sitkInt32) - STORED_OFFSET
    if scan_lo >= 0:
        raise HermesError(f"{name}: CT values {lo:g}..{hi:g} are all >= 0 and do not look like Hounsfield units "
                          f"(air -1000, water 0) nor like stored scanner values (air 0, water {STORED_OFFSET}); check "
                          f"the modality, or {advice}")
    log.warning("%s: no air found in this CT (lowest value %g): it may be cropped inside the body, or not in "
                "Hounsfield units; check it, the masks may be degraded", name, lo)
    return image
