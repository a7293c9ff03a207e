"""Model artifacts: round trip, and every refusal (tampered, untrusted path or type, feature
list mismatch, world-writable) with a message that says what is wrong."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import sklearn
import skops.io as sio
from sklearn.ensemble import HistGradientBoostingClassifier

from featrec.adapters.files.model_store import (
    MANIFEST_FILE,
    MODEL_FILE,
    PREDICTOR_FILE,
    feature_list_hash,
    file_sha256,
    latest_version_dir,
    list_versions,
    load_latest,
    load_model,
    models_dir,
    save_model,
)
from featrec.core.ranking.predictor import PREDICTOR_KIND, TreeArrays
from featrec.core.ranking.ranker import RANKING_FEATURES, Ranker
from featrec.errors import ConfigError, NotFound
from featrec.testing.ranking import fitted_ranker as fitted

WHEN = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return models_dir(tmp_path / "home")


def test_round_trip_keeps_scores_bit_identical_and_writes_the_manifest(root: Path) -> None:
    ranker = fitted()
    manifest = save_model(
        ranker, root, metrics={"holdout_model_mrr@20": 0.4}, training={"rows": 300}, created_at=WHEN
    )
    path = root / manifest.version
    assert manifest.version.startswith("20240501T120000Z-") and path.is_dir()
    on_disk = json.loads((path / MANIFEST_FILE).read_text())
    assert on_disk["features"] == list(RANKING_FEATURES)
    assert on_disk["feature_list_hash"] == feature_list_hash(RANKING_FEATURES)
    assert on_disk["artifact_sha256"] == file_sha256(path / MODEL_FILE)
    assert on_disk["sklearn_version"] == sklearn.__version__
    assert on_disk["feature_service"] == "long_term_v1"
    assert on_disk["metrics"] == {"holdout_model_mrr@20": 0.4}
    assert on_disk["params"]["max_iter"] == 10
    assert on_disk["created_at"] == "2024-05-01T12:00:00+00:00"

    loaded = load_model(path, trusted_root=root)
    X = np.random.default_rng(5).random((50, len(RANKING_FEATURES)))
    assert loaded.ranker.score_candidates(X).tobytes() == ranker.score_candidates(X).tobytes()
    assert loaded.version == manifest.version and loaded.notes == ()
    assert not list(root.glob(".staging-*"))


def test_latest_version_is_the_newest(root: Path) -> None:
    with pytest.raises(NotFound, match="run `featrec train` first"):
        load_latest(root)
    first = save_model(fitted(seed=1), root, created_at=WHEN)
    second = save_model(fitted(seed=2), root, created_at=WHEN.replace(hour=13))
    assert list_versions(root) == [first.version, second.version]
    assert latest_version_dir(root).name == second.version
    assert load_latest(root).version == second.version
    with pytest.raises(ConfigError, match="already exists"):
        save_model(fitted(seed=2), root, version=second.version)
    with pytest.raises(ConfigError, match="invalid model version"):
        save_model(fitted(), root, version="../escape")


def test_tampered_artifact_is_refused(root: Path) -> None:
    path = root / save_model(fitted(), root).version
    model = path / MODEL_FILE
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="does not match the manifest"):
        load_model(path, trusted_root=root)


def test_an_artifact_holding_another_type_is_refused_even_with_a_matching_hash(
    root: Path,
) -> None:
    """A manifest rewritten to match is still no way to load arbitrary objects."""
    path = root / save_model(fitted(), root).version
    X = np.random.default_rng(0).random((60, 2))
    other = HistGradientBoostingClassifier(max_iter=3).fit(X, X[:, 0] > 0.5)
    sio.dump(other, path / MODEL_FILE)
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    manifest["artifact_sha256"] = file_sha256(path / MODEL_FILE)
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="not a Ranker"):
        load_model(path, trusted_root=root)

    sio.dump({"payload": os.system}, path / MODEL_FILE)  # a function is never trusted
    manifest["artifact_sha256"] = file_sha256(path / MODEL_FILE)
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="types featrec does not allow"):
        load_model(path, trusted_root=root)


def test_feature_list_mismatch_names_the_difference(root: Path) -> None:
    older = (*RANKING_FEATURES[:-1], "user_legacy_score")
    path = root / save_model(fitted(older), root).version
    with pytest.raises(ConfigError) as info:
        load_model(path, trusted_root=root)
    message = str(info.value)
    assert "trained on another feature list" in message
    assert f"missing {RANKING_FEATURES[-1]}" in message
    assert "unknown to this featrec user_legacy_score" in message
    assert "Retrain it with `featrec train`" in message

    swapped = (RANKING_FEATURES[1], RANKING_FEATURES[0], *RANKING_FEATURES[2:])
    path = root / save_model(fitted(swapped), root, version="swapped").version
    with pytest.raises(ConfigError, match=r"another order \(first at column 0: 'base_score'\)"):
        load_model(path, trusted_root=root)


def test_declared_feature_columns_after_the_built_in_ones_load(root: Path) -> None:
    """A model trained with declared features (``view__feature`` after the built-in columns)
    loads; serving resolves those names against the applied declarations."""
    declared = (*RANKING_FEATURES, "user_spend__spend_7d", "item_popularity__n_events_1h")
    loaded = load_model(root / save_model(fitted(declared), root).version, trusted_root=root)
    assert loaded.manifest.features == declared
    # A name that is not view__feature is still an unknown feature.
    odd = (*RANKING_FEATURES, "spend")
    path = root / save_model(fitted(odd), root, version="odd").version
    with pytest.raises(ConfigError, match="unknown to this featrec spend"):
        load_model(path, trusted_root=root)


def test_untrusted_paths_are_refused(root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "downloads"
    version = save_model(fitted(), elsewhere).version
    with pytest.raises(ConfigError, match="not inside the trusted models directory"):
        load_model(elsewhere / version, trusted_root=root)
    with pytest.raises(ConfigError, match="not inside the trusted models directory"):
        load_model(root / ".." / ".." / "downloads" / version, trusted_root=root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "linked").symlink_to(elsewhere / version)
    with pytest.raises(ConfigError, match="not inside the trusted models directory"):
        load_model(root / "linked", trusted_root=root)
    with pytest.raises(ConfigError, match="not a model version"):
        (root / "empty").mkdir()
        load_model(root / "empty", trusted_root=root)


def test_world_writable_files_are_refused(root: Path) -> None:
    path = root / save_model(fitted(), root).version
    (path / MODEL_FILE).chmod(0o666)
    with pytest.raises(ConfigError, match="writable by everyone"):
        load_model(path, trusted_root=root)


def test_broken_manifests_are_refused(root: Path) -> None:
    path = root / save_model(fitted(), root).version
    manifest = path / MANIFEST_FILE
    good = json.loads(manifest.read_text())
    cases = [
        ("{not json", "not valid JSON"),
        (json.dumps({**good, "format": 99}), "format 99 is not supported"),
        (json.dumps({**good, "feature_list_hash": "0" * 64}), "does not match its feature list"),
        (json.dumps({**good, "surprise": 1}), "unknown manifest field"),
        (json.dumps({k: v for k, v in good.items() if k != "artifact_sha256"}), "lacks"),
    ]
    for text, message in cases:
        manifest.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_model(path, trusted_root=root)


def test_other_scikit_learn_versions_are_noted(root: Path) -> None:
    path = root / save_model(fitted(), root).version
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    manifest["sklearn_version"] = "0.0.1"
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    loaded = load_model(path, trusted_root=root)
    assert loaded.notes and "scikit-learn 0.0.1" in loaded.notes[0]


def test_only_fitted_rankers_are_saved(root: Path) -> None:
    with pytest.raises(ConfigError, match="only a fitted Ranker"):
        save_model(Ranker(), root)


def test_the_predictor_is_exported_with_its_hash_and_scores_as_the_ranker(root: Path) -> None:
    ranker = fitted()
    manifest = save_model(ranker, root)
    path = root / manifest.version
    on_disk = json.loads((path / MANIFEST_FILE).read_text())
    assert on_disk["predictor"] == PREDICTOR_FILE
    assert on_disk["predictor_kind"] == PREDICTOR_KIND
    assert on_disk["predictor_sha256"] == file_sha256(path / PREDICTOR_FILE)
    loaded = load_model(path, trusted_root=root)
    X = np.random.default_rng(7).random((80, len(RANKING_FEATURES)))
    X[::3, 5] = np.nan
    scores = loaded.predictor.score_candidates(X)
    assert scores.tobytes() == ranker.score_candidates(X).tobytes()


def test_a_tampered_predictor_is_refused(root: Path) -> None:
    path = root / save_model(fitted(), root).version
    predictor = path / PREDICTOR_FILE
    data = bytearray(predictor.read_bytes())
    data[-200] ^= 0x01
    predictor.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="does not match the manifest"):
        load_model(path, trusted_root=root)


def test_a_predictor_that_scores_differently_is_refused_even_with_a_matching_hash(
    root: Path,
) -> None:
    """Another model's trees under a rewritten hash: the probe comparison catches it."""
    path = root / save_model(fitted(seed=0), root).version
    other = TreeArrays.from_model(fitted(seed=1).model_).to_bytes()
    (path / PREDICTOR_FILE).write_bytes(other)
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    manifest["predictor_sha256"] = hashlib.sha256(other).hexdigest()
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="does not score as its ranker"):
        load_model(path, trusted_root=root)


def test_a_version_saved_before_predictors_gets_one_compiled_at_load(root: Path) -> None:
    ranker = fitted()
    path = root / save_model(ranker, root).version
    (path / PREDICTOR_FILE).unlink()
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    for key in ("predictor", "predictor_sha256", "predictor_kind"):
        del manifest[key]
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    loaded = load_model(path, trusted_root=root)
    assert any("compiled one from the ranker" in note for note in loaded.notes)
    X = np.random.default_rng(8).random((30, len(RANKING_FEATURES)))
    assert loaded.predictor.score_candidates(X).tobytes() == ranker.score_candidates(X).tobytes()
