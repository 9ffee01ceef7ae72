"""The harm bed's restart count reads only this unit's InvocationIDs (entries as journald wrote them on sid)."""

from __future__ import annotations

from bench.harm_bed import UNIT, _invocation

OWN = {"_SYSTEMD_UNIT": UNIT, "_SYSTEMD_INVOCATION_ID": "ece99c1e", "_PID": "156", "MESSAGE": "after"}
PID1 = {"_SYSTEMD_UNIT": "init.scope", "UNIT": UNIT, "INVOCATION_ID": "ece99c1e", "_PID": "1"}
SUPPRESSED = {  # journald's own entry, shown by journalctl -u when the unit exceeds the rate limit
    "MESSAGE": f"Suppressed 63 messages from {UNIT}",
    "_SYSTEMD_UNIT": "systemd-journald.service",
    "_SYSTEMD_INVOCATION_ID": "44a8ae72",
    "OBJECT_SYSTEMD_UNIT": UNIT,
    "OBJECT_SYSTEMD_INVOCATION_ID": "ece99c1e",
}


def test_each_entry_names_the_units_invocation_not_its_writers():
    assert [_invocation(e) for e in (OWN, PID1, SUPPRESSED)] == ["ece99c1e"] * 3


def test_entries_about_other_units_name_none():
    other = {"_SYSTEMD_UNIT": "init.scope", "UNIT": "flood.service", "INVOCATION_ID": "910291ec", "_PID": "1"}
    assert _invocation(other) is None and _invocation({"MESSAGE": "x"}) is None
