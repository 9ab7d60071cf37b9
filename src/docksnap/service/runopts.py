"""The ``docker run`` options docksnap's ``start()`` takes, in docker's own value formats.

Pure parsing and validation: each option is checked here, before anything is
created on the engine, and turned into the fields of the engine's create
request. The spellings follow ``docker run`` (``-p [IP:][HOST_PORT:]PORT[/PROTO]``,
``-v SRC:DST[:OPTS]``, ``--memory 512m``, ``--cpus 1.5``, ``--restart on-failure:3``)
so that a command line moves over unchanged.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docksnap.errors import InvalidArgumentError
from docksnap.labels import PREFIX
from docksnap.model import normalize_path

_MEMORY = re.compile(r"(?i)(\d+)([bkmg]?)")
_MEMORY_FACTORS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_RESTART = re.compile(r"(no|always|unless-stopped|on-failure)(?::(\d+))?")
_VOLUME_OPTIONS = frozenset(
    {"ro", "rw", "z", "Z", "nocopy", "consistent", "cached", "delegated"}
    | {"shared", "slave", "private", "rshared", "rslave", "rprivate"}
)
_PROTOCOLS = ("tcp", "udp", "sctp")
#: Network modes in which the engine cannot publish a port.
NO_PUBLISH_NETWORKS = frozenset({"none", "host"})


@dataclass(frozen=True, slots=True)
class PortBinding:
    """One ``-p``: the container's ``port/proto`` published on ``host_ip:host_port``.

    An empty ``host_port`` lets the engine choose; an empty ``host_ip`` means
    every address, as with ``docker run``.
    """

    container_port: str
    host_ip: str = ""
    host_port: str = ""


@dataclass(frozen=True, slots=True)
class VolumeSpec:
    """One ``-v``: a bind mount (absolute source), a named volume, or an anonymous one."""

    spec: str
    target: str
    anonymous: bool


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Every ``docker run`` option of one start, validated."""

    command: tuple[str, ...] | None = None
    publish: tuple[PortBinding, ...] = ()
    volumes: tuple[VolumeSpec, ...] = ()
    user: str | None = None
    workdir: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    network: str | None = None
    memory: int | None = None
    nano_cpus: int | None = None
    restart: tuple[str, int] | None = None
    remove: bool = False

    def apply(self, config: dict[str, Any]) -> None:
        """Add these options to an engine create request (``config``, with ``HostConfig``)."""
        host = config["HostConfig"]
        if self.network is not None:
            host["NetworkMode"] = self.network
            config.pop("NetworkDisabled", None)
        if self.command is not None:
            config["Cmd"] = list(self.command)
        if self.user is not None:
            config["User"] = self.user
        if self.workdir is not None:
            config["WorkingDir"] = self.workdir
        if self.publish:
            exposed: dict[str, dict[str, str]] = {}
            bindings: dict[str, list[dict[str, str]]] = {}
            for port in self.publish:
                exposed[port.container_port] = {}
                bindings.setdefault(port.container_port, []).append(
                    {"HostIp": port.host_ip, "HostPort": port.host_port}
                )
            config["ExposedPorts"] = exposed
            host["PortBindings"] = bindings
        binds = [v.spec for v in self.volumes if not v.anonymous]
        if binds:
            host["Binds"] = binds
        anonymous: dict[str, dict[str, str]] = {v.target: {} for v in self.volumes if v.anonymous}
        if anonymous:
            config["Volumes"] = anonymous
        if self.memory is not None:
            host["Memory"] = self.memory
        if self.nano_cpus is not None:
            host["NanoCpus"] = self.nano_cpus
        if self.restart is not None:
            policy, retries = self.restart
            host["RestartPolicy"] = {"Name": policy, "MaximumRetryCount": retries}
        if self.remove:
            host["AutoRemove"] = True

    @property
    def volume_targets(self) -> list[str]:
        return [v.target for v in self.volumes]


def run_options(
    *,
    command: Sequence[str] | None = None,
    publish: Sequence[str] = (),
    volumes: Sequence[str] = (),
    user: str | None = None,
    workdir: str | None = None,
    labels: Mapping[str, str] | None = None,
    network: str | None = None,
    memory: str | int | None = None,
    cpus: float | str | None = None,
    restart: str | None = None,
    remove: bool = False,
) -> RunOptions:
    """Validate ``start()``'s docker-run keywords; a bad one raises InvalidArgumentError."""
    if command is not None and (
        isinstance(command, str) or not all(isinstance(a, str) for a in command)
    ):
        raise InvalidArgumentError(f"command must be a list of strings, got {command!r}")
    restart_policy = parse_restart(restart) if restart is not None else None
    if remove and restart_policy is not None and restart_policy[0] != "no":
        raise InvalidArgumentError(f"remove=True conflicts with restart={restart!r}")
    ports = tuple(parse_publish(spec) for spec in _strings(publish, "publish"))
    if ports and network in NO_PUBLISH_NETWORKS:
        raise InvalidArgumentError(
            f"ports cannot be published on network {network!r}: "
            "publishing needs a bridge network (e.g. one made by `docker network create`)"
        )
    return RunOptions(
        command=tuple(command) if command is not None else None,
        publish=ports,
        volumes=tuple(parse_volume(spec) for spec in _strings(volumes, "volumes")),
        user=_optional_text(user, "user"),
        workdir=normalize_path(workdir, what="workdir") if workdir is not None else None,
        labels=_labels(labels or {}),
        network=_optional_text(network, "network"),
        memory=parse_memory(memory) if memory is not None else None,
        nano_cpus=parse_cpus(cpus) if cpus is not None else None,
        restart=restart_policy,
        remove=bool(remove),
    )


def parse_publish(spec: str) -> PortBinding:
    """``[IP:][HOST_PORT:]PORT[/PROTO]``, as ``docker run -p``; IPv6 addresses in brackets."""
    rest, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto not in _PROTOCOLS:
        raise InvalidArgumentError(f"invalid protocol {proto!r} in port {spec!r}")
    host_ip = ""
    if rest.startswith("["):
        address, sep, rest = rest[1:].partition("]:")
        if not sep:
            raise InvalidArgumentError(f"invalid port specification {spec!r}")
        host_ip = _ip(address, spec)
        host_port, _, container_port = rest.rpartition(":")
    else:
        parts = rest.split(":")
        if len(parts) > 3:
            raise InvalidArgumentError(f"invalid port specification {spec!r}")
        if len(parts) == 3:
            host_ip = _ip(parts[0], spec)
        container_port = parts[-1]
        host_port = parts[-2] if len(parts) >= 2 else ""
    _port(container_port, spec)
    if host_port:
        _port(host_port, spec)
    return PortBinding(f"{container_port}/{proto}", host_ip, host_port)


def parse_volume(spec: str) -> VolumeSpec:
    """``SRC:DST[:OPTS]`` (bind mount if SRC is absolute, else a named volume) or ``DST``."""
    if not isinstance(spec, str) or not spec or "\0" in spec:
        raise InvalidArgumentError(f"invalid volume specification {spec!r}")
    parts = spec.split(":")
    if len(parts) == 1:
        return VolumeSpec(spec, normalize_path(spec, what="volume target"), anonymous=True)
    if len(parts) > 3 or not parts[0]:
        raise InvalidArgumentError(f"invalid volume specification {spec!r}")
    source, target = parts[0], parts[1]
    if len(parts) == 3:
        unknown = [o for o in parts[2].split(",") if o not in _VOLUME_OPTIONS]
        if unknown:
            raise InvalidArgumentError(f"invalid mode {unknown[0]!r} in volume {spec!r}")
    if not source.startswith("/") and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", source):
        raise InvalidArgumentError(
            f"volume source {source!r} in {spec!r} is neither an absolute host path "
            "nor a volume name"
        )
    if source.startswith("/"):
        normalize_path(source, what="bind mount source")
    return VolumeSpec(spec, normalize_path(target, what="volume target"), anonymous=False)


def parse_memory(value: str | int) -> int:
    """``--memory``: bytes, or a number with ``b``, ``k``, ``m`` or ``g`` (binary units)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _MEMORY.fullmatch(value.strip()) if isinstance(value, str) else None
    if not match or int(match[1]) <= 0:
        raise InvalidArgumentError(f"invalid memory {value!r}: use e.g. 512m, 2g or 1073741824")
    return int(match[1]) * _MEMORY_FACTORS[match[2].lower()]


def parse_cpus(value: float | str) -> int:
    """``--cpus 1.5`` as nano-CPUs, the unit of the engine's ``NanoCpus``."""
    try:
        number = float(value) if not isinstance(value, bool) else -1.0
    except (TypeError, ValueError):
        number = -1.0
    if not 0 < number < 1e6:
        raise InvalidArgumentError(f"invalid cpus {value!r}: use a positive number, e.g. 1.5")
    return round(number * 1e9)


def parse_restart(value: str) -> tuple[str, int]:
    """``no``, ``always``, ``unless-stopped``, ``on-failure[:MAX_RETRIES]``."""
    match = _RESTART.fullmatch(value) if isinstance(value, str) else None
    if not match or (match[2] and match[1] != "on-failure"):
        raise InvalidArgumentError(
            f"invalid restart policy {value!r}: "
            "use no, always, unless-stopped or on-failure[:MAX_RETRIES]"
        )
    return match[1], int(match[2] or 0)


def parse_label(item: str) -> tuple[str, str]:
    """``KEY=VALUE``, or ``KEY`` alone for an empty value, as ``docker run --label``."""
    key, _, value = item.partition("=")
    if not key or "\0" in item:
        raise InvalidArgumentError(f"invalid label {item!r}: use KEY=VALUE")
    return key, value


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """``--env-file``: ``KEY=VALUE`` lines; ``#`` comments and blank lines are skipped.

    A line with a name alone takes the variable from docksnap's own environment
    (and is skipped when unset), as docker does. Values are taken literally: no
    quotes are removed and nothing is expanded.
    """
    env: dict[str, str] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"cannot read env file {str(path)!r}: {exc}") from exc
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        if not key or key != key.rstrip() or "\0" in line:
            raise InvalidArgumentError(f"{path}:{number}: invalid variable {line!r}")
        if sep:
            env[key] = value
        elif key in os.environ:
            env[key] = os.environ[key]
    return env


def _labels(labels: Mapping[str, str]) -> dict[str, str]:
    result = {}
    for key, value in labels.items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise InvalidArgumentError(f"invalid label {key!r}={value!r}")
        if key.startswith(PREFIX):
            raise InvalidArgumentError(f"labels under {PREFIX} are reserved for docksnap: {key!r}")
        result[key] = value
    return result


def _strings(values: Sequence[str], what: str) -> list[str]:
    if isinstance(values, str) or not all(isinstance(v, str) for v in values):
        raise InvalidArgumentError(f"{what} must be a list of strings, got {values!r}")
    return list(values)


def _optional_text(value: str | None, what: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not value or "\0" in value):
        raise InvalidArgumentError(f"invalid {what} {value!r}")
    return value


def _ip(text: str, spec: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise InvalidArgumentError(f"invalid IP address {text!r} in port {spec!r}") from None


def _port(text: str, spec: str) -> None:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise InvalidArgumentError(f"invalid port {text!r} in {spec!r}")
