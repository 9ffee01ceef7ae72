"""Admin-facing subcommands (``policy``, ``doctor``); registered by cli.build_parser.

Imported on every CLI run, so only argparse at module level; each handler
imports what it needs.
"""

from __future__ import annotations

import argparse
from typing import Any

from ollamactl.errors import EXIT_DOCTOR

VERB_CHOICES = ("restart", "try-restart", "start", "reload-or-restart")  # == policy.VERBS (unit-tested)
BUS_TIMEOUT = 10.0  # seconds for the alias look-up (config's bus_timeout default; policy reads no config)


def add_parsers(sub: Any, common: argparse.ArgumentParser, *, epilog: str) -> None:
    """Register the admin subcommands on ``sub`` (argparse subparsers)."""
    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "policy",
        parents=[common],
        help="show, render or install the polkit rule that grants restarts",
        description="The polkit rule that lets one group restart one unit. "
        "show: the grant in force; render: print a rule; install: write it to /etc/polkit-1/rules.d (root). "
        "The default grant is try-restart only: members restart the unit while it runs and can never start it "
        "once an admin stopped it (not even with busctl). To let them start it too (ollamactl restart --start), "
        "grant restart as well: sudo ollamactl policy install --group ollamactl --verb restart --verb try-restart.",
        epilog=epilog,
        formatter_class=raw,
    )
    psub = p.add_subparsers(dest="policy_command", metavar="ACTION", parser_class=type(p))
    psub.required = True

    s = psub.add_parser(
        "show",
        parents=[common],
        help="describe the grant in force: group, unit, verbs, file",
        description="Describe every polkit rule written by ollamactl (in /etc/polkit-1/rules.d and "
        "/usr/share/polkit-1/rules.d): who may do what to which unit, and from which file.",
        epilog=epilog,
        formatter_class=raw,
    )
    s.set_defaults(handler=_cmd_policy_show)

    for name, help_, desc, handler in (
        (
            "render",
            "print a polkit rule for a group and unit",
            "Print an ECMAScript 5 polkit rule that lets members of GROUP use the given verbs on UNIT "
            "(default ollama.service), and nothing else.",
            _cmd_policy_render,
        ),
        (
            "install",
            "write that rule to /etc/polkit-1/rules.d (root only)",
            "Write the rule that render prints to /etc/polkit-1/rules.d atomically (mode 0644); polkitd "
            "picks it up at once. For installs without the Debian package, e.g. with pipx.",
            _cmd_policy_install,
        ),
    ):
        r = psub.add_parser(name, parents=[common], help=help_, description=desc, epilog=epilog, formatter_class=raw)
        r.add_argument("--group", required=True, metavar="GROUP", help="the group whose members get the grant")
        r.add_argument(
            "--verb",
            dest="verbs",
            action="append",
            choices=VERB_CHOICES,
            metavar="VERB",
            help=f"a verb to grant, repeatable: {', '.join(VERB_CHOICES)} (default: try-restart only, which never "
            "starts a stopped unit; restart, start and reload-or-restart also start it, e.g. for "
            "ollamactl restart --start, which needs restart)",
        )
        r.add_argument(
            "--offline",
            action="store_true",
            help="do not ask systemd whether UNIT is an alias (polkit sees the primary name, so a rule for an "
            "alias grants nothing); by default an alias is refused with its primary name",
        )
        if name == "install":
            r.add_argument(
                "--name",
                metavar="FILE",
                help="file name in /etc/polkit-1/rules.d (default: 50-ollamactl-GROUP-UNIT.rules)",
            )
        r.set_defaults(handler=handler)

    d = sub.add_parser(
        "doctor",
        parents=[common],
        help="check why you may or may not restart Ollama, and print the fix",
        description="Check, for the calling user, everything a restart depends on: the system bus, the unit, "
        "group membership (through NSS, as polkit sees it), the polkit rule and polkitd's version, polkit's own "
        "verdict (CheckAuthorization, without side effects), /run/ollamactl, the config and Ollama's API. "
        f"Each failed check prints the command that fixes it; exits {EXIT_DOCTOR} if any check failed.",
        epilog=epilog,
        formatter_class=raw,
    )
    d.add_argument(
        "--user",
        metavar="USER",
        help="check for USER instead of yourself (root only); polkit's verdict is then asked about one of "
        "USER's running processes",
    )
    d.set_defaults(handler=_cmd_doctor)


def _grant(args: argparse.Namespace) -> Any:
    from ollamactl import policy

    return policy.make_grant(args.group, getattr(args, "unit", policy.DEFAULT_UNIT), args.verbs)


def refuse_alias(unit: str, primary: str) -> None:
    """Raise UsageError if ``unit`` is an alias: systemd gives polkit the primary name, so the rule would not match."""
    from ollamactl.errors import UsageError

    if primary != unit:
        raise UsageError(
            f"{unit} is an alias of {primary}; polkit checks the primary name: use --unit {primary}",
            field="unit",
            unit=unit,
            primary=primary,
        )


def _primary(unit: str) -> str:
    """The unit's primary name, from systemd over the system bus."""
    import asyncio

    from ollamactl import systemd

    return asyncio.run(systemd.primary_unit_name(unit, call_timeout=BUS_TIMEOUT))


def _cmd_policy_render(args: argparse.Namespace, as_json: bool) -> int:
    import sys

    from ollamactl import policy
    from ollamactl.cli import emit, say
    from ollamactl.errors import BusUnavailable, TimedOut

    grant = _grant(args)
    note = None
    if not args.offline:
        try:
            refuse_alias(grant.unit, _primary(grant.unit))
        except (BusUnavailable, TimedOut) as err:  # no systemd to ask (a build root): the rule as typed
            note = f"could not ask systemd whether {grant.unit} is an alias ({err.message}); rendered as typed"
    rule = policy.render(grant)
    payload = {"ok": True, "group": grant.group, "unit": grant.unit, "verbs": list(grant.verbs), "rule": rule}
    if note:
        payload["note"] = note
        if not as_json:
            say(f"ollamactl: note: {note}", file=sys.stderr)
    emit(payload, as_json, lambda p: p["rule"].rstrip("\n"))
    return 0


def _cmd_policy_install(args: argparse.Namespace, as_json: bool) -> int:
    import grp
    import os

    from ollamactl import policy
    from ollamactl.cli import emit
    from ollamactl.errors import BusUnavailable, TimedOut

    grant = _grant(args)
    if not args.offline and os.geteuid() == 0:  # not root: policy.install says so, with the command
        try:
            refuse_alias(grant.unit, _primary(grant.unit))
        except (BusUnavailable, TimedOut) as err:
            raise type(err)(
                f"{err.message}; to install without checking whether {grant.unit} is an alias, add --offline",
                **err.details,
            ) from None
    path = policy.install(grant, name=args.name)
    try:
        grp.getgrnam(grant.group)
        note = None
    except KeyError:
        note = f"group {grant.group} does not exist yet: sudo groupadd --system {grant.group}"
    payload = {
        "ok": True,
        "path": str(path),
        "group": grant.group,
        "unit": grant.unit,
        "verbs": list(grant.verbs),
        "note": note,
    }

    def text(p: dict[str, Any]) -> str:
        out = f"installed {p['path']}: {grant.describe()}"
        return out + (f"\nnote: {p['note']}" if p["note"] else "")

    emit(payload, as_json, text)
    return 0


def _cmd_policy_show(args: argparse.Namespace, as_json: bool) -> int:
    import grp
    import pwd
    import stat

    from ollamactl import policy
    from ollamactl.cli import emit

    scan = policy.scan()
    rules = []
    for r in scan.ours:
        members: list[str] | None = None
        if r.grant is not None:
            try:
                g = grp.getgrnam(r.grant.group)
                primary = [p.pw_name for p in pwd.getpwall() if p.pw_gid == g.gr_gid]
                members = sorted(set(g.gr_mem) | set(primary))
            except KeyError:
                members = None
        rules.append(
            {
                "path": str(r.path),
                "group": r.grant.group if r.grant else None,
                "unit": r.grant.unit if r.grant else None,
                "verbs": list(r.grant.verbs) if r.grant else None,
                "edited": r.grant is not None and not r.pristine,
                "mode": f"{stat.S_IMODE(r.mode):04o}" if r.mode else None,
                "polkitd_can_read": r.polkitd_can_read,
                "group_members": members,
                "error": r.error,
            }
        )
    payload = {
        "ok": True,
        "rules": rules,
        "other_rules_mentioning_systemd": [str(p) for p in scan.foreign],
        "unreadable_dirs": {str(k): v for k, v in scan.unreadable_dirs.items()},
    }
    emit(payload, as_json, _show_text)
    return 0


def _show_text(p: dict[str, Any]) -> str:
    lines = []
    if not p["rules"] and p["unreadable_dirs"]:
        lines.append("polkitd lets only root read its rules here: sudo ollamactl policy show")
    elif not p["rules"]:
        lines.append("no ollamactl polkit rule is installed, so nobody may restart anything without sudo")
        lines.append("  fix: sudo ollamactl policy install --group ollamactl")
    for r in p["rules"]:
        lines.append(r["path"] + (f" (mode {r['mode']})" if r["mode"] else ""))
        if r["error"]:
            lines.append(f"  cannot read it: {r['error']}")
            continue
        if r["group"] is None:
            lines.append("  has an ollamactl marker that cannot be parsed; what it grants cannot be told")
            continue
        lines.append(f"  group: {r['group']}")
        lines.append(f"  unit:  {r['unit']}")
        lines.append(f"  verbs: {', '.join(r['verbs'])} (nothing else: no stop, kill, set-property, unit files)")
        if not set(r["verbs"]) & {"restart", "start", "reload-or-restart"}:
            lines.append(f"  a stopped {r['unit']} stays stopped: members cannot start it (grant restart to allow it)")
        if r["group_members"] is None:
            lines.append(f"  members: none; group {r['group']} does not exist")
        else:
            lines.append(f"  members: {', '.join(r['group_members']) or '(none)'}")
        if r["edited"]:
            lines.append("  WARNING: edited by hand after ollamactl wrote it; it may grant something else")
        if not r["polkitd_can_read"]:
            lines.append(f"  WARNING: polkitd cannot read it; fix: sudo chmod 0644 {r['path']}")
    for path in p["other_rules_mentioning_systemd"]:
        lines.append(f"{path}: not ours, mentions systemd; polkit applies it too (read it)")
    for d, why in p["unreadable_dirs"].items():
        lines.append(f"{d}: cannot list it as this user ({why}); run as root to see rules there")
    return "\n".join(lines)


def _cmd_doctor(args: argparse.Namespace, as_json: bool) -> int:
    from ollamactl import doctor
    from ollamactl.cli import emit
    from ollamactl.config import load_config
    from ollamactl.errors import ConfigError

    flags = {"unit": "--unit", "url": "--url"}
    settings = {k: getattr(args, k, None) for k in flags}
    try:
        config, error = load_config(settings, config_file=getattr(args, "config", None), labels=flags), None
    except ConfigError as err:
        config, error = None, err
    report = doctor.run(config, error, user=args.user)
    emit(report.to_dict(), as_json, doctor.text)
    return 0 if report.ok else EXIT_DOCTOR
