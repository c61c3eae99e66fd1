"""Gateway configuration: the YAML file, validated into frozen pydantic models.

Why pydantic v2: the best-kept validation library, and its errors carry exact key paths.

Example::

    listen: {host: 0.0.0.0, grpc_port: 8001, http_port: 8000, metrics_port: 8002,
             idle_timeout_s: 75, body_timeout_s: 60, max_connections: 4096,
             drain_delay_s: 0, drain_grace_s: 30}
    limits: {max_message_bytes: 67108864}
    allow_backend_pinning: true
    tracing: {otlp_endpoint: http://collector:4318/v1/traces, service_name: infergw}
    backends:
      triton:
        kind: triton
        url: 127.0.0.1:8101          # every key but kind and the policy keys goes to the backend
        max_concurrency: 64          # admission: requests in flight to this backend
        max_queue: 256               # admission: requests waiting beyond that (then 429)
        queue_timeout_ms: 5000       # admission: longest wait in the queue (then 429)
        timeout_ms: 30000            # per-request backend deadline
        retry: {max_retries: 2, base_ms: 25, max_ms: 250}   # absent: no retries
    models:
      identity: {backend: triton, backends: [triton]}   # backends: which ones a client may pin
      "*": triton                    # shorthand for {backend: triton}; any other model name

Types are strict: ``"5"`` is not an integer and ``"false"`` is not a boolean (an integer
is a fine number). Unknown keys are refused, except in a backend section, whose other
keys are that backend's options: its kind validates them. Every problem is one line
naming the file, the key path, what was expected and what was given::

    gateway.yaml: backends.triton.max_queue: must be an integer, got string '5'
    gateway.yaml: listen.grcp_port: unknown key; did you mean 'grpc_port'?
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, ClassVar, Self, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError, PydanticKnownError

from infergw.vocab.errors import InvalidArgument

WILDCARD = "*"
MAX_PROBLEMS = 10  # lines in one error; the rest are counted

Port = Annotated[int, Field(ge=0, le=65535)]  # 0: any free port (reported once bound)
Milliseconds = Annotated[float, Field(gt=0)]
Seconds = Annotated[float, Field(gt=0)]
Names = Annotated[tuple[str, ...], Strict(False)]  # a YAML list (of strict strings)


def config_error(problems: Sequence[str]) -> InvalidArgument:
    """A config that cannot be used: one self-contained line per problem.

    Plain InvalidArgument (no subclass): the status tables are derived from the error tree.
    """
    shown = list(problems[:MAX_PROBLEMS])
    if len(problems) > MAX_PROBLEMS:
        shown.append(f"... and {len(problems) - MAX_PROBLEMS} more")
    return InvalidArgument("\n".join(shown))


class Section(BaseModel):
    """One part of the config: frozen, strict, closed to unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    # A section listed in the file as ``NAME: {...}`` keeps NAME in this field.
    key_field: ClassVar[str | None] = None

    def replace(self, **changes: object) -> Self:
        """A copy with ``changes``, validated (``model_copy(update=...)`` is not).

        By field name: a section with aliased fields sets ``populate_by_name``.
        """
        return self.model_validate({**dict(self), **changes})

    @classmethod
    def file_keys(cls) -> list[str]:
        """The keys this section takes in the file."""
        return [_file_key(n, f) for n, f in cls.model_fields.items() if n != cls.key_field]


class ListenConfig(Section):
    """Where the gateway listens, how long it lets a connection idle, and how it drains.

    ``idle_timeout_s`` closes a connection that has not sent a complete request head
    within that time of opening or of its last response: idle keep-alive and slow
    headers alike (aiohttp's ``keepalive_timeout``). Longer than a load balancer's own
    idle timeout (AWS ALB: 60 s), so the balancer, not the gateway, closes first.
    ``body_timeout_s`` answers 408 when a request body makes no progress that long.
    ``max_connections`` caps open REST connections; ``None`` is a quarter of the
    process's open-file limit, so the cap is met before the descriptors run out.
    On SIGTERM the gateway reports not ready (gRPC health NOT_SERVING, REST 503) for
    ``drain_delay_s`` while still serving, then stops accepting and gives in-flight
    calls up to ``drain_grace_s`` (Kubernetes' default terminationGracePeriodSeconds)
    before cancelling them. Keep both within the orchestrator's own grace period.
    """

    host: str = "0.0.0.0"
    grpc_port: Port = 8001
    http_port: Port = 8000
    metrics_port: Port = 8002
    idle_timeout_s: Seconds = 75.0
    body_timeout_s: Seconds = 60.0
    max_connections: Annotated[int, Field(ge=1)] | None = None
    drain_delay_s: Annotated[float, Field(ge=0)] = 0.0
    drain_grace_s: Annotated[float, Field(ge=0)] = 30.0


class LimitsConfig(Section):
    max_message_bytes: Annotated[int, Field(ge=1)] = 64 * 1024 * 1024


class TracingConfig(Section):
    otlp_endpoint: str | None = None  # OTLP/HTTP traces endpoint; export is off without one
    service_name: Annotated[str, Field(min_length=1)] = "infergw"


class RetryConfig(Section):
    """Retries of retryable failures, full-jitter exponential backoff, within the deadline."""

    max_retries: Annotated[int, Field(ge=0)] = 2
    base_ms: Milliseconds = 25.0
    max_ms: Milliseconds = 250.0

    @model_validator(mode="after")
    def _cap_at_least_base(self) -> Self:
        if self.max_ms < self.base_ms:
            raise PydanticCustomError(
                "retry_cap", f"max_ms ({self.max_ms:g}) must be >= base_ms ({self.base_ms:g})"
            )
        return self


class BackendConfig(Section):
    """A ``backends.NAME`` section: the kind, the gateway's policy keys, the kind's options.

    Every field but ``name``, ``kind`` and ``options`` is a policy key (see POLICY_KEYS):
    the policies read it and the backend never sees it, so a new policy's settings are
    one more field here.
    """

    key_field: ClassVar[str | None] = "name"

    name: str
    kind: Annotated[str, Field(min_length=1)]
    options: dict[str, object] = Field(default_factory=dict)
    max_concurrency: Annotated[int, Field(ge=1)] = 64
    max_queue: Annotated[int, Field(ge=0)] = 256
    queue_timeout_ms: Milliseconds = 5000.0
    timeout_ms: Milliseconds | None = 30000.0  # null: the client's deadline only
    retry: RetryConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _other_keys_are_options(cls, data: object) -> object:
        """The file's flat section: keys the gateway does not own go to the backend."""
        if not isinstance(data, Mapping) or "options" in data:
            return data
        own = cls.model_fields.keys()
        options = {k: v for k, v in data.items() if k not in own}
        return {**{k: v for k, v in data.items() if k in own}, "options": options}


POLICY_KEYS = tuple(n for n in BackendConfig.model_fields if n not in ("name", "kind", "options"))


class RouteConfig(Section):
    """A ``models.NAME`` route: the model's backend, and the others a client may pin.

    The file's ``NAME: BACKEND`` is shorthand for ``NAME: {backend: BACKEND}``. (A routing
    ``policy:`` as the alternative to ``backend:`` is one more optional field here, with a
    check that exactly one of the two is given.)
    """

    key_field: ClassVar[str | None] = "model"

    model: str
    backend: str
    backends: Names = ()  # others a client may pin; empty = any configured


S = TypeVar("S", bound=Section)


def _sections_by_name(
    items: TypeAdapter[dict[str, S]], key: str, *, shorthand: str | None = None, empty: str = ""
) -> WrapValidator:
    """Read the file's ``{NAME: section}`` mapping as a tuple of sections keeping NAME in ``key``.

    A tuple or list (Python callers, ``replace``) is validated as it is.
    """

    def validate(value: object, handler: ValidatorFunctionWrapHandler) -> object:
        if isinstance(value, Mapping):
            odd = [_error("string_type", (k, "[key]"), k) for k in value if not isinstance(k, str)]
            if odd:
                raise ValidationError.from_exception_data("config", odd)
            named: dict[str, object] = {}
            for name, spec in value.items():
                if shorthand is not None and isinstance(spec, str):
                    spec = {shorthand: spec}
                if isinstance(spec, Mapping):
                    if key in spec:  # the name is the mapping key, not a setting
                        raise ValidationError.from_exception_data(
                            "config", [_error("extra_forbidden", (name, key), spec[key])]
                        )
                    spec = {key: name, **spec}
                named[name] = spec
            value = tuple(items.validate_python(named).values())
        elif not isinstance(value, tuple | list):
            raise PydanticKnownError("dict_type")
        sections = handler(value)
        if empty and not sections:
            raise PydanticCustomError("empty", empty)
        return sections

    return WrapValidator(validate)


BackendSections = Annotated[
    tuple[BackendConfig, ...],
    _sections_by_name(
        TypeAdapter(dict[str, BackendConfig]), "name", empty="at least one backend is required"
    ),
    Field(validate_default=True),
]
RouteSections = Annotated[
    tuple[RouteConfig, ...],
    _sections_by_name(TypeAdapter(dict[str, RouteConfig]), "model", shorthand="backend"),
    Field(validation_alias="models"),
]


class GatewayConfig(Section):
    """The whole file. ``routes`` is the file's ``models`` section (either name is taken)."""

    model_config = ConfigDict(populate_by_name=True)  # merged with Section's

    backends: BackendSections = ()
    routes: RouteSections = ()
    listen: ListenConfig = ListenConfig()
    limits: LimitsConfig = LimitsConfig()
    tracing: TracingConfig = TracingConfig()
    allow_backend_pinning: bool = True

    @model_validator(mode="after")
    def _routes_name_configured_backends(self) -> Self:
        configured = [b.name for b in self.backends]
        errors: list[InitErrorDetails] = []
        for route in self.routes:
            named: list[tuple[tuple[str | int, ...], str]] = [(("backend",), route.backend)]
            named += [(("backends", i), name) for i, name in enumerate(route.backends)]
            for where, name in named:
                if name not in configured:
                    message = f"unknown backend {name!r}" + _nearest(name, configured, "backends")
                    unknown = PydanticCustomError("unknown_backend", message)
                    errors.append(_error(unknown, ("models", route.model, *where), name))
        if errors:
            raise ValidationError.from_exception_data("config", errors)
        return self


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate a YAML config file; problems raise InvalidArgument naming the file."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise config_error([f"cannot read config {path}: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise config_error([f"cannot read config {path}: not UTF-8 text ({exc.reason})"]) from exc
    except yaml.YAMLError as exc:
        raise config_error([f"cannot read config {path}: {_yaml_problem(exc)}"]) from exc
    return parse_config(raw, source=str(path))


def parse_config(raw: object, source: str = "config") -> GatewayConfig:
    """Validate a parsed document (``None``, an empty file, is an empty mapping)."""
    try:
        return GatewayConfig.model_validate({} if raw is None else raw)
    except ValidationError as exc:
        problems = [_problem(e) for e in exc.errors(include_url=False)]
        raise config_error([f"{source}: {p}" for p in problems]) from exc


# Error lines ---------------------------------------------------------------------------

EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean (true or false)",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "tuple_type": "a list",
    "list_type": "a list",
}
BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def _problem(error: ErrorDetails) -> str:
    loc, kind, given = error["loc"], error["type"], error["input"]
    path = _path(loc)
    if kind == "missing":
        return f"{path} is required"
    if kind == "extra_forbidden":
        return f"{path}: unknown key" + _nearest(str(loc[-1]), _keys_at(loc[:-1]), "keys")
    if loc and loc[-1] == "[key]":  # a mapping key that is not a string (YAML ``1: ...``)
        return f"{_path(loc[:-2]) or 'the top level'}: keys must be strings, got {_given(given)}"
    where = f"{path}:" if path else "the top level"
    if kind in EXPECTED:
        return f"{where} must be {EXPECTED[kind]}, got {_given(given)}"
    if kind in BOUNDS:
        bound, symbol = BOUNDS[kind]
        limit = error.get("ctx", {}).get(bound)
        return f"{where} must be {symbol} {limit:g}, got {_given(given)}"
    if kind == "string_too_short":
        return f"{where} must not be empty"
    return f"{where} {error['msg']}"


def _path(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _given(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    names = {int: "integer", float: "number", str: "string"}
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{names.get(type(value), type(value).__name__)} {text}"


def _nearest(word: str, choices: Sequence[str], what: str) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; valid {what}: {', '.join(choices)}" if choices else ""


def _keys_at(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the section at ``loc`` takes, found by walking the models' field types."""
    section: type[Section] = GatewayConfig
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        info = next((f for n, f in section.model_fields.items() if _file_key(n, f) == part), None)
        found = _section_in(info.annotation) if info is not None else None
        if found is None:
            return []
        section, keyed = found
        if keyed and parts:
            parts.pop(0)  # the NAME in ``backends.NAME`` / ``models.NAME``
    return section.file_keys()


def _section_in(annotation: object) -> tuple[type[Section], bool] | None:
    """The Section type inside ``annotation``, and whether it sits in a collection."""
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation, False
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (tuple, list, dict) and args:
        found = _section_in(args[-1] if origin is dict else args[0])
        return (found[0], True) if found else None
    if origin in (typing.Union, types.UnionType):
        return next((f for f in map(_section_in, args) if f is not None), None)
    return None


def _file_key(name: str, info: FieldInfo) -> str:
    return info.validation_alias if isinstance(info.validation_alias, str) else name


def _error(
    kind: str | PydanticCustomError, loc: tuple[int | str, ...], given: object
) -> InitErrorDetails:
    return {"type": kind, "loc": loc, "input": given}


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line from PyYAML's multi-line message: where, and what."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    return " ".join(str(exc).split())
