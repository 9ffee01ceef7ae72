"""The test bed's Debian mirror (tests/testbed.py host_mirror): the setting first, then the host's apt
sources, and with neither a one-line error that names the setting, never a guessed mirror."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import testbed


def _apt(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        f = tmp_path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return tmp_path


def test_the_setting_is_honoured_first(tmp_path: Path) -> None:
    apt = _apt(tmp_path, {"sources.list": "deb http://ftp.example.org/debian bookworm main\n"})
    env = {testbed.MIRROR_ENV: "http://mirror.local/debian/"}
    assert testbed.host_mirror(apt, env) == "http://mirror.local/debian"


def test_a_setting_that_is_no_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(testbed.TestbedError, match=testbed.MIRROR_ENV):
        testbed.host_mirror(tmp_path, {testbed.MIRROR_ENV: "deb.debian.org"})


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"sources.list": "deb [arch=amd64] http://ftp.example.org/debian/ bookworm main\n"},
            "http://ftp.example.org/debian",
        ),
        (
            {
                "sources.list.d/debian.sources": (
                    "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\n"
                    "URIs: http://deb.example.net/debian\nSuites: bookworm\nComponents: main\n\n"
                    "Types: deb\nURIs: http://deb.example.net/debian-security\nSuites: bookworm-security\n"
                )
            },
            "http://deb.example.net/debian",
        ),
    ],
    ids=["one-line", "deb822"],
)
def test_the_hosts_apt_mirror_is_used(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    assert testbed.host_mirror(_apt(tmp_path, files), {}) == expected


@pytest.mark.parametrize(
    "files",
    [
        {},  # no apt configuration at all (a container, a non-Debian host)
        {"sources.list": "# deb http://deb.debian.org/debian bookworm main\n"},  # only a comment
        {"sources.list.d/ubuntu.sources": "Types: deb\nURIs: http://archive.ubuntu.com/ubuntu\nSuites: noble\n"},
    ],
    ids=["none", "commented-out", "not-debian"],
)
def test_no_mirror_is_a_one_line_error_naming_the_setting(tmp_path: Path, files: dict[str, str]) -> None:
    with pytest.raises(testbed.TestbedError) as e:
        testbed.host_mirror(_apt(tmp_path, files), {})
    message = str(e.value)
    assert "\n" not in message, message
    assert testbed.MIRROR_ENV in message, message
    assert str(tmp_path) in message, message  # where it looked


def test_base_rootfs_fails_before_creating_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No half-made build directory is left behind by a missing mirror."""
    monkeypatch.setattr(testbed, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(testbed, "_require_root", lambda: None)
    monkeypatch.setattr(testbed, "_require_tools", lambda *tools: None)
    monkeypatch.setattr(testbed, "host_mirror", lambda: (_ for _ in ()).throw(testbed.TestbedError("no mirror")))
    with pytest.raises(testbed.TestbedError, match="no mirror"):
        testbed.base_rootfs("sid")
    assert not (tmp_path / "cache").exists()
