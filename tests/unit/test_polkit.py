"""The polkit adapter (ollamactl/polkit.py) against in-memory fakes: error mapping, deadlines, replies.

What polkitd itself answers is tested on the real stack (tests/e2e/test_admin.py);
these pin how its answers and the bus's errors become our typed errors, and
what doctor says for each.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from dbus_next import Message, Variant

from ollamactl import doctor, polkit, systemd
from ollamactl.errors import (
    EXIT_BUS,
    EXIT_PERMISSION,
    EXIT_TIMEOUT,
    BusUnavailable,
    OllamactlError,
    PermissionDenied,
    PolkitNotTrusted,
    PolkitUnavailable,
    TimedOut,
)
from ollamactl.polkit import Authorization, Polkit
from ollamactl.systemd import Reply, SystemdBus

NOT_AUTHORIZED = "org.freedesktop.PolicyKit1.Error.NotAuthorized"


class FakeTransport:
    """``SystemdBus.send`` in memory: records each call and answers with ``reply`` (a Reply, or raises it)."""

    def __init__(self, reply: Reply | BaseException) -> None:
        self.reply = reply
        self.calls: list[dict] = []

    async def send(self, destination, path, interface, member, signature="", body=None, *, timeout, peer="systemd"):
        self.calls.append(
            {
                "destination": destination,
                "path": path,
                "interface": interface,
                "member": member,
                "signature": signature,
                "body": body,
                "timeout": timeout,
                "peer": peer,
            }
        )
        if isinstance(self.reply, BaseException):
            raise self.reply
        return self.reply


def _error(name: str, text: str = "told so") -> Reply:
    return Reply([], name, text)


def _version(reply: Reply | BaseException, timeout: float = 3.0) -> str:
    return asyncio.run(Polkit(FakeTransport(reply), timeout=timeout).version())


def _check(reply: Reply | BaseException) -> Authorization:
    ask = Polkit(FakeTransport(reply), timeout=3).check_authorization(
        "org.freedesktop.systemd1.manage-units", pid=42, start_time=7, uid=1000, details={"unit": "u.service"}
    )
    return asyncio.run(ask)


# -- error mapping: each D-Bus error name class becomes its typed error ---------------------------------


@pytest.mark.parametrize("name", sorted(systemd.NO_OWNER))
def test_polkitd_not_on_the_bus_is_polkit_unavailable(name):
    with pytest.raises(PolkitUnavailable) as info:
        _version(_error(name))
    err = info.value
    assert isinstance(err, BusUnavailable) and err.exit_code == EXIT_BUS and err.kind == "polkit-unavailable"
    assert err.message == "polkitd is not on the system bus" and err.details["bus_error"] == name


@pytest.mark.parametrize("name", sorted(systemd.NO_REPLY))
def test_no_reply_from_polkitd_is_timed_out(name):
    with pytest.raises(TimedOut) as info:
        _version(_error(name, "Did not receive a reply"))
    assert info.value.exit_code == EXIT_TIMEOUT and info.value.details["bus_error"] == name
    assert info.value.message == "polkitd did not answer the version query: Did not receive a reply"


def test_not_authorized_is_polkit_not_trusted():
    with pytest.raises(PolkitNotTrusted) as info:
        _check(_error(NOT_AUTHORIZED, "Only trusted callers (e.g. uid 0 or an action owner) can use ..."))
    err = info.value
    assert isinstance(err, PermissionDenied) and err.exit_code == EXIT_PERMISSION and err.kind == "polkit-not-trusted"
    assert err.message.startswith("polkitd answers CheckAuthorization only for trusted callers: Only trusted")


@pytest.mark.parametrize("name", sorted(systemd.DENIED))
def test_the_bus_refusing_the_call_is_permission_denied_not_polkits_distrust(name):
    with pytest.raises(PermissionDenied) as info:
        _check(_error(name, "Rejected send message"))
    assert type(info.value) is PermissionDenied and info.value.details["bus_error"] == name
    assert info.value.message == "the system bus refused CheckAuthorization: Rejected send message"


def test_any_other_error_is_a_plain_ollamactl_error_naming_it():
    with pytest.raises(OllamactlError) as info:
        _check(_error("org.freedesktop.PolicyKit1.Error.Failed", "no such action"))
    assert type(info.value) is OllamactlError
    assert info.value.message == (
        "polkitd refused CheckAuthorization: no such action (org.freedesktop.PolicyKit1.Error.Failed)"
    )


def test_both_adapters_classify_from_the_one_table():
    """systemd.py maps the same names (the table is shared, not copied)."""
    bus = SystemdBus(call_timeout=1)
    for name in systemd.NO_OWNER:
        assert type(bus._map_error(name, "x", unit="u.service", verb="read")) is BusUnavailable
        assert type(polkit.map_error(name, "x", "q")) is PolkitUnavailable
    for name in systemd.NO_REPLY:
        assert type(bus._map_error(name, "x", unit="u.service", verb="read")) is TimedOut
        assert type(polkit.map_error(name, "x", "q")) is TimedOut


# -- what is sent, under which deadline ---------------------------------------------------------------


def test_version_asks_polkitd_for_backend_version_under_the_adapters_deadline():
    fake = FakeTransport(Reply([Variant("s", "126")]))
    assert asyncio.run(Polkit(fake, timeout=2.5).version()) == "126"
    (call,) = fake.calls
    assert call == {
        "destination": "org.freedesktop.PolicyKit1",
        "path": "/org/freedesktop/PolicyKit1/Authority",
        "interface": "org.freedesktop.DBus.Properties",
        "member": "Get",
        "signature": "ss",
        "body": ["org.freedesktop.PolicyKit1.Authority", "BackendVersion"],
        "timeout": 2.5,
        "peer": "polkitd",
    }


def test_a_hostile_version_is_cleaned_and_a_malformed_reply_is_an_error():
    shown = _version(Reply([Variant("s", "126\x1b[2J" + "9" * 100)]))
    assert shown.startswith("126\\x1b[2J999") and "\x1b" not in shown and len(shown) <= 64 + 3
    for body in ([], [Variant("u", 126)], ["1", "2"]):
        with pytest.raises(OllamactlError, match="^polkitd answered the version query with "):
            _version(Reply(body))


def test_check_authorization_asks_about_the_process_never_interactively():
    fake = FakeTransport(Reply([(False, True, {})]))
    ask = Polkit(fake, timeout=3).check_authorization(
        "org.freedesktop.systemd1.manage-units",
        pid=42,
        start_time=7,
        uid=1000,
        details={"unit": "u.service", "verb": "try-restart"},
    )
    assert asyncio.run(ask) == Authorization(authorized=False, challenge=True)
    (call,) = fake.calls
    assert (call["interface"], call["member"], call["signature"]) == (
        "org.freedesktop.PolicyKit1.Authority",
        "CheckAuthorization",
        "(sa{sv})sa{ss}us",
    )
    subject, action, details, flags, cancel = call["body"]
    assert subject[0] == "unix-process"
    assert {k: (v.signature, v.value) for k, v in subject[1].items()} == {
        "pid": ("u", 42),
        "start-time": ("t", 7),
        "uid": ("i", 1000),
    }
    assert (action, details, flags, cancel) == (
        "org.freedesktop.systemd1.manage-units",
        {"unit": "u.service", "verb": "try-restart"},
        0,  # never AllowUserInteraction: no password prompt, no side effects
        "",
    )
    # Signature and body agree: dbus-next can marshal what we send.
    Message(destination="d.e", path="/", interface="i.j", member="M", signature=call["signature"], body=call["body"])


@pytest.mark.parametrize("body", [[], [(True,)], ["yes"], [(True, False, {}), 1]])
def test_a_malformed_verdict_is_an_error_not_a_yes(body):
    with pytest.raises(OllamactlError, match="^polkitd answered CheckAuthorization with "):
        _check(Reply(body))


class _SilentBus:
    """dbus-next's MessageBus that never answers; or answers every call with ``error`` (name, text)."""

    def __init__(self, error: tuple[str, str] | None = None) -> None:
        self.error = error

    async def call(self, msg):
        if self.error is None:
            await asyncio.sleep(3600)
        msg.serial = msg.serial or 1  # as the bus would have numbered it
        return Message.new_error(msg, *self.error)


def _over(bus: _SilentBus, timeout: float) -> Polkit:
    real = SystemdBus(call_timeout=60)
    real._bus = bus  # type: ignore[assignment]
    return Polkit(real, timeout=timeout)


def test_a_silent_polkitd_is_given_up_on_at_the_adapters_deadline_through_systemd_bus():
    started = asyncio.get_event_loop_policy().new_event_loop()
    try:
        t0 = started.time()
        with pytest.raises(TimedOut) as info:
            started.run_until_complete(_over(_SilentBus(), 0.05).version())
        elapsed = started.time() - t0
    finally:
        started.close()
    assert info.value.message == "polkitd did not answer Get within 0.05s; the system may be overloaded"
    assert elapsed < 1.0


def test_a_real_error_message_from_the_bus_is_mapped_through_systemd_bus():
    err_name = "org.freedesktop.DBus.Error.ServiceUnknown"
    with pytest.raises(PolkitUnavailable):
        asyncio.run(_over(_SilentBus((err_name, "The name is not activatable")), 1).version())


# -- what doctor says for each -------------------------------------------------------------------------


def _doctor_version(reply: Reply | BaseException):
    return asyncio.run(doctor._polkit_version(Polkit(FakeTransport(reply), timeout=1), doctor.default_config()))


def test_doctor_says_polkitd_is_missing_with_the_install_fix():
    version, check = _doctor_version(_error("org.freedesktop.DBus.Error.ServiceUnknown"))
    assert version is None and check.ok is False
    assert (check.detail, check.fix) == (
        "polkitd is not on the system bus",
        "sudo apt-get install polkitd (or your distro's)",
    )


def test_doctor_says_why_it_could_not_read_the_version():
    version, check = _doctor_version(TimedOut("polkitd did not answer Get within 1s; the system may be overloaded"))
    assert version is None and check.ok is False and check.fix == "journalctl -u polkit"
    assert (
        check.detail
        == "cannot ask polkitd for its version: polkitd did not answer Get within 1s; the system may be overloaded"
    )


def _doctor_ask(reply: Reply | BaseException):
    report = doctor.Report(user="alice", unit="ollama.service", group="ollamactl", checks=[])
    polkit_ = Polkit(FakeTransport(reply), timeout=1)
    return asyncio.run(doctor._ask_polkit(polkit_, doctor.default_config(), report, os.getuid()))


def test_doctor_says_polkitd_answers_only_root_when_not_trusted():
    authorized, check = _doctor_ask(_error(NOT_AUTHORIZED, "Only trusted callers"))
    assert authorized is None and check.ok is None
    assert check.detail.startswith("polkitd answers CheckAuthorization with the unit and verb only for root")


def test_doctor_reports_any_other_refusal_as_unknown_with_its_message():
    authorized, check = _doctor_ask(_error("org.freedesktop.DBus.Error.AccessDenied", "Rejected"))
    assert authorized is None and check.ok is None
    assert (
        check.detail == "polkit would not answer for this process: the system bus refused CheckAuthorization: Rejected"
    )


def test_doctor_shows_polkits_no_with_the_challenge():
    authorized, check = _doctor_ask(Reply([(False, True, {})]))
    assert authorized is False and check.ok is False
    assert "may NOT try-restart ollama.service (it would ask for an admin password" in check.detail
