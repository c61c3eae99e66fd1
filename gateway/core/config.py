"""Gateway configuration: the YAML file, validated into frozen pydantic models.

Why pydantic v2: the best-kept validation library, and its errors carry exact key paths.

Example::

    listen: {host: 0.0.0.0, grpc_port: 8001, http_port: 8000, metrics_port: 8002,
             idle_timeout_s: 75, body_timeout_s: 60, max_connections: 4096,
             drain_delay_s: 0, drain_grace_s: 30,
             tls: {cert_file: server.pem, key_file: server.key, client_ca_file: clients-ca.pem}}
    auth: {api_keys_file: /etc/infergw/api-keys, open_health: true, open_metrics: true}
    limits: {max_message_bytes: 67108864}
    allow_backend_pinning: true
    allow_model_control: false       # true: Triton's load/unload are forwarded (control.py)
    data_plane: auto                 # native | python; auto: the Rust plane when it serves a route
    tracing: {otlp_endpoint: http://collector:4318/v1/traces, service_name: infergw,
              triton_receiver: {host: 127.0.0.1, port: 4319}}   # Triton's spans -> splits
    backends:
      triton:
        kind: triton
        url: 127.0.0.1:8101          # every key but kind and the policy keys goes to the backend
        max_concurrency: 64          # admission: requests in flight to this backend
        max_queue: 256               # admission: requests waiting beyond that (then 429)
        queue_timeout_ms: 5000       # admission: longest wait in the queue (then 429)
        timeout_ms: 30000            # per-request backend deadline
        retry: {max_retries: 2, base_ms: 25, max_ms: 250}   # absent: no retries
        autoscale: {max_slots: 16, provision_delay_s: 180, idle_release_s: 180}  # absent: fixed
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
from typing import Annotated, ClassVar, Literal, Self, TypeVar

import yaml
from pydantic import (
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError, PydanticKnownError

from infergw.gateway.core.routing.config import (
    AutoscaleConfig,
    KeepWarmConfig,
    OutlierConfig,
    RetryConfig,
    RoutePolicyConfig,
)
from infergw.gateway.core.sections import Section, file_key
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


class TlsConfig(Section):
    """TLS on a listener: a PEM certificate chain and its key; with ``client_ca_file``,
    clients must present a certificate that CA signed (mutual TLS). The files are re-read
    when they change (certificate rotation without a restart)."""

    cert_file: Annotated[str, Field(min_length=1)]
    key_file: Annotated[str, Field(min_length=1)]
    client_ca_file: Annotated[str, Field(min_length=1)] | None = None


class AuthConfig(Section):
    """API keys at the gateway: one key per line in ``api_keys_file`` (re-read when it
    changes). Health endpoints and the metrics port stay open unless set otherwise."""

    api_keys_file: Annotated[str, Field(min_length=1)]
    open_health: bool = True
    open_metrics: bool = True


class ListenConfig(Section):
    """Where the gateway listens, how long it lets a connection idle, and how it drains.

    ``idle_timeout_s`` closes a connection that has not sent a complete request head
    within that time of opening or of its last response: idle keep-alive and slow
    headers alike (aiohttp's ``keepalive_timeout``). Longer than a load balancer's own
    idle timeout (AWS ALB: 60 s), so the balancer, not the gateway, closes first.
    On the gRPC port a connection with no call for ``idle_timeout_s`` is sent GOAWAY.
    ``body_timeout_s`` answers 408 when a request body makes no progress that long.
    ``max_connections`` caps open connections on each of the REST and gRPC ports;
    ``None`` is a quarter of the process's open-file limit, so the cap is met before
    the descriptors run out.
    On SIGTERM the gateway reports not ready (gRPC health NOT_SERVING, REST 503) for
    ``drain_delay_s`` while still serving, then stops accepting and gives in-flight
    calls up to ``drain_grace_s`` (Kubernetes' default terminationGracePeriodSeconds)
    before cancelling them (a second SIGTERM cancels them at once). Keep both within the
    orchestrator's own grace period.
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
    tls: TlsConfig | None = None  # None: plaintext (h2c and HTTP/1.1) on every port


class LimitsConfig(Section):
    max_message_bytes: Annotated[int, Field(ge=1)] = 64 * 1024 * 1024


class TritonReceiverConfig(Section):
    """The OTLP/HTTP receiver for Triton's own spans (``infergw.gateway.triton_traces``):
    per-request ``backend_queue`` and ``compute`` for Triton backends. Point Triton's
    ``--trace-config opentelemetry,url=`` at ``http://HOST:PORT/v1/traces`` (with
    ``rate=0``). ``ring_size`` bounds the recent splits kept for ``GET /v1/splits`` (and
    the attempts awaiting spans); one still awaiting them after ``pending_timeout_s`` is
    unknown. Plaintext: bind it where only Triton reaches it."""

    host: str = "127.0.0.1"
    port: Port = 4318
    ring_size: Annotated[int, Field(ge=1)] = 65536
    pending_timeout_s: Seconds = 30.0


class TracingConfig(Section):
    otlp_endpoint: str | None = None  # OTLP/HTTP traces endpoint; export is off without one
    service_name: Annotated[str, Field(min_length=1)] = "infergw"
    triton_receiver: TritonReceiverConfig | None = None  # None: Triton's spans not received


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
    retry: RetryConfig | None = None  # absent: no retries
    outlier: OutlierConfig | None = None  # absent: never ejected
    keep_warm: KeepWarmConfig | None = None  # serverless kinds: pings that keep it warm
    autoscale: AutoscaleConfig | None = None  # always-on kinds: slots that follow the load

    @model_validator(mode="before")
    @classmethod
    def _other_keys_are_options(cls, data: object) -> object:
        """The file's flat section: keys the gateway does not own go to the backend."""
        if not isinstance(data, Mapping) or "options" in data:
            return data
        own = cls.model_fields.keys()
        options = {k: v for k, v in data.items() if k not in own}
        return {**{k: v for k, v in data.items() if k in own}, "options": options}

    @model_validator(mode="after")
    def _autoscale_above_floor(self) -> Self:
        if self.autoscale is not None and self.autoscale.max_slots < self.max_concurrency:
            raise PydanticCustomError(
                "autoscale_floor",
                f"autoscale.max_slots ({self.autoscale.max_slots}) must be >= "
                f"max_concurrency ({self.max_concurrency}), the floor it scales from",
            )
        return self


POLICY_KEYS = tuple(n for n in BackendConfig.model_fields if n not in ("name", "kind", "options"))


class RouteConfig(Section):
    """A ``models.NAME`` route: one backend or a routing ``policy`` across several
    (``routing/``), and the other backends a client may pin.

    The file's ``NAME: BACKEND`` is shorthand for ``NAME: {backend: BACKEND}``; exactly one
    of ``backend`` and ``policy`` is given.
    """

    key_field: ClassVar[str | None] = "model"

    model: str
    backend: str | None = None
    policy: RoutePolicyConfig | None = None
    backends: Names = ()  # others a client may pin; empty = any configured

    @model_validator(mode="after")
    def _backend_or_policy(self) -> Self:
        if (self.backend is None) == (self.policy is None):
            raise PydanticCustomError(
                "backend_or_policy", "give either 'backend: NAME' or 'policy: {kind: ...}'"
            )
        return self

    def named(self) -> tuple[tuple[tuple[str | int, ...], str], ...]:
        """Every backend the route names (its members, then those a client may pin),
        each with its key path."""
        own: tuple[tuple[tuple[str | int, ...], str], ...]
        if self.policy is not None:
            own = tuple((("policy", *where), name) for where, name in self.policy.named())
        else:
            own = ((("backend",), self.primary),)
        return (*own, *((("backends", i), name) for i, name in enumerate(self.backends)))

    @property
    def members(self) -> tuple[str, ...]:
        """The backends that serve the route, its first choice first."""
        if self.policy is None:
            assert self.backend is not None  # one of the two, checked above
            return (self.backend,)
        return tuple(dict.fromkeys(name for _, name in self.policy.named()))

    @property
    def primary(self) -> str:
        """The route's first choice: its backend, or its policy's first member (control
        calls, which no policy routes, go there)."""
        return self.members[0]


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
    auth: AuthConfig | None = None  # None: no authentication at the gateway
    allow_backend_pinning: bool = True
    # Forward Triton's model load/unload (repository extension) to the owning backend.
    # Off by default: one client could otherwise unload a model every client uses.
    allow_model_control: bool = False
    # Who owns the gRPC port: the Python gateway, or the Rust plane in front of it
    # (gateway/native_front.py; auto: the plane when it forwards some route itself and
    # nothing keeps it out; INFERGW_NATIVE=0/1 overrides).
    data_plane: Literal["auto", "python", "native"] = "auto"

    @model_validator(mode="after")
    def _routes_name_configured_backends(self) -> Self:
        configured = [b.name for b in self.backends]
        errors: list[InitErrorDetails] = []
        for route in self.routes:
            for where, name in route.named():
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
    return validate_section(GatewayConfig, {} if raw is None else raw, source)


def validate_section(section: type[S], raw: object, where: str) -> S:
    """``raw`` as a ``section``, or InvalidArgument with one line per problem after
    ``where`` (a backend kind validates its options with this: ``backend 'triton'``)."""
    try:
        return section.model_validate(raw)
    except ValidationError as exc:
        problems = [_problem(e, section) for e in exc.errors(include_url=False)]
        raise config_error([f"{where}: {p}" for p in problems]) from exc


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


def _problem(error: ErrorDetails, root: type[Section] | None = None) -> str:
    kind, given, root = error["type"], error["input"], root or GatewayConfig
    loc = _walk(error["loc"], root)[0]
    path = _path(loc)
    if kind == "missing":
        return f"{path} is required"
    if kind == "extra_forbidden":
        section = _walk(error["loc"][:-1], root)[1]
        keys = section.file_keys() if section is not None else []
        return f"{path}: unknown key" + _nearest(str(loc[-1]), keys, "keys")
    if kind in ("union_tag_invalid", "union_tag_not_found"):  # a tagged union's ``kind``
        ctx = error.get("ctx", {})
        field = str(ctx.get("discriminator", "kind")).strip("'")
        tags = ", ".join(_union_tags(loc, root))
        if kind == "union_tag_not_found":
            return f"{path}.{field} is required; valid kinds: {tags}"
        return f"{path}.{field}: unknown kind {ctx.get('tag')!r}; valid kinds: {tags}"
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


def _walk(
    loc: tuple[int | str, ...], root: type[Section]
) -> tuple[tuple[int | str, ...], type[Section] | None]:
    """``loc`` as the file spells it, and the Section it ends in (None: not a section).

    Walks the models' field types. pydantic puts the chosen member of a tagged union
    (``policy: {kind: fallback}``) in ``loc`` as its tag; the file has no such key, so it
    is dropped from the path and picks the member.
    """
    section: type[Section] | None = root
    clean: list[int | str] = []
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        clean.append(part)
        if section is None:
            continue
        info = next((f for n, f in section.model_fields.items() if file_key(n, f) == part), None)
        found = _sections_in(info.annotation) if info is not None else None
        if not found:
            section = None
            continue
        members, keyed = found
        if keyed and parts:
            clean.append(parts.pop(0))  # the NAME in ``backends.NAME`` / ``models.NAME``
        section = members[0]
        if len(members) > 1 and parts:
            tagged = {_tag(m): m for m in members}
            if parts[0] in tagged:
                section = tagged[str(parts.pop(0))]
    return tuple(clean), section


def _union_tags(loc: tuple[int | str, ...], root: type[Section]) -> list[str]:
    """The tags of the tagged union at ``loc`` (a field of the section at ``loc[:-1]``)."""
    parent = _walk(loc[:-1], root)[1]
    info = parent.model_fields.get(str(loc[-1])) if parent is not None and loc else None
    found = _sections_in(info.annotation) if info is not None else None
    return [t for t in map(_tag, found[0]) if t is not None] if found else []


def _tag(section: type[Section]) -> str | None:
    """The ``kind`` a tagged-union member answers to (its ``Literal`` default-less field)."""
    info = section.model_fields.get("kind")
    args = typing.get_args(info.annotation) if info is not None else ()
    return str(args[0]) if len(args) == 1 else None


def _sections_in(annotation: object) -> tuple[list[type[Section]], bool] | None:
    """The Section types inside ``annotation`` (several for a union), and whether they
    sit in a collection."""
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return [annotation], False
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _sections_in(args[0])
    if origin in (tuple, list, dict) and args:
        found = _sections_in(args[-1] if origin is dict else args[0])
        return (found[0], True) if found else None
    if origin in (typing.Union, types.UnionType):
        members = [m for f in map(_sections_in, args) if f is not None for m in f[0]]
        return (members, False) if members else None
    return None


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
