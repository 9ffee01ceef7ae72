"""Admin-facing subcommands (``policy``, ``doctor``, ``setup``): their handlers (cli.COMMANDS declares them).

Imported on every CLI run, so only argparse (and the tiny errors and units
modules) at module level; each handler imports what it needs.
"""

from __future__ import annotations

import argparse
from typing import Any

from ollamactl.errors import EXIT_DOCTOR

BUS_TIMEOUT = 10.0  # seconds for the alias look-up (config's bus_timeout default; policy reads no config)


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


def _grant_primary(grant: Any) -> str:
    """What to compare the grant's unit with: its primary name.

    A template cannot be loaded (LoadUnit: "missing the instance name"), so
    one instance is asked about; if ollama@.service is itself an alias (of
    x@.service), that instance loads as x@ollamactl-probe.service and the
    answer is x@.service.
    """
    if not grant.template:
        return _primary(grant.unit)
    head, _, suffix = grant.unit.partition("@")
    primary = _primary(f"{head}@ollamactl-probe{suffix}")
    p_head, at, rest = primary.partition("@")
    return f"{p_head}@{suffix}" if at and rest == f"ollamactl-probe{suffix}" else primary


def _cmd_policy_render(args: argparse.Namespace, as_json: bool) -> int:
    import sys

    from ollamactl import policy
    from ollamactl.errors import BusUnavailable, TimedOut
    from ollamactl.output import emit, say

    grant = _grant(args)
    note = None
    if not args.offline:
        try:
            refuse_alias(grant.unit, _grant_primary(grant))
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
    import os

    from ollamactl import nss, policy
    from ollamactl.errors import BusUnavailable, TimedOut
    from ollamactl.output import emit

    grant = _grant(args)
    if not args.offline and os.geteuid() == 0:  # not root: policy.install says so, with the command
        try:
            refuse_alias(grant.unit, _grant_primary(grant))
        except (BusUnavailable, TimedOut) as err:
            raise type(err)(
                f"{err.message}; to install without checking whether {grant.unit} is an alias, add --offline",
                **err.details,
            ) from None
    path = policy.install(grant, name=args.name)
    note = None
    if nss.group_id(grant.group) is None:
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
    import stat

    from ollamactl import nss, policy
    from ollamactl.output import emit

    scan = policy.scan()
    rules = []
    for r in scan.ours:
        members = nss.members(r.grant.group) if r.grant is not None else None
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
    from ollamactl.config import load_config
    from ollamactl.errors import ConfigError
    from ollamactl.output import emit

    flags = {"unit": "--unit", "url": "--url"}
    settings = {k: getattr(args, k, None) for k in flags}
    try:
        config, error = load_config(settings, config_file=getattr(args, "config", None), labels=flags), None
    except ConfigError as err:
        config, error = None, err
    report = doctor.run(config, error, user=args.user)
    emit(report.to_dict(), as_json, doctor.text)
    return 0 if report.ok else EXIT_DOCTOR


def _cmd_setup(args: argparse.Namespace, as_json: bool) -> int:
    from ollamactl import hostsetup
    from ollamactl.output import emit

    layout = hostsetup.Layout(unit=getattr(args, "unit", None) or hostsetup.Layout.unit)
    run = hostsetup.undo if args.undo else hostsetup.setup
    steps = run(layout, dry_run=args.dry_run)
    payload = {
        "ok": True,
        "undo": bool(args.undo),
        "dry_run": bool(args.dry_run),
        "steps": [s.to_dict() for s in steps],
    }

    def text(p: dict[str, Any]) -> str:
        lines = [f"{s['action']:>9}  {s['path']}  ({s['what']})" for s in p["steps"]]
        if p["dry_run"]:
            lines.append("dry run: nothing was changed")
        elif not p["undo"]:
            lines.append(hostsetup.NEXT_STEPS)
        else:
            lines.append(f"group and user {hostsetup.GROUP} were kept (groupdel/userdel remove them)")
        return "\n".join(lines)

    emit(payload, as_json, text)
    return 0
