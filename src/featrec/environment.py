"""Reading ``FEATREC_*`` variables: the frozen model base, its reader and its messages.

:class:`EnvModel` is a pydantic-settings model that never reads ``os.environ`` by itself:
``from_env(environ)`` reads the mapping it is given (pydantic-settings' own environment source,
pointed at that mapping), construction validates, and any invalid value becomes one
:class:`~featrec.errors.ConfigError` line that names the variable, the value (passwords
redacted, secrets never shown) and what is allowed. The models themselves, and so the list of
every variable, are in :mod:`featrec.settings`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Self, get_args, get_origin
from urllib.parse import urlsplit, urlunsplit

import annotated_types
from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

from featrec.errors import ConfigError

PREFIX: Final = "FEATREC_"


class UnknownVariableWarning(UserWarning):
    """A ``FEATREC_*`` variable that featrec does not read (most likely a typo)."""


def var(
    default: Any,
    meaning: str,
    *,
    shown: str | None = None,
    allowed: str | None = None,
    secret: bool = False,
    alias: str | None = None,
    **bounds: Any,
) -> Any:
    """A ``FEATREC_*`` field and its README row.

    ``meaning``; ``allowed``: what it accepts, in words (else derived from the type and
    ``bounds``, pydantic's ``ge``/``gt``/``le``/``min_length``); ``shown``: the default as the
    README shows it, when it is derived; ``secret``: left out of ``repr``, never echoed;
    ``alias``: a variable name outside the model's prefix.
    """
    extra: dict[str, Any] = {"meaning": meaning}
    if shown is not None:
        extra["shown"] = shown
    if allowed is not None:
        extra["allowed"] = allowed
    if secret:
        extra["secret"] = True
    return Field(
        default,
        description=meaning,
        json_schema_extra=extra,
        repr=not secret,
        validation_alias=alias,
        **bounds,
    )


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source, on the mapping given rather than ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )

    def prepare_field_value(
        self, field_name: str, field: FieldInfo, value: Any, value_is_complex: bool
    ) -> Any:
        # The model gets the string as it is and parses it (JSON included), so that a bad
        # value is a validation error naming its variable, not pydantic-settings' SettingsError.
        return value


class EnvModel(BaseSettings):
    """A frozen group of ``FEATREC_*`` variables: typed, bounded, one-line errors."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX,
        env_ignore_empty=True,
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        allow_inf_nan=False,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Construction never reads os.environ: only from_env reads, and only its mapping.
        return (init_settings,)

    @model_validator(mode="wrap")
    @classmethod
    def _one_line_errors(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(data)
        except ValidationError as e:
            raise ConfigError("; ".join(_describe(cls, error) for error in e.errors())) from None

    @classmethod
    def variable(cls, name: str) -> str:
        """The environment variable of field ``name``."""
        alias = cls.model_fields[name].validation_alias
        return alias if isinstance(alias, str) else PREFIX + cls._prefix() + name.upper()

    @classmethod
    def _prefix(cls) -> str:
        return str(cls.model_config.get("env_prefix", PREFIX)).removeprefix(PREFIX)

    @classmethod
    def read(cls, environ: Mapping[str, str]) -> dict[str, Any]:
        """The raw values of this group's variables that are set (and not empty) in ``environ``."""
        raw = _Environment(cls, environ)()
        # The source keys aliased fields by their variable; construction takes field names.
        names = {cls.variable(n).lower(): n for n in cls.model_fields}
        return {names.get(key.lower(), key): value for key, value in raw.items()}

    def field_values(self) -> dict[str, Any]:
        """Field name -> value (derived values included, e.g. the CA in the Redis URL)."""
        return {name: getattr(self, name) for name in type(self).model_fields}

    def with_(self, **changes: Any) -> Self:
        """A copy with ``changes``, validated again."""
        return type(self)(**{**self.field_values(), **changes})

    def to_env(self) -> dict[str, str]:
        """The ``FEATREC_*`` variables that rebuild this object in a child process."""
        env: dict[str, str] = {}
        for name, value in self.field_values().items():
            if isinstance(value, SecretStr):
                text = value.get_secret_value()
            elif isinstance(value, dict):
                text = json.dumps(value)
            elif value is not None:
                text = str(value)
            else:
                continue
            env[type(self).variable(name)] = text
        return env


@dataclass(frozen=True, slots=True)
class Variable:
    """One ``FEATREC_*`` variable, as the README's table shows it."""

    name: str
    default: str
    allowed: str
    meaning: str


def model_variables(model: type[EnvModel]) -> list[Variable]:
    """``model``'s variables, in declaration order."""
    return [
        Variable(
            model.variable(name),
            _shown_default(field),
            allowed_values(field),
            _extra(field)["meaning"],
        )
        for name, field in model.model_fields.items()
    ]


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (safe for messages and logs)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable Redis URL>"
    if not password:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


# --- messages -------------------------------------------------------------------------------

_MAX_SHOWN: Final = 80


def _extra(field: FieldInfo) -> dict[str, Any]:
    extra = field.json_schema_extra
    assert isinstance(extra, dict), "declare FEATREC_* fields with var()"
    return extra


def allowed_values(field: FieldInfo) -> str:
    """What ``field`` accepts, in words: ``one of: sqlite, redis``, ``an integer >= 1``..."""
    extra = _extra(field)
    if "allowed" in extra:
        return str(extra["allowed"])
    annotation = field.annotation
    options = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is not Literal and len(options) == 1:
        annotation = options[0]  # X | None
    if get_origin(annotation) is Literal:
        return "one of: " + ", ".join(map(str, get_args(annotation)))
    if annotation is Path:
        return "a path"
    if annotation is SecretStr:
        return "a secret"
    if annotation is str:
        return "a non-empty string"
    if annotation is int:
        kind = "an integer"
    elif annotation is float:
        kind = "a finite number"
    else:
        return "a JSON object"
    low = [m for m in field.metadata if isinstance(m, annotated_types.Ge | annotated_types.Gt)]
    high = [m.le for m in field.metadata if isinstance(m, annotated_types.Le)]
    if low and high and isinstance(low[0], annotated_types.Ge):
        return f"{kind} from {low[0].ge} to {high[0]}"
    words = [f">= {m.ge}" if isinstance(m, annotated_types.Ge) else f"> {m.gt}" for m in low]
    return " ".join([kind, *words, *(f"<= {h}" for h in high)])


def _describe(model: type[EnvModel], error: Any) -> str:
    """One clause naming the variable, the value (redacted) and what is allowed."""
    loc = error["loc"]
    name = str(loc[0]) if loc else ""
    if error["type"] == "extra_forbidden":
        return f"{model.__name__} has no setting {name!r}"
    field = model.model_fields.get(name)
    if field is None:
        return str(error["msg"])
    var = model.variable(name)
    value = error["input"]
    if _extra(field).get("secret"):
        if not (isinstance(value, str) and "://" in value):
            return f"{var} is not {allowed_values(field)}"  # never echo a secret
        value = redact_url(value)
    if isinstance(value, str) and len(value) > _MAX_SHOWN:
        value = value[:_MAX_SHOWN] + "..."
    return f"{var}={value!r} is not {allowed_values(field)}"


def _shown_default(field: FieldInfo) -> str:
    extra = _extra(field)
    if "shown" in extra:
        return str(extra["shown"])
    value = field.default
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        value = int(value)
    return f"`{value}`"
