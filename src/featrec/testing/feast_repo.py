"""A private copy of featrec's Feast repo, for tests and benchmarks that apply it.

The copy comes from the template ``featrec init`` uses, so it works from a wheel as well as
from a checkout (see :func:`featrec.jobs.project_init.feature_repo_template`)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

#: The checkout this package was installed from (editable install): where ``feature_repo/``
#: and ``dataflows/`` are.
CHECKOUT: Final = Path(__file__).resolve().parents[3]
REPO_SOURCE: Final = CHECKOUT / "feature_repo"


def copy_feature_repo(dest: Path) -> Path:
    """Copy the repo's definitions and yamls (not its data/) into ``dest``."""
    from featrec.jobs.project_init import copy_repo_template

    copy_repo_template(dest)
    return dest
