"""Bundle one real OpenKBP *validation* patient as the real-anatomy sample (make demo, Slicer Sample Data).

    python tools/make_real_sample.py ../shared/data/Dataset901_OpenKBP_HN [--case pt_201] [--out DIR]

Writes ``HermesSegment/Resources/SampleData/`` (or ``--out``), the same on every run
(``Testing/test_demo.py`` checks that the bundled files are what this tool makes today):
  - ``OpenKBP_<case>_CT.nii.gz``: the CT exactly as distributed in the dataset (int16 HU, LPS),
  - ``OpenKBP_<case>_contours.seg.nrrd``: its clinical organ-at-risk contours, one segment per
    structure that was contoured, with the vocabulary's names, colours and terminology (opens in
    Slicer as a segmentation; overlaps as drawn),
  - ``samples.json``: what each sample is, its files with SHA-256, modality, the structures
    contoured, and the attribution and licence; the one description the demo and Slicer's Sample
    Data registration read.
The case must be one of OpenKBP's validation patients: the bundled model never trained on them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "HermesSegment"))

OUT = REPO / "HermesSegment" / "Resources" / "SampleData"
ATTRIBUTION = (
    "OpenKBP (AAPM 2020 knowledge-based planning challenge; Babier et al., Medical Physics 2021), provided-data of "
    "github.com/ababier/open-kbp (MIT licence); the CT comes from the public head-and-neck collections of The "
    "Cancer Imaging Archive (TCIA), de-identified, with the patient's clinical radiotherapy organ-at-risk contours. "
    "128^3 voxels as distributed by OpenKBP. A validation patient: the bundled model was not trained on it."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="the OpenKBP dataset folder (dataset.json, cases.json)")
    parser.add_argument("--case", default="pt_201")
    parser.add_argument("--out", type=Path, default=OUT, help="the folder to write (default: the bundled samples)")
    args = parser.parse_args(argv)
    out = args.out

    import SimpleITK as sitk

    from HermesSegmentLib import vocabulary
    from HermesSegmentLib.mask import TargetMask
    from HermesSegmentLib.models import sha256_file
    from HermesSegmentLib.writers import write_seg_nrrd

    cases = json.loads((args.dataset / "cases.json").read_text())
    if cases[args.case]["split"] != "validation-pats":
        raise SystemExit(f"{args.case} is a {cases[args.case]['split']} case; pick a validation patient")
    labels = {v: k for k, v in json.loads((args.dataset / "dataset.json").read_text())["labels"].items() if v}
    out.mkdir(parents=True, exist_ok=True)
    ct = out / f"OpenKBP_{args.case}_CT.nii.gz"
    shutil.copyfile(args.dataset / "imagesTr" / f"{args.case}_0000.nii.gz", ct)
    label_image = sitk.ReadImage(str(args.dataset / "labelsTr" / f"{args.case}.nii.gz"))
    values = sitk.GetArrayFromImage(label_image)
    masks = []
    for value, name in sorted(labels.items()):
        if name not in cases[args.case]["annotated"]:
            continue
        target = vocabulary.target(name)
        masks.append(TargetMask(key=target.key, name=target.name, color=target.color,
                                terminology=target.terminology_entry(), offset_zyx=(0, 0, 0), array=values == value))
    contours = out / f"OpenKBP_{args.case}_contours.seg.nrrd"
    write_seg_nrrd(contours, masks, label_image)
    description = {
        "samples": [{
            "name": "HermesHeadNeckCT",
            "title": f"Head-and-neck CT, real patient (OpenKBP {args.case})",
            "real": True,
            "modality": "CT",
            "image": {"file": ct.name, "sha256": sha256_file(ct)},
            "contours": {"file": contours.name, "sha256": sha256_file(contours),
                         "targets": [m.key for m in masks], "what": "clinical radiotherapy contours"},
            "attribution": ATTRIBUTION,
            "license": "MIT (OpenKBP); TCIA data usage policy for the underlying CT",
        }],
    }
    (out / "samples.json").write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    for path in (ct, contours, out / "samples.json"):
        print(f"{path} ({path.stat().st_size / 1e3:.0f} kB)")
    print("contours:", ", ".join(f"{m.key} {int(np.count_nonzero(m.array))} voxels" for m in masks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
