"""Model artifacts on disk: a fitted :class:`~featrec.core.ranking.ranker.Ranker` and its manifest.

Layout: ``<models>/<version>/model.skops`` and ``<models>/<version>/manifest.json``, where
``<models>`` is ``$FEATREC_HOME/models`` (:func:`models_dir`) and ``version`` sorts by
creation time (``20240501T120000Z-<sha8>``). A version directory is written under a
temporary name and renamed into place, so a reader never sees half an artifact.

**Loading is guarded**, because a model file is code in disguise (pickle runs anything):

1. the path must lie inside the trusted models directory once symlinks are resolved;
2. neither file may be writable by everyone;
3. the model file's sha256 must equal the manifest's ``artifact_sha256`` (a tampered or
   truncated file is refused);
4. the file is read with ``skops`` (no pickle), and only if every type it holds that skops
   does not trust by default is in :data:`ALLOWED_TYPES` (a file that is not a skops archive,
   such as a pickle renamed ``model.skops``, is refused before anything in it is read);
5. the manifest's feature list must equal the list the caller scores with
   (:data:`~featrec.core.ranking.ranker.RANKING_FEATURES`): a mismatch is a
   :class:`~featrec.errors.ConfigError` naming the missing, extra or moved features.

**The serving predictor** (:mod:`featrec.core.ranking.predictor`) is exported beside the model
as ``predictor.npz`` (the trees as flat arrays: data, read without pickle), its sha256 and kind
recorded in the manifest. Loading checks the hash like the model's, then scores a probe matrix
with both and refuses the version unless the predictor equals the ranker bit for bit. A
version saved before predictors existed gets one compiled from its ranker at load time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import sklearn

from featrec.core.features.catalog import LONG_TERM_SERVICE, SESSION_SERVICE
from featrec.core.features.declared.ranking import SEP
from featrec.core.ranking.predictor import (
    PREDICTOR_KIND,
    CompiledPredictor,
    TreeArrays,
    probe_matrix,
)
from featrec.core.ranking.ranker import RANKING_FEATURES, Ranker
from featrec.errors import ConfigError, NotFound

MODEL_FILE: Final = "model.skops"
PREDICTOR_FILE: Final = "predictor.npz"
MANIFEST_FILE: Final = "manifest.json"
MANIFEST_FORMAT: Final = 1

#: Types a ranker artifact may hold beyond those skops trusts by default.
ALLOWED_TYPES: Final = (
    "featrec.core.ranking.ranker.Ranker",
    # The same class as saved before the restructure (see featrec.compat).
    "featrec.core.ranking.Ranker",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
)


def models_dir(home: Path) -> Path:
    """The trusted directory of model versions under a featrec home."""
    return home / "models"


def feature_list_hash(features: Sequence[str]) -> str:
    """sha256 of the feature names, one per line, in order."""
    return hashlib.sha256("\n".join(features).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a model was trained on and how to check it before use."""

    version: str
    features: tuple[str, ...]
    feature_list_hash: str
    artifact_sha256: str
    sklearn_version: str
    skops_version: str
    created_at: str
    #: The Feast feature service the training set was joined with, and the online one.
    feature_service: str = LONG_TERM_SERVICE
    session_service: str = SESSION_SERVICE
    metrics: Mapping[str, float] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    #: Free-form facts about the training run (data set path, rows, ...).
    training: Mapping[str, Any] = field(default_factory=dict)
    format: int = MANIFEST_FORMAT
    artifact: str = MODEL_FILE
    #: The exported serving predictor (None: saved before predictors existed).
    predictor: str | None = None
    predictor_sha256: str | None = None
    predictor_kind: str | None = None

    def to_json(self) -> str:
        data = asdict(self)
        data["features"] = list(self.features)
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: Path) -> Manifest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: the manifest is not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: the manifest must be a JSON object")
        if data.get("format") != MANIFEST_FORMAT:
            raise ConfigError(
                f"{where}: manifest format {data.get('format')!r} is not supported "
                f"(this featrec reads format {MANIFEST_FORMAT})"
            )
        required = ("version", "features", "feature_list_hash", "artifact_sha256")
        missing = [name for name in required if name not in data]
        if missing:
            raise ConfigError(f"{where}: the manifest lacks {', '.join(missing)}")
        features = data["features"]
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise ConfigError(f"{where}: manifest features must be a list of names")
        known = {f for f in cls.__dataclass_fields__ if not f.startswith("_")}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown manifest field(s) {', '.join(unknown)}")
        data["features"] = tuple(features)
        manifest = cls(**data)
        if feature_list_hash(manifest.features) != manifest.feature_list_hash:
            raise ConfigError(
                f"{where}: the manifest's feature_list_hash does not match its feature list"
            )
        if manifest.artifact != MODEL_FILE:
            raise ConfigError(f"{where}: unexpected artifact name {manifest.artifact!r}")
        if manifest.predictor not in (None, PREDICTOR_FILE):
            raise ConfigError(f"{where}: unexpected predictor name {manifest.predictor!r}")
        if manifest.predictor is not None and (
            manifest.predictor_sha256 is None or manifest.predictor_kind != PREDICTOR_KIND
        ):
            raise ConfigError(
                f"{where}: predictor kind {manifest.predictor_kind!r} is not supported (this "
                f"featrec reads {PREDICTOR_KIND!r}, with its sha256): retrain the model"
            )
        return manifest


@dataclass(frozen=True, slots=True)
class LoadedModel:
    ranker: Ranker
    manifest: Manifest
    path: Path
    #: The serving predictor: scores equal to ``ranker``'s bit for bit (checked at load).
    predictor: CompiledPredictor
    #: Warnings worth logging (e.g. trained with another scikit-learn version).
    notes: tuple[str, ...] = ()

    @property
    def version(self) -> str:
        return self.manifest.version


def save_model(
    ranker: Ranker,
    root: Path,
    *,
    metrics: Mapping[str, float] | None = None,
    training: Mapping[str, Any] | None = None,
    version: str | None = None,
    created_at: datetime | None = None,
) -> Manifest:
    """Write ``ranker`` as a new version under ``root``; returns its manifest."""
    import skops
    import skops.io as sio

    features = tuple(str(f) for f in getattr(ranker, "feature_names_in_", ()))
    if not features:
        raise ConfigError("only a fitted Ranker can be saved (it has no feature_names_in_)")
    created = (created_at or datetime.now(UTC)).astimezone(UTC)
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".staging-{os.getpid()}-{created.timestamp():.6f}"
    staging.mkdir()
    try:
        model_path = staging / MODEL_FILE
        sio.dump(ranker, model_path)
        sha = file_sha256(model_path)
        predictor = TreeArrays.from_model(ranker.model_).to_bytes()
        (staging / PREDICTOR_FILE).write_bytes(predictor)
        name = version or f"{created:%Y%m%dT%H%M%SZ}-{sha[:8]}"
        _check_version_name(name)
        manifest = Manifest(
            version=name,
            features=features,
            feature_list_hash=feature_list_hash(features),
            artifact_sha256=sha,
            sklearn_version=sklearn.__version__,
            skops_version=skops.__version__,
            created_at=created.isoformat(),
            metrics=dict(metrics or {}),
            params={k: _jsonable(v) for k, v in ranker.get_params().items()},
            training=dict(training or {}),
            predictor=PREDICTOR_FILE,
            predictor_sha256=hashlib.sha256(predictor).hexdigest(),
            predictor_kind=PREDICTOR_KIND,
        )
        (staging / MANIFEST_FILE).write_text(manifest.to_json() + "\n")
        target = root / name
        if target.exists():
            raise ConfigError(f"model version {name!r} already exists in {root}")
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value


def _check_version_name(name: str) -> None:
    if not name or name.startswith(".") or "/" in name or "\\" in name or name in ("..",):
        raise ConfigError(f"invalid model version name {name!r}")


def list_versions(root: Path) -> list[str]:
    """Model versions under ``root``, oldest first (names sort by creation time)."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def latest_version_dir(root: Path) -> Path:
    """The newest version directory under ``root`` (``NotFound`` when there is none)."""
    versions = list_versions(root)
    if not versions:
        raise NotFound(f"no trained model in {root}: run `featrec train` first")
    return root / versions[-1]


def load_model(
    path: Path,
    *,
    trusted_root: Path,
    features: Sequence[str] = RANKING_FEATURES,
) -> LoadedModel:
    """Load the model version at ``path`` after every check in the module docstring."""
    import skops.io as sio

    root = trusted_root.resolve()
    where = path.resolve()
    if not where.is_relative_to(root) or where == root:
        raise ConfigError(
            f"refusing to load a model from {path}: it is not inside the trusted models "
            f"directory {root}"
        )
    manifest_path, model_path = where / MANIFEST_FILE, where / MODEL_FILE
    for file in (manifest_path, model_path):
        if not file.is_file():
            raise ConfigError(f"{where} is not a model version: {file.name} is missing")
        if not file.resolve().is_relative_to(root):
            raise ConfigError(f"refusing {file}: it links outside the trusted directory {root}")
        if file.stat().st_mode & stat.S_IWOTH:
            raise ConfigError(f"refusing {file}: it is writable by everyone (chmod o-w)")
    manifest = Manifest.from_json(manifest_path.read_text(), manifest_path)
    # Hash the very bytes that are loaded: the file cannot change between check and use.
    data = model_path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != manifest.artifact_sha256:
        raise ConfigError(
            f"refusing {model_path}: its sha256 {actual[:16]}... does not match the manifest's "
            f"{manifest.artifact_sha256[:16]}... (the file was changed after training; "
            "retrain or restore it)"
        )
    check_features(manifest.features, (*features, *declared_extras(manifest, features)), where)
    try:
        held = sio.get_untrusted_types(data=data)
    except (zipfile.BadZipFile, KeyError, ValueError) as e:
        # A pickle (or anything else) renamed to model.skops: read nothing from it.
        raise ConfigError(f"refusing {model_path}: it is not a skops file ({e})") from None
    untrusted = [t for t in held if t not in ALLOWED_TYPES]
    if untrusted:
        raise ConfigError(
            f"refusing {model_path}: it holds types featrec does not allow: {', '.join(untrusted)}"
        )
    ranker = sio.loads(data, trusted=list(ALLOWED_TYPES))
    if not isinstance(ranker, Ranker):
        raise ConfigError(
            f"refusing {model_path}: it holds a {type(ranker).__name__}, not a Ranker"
        )
    loaded = tuple(str(f) for f in getattr(ranker, "feature_names_in_", ()))
    if loaded != manifest.features:
        raise ConfigError(f"{model_path}: the model's features differ from its manifest's")
    notes = []
    if manifest.sklearn_version != sklearn.__version__:
        notes.append(
            f"trained with scikit-learn {manifest.sklearn_version}, running "
            f"{sklearn.__version__}: retrain to be sure scores are unchanged"
        )
    predictor, note = _load_predictor(where, root, manifest, ranker)
    notes.extend(note)
    return LoadedModel(ranker, manifest, where, predictor, tuple(notes))


def _load_predictor(
    where: Path, root: Path, manifest: Manifest, ranker: Ranker
) -> tuple[CompiledPredictor, list[str]]:
    """The version's exported predictor (hash-checked), or one compiled from ``ranker`` for a
    version saved without; refused unless it scores a probe exactly as ``ranker`` does."""
    notes: list[str] = []
    if manifest.predictor is None:
        trees = TreeArrays.from_model(ranker.model_)
        notes.append("saved without a predictor: compiled one from the ranker at load time")
    else:
        path = where / manifest.predictor
        if not path.is_file() or not path.resolve().is_relative_to(root):
            raise ConfigError(f"{where}: the predictor {manifest.predictor} is missing")
        if path.stat().st_mode & stat.S_IWOTH:
            raise ConfigError(f"refusing {path}: it is writable by everyone (chmod o-w)")
        data = path.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != manifest.predictor_sha256:
            raise ConfigError(
                f"refusing {path}: its sha256 {actual[:16]}... does not match the manifest's "
                f"(the file was changed after training; retrain or restore it)"
            )
        try:
            trees = TreeArrays.from_bytes(data)
        except (ValueError, KeyError, OSError, zipfile.BadZipFile) as e:
            raise ConfigError(f"refusing {path}: not a featrec predictor ({e})") from None
    predictor = CompiledPredictor(trees)
    probe = probe_matrix(trees)
    if predictor.score_candidates(probe).tobytes() != ranker.score_candidates(probe).tobytes():
        raise ConfigError(
            f"refusing {where}: its predictor does not score as its ranker does (retrain)"
        )
    return predictor, notes


def load_latest(trusted_root: Path, *, features: Sequence[str] = RANKING_FEATURES) -> LoadedModel:
    """The newest version under ``trusted_root``, loaded with every check."""
    return load_model(
        latest_version_dir(trusted_root), trusted_root=trusted_root, features=features
    )


def declared_extras(manifest: Manifest, features: Sequence[str]) -> tuple[str, ...]:
    """The model's declared-feature columns (``view__feature``, after the built-in ones),
    which the caller resolves against the applied declarations; () if it has none."""
    trained = tuple(manifest.features)
    n = len(features)
    if trained[:n] != tuple(features):
        return ()
    extras = trained[n:]
    return extras if all(SEP in name for name in extras) else ()


def check_features(trained: Sequence[str], expected: Sequence[str], where: Path) -> None:
    """Raise :class:`ConfigError` naming how ``trained`` differs from ``expected``."""
    if tuple(trained) == tuple(expected):
        return
    missing = [f for f in expected if f not in trained]
    extra = [f for f in trained if f not in expected]
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing)}")
    if extra:
        parts.append(f"unknown to this featrec {', '.join(extra)}")
    if not parts:
        moved = next(i for i, (a, b) in enumerate(zip(trained, expected, strict=True)) if a != b)
        parts.append(f"same names in another order (first at column {moved}: {trained[moved]!r})")
    raise ConfigError(
        f"the model at {where} was trained on another feature list "
        f"(hash {feature_list_hash(trained)[:12]} vs {feature_list_hash(expected)[:12]}): "
        f"{'; '.join(parts)}. Retrain it with `featrec train`."
    )
