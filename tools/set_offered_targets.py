"""Re-decide which (modality, target) pairs a trained package offers, from its own measured Dice.

    python tools/set_offered_targets.py PACKAGE.safetensors --min-dice 0.5 [--version V] [--out OUT.safetensors]

The trainer already applies ``offer_min_dice`` at export; this applies another bar afterwards
without retraining, using ``provenance.metrics.validation_dice`` recorded in the package. Weights
are copied unchanged; the new bar is recorded in the provenance. ``--version`` stamps the
package's version (a fine-tuned package inherits its config's).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "HermesSegment"))

from HermesSegmentLib.models import read_manifest, save  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--min-dice", type=float, required=True)
    parser.add_argument("--version", help="set the manifest's version")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from safetensors.torch import load_file

    manifest = copy.deepcopy(read_manifest(args.package))
    measured = manifest["provenance"]["metrics"]["validation_dice"]
    index = {}
    for task in manifest["tasks"]:
        for modality in task["modalities"]:
            index.setdefault(modality, {}).setdefault(task["target"], task["index"])
    manifest["defaults"] = {
        modality: {t: index[modality][t] for t, dice in scores.items() if dice is not None and dice >= args.min_dice}
        for modality, scores in measured.items()
    }
    manifest["defaults"] = {m: d for m, d in manifest["defaults"].items() if d}
    manifest["provenance"]["metrics"]["offer_min_dice"] = args.min_dice
    if args.version:
        manifest["version"] = args.version
    out = save(args.out or args.package, load_file(str(args.package)), manifest)
    for modality, targets in manifest["defaults"].items():
        print(f"{modality}: {', '.join(f'{t} ({measured[modality][t]:.2f})' for t in targets)}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
