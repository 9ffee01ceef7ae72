"""polkit rules that grant restarts: render, read back, install.

The packaged rule (/usr/share/polkit-1/rules.d/50-ollamactl.rules) is the output of
``render()`` for the default grant, so there is exactly one template.  Each rule we
write carries a machine-readable ``// ollamactl-grant:`` line, which lets ``policy
show`` and ``doctor`` say what is granted without running JavaScript, and notice
when someone edited the body by hand.  Standard library only.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ollamactl.errors import EXIT_USAGE, OllamactlError, PermissionDenied, UsageError
from ollamactl.units import (
    GRANTABLE_VERBS,
    INSTANCE_PATTERN,
    INSTANCE_RULES,
    check_group_name,
    check_unit_name,
    is_template,
    mangle_unit_name,
    template_instance,
)

#: Verbs a rule may grant (defined in units.py).  stop, kill, reload, set-property and the rest are never offered.
VERBS = GRANTABLE_VERBS
#: The verbs that start a unit that is not running (systemd's restart of an inactive unit starts it).
STARTING_VERBS = frozenset({"restart", "start", "reload-or-restart"})
#: The verb of TryRestartUnit: ``ollamactl restart``, the watchdog and the guard use only this one.
TRY_RESTART = "try-restart"
#: The verb of RestartUnit: ``ollamactl restart --start`` needs it (it starts a stopped unit).
RESTART = "restart"
DEFAULT_GROUP = "ollamactl"
DEFAULT_UNIT = "ollama.service"
#: The default grant: try-restart only.  systemd restarts the unit only if it is running (or starting);
#: for a stopped or failed unit it does nothing.  So a member can never start a unit an
#: admin stopped, even with busctl: polkit itself keeps "nobody fights the admin".  An admin who wants
#: members to be able to start it adds the verb restart: see ``install_command``.
DEFAULT_VERBS = (TRY_RESTART,)
ACTION = "org.freedesktop.systemd1.manage-units"
ETC_RULES = Path("/etc/polkit-1/rules.d")
PACKAGED_RULES = Path("/usr/share/polkit-1/rules.d")
#: polkitd reads both; for equal names the /etc file comes first, but both are applied.
RULES_DIRS = (ETC_RULES, PACKAGED_RULES)
PACKAGED_RULE = PACKAGED_RULES / "50-ollamactl.rules"
MARKER = "// ollamactl-grant: "


class PolicyWriteError(OllamactlError):
    """The rule could not be written; the old state is untouched (the write is atomic)."""

    exit_code = EXIT_USAGE
    kind = "policy-write"


class NotRoot(PermissionDenied):
    """Installing a rule needs root: it widens who may act on a system service."""

    kind = "not-root"


@dataclass(frozen=True)
class Grant:
    """Members of ``group`` may use ``verbs`` on ``unit``, and nothing else.

    ``unit`` may be a template (``ollama@.service``): the grant then covers its instances
    ``ollama@INSTANCE.service`` whose INSTANCE is in units.INSTANCE_PATTERN, and not the template.
    """

    group: str
    unit: str
    verbs: tuple[str, ...]

    @property
    def template(self) -> bool:
        """Does the grant name a template (and so cover its instances)?"""
        return is_template(self.unit)

    def covers(self, unit: str) -> bool:
        """Does the rule answer YES for ``unit`` (the primary name polkit sees)?  As the JavaScript does."""
        if self.template:
            return template_instance(self.unit, unit) is not None
        return unit == self.unit

    def what(self) -> str:
        """The units granted, in words: ``ollama.service`` or ``any instance of ollama@.service``."""
        return f"any instance of {self.unit}" if self.template else self.unit

    @property
    def can_start(self) -> bool:
        """Does the grant let members start the unit when it is not running (an admin stopped it)?"""
        return bool(STARTING_VERBS.intersection(self.verbs))

    def describe(self) -> str:
        """The grant in words, e.g. for ``policy show``."""
        verbs = " and ".join([", ".join(self.verbs[:-1]), self.verbs[-1]] if len(self.verbs) > 1 else self.verbs)
        return f"members of group {self.group} may {verbs} {self.what()}, and nothing else"


def install_command(group: str, unit: str = DEFAULT_UNIT, verbs: Iterable[str] = DEFAULT_VERBS) -> str:
    """The admin's command that installs the grant, e.g. for an error message or doctor's fix."""
    verbs = tuple(verbs)
    flags = "".join(f" --verb {v}" for v in verbs) if verbs != DEFAULT_VERBS else ""
    return f"sudo ollamactl policy install --group {group} --unit {unit}{flags}"


def start_grant_command(group: str, unit: str = DEFAULT_UNIT) -> str:
    """The command that lets members start a stopped unit too (``ollamactl restart --start``, RestartUnit)."""
    return install_command(group, unit, (RESTART, TRY_RESTART))


def make_grant(group: str, unit: str = DEFAULT_UNIT, verbs: Iterable[str] | None = None) -> Grant:
    """Validate each field and return the Grant; UsageError names the bad field.

    Why strict: the values end up inside JavaScript that polkitd runs as a
    privileged daemon, and a typo would silently grant nothing (or the wrong unit).
    """
    why = check_group_name(group)
    if why:
        raise UsageError(f"--group: {group!r} {why}", field="group")
    if not isinstance(unit, str):
        raise UsageError("--unit: must be a unit name such as ollama.service", field="unit")
    name = mangle_unit_name(unit.strip())
    why = check_unit_name(name, template_ok=True)
    if why:
        raise UsageError(f"--unit: {unit!r}: unit name {why}", field="unit")
    if name.endswith((".target", ".slice", ".scope", ".device")):
        raise UsageError(f"--unit: {name}: grant a service (or socket/timer/path) unit, not a {name.rsplit('.')[-1]}")
    chosen = list(DEFAULT_VERBS if verbs is None else verbs)
    if not chosen:
        raise UsageError(f"--verb: give at least one of {', '.join(VERBS)}", field="verbs")
    bad = [v for v in chosen if v not in VERBS]
    if bad:
        raise UsageError(
            f"--verb: {bad[0]!r} cannot be granted; choose from {', '.join(VERBS)} "
            "(stop, kill, reload, set-property and unit files are never granted)",
            field="verbs",
        )
    return Grant(group, name, tuple(v for v in VERBS if v in chosen))


def render(grant: Grant) -> str:
    """The polkit rule for grant: ECMAScript 5 (polkitd 0.106+ with duktape or mozjs)."""
    meta = json.dumps({"group": grant.group, "unit": grant.unit, "verbs": list(grant.verbs)}, ensure_ascii=True)
    # json.dumps of a str is a valid ES5 string literal (ASCII, escaped quotes and backslashes).
    group, unit = json.dumps(grant.group), json.dumps(grant.unit)
    verbs = ", ".join(json.dumps(v) for v in grant.verbs)
    others = ", ".join(
        v for v in ("restart", "start", "stop", "reload", "kill", "set-property") if v not in grant.verbs
    )
    if grant.can_start:
        starts = "// These verbs start the unit if it is not running, even if an admin stopped it.\n"
    else:
        starts = (
            "// try-restart restarts the unit only while it runs: a unit that is stopped\n"
            "// (an admin stopped it) or failed stays as it is.\n"
        )
    if grant.template:
        return _render_template(grant, meta, group, verbs, others, starts)
    return f"""\
// ollamactl: {grant.describe()}.
{MARKER}{meta}
//
// systemd asks polkit for action {ACTION} with
// the details "unit" (the primary unit name, after alias resolution) and
// "verb". This rule answers YES only for the verbs above on that one unit;
// {others}, other units and unit files fall through
// to the default policy (admin authentication). Written by `ollamactl policy
// render`; ECMAScript 5 only, since polkitd runs rules in duktape or mozjs.
{starts}polkit.addRule(function (action, subject) {{
    if (action.id !== "{ACTION}") {{
        return polkit.Result.NOT_HANDLED;
    }}
    if (!subject.isInGroup({group})) {{
        return polkit.Result.NOT_HANDLED;
    }}
    var verbs = [{verbs}];
    if (action.lookup("unit") === {unit} && verbs.indexOf(action.lookup("verb")) >= 0) {{
        return polkit.Result.YES;
    }}
    return polkit.Result.NOT_HANDLED;
}});
"""


def _render_template(grant: Grant, meta: str, group: str, verbs: str, others: str, starts: str) -> str:
    """The rule of a template grant: the instances PREFIX@INSTANCE.TYPE, INSTANCE in units.INSTANCE_PATTERN.

    The prefix and suffix are compared as strings (no regex escaping of the unit name); only the
    instance goes through the regex, the same text Python's ``units.template_instance`` uses.
    """
    head, _, suffix = grant.unit.partition("@")
    shape = f"{head}@INSTANCE{suffix}"
    prefix_js, suffix_js = json.dumps(head + "@"), json.dumps(suffix)
    return f"""\
// ollamactl: {grant.describe()}.
{MARKER}{meta}
//
// systemd asks polkit for action {ACTION} with
// the details "unit" (the primary unit name, after alias resolution) and
// "verb". This rule answers YES only for the verbs above on the instances
// of one template: "unit" must be {shape}, INSTANCE being
// {INSTANCE_RULES}.
// The template itself, other templates and their instances, other units,
// {others} and unit files fall through
// to the default policy (admin authentication). Written by `ollamactl policy
// render`; ECMAScript 5 only, since polkitd runs rules in duktape or mozjs.
{starts}polkit.addRule(function (action, subject) {{
    if (action.id !== "{ACTION}") {{
        return polkit.Result.NOT_HANDLED;
    }}
    if (!subject.isInGroup({group})) {{
        return polkit.Result.NOT_HANDLED;
    }}
    var verbs = [{verbs}];
    var unit = action.lookup("unit");
    var prefix = {prefix_js};
    var suffix = {suffix_js};
    if (typeof unit !== "string" || unit.length <= prefix.length + suffix.length) {{
        return polkit.Result.NOT_HANDLED;
    }}
    if (unit.substring(0, prefix.length) !== prefix || unit.substring(unit.length - suffix.length) !== suffix) {{
        return polkit.Result.NOT_HANDLED;
    }}
    var instance = unit.substring(prefix.length, unit.length - suffix.length);
    if (/^{INSTANCE_PATTERN}$/.test(instance) && verbs.indexOf(action.lookup("verb")) >= 0) {{
        return polkit.Result.YES;
    }}
    return polkit.Result.NOT_HANDLED;
}});
"""


def parse(text: str) -> tuple[Grant | None, bool]:
    """(grant, pristine) from a rule file's text; grant is None if it is not one of ours.

    pristine is False when the body differs from what render() gives for the
    marker's grant, i.e. someone edited it and it may grant something else.
    Never raises: any text is either one of our grants or not.
    """
    for line in text.splitlines()[:5]:
        if line.startswith(MARKER):
            try:
                meta = json.loads(line[len(MARKER) :])
                grant = make_grant(meta["group"], meta["unit"], meta["verbs"])
            except (ValueError, KeyError, TypeError, UsageError, RecursionError):
                return None, False
            return grant, render(grant) == text
    return None, False


@dataclass(frozen=True)
class RuleFile:
    """One .rules file as polkitd would see it."""

    path: Path
    grant: Grant | None  # None: not written by ollamactl (or unreadable)
    pristine: bool
    mode: int
    error: str | None = None  # why we could not read it

    @property
    def polkitd_can_read(self) -> bool:
        """polkitd runs as its own user: the file must be world-readable (0644)."""
        return bool(self.mode & stat.S_IROTH)


@dataclass(frozen=True)
class Scan:
    """What ``scan()`` found: our rules, other rules mentioning systemd, unreadable dirs."""

    ours: list[RuleFile]
    foreign: list[Path]
    unreadable_dirs: dict[Path, str]

    def granting(self, group: str, unit: str, verb: str = TRY_RESTART) -> list[RuleFile]:
        """Our readable, unedited rules that let ``group`` use ``verb`` on ``unit`` (or its template)."""
        return [
            r
            for r in self.ours
            if r.grant and r.pristine and r.grant.group == group and r.grant.covers(unit) and verb in r.grant.verbs
        ]


def scan(dirs: Sequence[Path] = RULES_DIRS) -> Scan:
    """Read every .rules file in polkit's directories that we are allowed to read."""
    ours: list[RuleFile] = []
    foreign: list[Path] = []
    unreadable: dict[Path, str] = {}
    for d in dirs:
        try:
            names = sorted(n for n in os.listdir(d) if n.endswith(".rules"))
        except FileNotFoundError:
            continue
        except OSError as exc:
            unreadable[d] = exc.strerror or str(exc)
            continue
        for name in names:
            path = d / name
            try:
                mode = os.stat(path).st_mode
                with open(path, encoding="utf-8", errors="replace") as fh:
                    text = fh.read(1 << 20)
            except OSError as exc:
                ours.append(RuleFile(path, None, False, 0, exc.strerror or str(exc)))
                continue
            grant, pristine = parse(text)
            if grant is not None or MARKER.strip() in text:
                ours.append(RuleFile(path, grant, pristine, mode))
            elif "org.freedesktop.systemd1" in text:
                foreign.append(path)
    return Scan(ours, foreign, unreadable)


def default_file_name(grant: Grant) -> str:
    """50-ollamactl-GROUP-UNIT.rules: one file per grant, so several can coexist."""
    unit = re.sub(r"[^A-Za-z0-9_.@:-]", "_", grant.unit)
    return f"50-ollamactl-{grant.group}-{unit}.rules"


def install(grant: Grant, directory: Path = ETC_RULES, name: str | None = None) -> Path:
    """Write the rule for grant atomically (temp file, fsync, rename); return its path.

    Root only.  polkitd notices the new file by itself (inotify) and ignores the
    temporary one, whose name does not end in .rules.  A file of the same name
    that ollamactl did not write is never overwritten.
    """
    name = name or default_file_name(grant)
    if "/" in name or not name.endswith(".rules") or name.startswith("."):
        raise UsageError(f"--name: {name!r} must be a file name ending in .rules (no directory)", field="name")
    if os.geteuid() != 0:
        raise NotRoot(f"installing a polkit rule needs root: {install_command(grant.group, grant.unit, grant.verbs)}")
    target = directory / name
    try:
        with open(target, encoding="utf-8", errors="replace") as fh:
            existing = fh.read(1 << 20)
    except FileNotFoundError:
        existing = None
    except OSError as exc:
        raise PolicyWriteError(f"cannot read {target}: {exc.strerror}; nothing was written", path=str(target)) from None
    if existing is not None and MARKER.strip() not in existing:
        raise PolicyWriteError(
            f"{target} exists and was not written by ollamactl; nothing was written: choose another --name",
            path=str(target),
        )
    text = render(grant).encode()
    tmp = directory / f".{name}.{os.getpid()}.tmp"
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.fchmod(fd, 0o644)  # whatever the umask: polkitd reads it as its own user
            os.write(fd, text)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        except OSError as cleanup:
            raise PolicyWriteError(
                f"cannot write {target}: {exc.strerror}; also could not remove {tmp}: {cleanup.strerror}",
                path=str(target),
            ) from None
        raise PolicyWriteError(
            f"cannot write {target}: {exc.strerror}; nothing was changed", path=str(target)
        ) from None
    return target


def polkit_version_supports_rules(version: str) -> bool:
    """polkit 0.106 introduced JavaScript rules; 0.105 (Ubuntu 22.04) has .pkla files only."""
    nums = [int(x) for x in re.findall(r"\d+", version)[:2]]
    if not nums:
        return False
    if nums[0] > 0:  # 121, 122, 126 ... (versions dropped the "0." in 2022)
        return True
    return len(nums) > 1 and nums[1] >= 106


#: try-restart, like the polkit grant: members restart a running unit and never start a stopped one.
SUDOERS_FALLBACK = (
    "echo '%{group} ALL=(root) NOPASSWD: /usr/bin/systemctl try-restart {unit}' "
    "| sudo tee /etc/sudoers.d/ollamactl && sudo chmod 0440 /etc/sudoers.d/ollamactl"
)
