"""Versions of the batch-trained item model on disk: ``<home>/item_models/<version>/``.

Each version holds ``lists.npz`` (the top-K lists as arrays: item ids as unicode, the entries
as indexes into them and float32 weights; read with ``allow_pickle=False``, so loading runs no
code) and ``manifest.json`` (the hyperparameters, training facts, metrics and the file's
sha256, checked on load). A version is written under a temporary name and renamed into place;
versions sort by creation time (``20240501T120000Z-<sha8>``), like the ranker's model store.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np

from featrec.core.items.slist import ItemModel, SlistConfig
from featrec.errors import ConfigError, NotFound

LISTS_FILE: Final = "lists.npz"
MANIFEST_FILE: Final = "manifest.json"


def item_models_dir(home: Path) -> Path:
    return home / "item_models"


@dataclass(frozen=True, slots=True)
class ItemModelManifest:
    version: str
    created_at: str
    config: Mapping[str, Any]
    sha256: str
    items: int
    training: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def save_item_model(
    model: ItemModel,
    root: Path,
    *,
    training: Mapping[str, Any] | None = None,
    created_at: datetime | None = None,
) -> ItemModelManifest:
    """Write ``model`` as a new version under ``root``; returns its manifest."""
    created = (created_at or datetime.now(UTC)).astimezone(UTC)
    names = sorted(model.neighbours)
    index = {name: i for i, name in enumerate(names)}
    extra = sorted({j for row in model.neighbours.values() for j, _ in row} - index.keys())
    for name in extra:
        index[name] = len(names)
        names.append(name)
    width = max((len(row) for row in model.neighbours.values()), default=0)
    anchors = len(model.neighbours)
    idx = np.full((anchors, width), -1, dtype=np.int64)
    weights = np.zeros((anchors, width), dtype=np.float32)
    for r, name in enumerate(names[:anchors]):
        row = model.neighbours[name]
        idx[r, : len(row)] = [index[j] for j, _ in row]
        weights[r, : len(row)] = [w for _, w in row]
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".staging-{os.getpid()}-{created.timestamp():.6f}"
    staging.mkdir()
    try:
        path = staging / LISTS_FILE
        np.savez_compressed(
            path, names=np.asarray(names, dtype=str), anchors=np.int64(anchors), idx=idx, w=weights
        )
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        version = f"{created:%Y%m%dT%H%M%S}{created.microsecond:06d}Z-{sha[:8]}"
        manifest = ItemModelManifest(
            version=version,
            created_at=created.isoformat(),
            config=asdict(model.config),
            sha256=sha,
            items=anchors,
            training=dict(training or {}),
        )
        (staging / MANIFEST_FILE).write_text(manifest.to_json() + "\n")
        target = root / version
        if target.exists():
            raise ConfigError(f"item model version {version!r} already exists in {root}")
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def list_item_model_versions(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_item_model(root: Path, version: str = "latest") -> tuple[ItemModel, ItemModelManifest]:
    """A saved version (``latest``: the newest), its file checked against the manifest."""
    versions = list_item_model_versions(root)
    if not versions:
        raise NotFound(f"no item model under {root}: run `featrec items train-model`")
    name = versions[-1] if version == "latest" else version
    if name not in versions:
        raise NotFound(f"no item model version {name!r} under {root}")
    where = root / name
    try:
        data = json.loads((where / MANIFEST_FILE).read_text())
        manifest = ItemModelManifest(**data)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"{where}: unreadable item model manifest ({e})") from None
    path = where / LISTS_FILE
    if hashlib.sha256(path.read_bytes()).hexdigest() != manifest.sha256:
        raise ConfigError(f"{path}: sha256 differs from the manifest (tampered or truncated)")
    with np.load(path, allow_pickle=False) as z:
        names = [str(n) for n in z["names"]]
        anchors = int(z["anchors"])
        idx, w = z["idx"], z["w"]
    neighbours = {
        names[r]: tuple((names[j], float(v)) for j, v in zip(idx[r], w[r], strict=True) if j >= 0)
        for r in range(anchors)
    }
    return ItemModel(neighbours, SlistConfig(**manifest.config)), manifest
