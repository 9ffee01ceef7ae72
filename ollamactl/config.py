"""Settings: built-in defaults < config file < OLLAMACTL_* variables < arguments.

Every value is validated (by pydantic) before anything is done, and an error
names where the bad value came from, so a typo never causes a half-done action.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ollamactl.errors import ConfigError
from ollamactl.probe import DEFAULT_URL, parse_url, url_from_ollama_host
from ollamactl.units import check_unit_name, mangle_unit_name

DEFAULT_CONFIG_FILE = Path("/etc/ollamactl/config.toml")
ENV_PREFIX = "OLLAMACTL_"
_GROUP_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")

#: key -> (default, one-line help).  The config file, the environment and
#: keyword arguments all use these names.
KEYS: dict[str, tuple[Any, str]] = {
    "unit": ("ollama.service", "the systemd unit that runs Ollama"),
    "url": (DEFAULT_URL, "Ollama's base URL (default: from OLLAMA_HOST, as ollama does)"),
    "group": ("ollamactl", "the group the polkit rule grants restarts to (used in hints)"),
    "timeout": (90.0, "seconds a restart may take in all: job plus readiness"),
    "bus_timeout": (10.0, "seconds any one D-Bus call may take"),
    "http_timeout": (5.0, "seconds any one HTTP request to Ollama may take"),
}


def _settings_model() -> type:
    # Built on first use so that importing ollamactl does not import pydantic.
    from ollamactl._pydantic import BaseModel, Field, field_check

    class Settings(BaseModel):
        unit: str
        url: str
        group: str
        timeout: float = Field(gt=0, le=86400)
        bus_timeout: float = Field(gt=0, le=3600)
        http_timeout: float = Field(gt=0, le=3600)

        @field_check("unit")
        def _unit(cls, v: str) -> str:  # noqa: N805 - pydantic validator
            v = mangle_unit_name(v.strip())
            why = check_unit_name(v)
            if why:
                raise ValueError(f"unit name {why}")
            return v

        @field_check("url")
        def _url(cls, v: str) -> str:  # noqa: N805
            return parse_url(v).url

        @field_check("group")
        def _group(cls, v: str) -> str:  # noqa: N805
            if not _GROUP_RE.match(v):
                raise ValueError(f"{v!r} is not a valid group name")
            return v

    return Settings


class Config:
    """Validated settings plus where each one came from."""

    def __init__(self, values: dict[str, Any], sources: dict[str, str]) -> None:
        self.unit: str = values["unit"]
        self.url: str = values["url"]
        self.group: str = values["group"]
        self.timeout: float = values["timeout"]
        self.bus_timeout: float = values["bus_timeout"]
        self.http_timeout: float = values["http_timeout"]
        self.sources = sources

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in KEYS}


def load_config(
    overrides: Mapping[str, Any] | None = None,
    *,
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> Config:
    """Merge and validate all sources; raise ConfigError naming the bad one.

    ``labels`` maps an override key to how the user spelled it (e.g. ``--unit``).
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {k: d for k, (d, _) in KEYS.items()}
    sources = {k: "default" for k in KEYS}
    if env.get("OLLAMA_HOST", "").strip():
        values["url"] = url_from_ollama_host(env["OLLAMA_HOST"])
        sources["url"] = "environment variable OLLAMA_HOST"

    path = Path(config_file or env.get(ENV_PREFIX + "CONFIG") or DEFAULT_CONFIG_FILE)
    explicit = config_file is not None or bool(env.get(ENV_PREFIX + "CONFIG"))
    for key, value in _read_file(path, explicit).items():
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

    from ollamactl._pydantic import ValidationError, errors, validate

    try:
        model = validate(_settings_model(), values)
    except ValidationError as exc:
        key, msg = errors(exc)[0]
        source = sources.get(key, "?")
        raise ConfigError(
            f"invalid {key} from {source}: {msg} (got {values.get(key)!r})", source=source, key=key
        ) from None
    return Config({k: getattr(model, k) for k in KEYS}, sources)


def _read_file(path: Path, explicit: bool) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{path}: config file not found", source=str(path)) from None
        return {}
    except PermissionError:
        raise ConfigError(
            f"{path}: cannot read the config file; an admin can fix it: sudo chmod 0644 {path}",
            source=str(path),
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", source=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}", source=str(path)) from None
    return data
