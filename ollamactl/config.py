"""Settings: built-in defaults < config file < OLLAMACTL_* variables < arguments.

Every value is validated (by pydantic, or where its answer is certain without
importing it, by ``_plain``) before anything is done, and an error names where
the bad value came from, so a typo never causes a half-done action.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_type_hints

from ollamactl.budget import DEFAULT_BACKOFF, DEFAULT_MAX_RESTARTS, DEFAULT_WINDOW
from ollamactl.errors import ConfigError, UsageError
from ollamactl.units import check_group_name, check_unit_name, mangle_unit_name, split_host

DEFAULT_CONFIG_FILE = Path("/etc/ollamactl/config.toml")
#: Where Ollama listens by default (its OLLAMA_HOST default); the url key's default without OLLAMA_HOST.
DEFAULT_URL = "http://127.0.0.1:11434"
ENV_PREFIX = "OLLAMACTL_"
MAX_CONFIG_BYTES = 1 << 20  # a config file is a few hundred bytes; /dev/zero is not one
#: A restart's total timeout (config key, --timeout, the API's timeout=) lies in (0, TIMEOUT_MAX] seconds.
TIMEOUT_MAX = 86400  # an int: pydantic prints the limit as given in its messages
TIMEOUT_RANGE = f"(0, {TIMEOUT_MAX:g}]"


def in_timeout_range(value: object) -> bool:
    """Whether ``value`` is a number of seconds a restart may take: in TIMEOUT_RANGE."""
    return isinstance(value, int | float) and 0 < value <= TIMEOUT_MAX


def _check_unit(v: str) -> str:
    v = mangle_unit_name(v.strip())
    why = check_unit_name(v)
    if why:
        raise ValueError(f"unit name {why}")
    return v


def _check_url(v: str) -> str:
    if v == DEFAULT_URL:  # parse_url(DEFAULT_URL).url == DEFAULT_URL (unit-tested); spares the HTTP module
        return v
    from ollamactl.probe import parse_url

    return parse_url(v).url


def _check_group(v: str) -> str:
    why = check_group_name(v)
    if why:
        raise ValueError(f"{v!r} {why}")
    return v


def _check_path(v: str) -> str:
    if not v.startswith("/"):
        raise ValueError(f"must be an absolute path (got {v!r})")
    if not v.isprintable():  # a NUL makes every os call raise ValueError; other controls are typos at best
        raise ValueError(f"must not contain control characters (got {v!r})")
    return v


def _check_hosts(v: str) -> str:
    specs = v.replace(",", " ").split()
    for spec in specs:
        try:
            split_host(spec)
        except UsageError as exc:
            raise ValueError(exc.message) from None
    return " ".join(specs)


def _check_deep_probe(v: str) -> str:
    v = v.strip().lower()
    if v in ("token", "load"):
        raise ValueError(
            f'"{v}" was removed: it sent generate requests, which queue behind users\' work and reset the '
            'model\'s keep-alive ("load" also reloads a model loaded with other options); use "slots" (the '
            'runner\'s /slots, read-only) or "off"'
        )
    if v not in ("slots", "off"):
        raise ValueError(f'must be "slots" or "off" (got {v!r})')
    return v


def _key(default: Any, help: str, check: Callable[[Any], Any] | None = None, **limits: float) -> Any:
    return field(default=default, metadata={"help": help, "check": check, "limits": limits})


@dataclass(frozen=True)
class Config:
    """Validated settings.  Each field is also a config-file key and an OLLAMACTL_<KEY> variable."""

    unit: str = _key("ollama.service", "the systemd unit that runs Ollama", _check_unit)
    url: str = _key(
        DEFAULT_URL,
        "Ollama's base URL (default: OLLAMA_HOST, the caller's for ollama.service, else the unit's own)",
        _check_url,
    )
    group: str = _key("ollamactl", "the group the polkit rule grants restarts to (used in hints)", _check_group)
    timeout: float = _key(90.0, "seconds a restart may take in all: job plus readiness", gt=0, le=TIMEOUT_MAX)
    bus_timeout: float = _key(10.0, "seconds any one D-Bus call may take", gt=0, le=3600)
    http_timeout: float = _key(5.0, "seconds any one HTTP request to Ollama may take", gt=0, le=3600)
    # runtime.RUN_DIR, spelled out so that reading the config does not import the runtime module (unit-tested)
    runtime_dir: str = _key("/run/ollamactl", "shared lock and restart history (group-writable)", _check_path)
    max_restarts: int = _key(
        DEFAULT_MAX_RESTARTS, "restart budget: at most this many restarts per restart_window", ge=1, le=100
    )
    restart_window: float = _key(DEFAULT_WINDOW, "restart budget: the sliding window, in seconds", gt=0, le=86400)
    restart_backoff: float = _key(
        DEFAULT_BACKOFF, "restart budget: seconds between restarts, doubled for each one in the window", ge=0, le=3600
    )
    model: str | None = _key(None, "deep-probe only while this model is loaded (as /api/ps names it); none: any")
    deep_probe: str = _key(
        "slots", 'deep probe: "slots" (each runner\'s /slots, read-only) or "off" (liveness only)', _check_deep_probe
    )
    probe_timeout: float = _key(1.0, "seconds a liveness probe (GET /api/version) may take", gt=0, le=3600)
    deep_timeout: float = _key(1.0, "seconds GET /api/ps and each runner's /slots and /health may take", gt=0, le=3600)
    deep_confirm: float = _key(
        8.0, "seconds a runner's /slots must stay silent, with no request completing, to be deep-wedged", ge=1, le=3600
    )
    load_timeout: float = _key(
        300.0, "seconds a model load may show no sign of life (OLLAMA_LOAD_TIMEOUT) before it is stuck", gt=0, le=86400
    )
    load_stuck_after: float = _key(
        60.0,
        "guard and probe --load: seconds a request that needs a load may wait with no load started and every"
        " loaded runner idle before the load is stuck (ollama #17408)",
        gt=0,
        le=86400,
    )
    watch_period: float = _key(1.0, "watch: seconds between probes", gt=0, le=3600)
    watch_failure_threshold: int = _key(3, "watch: consecutive failed probes before a restart", ge=1, le=100)
    watch_startup_grace: float = _key(
        10.0, "watch: seconds after a (re)start in which failures do not count", ge=0, le=86400
    )
    watch_deep_every: int = _key(1, "watch: run the deep probe every k-th period", ge=1, le=10000)
    hosts: str = _key(
        "", "hosts --all-hosts runs the command on over ssh: [USER@]HOST[:PORT], separated by spaces", _check_hosts
    )
    ssh_connect_timeout: float = _key(10.0, "--host: seconds ssh may take to connect to a host", gt=0, le=300)
    remote_deadline: float = _key(300.0, "--host: seconds the whole run on all hosts may take", gt=0, le=TIMEOUT_MAX)
    metrics_dir: str = _key(
        "/var/lib/prometheus/node-exporter",
        'watch: write Prometheus metrics (ollamactl.prom) to this node_exporter textfile directory; "" for none',
        lambda v: v and _check_path(v),
    )
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    #: The [instances.NAME] tables: one Ollama per GPU (or port), each its own unit and URL.
    instances: tuple[Instance, ...] = ()
    #: The instance this config acts on (its unit, URL and model are the ones above), if it is a named one.
    instance: str | None = None
    #: No URL was given for this unit: read OLLAMA_HOST from the unit's own environment (``url`` is the fallback).
    url_from_unit: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in KEYS}

    def all_instances(self) -> tuple[Instance, ...]:
        """The configured instances, or the one unit this config names (no [instances] tables)."""
        if self.instances:
            return self.instances
        name = self.unit.removesuffix(".service")
        return (Instance(name, self.unit, None if self.url_from_unit else self.url, self.model),)

    def for_instance(self, inst: Instance) -> Config:
        """This config acting on ``inst``: its unit, its URL (or the unit's OLLAMA_HOST), its model."""
        return replace(
            self,
            unit=inst.unit,
            url=inst.url or DEFAULT_URL,
            url_from_unit=inst.url is None,
            model=inst.model if inst.model is not None else self.model,
            instance=inst.name if self.instances else None,
        )


@dataclass(frozen=True)
class Instance:
    """One Ollama server: a name (what --unit also accepts), its unit, and its URL (None: from the unit)."""

    name: str
    unit: str
    url: str | None = None
    model: str | None = None


_NOT_KEYS = frozenset({"sources", "instances", "instance", "url_from_unit"})
KEYS: dict[str, Any] = {f.name: f for f in fields(Config) if f.name not in _NOT_KEYS}
INSTANCE_KEYS = ("unit", "url", "model")
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.")
MAX_INSTANCES = 64  # GPUs on one host: 8 or 16; a config with thousands is a mistake (or an attack on watch)


@functools.cache
def _settings_model() -> Any:
    # Built on first use so that importing ollamactl does not import pydantic; once: it takes milliseconds.
    from ollamactl._pydantic import Field, create_model

    hints = get_type_hints(Config)
    return create_model(
        "Settings",
        **{name: (hints[name], Field(f.default, **f.metadata["limits"])) for name, f in KEYS.items()},
    )


def load_config(
    overrides: Mapping[str, Any] | None = None,
    *,
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    isolate: bool = False,
) -> Config:
    """Merge and validate all sources; raise ConfigError naming the bad one.

    ``isolate``: if pydantic is needed (see ``_plain``), validate in a forked
    child, so that this (long-running) process never imports pydantic; the
    watchdog uses it to stay small.

    ``labels`` maps an override key to how the user spelled it (e.g. ``--unit``).
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {k: f.default for k, f in KEYS.items()}
    sources = {k: "default" for k in KEYS}
    if env.get("OLLAMA_HOST", "").strip():
        from ollamactl.probe import url_from_ollama_host

        values["url"] = url_from_ollama_host(env["OLLAMA_HOST"])
        sources["url"] = "environment variable OLLAMA_HOST"

    path = Path(config_file or env.get(ENV_PREFIX + "CONFIG") or DEFAULT_CONFIG_FILE)
    explicit = config_file is not None or bool(env.get(ENV_PREFIX + "CONFIG"))
    data = _read_file(path, explicit)
    instances = _instances(data.pop("instances", {}), path)
    for key, value in data.items():
        if key not in KEYS:
            raise ConfigError(f"{path}: unknown key {key!r} (known: {', '.join(KEYS)})", source=str(path), key=key)
        values[key], sources[key] = value, str(path)

    for key in KEYS:
        name = ENV_PREFIX + key.upper()
        if name in env:
            values[key], sources[key] = env[name], f"environment variable {name}"

    for key, value in (overrides or {}).items():
        if key not in KEYS:
            raise ConfigError(f"unknown setting {key!r} (known: {', '.join(KEYS)})", key=key)
        if value is not None:
            label = (labels or {}).get(key, f"argument {key}=")
            values[key], sources[key] = value, label

    chosen = _chosen(instances, values["unit"])
    if chosen is not None:  # --unit (or unit=) names an instance, or its unit: that instance's URL and model
        sources["unit"] += f" (instance {chosen.name})"
        values["unit"] = chosen.unit
        if chosen.url is not None and sources["url"] in ("default", "environment variable OLLAMA_HOST"):
            values["url"], sources["url"] = chosen.url, f"{path} [instances.{chosen.name}]"
        if chosen.model is not None and sources["model"] == "default":
            values["model"], sources["model"] = chosen.model, f"{path} [instances.{chosen.name}]"
    if sources["url"] == "environment variable OLLAMA_HOST" and str(values["unit"]).strip() != KEYS["unit"].default:
        # the caller's OLLAMA_HOST names its server: ollama.service's, not another instance's
        values["url"], sources["url"] = DEFAULT_URL, "default"
    from_unit = sources["url"] == "default"

    isolate = isolate and _plain(values) is None  # plain values are checked without pydantic anyway
    checked = _validate_in_child(values, sources) if isolate else _validate(values, sources)
    return Config(
        **checked,
        sources=sources,
        instances=instances,
        instance=chosen.name if chosen else None,
        url_from_unit=from_unit,
    )


def _chosen(instances: tuple[Instance, ...], unit: Any) -> Instance | None:
    """The instance ``unit`` names: by its name, else by its unit."""
    if not isinstance(unit, str):
        return None
    for inst in instances:
        if unit.strip() == inst.name:
            return inst
    try:
        wanted = _check_unit(unit)
    except ValueError:
        return None  # validation says what is wrong with it
    return next((inst for inst in instances if inst.unit == wanted), None)


def _instances(table: Any, path: Path) -> tuple[Instance, ...]:
    """The [instances.NAME] tables, checked: ConfigError names the bad one."""

    def bad(what: str, name: str = "") -> ConfigError:
        where = f"[instances.{name}]" if name else "[instances]"
        return ConfigError(f"{path}: {where}: {what}", source=str(path), key="instances")

    if not isinstance(table, dict):
        raise bad('must be tables: [instances.NAME] with unit = "..." (and url, model)')
    if len(table) > MAX_INSTANCES:
        raise bad(f"more than {MAX_INSTANCES} instances")
    out: list[Instance] = []
    units: dict[str, str] = {}
    for name, spec in table.items():
        if not (0 < len(name) <= 64 and _NAME_CHARS.issuperset(name) and name[0] not in ".-"):
            raise bad(f"instance name {name!r} must be 1-64 of A-Z a-z 0-9 _ - . (not starting with . or -)")
        if not isinstance(spec, dict):
            raise bad('must be a table with unit = "..."', name)
        unknown = sorted(set(spec) - set(INSTANCE_KEYS))
        if unknown:
            raise bad(f"unknown key {unknown[0]!r} (known: {', '.join(INSTANCE_KEYS)})", name)
        if not isinstance(spec.get("unit"), str):
            raise bad('needs unit = "NAME.service", e.g. unit = "ollama@11435.service"', name)
        checked: dict[str, Any] = {}
        for key, check in (("unit", _check_unit), ("url", _check_url), ("model", str.strip)):
            value = spec.get(key)
            if value is None:
                continue
            if not isinstance(value, str):
                raise bad(f"{key} must be a string (got {value!r})", name)
            try:
                checked[key] = check(value)
            except ValueError as exc:
                raise bad(f"invalid {key}: {exc}", name) from None
        if checked["unit"] in units:
            raise bad(f"unit {checked['unit']} is also instance {units[checked['unit']]!r}'s", name)
        units[checked["unit"]] = name
        out.append(Instance(name, checked["unit"], checked.get("url"), checked.get("model") or None))
    return tuple(out)


def _validate(values: dict[str, Any], sources: dict[str, str]) -> dict[str, Any]:
    checked = _plain(values)
    if checked is None:  # a value pydantic must coerce, or a bad one: pydantic decides, and words the error
        from ollamactl._pydantic import ValidationError, errors, to_dict, validate

        try:
            checked = to_dict(validate(_settings_model(), values))
        except ValidationError as exc:
            key, msg = errors(exc)[0]
            raise _bad(key, msg, values, sources) from None
    for key, f in KEYS.items():
        check = f.metadata["check"]
        if check is not None and checked[key] is not None:
            try:
                checked[key] = check(checked[key])
            except ValueError as exc:
                raise _bad(key, str(exc), values, sources) from None
    return checked


@functools.cache
def _kinds() -> dict[str, tuple[type, bool, dict[str, float]]]:
    """(type, may be None, limits) of each key, from Config's annotations."""
    out = {}
    for name, hint in get_type_hints(Config).items():
        if name in KEYS:
            args = [a for a in getattr(hint, "__args__", (hint,)) if a is not type(None)]
            out[name] = (args[0], len(args) == 1 and hint is not args[0], KEYS[name].metadata["limits"])
    return out


def _plain(values: dict[str, Any]) -> dict[str, Any] | None:
    """The values pydantic would return, where that is certain without it; else None.

    Certain only for values already of the key's type (an int for a float key
    too) and within its limits: pydantic 1.10 and 2.x both return those
    unchanged (the int as a float).  Anything else (strings from the
    environment to coerce, bools, out-of-range or non-finite numbers) returns
    None, so pydantic validates it and its error message stays the one users see.
    Importing and building pydantic's model costs a CLI run more than the rest of it.
    """
    out: dict[str, Any] = {}
    for key, (kind, optional, limits) in _kinds().items():
        value = values[key]
        if value is None and optional:
            out[key] = None
            continue
        if kind is str:
            if type(value) is not str:
                return None
        elif kind is int or kind is float:
            if type(value) is not int and not (kind is float and type(value) is float):
                return None
            if not (-(2**53) < value < 2**53 and _within(value, limits)):  # nan and inf fail here too
                return None
            value = kind(value)
        else:
            return None
        out[key] = value
    return out


_LIMITS: dict[str, Callable[[float, float], bool]] = {
    "gt": lambda v, b: v > b,
    "ge": lambda v, b: v >= b,
    "lt": lambda v, b: v < b,
    "le": lambda v, b: v <= b,
}


def _within(value: float, limits: dict[str, float]) -> bool:
    return all(_LIMITS[name](value, bound) for name, bound in limits.items())


def _validate_in_child(values: dict[str, Any], sources: dict[str, str]) -> dict[str, Any]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: validate, report as JSON, exit without cleanup
        status = 1
        try:
            os.close(read_fd)
            try:
                payload: dict[str, Any] = {"values": _validate(values, sources)}
            except ConfigError as err:
                payload = {"error": err.message, "details": err.details}
            with os.fdopen(write_fd, "w") as fh:
                json.dump(payload, fh, default=str)
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd) as fh:
        text = fh.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not text:
        raise ConfigError(f"validating the configuration failed in a child process (wait status {status})")
    payload = json.loads(text)
    if "error" in payload:
        raise ConfigError(payload["error"], **payload["details"])
    return payload["values"]


def _bad(key: str, msg: str, values: dict[str, Any], sources: dict[str, str]) -> ConfigError:
    source = sources.get(key, "?")
    return ConfigError(f"invalid {key} from {source}: {msg} (got {values.get(key)!r})", source=source, key=key)


def _read_file(path: Path, explicit: bool) -> dict[str, Any]:
    """The file's TOML table; ConfigError for anything else (missing if explicit, unreadable, too big, not TOML)."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; not a config file", source=str(path))
        text = raw.decode("utf-8")
        import tomllib  # not before there is a file to parse

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}", source=str(path)) from None
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{path}: config file not found", source=str(path)) from None
        return {}
    except PermissionError:
        raise ConfigError(
            f"{path}: cannot read the config file; an admin can fix it: sudo chmod 0644 {path}",
            source=str(path),
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 at byte {exc.start}", source=str(path)) from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: nested too deeply", source=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}", source=str(path)) from None
    return data
