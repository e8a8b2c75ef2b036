"""Write the extension's terminology context (Slicer .term.json) from the target vocabulary.

    python tools/update_terminology.py

rewrites HermesSegment/Resources/SegmentationCategoryTypeModifier-HermesSegment.term.json.

Testing/test_terminology_context.py fails when the file and the vocabulary disagree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "HermesSegment"))

from HermesSegmentLib.vocabulary import TERMINOLOGY_FILE, terminology_context

if __name__ == "__main__":
    TERMINOLOGY_FILE.write_text(json.dumps(terminology_context(), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {TERMINOLOGY_FILE}")
