"""A private copy of featrec's Feast repo, for tests and benchmarks that apply it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Final

#: The checkout this package was installed from (editable install): where ``feature_repo/``
#: and ``dataflows/`` are.
CHECKOUT: Final = Path(__file__).resolve().parents[3]
REPO_SOURCE: Final = CHECKOUT / "feature_repo"


def copy_feature_repo(dest: Path) -> Path:
    """Copy the repo's definitions and yamls (not its data/) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for pattern in ("*.py", "*.yaml"):
        for path in REPO_SOURCE.glob(pattern):
            shutil.copy(path, dest / path.name)
    return dest
