"""Where things are, for every test: the repository, its sources, the bundled samples, the shared corpus."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
SAMPLES = REPO / "samples"
CORPUS = Path(os.environ.get("TLSMIRROR_CORPUS", REPO.parent / "shared" / "corpus"))
