"""Faster construction of frozen, slotted dataclasses built by the hundred per request.

A frozen dataclass's ``__init__`` sets each field with ``object.__setattr__(self, name, value)``
(a name lookup through the type per field) after ``type.__call__`` dispatched to ``__new__`` and
``__init__``. :func:`positional_maker` returns a plain function that takes every field
positionally, in declaration order, and writes the slots through their member descriptors
directly: the same object (same class, frozen for users: assigning a field still raises
:class:`dataclasses.FrozenInstanceError`; equal, hashable and printable as before), built with
less interpreter work. It checks nothing the generated ``__init__`` would not: it is only for
classes without ``__post_init__`` and without ``InitVar``/``init=False`` fields, and it refuses
others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def positional_maker(cls: type[T]) -> Callable[..., T]:
    """``make(*fields) -> cls`` for a frozen dataclass with ``slots=True`` (every field, in
    declaration order, positionally; no defaults)."""
    if not dataclasses.is_dataclass(cls) or not isinstance(cls, type):
        raise TypeError(f"{cls!r} is not a dataclass")
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    if not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} must be a frozen dataclass with slots=True")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has __post_init__, which the maker would skip")
    fields = dataclasses.fields(cls)
    if len(fields) != len(cls.__dataclass_fields__) or not all(f.init for f in fields):  # type: ignore[attr-defined]
        raise TypeError(f"{cls.__name__} has fields that __init__ does not simply set")
    names = [f.name for f in fields]
    setters = {f"_set_{n}": cls.__dict__[n].__set__ for n in names}
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls, **setters}
    args = ", ".join(names)
    body = "\n".join(f"    _set_{n}(self, {n})" for n in names)
    source = f"def make({args}):\n    self = _new(_cls)\n{body}\n    return self\n"
    # The source is built from the dataclass' own field names (identifiers), nothing else.
    exec(source, namespace)  # nosec B102
    make: Callable[..., T] = namespace["make"]
    make.__name__ = make.__qualname__ = f"make_{cls.__name__}"
    make.__doc__ = f"A {cls.__name__} from its fields, positionally (see featrec.core.fast_init)."
    return make
