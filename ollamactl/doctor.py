"""``ollamactl doctor``: why may (or may not) this user restart Ollama, and what fixes it.

Each check looks at one thing polkit and systemd depend on, in the order a
restart needs them, and a failed one carries the exact command that fixes it.
Where polkit can answer for itself (``CheckAuthorization`` on the caller's own
process, no interaction, no side effects) we ask it and show its answer, so the
verdict is polkit's, not a re-implementation of the rule.
"""

from __future__ import annotations

import asyncio
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ollamactl import nss, policy, runtime
from ollamactl.config import Config, load_config
from ollamactl.errors import OllamactlError, PolkitNotTrusted, PolkitUnavailable, UrlUnknown, UsageError
from ollamactl.policy import NotRoot
from ollamactl.polkit import Polkit, process_start_time

SYSUSERS = Path("/usr/lib/sysusers.d/ollamactl.conf")
#: The whole doctor run, bus and HTTP included, ends within this many seconds.
TOTAL_DEADLINE = 30.0


@dataclass
class Check:
    """One line of the report; ok=None means "could not tell" (does not fail the run)."""

    name: str
    ok: bool | None
    detail: str
    fix: str | None = None


@dataclass
class Report:
    """All checks, plus polkit's own verdict when it could give one."""

    user: str
    unit: str
    group: str
    checks: list[Check]
    authorized: bool | None = None
    polkit_version: str | None = None
    primary_unit: str | None = None  # the unit's name after alias resolution: what polkit sees

    @property
    def ok(self) -> bool:
        return all(c.ok is not False for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "user": self.user,
            "unit": self.unit,
            "group": self.group,
            "authorized": self.authorized,
            "polkit_version": self.polkit_version,
            "primary_unit": self.primary_unit,
            "checks": [asdict(c) for c in self.checks],
        }


def default_config() -> Config:
    """Built-in defaults, for checking the rest when the config itself is invalid."""
    return load_config(None, config_file=os.devnull, environ={})


def run(config: Config | None, config_error: OllamactlError | None, user: str | None = None) -> Report:
    """Run every check (synchronously, on a private event loop) under TOTAL_DEADLINE.

    ``user``: check for that user instead of the caller (root only, since only root may ask
    polkit about another user's process).
    """
    if user is None:
        uid = os.getuid()
        user = nss.current_user() or str(uid)
    else:
        found = nss.uid_of(user)
        if found is None:
            raise UsageError(f"--user: no such user {user!r} (looked up through NSS)", field="user")
        uid = found
        if uid != os.getuid() and os.geteuid() != 0:
            raise NotRoot(f"checking for another user needs root: sudo ollamactl doctor --user {user}")
    return asyncio.run(_run(config, config_error, user, uid))


async def _run(config: Config | None, config_error: OllamactlError | None, user: str, uid: int) -> Report:
    checks: list[Check] = []
    if config_error is not None:
        checks.append(Check("config", False, config_error.message, _config_fix(config_error)))
        config = default_config()
    else:
        assert config is not None
        src = {k: v for k, v in config.sources.items() if v != "default"}
        where = "; ".join(f"{k} from {v}" for k, v in sorted(src.items())) or "all defaults"
        checks.append(Check("config", True, f"valid ({where})"))
    report = Report(user=user, unit=config.unit, group=config.group, checks=checks)
    try:
        async with asyncio.timeout(TOTAL_DEADLINE):
            await _bus_checks(report, config, uid)
    except TimeoutError:
        checks.append(Check("deadline", False, f"doctor did not finish within {TOTAL_DEADLINE:g}s", None))
    checks.append(_runtime_dir_check(Path(config.runtime_dir), config.group))
    try:
        async with asyncio.timeout(config.http_timeout + 1):
            checks.append(await _ollama_check(config))
    except TimeoutError:
        checks.append(Check("ollama", False, f"{config.url} did not answer within {config.http_timeout:g}s"))
    return report


def _config_fix(err: OllamactlError) -> str:
    """The command that fixes a bad setting, from where it came (file, variable or flag)."""
    source, key = str(err.details.get("source", "")), err.details.get("key")
    what = f" and correct {key}" if key else ""
    if source.startswith("/"):
        return f"sudoedit {source}{what}" if source.startswith("/etc/") else f"edit {source}{what}"
    if source.startswith("environment variable "):
        return f"unset {source.removeprefix('environment variable ')} (or give it a valid value)"
    return "correct the flag named above"


async def _bus_checks(report: Report, config: Config, uid: int) -> None:
    from ollamactl.systemd import SystemdBus

    checks = report.checks
    try:
        bus_cm = SystemdBus(call_timeout=config.bus_timeout, group=config.group)
        bus = await bus_cm.__aenter__()
    except OllamactlError as err:
        checks.append(Check("system bus", False, err.message, "sudo systemctl start dbus.service"))
        checks.append(_group_check(report.user, uid, config.group))
        checks.append(_rule_check(config))
        return
    try:
        checks.append(Check("system bus", True, "answers"))
        checks.append(await _unit_check(bus, config.unit))
        report.primary_unit, alias_check = await _primary_unit(bus, config.unit)
        if alias_check is not None:
            checks.append(alias_check)
        checks.append(_group_check(report.user, uid, config.group))
        polkit = Polkit(bus, timeout=config.bus_timeout)
        version, polkit_check = await _polkit_version(polkit, config)
        report.polkit_version = version
        checks.append(polkit_check)
        checks.append(_rule_check(config, report.primary_unit))
        if uid == 0:
            checks.append(Check("polkit says", True, "root: systemd does not ask polkit for root"))
        elif version is not None:
            authorized, check = await _ask_polkit(polkit, config, report, uid)
            report.authorized = authorized
            checks.append(check)
    finally:
        await bus_cm.__aexit__(None, None, None)


async def _primary_unit(bus: Any, unit: str) -> tuple[str, Check | None]:
    """The name systemd gives polkit for ``unit`` (an alias resolved); if systemd cannot say, ``unit`` and why."""
    try:
        return await bus.primary_name(unit), None
    except OllamactlError as err:
        why = f"could not ask systemd whether {unit} is an alias ({err.message}); checking the rule for {unit}"
        return unit, Check("alias", None, why)


async def _unit_check(bus: Any, unit: str) -> Check:
    try:
        state = await bus.unit_state(unit)
    except OllamactlError as err:
        return Check("unit", False, err.message, f"systemctl status {unit}")
    if state.load_state == "loaded":
        where = f" from {state.fragment_path}" if state.fragment_path else ""
        return Check("unit", True, f"{state.name} is loaded{where}, {state.active_state} ({state.sub_state})")
    if state.load_state == "masked":
        return Check("unit", False, f"{unit} is masked", f"sudo systemctl unmask {unit}")
    if state.load_state == "not-found":
        return Check(
            "unit",
            False,
            f"systemd has no unit {unit}",
            "install Ollama (https://ollama.com/download/linux), or name its unit in "
            '/etc/ollamactl/config.toml: unit = "NAME.service"',
        )
    return Check("unit", False, f"{unit} failed to load (LoadState={state.load_state})", f"systemctl status {unit}")


def _group_check(user: str, uid: int, group: str) -> Check:
    """Membership as polkit sees it: the user's groups through NSS, not this process's groups."""
    found = nss.membership(user, group, uid=uid)
    if found == "no-such-group":
        fix = f"sudo systemd-sysusers {SYSUSERS}" if SYSUSERS.exists() else f"sudo groupadd --system {group}"
        return Check("group", False, f"group {group} does not exist", fix)
    if uid == 0:
        return Check("group", True, f"you are root, which needs no group (group {group} exists)")
    if found == "no-such-user":
        return Check("group", False, f"uid {uid} has no passwd entry, so polkit cannot see its groups", None)
    if found == "member":
        return Check("group", True, f"{user} is in group {group} (NSS)")
    return Check(
        "group",
        False,
        f"{user} is not in group {group} (NSS); a new member needs no re-login",
        f"sudo usermod -aG {group} {user}",
    )


async def _polkit_version(polkit: Polkit, config: Config) -> tuple[str | None, Check]:
    try:
        version = await polkit.version()  # cleaned: polkitd's words are printed
    except PolkitUnavailable:
        return None, Check(
            "polkit", False, "polkitd is not on the system bus", "sudo apt-get install polkitd (or your distro's)"
        )
    except OllamactlError as err:
        return None, Check(
            "polkit", False, f"cannot ask polkitd for its version: {err.message}", "journalctl -u polkit"
        )
    if policy.polkit_version_supports_rules(version):
        return version, Check("polkit", True, f"polkitd {version} runs JavaScript rules")
    return version, Check(
        "polkit",
        False,
        f"polkit {version} predates 0.106 and reads only .pkla files, which cannot look at the unit or verb: "
        f"a grant scoped to {config.unit} is impossible here (and ollamactl never ships a .pkla, "
        "which would grant every unit)",
        "use sudo instead: " + policy.SUDOERS_FALLBACK.format(group=config.group, unit=config.unit),
    )


def _rule_check(config: Config, primary: str | None = None) -> Check:
    """Is there a rule of ours granting try-restart of the unit, by the name polkit sees (``primary``)?

    try-restart is what ``ollamactl restart``, the watchdog and the guard use;
    whether members may also start a stopped unit (verb restart, for
    ``restart --start``) is said, not required.
    """
    scan = policy.scan()
    unit = primary or config.unit
    verb = policy.TRY_RESTART
    alias = f" ({config.unit} is an alias of {unit}: polkit checks the primary name)" if unit != config.unit else ""
    granting = scan.granting(config.group, unit, verb)
    fix = policy.install_command(config.group, unit)
    if granting:
        rule = granting[0]
        if not rule.polkitd_can_read:
            return Check(
                "rule",
                False,
                f"{rule.path} grants {verb} of {unit} to {config.group}, but polkitd cannot read it "
                f"(mode {stat.S_IMODE(rule.mode):04o})",
                f"sudo chmod 0644 {rule.path}",
            )
        return Check(
            "rule",
            True,
            f"{rule.path}: {rule.grant.describe() if rule.grant else ''}{alias}; " + _starts(scan, config, unit),
        )
    for_alias = scan.granting(config.group, config.unit, verb) if alias else []
    if for_alias:
        return Check(
            "rule",
            False,
            f"{for_alias[0].path} grants {verb} of {config.unit} to {config.group}, but {config.unit} is an "
            f"alias of {unit} and polkit checks the primary name, so it grants nothing",
            f"{fix} (and remove {for_alias[0].path})",
        )
    edited = [r for r in scan.ours if r.grant and not r.pristine]
    if edited:
        return Check(
            "rule",
            False,
            f"{edited[0].path} was edited by hand, so what it grants cannot be told",
            f"{fix} (and remove {edited[0].path})",
        )
    if scan.unreadable_dirs:
        dirs = ", ".join(str(d) for d in scan.unreadable_dirs)
        packaged = policy.PACKAGED_RULE
        if config.group == policy.DEFAULT_GROUP and unit == policy.DEFAULT_UNIT and _dpkg_ships(packaged):
            return Check(
                "rule",
                True,
                f"{packaged} is installed by the ollamactl package (dpkg's file list); polkitd keeps {dirs} "
                "unreadable for users, so run sudo ollamactl doctor to check its content",
            )
        return Check(
            "rule",
            None,
            f"no rule of ours granting {verb} of {unit} to {config.group} where you can look{alias}; "
            f"{dirs} can be read only by polkitd and root: run sudo ollamactl doctor",
            None,
        )
    return Check("rule", False, f"no polkit rule grants {verb} of {unit} to group {config.group}{alias}", fix)


def _starts(scan: policy.Scan, config: Config, unit: str) -> str:
    """Whether members may also start the unit when it is stopped, and how an admin allows it."""
    starting = [r for r in scan.ours if r.grant and r.pristine and r.grant.group == config.group
                and r.grant.unit == unit and r.grant.can_start]  # fmt: skip
    if starting:
        return f"members may also start a stopped {unit} (restart --start), by {starting[0].path}"
    return (
        f"a stopped {unit} stays stopped (only an admin starts it); to let members start it with "
        f"ollamactl restart --start: {policy.start_grant_command(config.group, unit)}"
    )


def _dpkg_ships(path: Path, info: Path = Path("/var/lib/dpkg/info/ollamactl.list")) -> bool:
    """True if dpkg's file list for the ollamactl package names path (readable by everyone)."""
    try:
        with open(info, encoding="utf-8", errors="replace") as fh:
            return any(line.rstrip("\n") == str(path) for line in fh)
    except OSError:
        return False


def _a_process_of(uid: int) -> int | None:
    """The lowest pid whose real uid is uid (polkit judges a process, not a user), or None."""
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            return pid
                        break
        except (OSError, ValueError, IndexError):
            continue  # gone, or a kernel thread we may not read
    return None


async def _ask_polkit(polkit: Polkit, config: Config, report: Report, uid: int) -> tuple[bool | None, Check]:
    """polkit's own verdict: CheckAuthorization, flags 0 (never interactive, no side effects).

    For the caller: its own process.  For root checking another user: one of that user's
    running processes, since polkit judges processes (and lets only root pass details).
    """
    pid: int | None = os.getpid()
    if uid != os.getuid():
        pid = _a_process_of(uid)
        if pid is None:
            return None, Check(
                "polkit says",
                None,
                f"{report.user} has no running process, and polkit judges processes, so it cannot be asked; "
                "the group and rule checks above decide",
            )
    assert pid is not None
    try:
        start = process_start_time(pid)
    except (OSError, ValueError, IndexError):
        return None, Check("polkit says", None, f"process {pid} of {report.user} went away; run doctor again")
    unit = report.primary_unit or config.unit  # what systemd would put in the details
    details = {"unit": unit, "verb": policy.TRY_RESTART}  # what ollamactl restart asks for (TryRestartUnit)
    try:
        verdict = await polkit.check_authorization(policy.ACTION, pid=pid, start_time=start, uid=uid, details=details)
    except OllamactlError as err:
        if isinstance(err, PolkitNotTrusted):
            # polkitd 122 and 126: "Only trusted callers (e.g. uid 0 or an action owner) can use
            # CheckAuthorization() and pass details", and without the unit detail the rule cannot match.
            return None, Check(
                "polkit says",
                None,
                "polkitd answers CheckAuthorization with the unit and verb only for root, so it cannot be "
                "asked for you without trying a restart; the group and rule checks above decide",
            )
        return None, Check("polkit says", None, f"polkit would not answer for this process: {err.message}")
    authorized, challenge = verdict.authorized, verdict.challenge
    asked = "" if uid == os.getuid() else f" (asked about pid {pid})"
    if authorized:
        return True, Check("polkit says", True, f"{report.user} may try-restart {config.unit}{asked}")
    failed = {c.name for c in report.checks if c.ok is False}
    if "group" in failed:
        fix = f"sudo usermod -aG {config.group} {report.user}"
    elif "rule" in failed or "polkit" in failed:
        fix = next(c.fix for c in report.checks if c.name in ("rule", "polkit") and c.ok is False)
    else:
        fix = "journalctl -u polkit (polkitd logs rules it could not load)"
    why = " (it would ask for an admin password, which ollamactl never lets it do)" if challenge else ""
    return False, Check("polkit says", False, f"{report.user} may NOT try-restart {config.unit}{why}{asked}", fix)


def _runtime_dir_check(run_dir: Path, group: str) -> Check:
    found = runtime.inspect_runtime_dir(run_dir, group)
    return Check("runtime dir", found.ok, found.detail, found.fix)


async def _ollama_check(config: Config) -> Check:
    """Does Ollama answer where ollamactl asks it: the URL given, else the unit's own OLLAMA_HOST?"""
    from ollamactl import probe
    from ollamactl.controller import AsyncController

    try:
        url = await AsyncController(config=config).url()
    except UrlUnknown as err:  # a guess could be another instance's server: name the file and the fix
        fix = str(err.details.get("fix", ""))
        return Check("url", False, err.message.removesuffix(f"; fix: {fix}"), fix or None)
    except OllamactlError:
        url = config.url  # the bus checks above say what is wrong with the bus or the unit
    try:
        version = await probe.api_version(probe.parse_url(url), config.http_timeout)
    except TimeoutError:
        return Check(
            "ollama",
            False,
            f"{url} accepted nothing within {config.http_timeout:g}s (wedged?)",
            "ollamactl restart",
        )
    except (probe.HTTPError, ValueError) as exc:
        return Check(
            "ollama",
            False,
            f"{url}: {exc}",
            f"ollamactl restart (if it keeps failing: journalctl -u {config.unit})",
        )
    return Check("ollama", True, f"Ollama {version} answers at {url}")


def text(payload: dict[str, Any]) -> str:
    """The human report: one line per check, the fix indented below a failure."""
    marks = {True: "ok  ", False: "FAIL", None: "??  "}
    lines = [f"ollamactl doctor for user {payload['user']}, unit {payload['unit']}, group {payload['group']}"]
    for c in payload["checks"]:
        lines.append(f"  {marks[c['ok']]} {c['name']:<12} {c['detail']}")
        if c["ok"] is False and c["fix"]:
            lines.append(f"       {'':<12} fix: {c['fix']}")
    failed = [c["name"] for c in payload["checks"] if c["ok"] is False]
    unknown = sum(1 for c in payload["checks"] if c["ok"] is None)
    if failed:
        lines.append(f"{len(failed)} check(s) failed: {', '.join(failed)}")
    else:
        lines.append("all checks passed" + (f" ({unknown} could not be checked as this user)" if unknown else ""))
    return "\n".join(lines)
