"""Where things live: the repository's data folder, the default lake, and the shared real data."""

from __future__ import annotations

import os
from pathlib import Path

#: The repository root (the project is installed editable, so this is the checkout).
REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
#: Real files from the day of the crash, beside the checkout (never copied into the repository).
SHARED_REAL = Path(os.environ.get("CRASHLAB_REAL_DATA", REPO.parent / "shared" / "data" / "real"))


def default_lake() -> Path:
    """`--lake` beats `CRASHLAB_LAKE`, which beats `data/lake/` in the checkout."""
    env = os.environ.get("CRASHLAB_LAKE")
    return Path(env) if env else DATA / "lake"
