"""The public API: every name in ``featrec.__all__`` is importable from the package root."""

from __future__ import annotations

import subprocess
import sys

import pytest

import featrec


@pytest.mark.parametrize("name", featrec.__all__)
def test_every_public_name_imports_from_the_root(name: str) -> None:
    assert getattr(featrec, name) is not None


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = featrec.nope  # type: ignore[attr-defined]


def test_importing_featrec_does_not_import_feast_or_sklearn() -> None:
    code = "import sys, featrec; print(sorted({'feast', 'sklearn', 'redis'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
