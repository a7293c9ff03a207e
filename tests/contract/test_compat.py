"""What was saved under the module paths from before the restructure still loads
(:mod:`featrec.compat`): bytewax recovery snapshots pickle state by class path, and a model's
skops file names the ranker's class."""

from __future__ import annotations

import hashlib
import importlib
import json
import pickle
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from featrec.adapters.files.model_store import MANIFEST_FILE, MODEL_FILE, load_model, save_model
from featrec.adapters.files.raw_records import FilePosition
from featrec.compat import MOVED_MODULES
from featrec.core.events.model import event_from_mapping
from featrec.core.features.rows import FeatureRow
from featrec.core.ranking.ranker import RANKING_FEATURES, Ranker
from featrec.core.sessions.fold import SessionPolicy, SessionState, fold, new_state


def _old_pickle(obj: object, new_module: str, old_module: str) -> bytes:
    """``obj`` pickled as the code before the move would have: protocol 2 names a class with
    the text ``GLOBAL module\\nname``, which is rewritten to the old module."""
    data = pickle.dumps(obj, protocol=2)
    new, old = f"c{new_module}\n".encode(), f"c{old_module}\n".encode()
    assert new in data, f"{type(obj).__name__} is not pickled under {new_module}"
    return data.replace(new, old)


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_every_old_module_path_imports_as_the_new_module(old: str) -> None:
    assert importlib.import_module(old) is importlib.import_module(MOVED_MODULES[old])


def test_pickles_of_bytewax_state_under_the_old_paths_load() -> None:
    event = event_from_mapping(
        {
            "event_id": "e1",
            "session_id": "s1",
            "item_id": "i1",
            "type": "view",
            "ts": "2024-05-01T12:00:00+00:00",
        }
    )
    state = new_state("s1")
    fold(state, event, SessionPolicy())
    row = FeatureRow(view="session_features", key="s1", values={"n_events": 1}, version=1)
    position = FilePosition(offset=10, line=2)
    cases = [
        (event, "featrec.core.events.model", "featrec.core.events"),
        (state, "featrec.core.sessions.fold", "featrec.core.sessions"),
        (row, "featrec.core.features.rows", "featrec.core.rows"),
        (position, "featrec.adapters.files.raw_records", "featrec.adapters.raw_files"),
    ]
    for obj, new, old in cases:
        loaded = pickle.loads(_old_pickle(obj, new, old))
        assert type(loaded) is type(obj)
        assert loaded == obj or pickle.dumps(loaded) == pickle.dumps(obj)
    assert isinstance(state, SessionState)


def test_a_model_saved_under_the_old_ranker_path_loads(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.random((200, len(RANKING_FEATURES)))
    y = (X[:, 0] > 0.5).astype(int)
    ranker = Ranker(feature_names=RANKING_FEATURES, max_iter=5).fit(X, y)
    root = tmp_path / "models"
    manifest = save_model(ranker, root, created_at=datetime(2024, 5, 1, tzinfo=UTC))
    version = root / manifest.version
    model = version / MODEL_FILE

    # Rewrite the skops file as the code before the move wrote it, and its manifest's hash.
    with zipfile.ZipFile(model) as z:
        members = {name: z.read(name) for name in z.namelist()}
    schema = members["schema.json"].decode()
    assert '"featrec.core.ranking.ranker"' in schema
    members["schema.json"] = schema.replace(
        '"featrec.core.ranking.ranker"', '"featrec.core.ranking"'
    ).encode()
    with zipfile.ZipFile(model, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    meta = json.loads((version / MANIFEST_FILE).read_text())
    meta["artifact_sha256"] = hashlib.sha256(model.read_bytes()).hexdigest()
    (version / MANIFEST_FILE).write_text(json.dumps(meta))

    loaded = load_model(version, trusted_root=root)
    assert loaded.ranker.score_candidates(X).tobytes() == ranker.score_candidates(X).tobytes()
