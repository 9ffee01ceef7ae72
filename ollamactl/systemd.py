"""The systemd adapter: every D-Bus conversation with PID 1 lives here.

We talk to ``org.freedesktop.systemd1`` on the system bus with dbus-next's
low-level ``Message`` API (no introspection round trips).  dbus-next has no
call timeout of its own, so every call is wrapped in a deadline, and every
D-Bus error name is turned into one of our typed exceptions.  Strings that
come back (names, states, error messages) are passed through ``text.clean``
before they can reach a terminal or a log.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dbus_next import BusType, Message, MessageType
from dbus_next.aio import MessageBus
from dbus_next.errors import AuthError, DBusError, InvalidAddressError

from ollamactl._log import log
from ollamactl.errors import (
    BusUnavailable,
    OllamactlError,
    PermissionDenied,
    TimedOut,
    UnitMasked,
    UnitNotFound,
)
from ollamactl.nss import current_user, in_group
from ollamactl.text import clean
from ollamactl.units import check_unit_name, unit_object_path

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
UNIT_IFACE = "org.freedesktop.systemd1.Unit"
SERVICE_IFACE = "org.freedesktop.systemd1.Service"
PROPS = "org.freedesktop.DBus.Properties"
_JOB_MATCH = f"type='signal',sender='{SYSTEMD}',path='{MANAGER_PATH}',interface='{MANAGER}',member='JobRemoved'"
_NAME_LIMIT = 256  # unit names (UNIT_NAME_MAX), states, job results, D-Bus error names
_MESSAGE_LIMIT = 500  # a D-Bus error's message
_PATH_LIMIT = 1024  # a unit file's path
_ENV_LIMIT = 4096  # one Environment= assignment
_ENV_ITEMS = 256  # Environment= assignments and EnvironmentFile= paths we look at

# -- D-Bus error names, the one table both adapters (this one and polkit.py) match against ----------
#: The bus (its policy) or the service (polkit's verdict) refused the call.
DENIED = frozenset(
    {
        "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
        "org.freedesktop.DBus.Error.AccessDenied",
        "org.freedesktop.DBus.Error.AuthFailed",
    }
)
#: Nobody owns the destination name: the service is not on the bus (and cannot be activated).
NO_OWNER = frozenset({"org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner"})
#: The service did not reply in time (the bus daemon's own deadline, or the service's).
NO_REPLY = frozenset({"org.freedesktop.DBus.Error.NoReply", "org.freedesktop.DBus.Error.Timeout"})
#: systemd: no such unit (or it failed to load); the unit is masked.
NO_SUCH_UNIT = frozenset({"org.freedesktop.systemd1.NoSuchUnit", "org.freedesktop.systemd1.LoadFailed"})
UNIT_MASKED = "org.freedesktop.systemd1.UnitMasked"
#: polkitd: the caller may not ask this (e.g. CheckAuthorization with details, from a non-root caller).
POLKIT_NOT_AUTHORIZED = "org.freedesktop.PolicyKit1.Error.NotAuthorized"


@dataclass(frozen=True)
class Reply:
    """A method reply as the adapters see it: the body, or a D-Bus error (name and text cleaned)."""

    body: list[Any]
    error_name: str | None = None
    error_text: str = ""


@dataclass(frozen=True)
class UnitState:
    """The unit properties that tell whether (and when) it was restarted."""

    name: str
    load_state: str
    active_state: str
    sub_state: str
    result: str | None
    main_pid: int | None
    invocation_id: str | None
    active_enter_timestamp: float | None  # seconds since the epoch
    inactive_exit_timestamp: float | None  # when the current (or last) start began
    n_restarts: int | None
    fragment_path: str | None
    cpu_usage_nsec: int | None = None  # CPU time of the unit's processes (CPUAccounting=, on by default)
    timeout_stop: float | None = None  # TimeoutStopSec= in seconds: SIGKILL that long after the stop began
    state_change_timestamp: float | None = None  # when the unit entered its current state (epoch seconds)
    job_id: int | None = None  # the unit's pending job (Job property), if any: e.g. a restart between stop and start
    environment: tuple[str, ...] = ()  # Environment= assignments, "KEY=VALUE" (a service's)
    environment_files: tuple[tuple[str, bool], ...] = ()  # EnvironmentFile= paths, and whether missing is fine

    @property
    def started_at(self) -> float | None:
        """When the current (or last) start began, epoch seconds."""
        return self.inactive_exit_timestamp or self.active_enter_timestamp

    def started_since(self, t: float) -> bool:
        """Has a start of this unit begun after wall-clock time ``t``?"""
        return self.started_at is not None and self.started_at > t

    def check_loadable(self) -> None:
        """Raise UnitNotFound / UnitMasked before asking systemd to act on it."""
        if self.load_state == "not-found":
            raise not_found(self.name)
        if self.load_state == "masked":
            raise masked(self.name)
        if self.load_state not in ("loaded", ""):
            raise UnitNotFound(
                f"unit {self.name} failed to load (LoadState={self.load_state}); see: systemctl status {self.name}",
                unit=self.name,
                load_state=self.load_state,
            )


def not_found(unit: str, **details: Any) -> UnitNotFound:
    return UnitNotFound(
        f"unit {unit} not found; check the name (systemctl list-units --all '*ollama*') "
        "or set it with --unit / OLLAMACTL_UNIT",
        unit=unit,
        **details,
    )


def masked(unit: str, **details: Any) -> UnitMasked:
    return UnitMasked(
        f"unit {unit} is masked; an admin can unmask it: sudo systemctl unmask {unit}", unit=unit, **details
    )


class DenialContext:
    """What a PermissionDenied message needs to say who should do what."""

    def __init__(self, group: str) -> None:
        self.group = group

    def error(self, unit: str, verb: str, bus_error: str) -> PermissionDenied:
        user = current_user()
        if in_group(user, self.group):
            from ollamactl import policy  # only on this error path: the CLI's hot path stays lean

            fix = (
                policy.start_grant_command(self.group, unit)
                if verb in policy.STARTING_VERBS
                else policy.install_command(self.group, unit)
            )
            msg = (
                f"not allowed to {verb} {unit}: you are in group {self.group}, but no polkit rule "
                f"grants {verb} of {unit} to it; an admin can grant it: {fix}"
            )
        else:
            msg = (
                f"not allowed to {verb} {unit}: add yourself to group {self.group}: "
                f"sudo usermod -aG {self.group} {user or '$USER'}"
            )
        return PermissionDenied(msg, unit=unit, group=self.group, bus_error=bus_error)


class SystemdBus:
    """A connection to PID 1 on the system bus; use as ``async with``."""

    def __init__(
        self, *, call_timeout: float, group: str = "ollamactl", transport: Callable[[], Any] | None = None
    ) -> None:
        """``transport`` makes the (unconnected) message bus, dbus-next's ``MessageBus`` by default:
        tests and embedders pass an in-memory one, so the error mapping here runs against it."""
        self.call_timeout = call_timeout
        self._transport = transport
        self.denial = DenialContext(group)
        self._bus: MessageBus | None = None
        self._subscribed = False
        self._job_results: dict[str, str] = {}
        self._job_waiters: dict[str, asyncio.Future[str]] = {}
        self._systemd_owner: str | None = None  # PID 1's unique bus name, once subscribed

    async def __aenter__(self) -> SystemdBus:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def connect(self) -> None:
        """Connect within ``call_timeout``, retrying a connection the bus dropped during the handshake.

        dbus-daemon drops connections that have not authenticated within its
        auth_timeout (5 s) and the oldest once more than 64 are incomplete: what
        a burst of detectors on a busy machine meets (100 at once, on 2 cores).
        Such a drop is retried with a short backoff; a bus that is not there
        (no socket, refused) fails at once.
        """
        address = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/run/dbus/system_bus_socket")
        deadline = asyncio.get_running_loop().time() + self.call_timeout
        delay = 0.05
        while True:
            try:
                self._bus = await self._connect_once(address, deadline)
                break
            except (EOFError, ConnectionResetError, BrokenPipeError) as exc:
                left = deadline - asyncio.get_running_loop().time()
                if left <= delay:
                    raise BusUnavailable(
                        f"the system bus at {address} kept closing the connection during the handshake "
                        f"({_reason(exc)}) for {self.call_timeout:g}s; the machine may be overloaded: "
                        "check systemctl status dbus",
                        address=address,
                    ) from None
                log("DEBUG", "the system bus dropped the connection during the handshake; retrying", error=_reason(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        self._bus.add_message_handler(self._on_message)

    async def _connect_once(self, address: str, deadline: float) -> MessageBus:
        bus = None
        try:
            bus = self._transport() if self._transport is not None else _MessageBus(bus_type=BusType.SYSTEM)
            return await asyncio.wait_for(bus.connect(), max(deadline - asyncio.get_running_loop().time(), 0.001))
        except BaseException as exc:
            if bus is not None:
                _close_bus(bus)
            if isinstance(exc, TimeoutError):
                raise BusUnavailable(
                    f"the system bus at {address} did not answer within {self.call_timeout:g}s; "
                    "check that dbus is running: systemctl status dbus",
                    address=address,
                ) from None
            if isinstance(exc, EOFError | ConnectionResetError | BrokenPipeError):
                raise  # dropped during the handshake: connect() retries
            if isinstance(exc, OSError | InvalidAddressError):
                raise BusUnavailable(
                    f"cannot connect to the system bus at {address}: {_reason(exc)}; "
                    "check that dbus is running (systemctl status dbus) and DBUS_SYSTEM_BUS_ADDRESS",
                    address=address,
                ) from None
            if isinstance(exc, DBusError | AuthError):  # e.g. the auth handshake was refused
                raise BusUnavailable(
                    f"the system bus refused the connection: {_reason(exc)}", address=address
                ) from None
            raise

    def close(self) -> None:
        if self._bus is not None:
            _close_bus(self._bus)
            self._bus = None

    async def send(
        self,
        destination: str,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
        *,
        timeout: float,
        peer: str = "systemd",
    ) -> Reply:
        """One method call to ``destination`` under a deadline; the reply, or its D-Bus error, uncategorised.

        Raises TimedOut (``peer`` did not answer within ``timeout``) or
        BusUnavailable (the bus went away).  Each adapter maps error names itself.
        """
        if self._bus is None:
            raise RuntimeError("SystemdBus used before connect()")
        msg = Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body or [],
        )
        try:
            reply = await asyncio.wait_for(self._bus.call(msg), max(timeout, 0.001))
        except TimeoutError:
            raise TimedOut(
                f"{peer} did not answer {member} within {timeout:g}s; the system may be overloaded",
                step=member,
            ) from None
        except (OSError, EOFError) as exc:
            raise BusUnavailable(f"lost the system bus during {member}: {_reason(exc)}") from None
        if reply is None:
            raise BusUnavailable(f"the system bus closed during {member}")
        if reply.message_type == MessageType.ERROR:
            name = clean(reply.error_name, _NAME_LIMIT)
            return Reply([], name, clean(reply.body[0] if reply.body else name, _MESSAGE_LIMIT))
        return Reply(list(reply.body))

    async def call(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
        *,
        destination: str = SYSTEMD,
        timeout: float | None = None,
        unit: str | None = None,
        verb: str | None = None,
    ) -> list[Any]:
        """One method call to systemd (or the bus daemon) under a deadline; D-Bus errors become typed exceptions."""
        limit = self.call_timeout if timeout is None else min(timeout, self.call_timeout)
        reply = await self.send(destination, path, interface, member, signature, body, timeout=limit)
        if reply.error_name is not None:
            raise self._map_error(reply.error_name, reply.error_text, unit=unit, verb=verb or member)
        return reply.body

    def _map_error(self, name: str, text: str, *, unit: str | None, verb: str) -> OllamactlError:
        unit = unit or "?"
        if name in DENIED:
            return self.denial.error(unit, verb, name)
        if name in NO_SUCH_UNIT:
            return not_found(unit, bus_error=name)
        if name == UNIT_MASKED:
            return masked(unit, bus_error=name)
        if name in NO_OWNER:
            return BusUnavailable("systemd is not on the system bus (is PID 1 systemd?)", bus_error=name)
        if name in NO_REPLY:
            return TimedOut(f"systemd did not answer {verb}: {text}", bus_error=name)
        return OllamactlError(f"systemd refused {verb} of {unit}: {text} ({name})", unit=unit, bus_error=name)

    # -- jobs -----------------------------------------------------------------

    def _on_message(self, msg: Message) -> None:
        if (
            msg.message_type == MessageType.SIGNAL
            and msg.member == "JobRemoved"
            and msg.interface == MANAGER
            and msg.path == MANAGER_PATH
            and self._systemd_owner is not None
            and msg.sender == self._systemd_owner
            and len(msg.body) == 4
        ):
            _, job, _, result = msg.body
            result = clean(result, _NAME_LIMIT)
            self._job_results[job] = result
            waiter = self._job_waiters.pop(job, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(result)

    async def subscribe(self) -> None:
        """Ask for JobRemoved signals; must happen before the job is queued."""
        if self._subscribed:
            return
        # Any peer may send us a unicast signal: accept JobRemoved only from PID 1's connection.
        (owner,) = await self.call(
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "GetNameOwner",
            "s",
            [SYSTEMD],
            destination="org.freedesktop.DBus",
        )
        self._systemd_owner = str(owner)
        await self.call(
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "AddMatch",
            "s",
            [_JOB_MATCH],
            destination="org.freedesktop.DBus",
        )
        await self.call(MANAGER_PATH, MANAGER, "Subscribe")
        self._subscribed = True

    async def restart_unit(self, unit: str, *, start: bool = False) -> str:
        """Queue a restart job in mode "replace"; return the job's object path.

        TryRestartUnit by default: systemd restarts the unit only if it is
        running, atomically, so a unit an admin stopped after our last look is
        never started.  ``start``: RestartUnit, which also starts a stopped unit.
        """
        member = "RestartUnit" if start else "TryRestartUnit"
        verb = "restart" if start else "try-restart"
        (job,) = await self.call(MANAGER_PATH, MANAGER, member, "ss", [unit, "replace"], unit=unit, verb=verb)
        return str(job)

    async def wait_job(self, job: str, timeout: float) -> str:
        """The job's result (done, failed, timeout, canceled, dependency, skipped)."""
        if job in self._job_results:  # the signal beat the method reply
            return self._job_results[job]
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._job_waiters[job] = fut
        try:
            return await asyncio.wait_for(fut, max(timeout, 0.001))
        except TimeoutError:
            raise TimedOut(
                f"the restart job {job} did not finish within {timeout:.1f}s; "
                "the unit may be slow to stop (see its TimeoutStopSec) or start",
                job=job,
            ) from None
        finally:
            self._job_waiters.pop(job, None)

    # -- state ----------------------------------------------------------------

    async def unit_state(self, unit: str, timeout: float | None = None) -> UnitState:
        """Read the unit's state; loads the unit if needed, as ``systemctl show`` does."""
        path = unit_object_path(unit)
        ifaces = [UNIT_IFACE, SERVICE_IFACE] if unit.endswith(".service") else [UNIT_IFACE]
        replies = await asyncio.gather(
            *(self.call(path, PROPS, "GetAll", "s", [i], timeout=timeout, unit=unit, verb="read") for i in ifaces)
        )
        props: dict[str, Any] = {k: v.value for reply in replies for k, v in reply[0].items()}
        inv = props.get("InvocationID")
        ts = props.get("ActiveEnterTimestamp")
        started = props.get("InactiveExitTimestamp")
        result = props.get("Result")
        cpu = props.get("CPUUsageNSec")
        return UnitState(
            name=clean(props.get("Id", unit), _NAME_LIMIT),
            load_state=clean(props.get("LoadState", ""), _NAME_LIMIT),
            active_state=clean(props.get("ActiveState", ""), _NAME_LIMIT),
            sub_state=clean(props.get("SubState", ""), _NAME_LIMIT),
            result=None if result is None else clean(result, _NAME_LIMIT),
            main_pid=props.get("MainPID"),
            invocation_id=bytes(inv).hex() if inv else None,
            active_enter_timestamp=ts / 1e6 if ts else None,
            inactive_exit_timestamp=started / 1e6 if started else None,
            n_restarts=props.get("NRestarts"),
            fragment_path=clean(props.get("FragmentPath"), _PATH_LIMIT) if props.get("FragmentPath") else None,
            cpu_usage_nsec=cpu if isinstance(cpu, int) and 0 <= cpu < (1 << 64) - 1 else None,  # 2^64-1: not counted
            timeout_stop=_usec(props.get("TimeoutStopUSec")),
            state_change_timestamp=_usec(props.get("StateChangeTimestamp")),
            job_id=_job_id(props.get("Job")),
            environment=tuple(
                clean(e, _ENV_LIMIT) for e in _strings(props.get("Environment"))[:_ENV_ITEMS] if "=" in e
            ),
            environment_files=tuple(
                (p[0], bool(p[1]))
                for p in (props.get("EnvironmentFiles") or [])[:_ENV_ITEMS]
                if isinstance(p, list | tuple)
                and len(p) == 2
                and isinstance(p[0], str)
                and p[0].startswith("/")
                and p[0].isprintable()
                and len(p[0]) <= _PATH_LIMIT
            ),  # fmt: skip
        )

    async def primary_name(self, unit: str, timeout: float | None = None) -> str:
        """The unit's primary name (its ``Id``), which is what polkit sees: an alias resolves to it.

        LoadUnit loads the unit if needed (any user may ask) and answers with
        the object path of the unit the name resolves to; a unit that does not
        exist keeps its own name.  Raises OllamactlError if systemd's answer is
        not a valid unit name.
        """
        (path,) = await self.call(
            MANAGER_PATH, MANAGER, "LoadUnit", "s", [unit], timeout=timeout, unit=unit, verb="look up"
        )
        (value,) = await self.call(
            str(path), PROPS, "Get", "ss", [UNIT_IFACE, "Id"], timeout=timeout, unit=unit, verb="read"
        )
        name = getattr(value, "value", value)
        if not isinstance(name, str) or check_unit_name(name) is not None:
            raise OllamactlError(
                f"systemd named the primary unit of {unit} {clean(repr(name), _NAME_LIMIT)}, which is not a unit name",
                unit=unit,
            )
        return name


async def primary_unit_name(unit: str, *, call_timeout: float) -> str:
    """``SystemdBus.primary_name`` on a connection of its own; raises OllamactlError (BusUnavailable...)."""
    async with SystemdBus(call_timeout=call_timeout) as bus:
        return await bus.primary_name(unit)


def _usec(value: Any) -> float | None:
    """A systemd microsecond property in seconds; None for 0 (never / unset) and infinity (2^64-1)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < (1 << 64) - 1:
        return None
    return value / 1e6


class _MessageBus(MessageBus):
    """dbus-next's MessageBus, with an auth handshake that ends when the bus closes the socket.

    dbus-next 0.2.3 reads the handshake with ``buf += sock_recv(2)`` until CRLF,
    which spins forever at full CPU once the peer has closed (recv returns b"").
    """

    _AUTH_LINE_MAX = 16384  # the auth lines are a few dozen bytes (a GUID, a mechanism list)

    def _setup_socket(self) -> None:
        try:
            super()._setup_socket()
        except BaseException:
            _close_bus_fds(self)  # upstream leaves the socket of a failed connect() open
            raise

    async def _auth_readline(self) -> str:
        buf = b""
        while not buf.endswith(b"\r\n"):
            chunk = await self._loop.sock_recv(self._sock, 2)  # 2 as upstream: never read past the auth line
            if not chunk:
                raise EOFError("the bus closed the connection during authentication")
            buf += chunk
            if len(buf) > self._AUTH_LINE_MAX:
                raise AuthError("the bus sent an over-long authentication line")
        return buf[:-2].decode(errors="replace")


def _close_bus(bus: Any) -> None:
    """Close a dbus-next bus for good: its disconnect() only shuts the socket down, and nothing closes the fd."""
    try:
        bus.disconnect()
        finalize = getattr(bus, "_finalize", None)
        if finalize is not None:
            finalize(None)  # unregisters the fd from the loop (and fails pending calls) before it is closed
    except Exception as exc:  # e.g. a half-made connection: closing must not hide the error that ended it
        log("DEBUG", "closing a bus connection", error=_reason(exc))
    _close_bus_fds(bus)


def _close_bus_fds(bus: Any) -> None:
    for part in ("_stream", "_sock"):  # the socket's fd stays open while its makefile() stream is
        obj = getattr(bus, part, None)
        if obj is not None:
            obj.close()


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list | tuple) else []


def _job_id(value: Any) -> int | None:
    """The id in a Job property, ``(uint32 id, object path)``; None for none (id 0) or a malformed value."""
    if isinstance(value, list | tuple) and value and isinstance(value[0], int) and 0 < value[0] < 1 << 32:
        return value[0]
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
