#!/usr/bin/env python3
"""Build ollamactl's .deb inside a clean bookworm root, and lint it there.

Why a separate root: packages on the build host (a newer setuptools, a pip-installed
dbus-next) must not leak into the package, and CI machines differ.  The root is the
test bed's cached debootstrap tree plus the packaging toolchain (testbed.BUILD_PACKAGES),
built once and keyed by suite + package list.  Each build runs in a throwaway overlay
over it, without network, as ``dpkg-buildpackage -us -uc -b``; lintian runs in the same
root.  Results are cached by a hash of the sources that go into the package, so the
end-to-end suite can call build() on every run for free.

    python3 tests/debbuild.py [--out dist] [--version 0.0.9-1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make "tests" importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import testbed

REPO = testbed.REPO_ROOT
#: What goes into the source package (besides packaging/debian, copied to debian/).
SOURCES = ("pyproject.toml", "README.md", "SECURITY.md", "ollamactl", "packaging")
DEBS = testbed.CACHE_DIR / "debs"
LINTIAN = ["lintian", "--info", "--pedantic", "--display-experimental", "--tag-display-limit", "0"]


@dataclass(frozen=True)
class Build:
    """A built package: the .deb, lintian's report and how long the build took."""

    deb: Path
    lintian: str
    version: str
    seconds: float

    def lintian_counts(self) -> dict[str, int]:
        """Number of tags per severity letter (E, W, I, P, X, O)."""
        counts: dict[str, int] = {}
        for line in self.lintian.splitlines():
            m = re.match(r"^([EWIPXO]): ", line)
            if m:
                counts[m.group(1)] = counts.get(m.group(1), 0) + 1
        return counts


def _files() -> list[Path]:
    out = []
    for rel in SOURCES:
        p = REPO / rel
        if p.is_file():
            out.append(p)
            continue
        for f in sorted(p.rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts and not f.name.endswith(".pyc"):
                out.append(f)
    return out


def changelog_version() -> str:
    """The version in packaging/debian/changelog's top entry, e.g. 0.1.0-1."""
    first = (REPO / "packaging/debian/changelog").read_text().splitlines()[0]
    m = re.match(r"^\S+ \(([^)]+)\)", first)
    if not m:
        raise testbed.TestbedError(f"cannot read the version from packaging/debian/changelog: {first!r}")
    return m.group(1)


def _source_hash(version: str | None, root_key: str) -> str:
    h = hashlib.sha256(json.dumps({"version": version, "root": root_key}).encode())
    for f in _files():
        h.update(str(f.relative_to(REPO)).encode() + b"\0")
        h.update(f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build(version: str | None = None, log: testbed.Log = print) -> Build:
    """Build (or reuse) the .deb; ``version`` rewrites the changelog and __version__ in the copy.

    Raises TestbedError with the build log tail if dpkg-buildpackage or lintian fails.
    """
    testbed._require_root()
    testbed._require_tools("unshare", "chroot", "mount")
    root = testbed.base_rootfs(testbed.BUILD_SUITE, log=log, extra=testbed.BUILD_PACKAGES)
    key = _source_hash(version, root.name)
    cached = DEBS / key
    meta = cached / "build.json"
    if meta.exists():
        m = json.loads(meta.read_text())
        return Build(cached / m["deb"], (cached / "lintian.txt").read_text(), m["version"], m["seconds"])
    t0 = time.monotonic()
    run_dir = testbed.CACHE_DIR / "run" / f"debbuild-{secrets.token_hex(3)}"
    run_dir.mkdir(parents=True)
    merged = run_dir / "merged"
    try:
        for d in ("upper", "work", "merged"):
            (run_dir / d).mkdir()
        opts = f"lowerdir={root},upperdir={run_dir / 'upper'},workdir={run_dir / 'work'}"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], check=True, capture_output=True)
        src = merged / "build" / "ollamactl"
        for f in _files():
            dest = src / f.relative_to(REPO)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest)
        shutil.copytree(REPO / "packaging" / "debian", src / "debian")
        if version:
            _set_version(src, version)
        pkg_version = _read_version(src / "debian" / "changelog")
        env = {"SOURCE_DATE_EPOCH": _changelog_epoch(src / "debian" / "changelog")}
        try:
            r = testbed.isolated(
                merged, ["dpkg-buildpackage", "-us", "-uc", "-b"], cwd="/build/ollamactl", env=env, timeout=900
            )
        except testbed.CommandError as e:
            out = e.result.stdout + e.result.stderr
            raise testbed.TestbedError(f"dpkg-buildpackage failed:\n{out[-6000:]}") from None
        build_log = r.stdout + r.stderr
        (deb_path,) = (merged / "build").glob("ollamactl_*_all.deb")
        lint = testbed.isolated(merged, [*LINTIAN, f"/build/{deb_path.name}"], timeout=600)
        tmp = DEBS / f".{key}.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.copy2(deb_path, tmp / deb_path.name)
        (tmp / "lintian.txt").write_text(lint.stdout)
        (tmp / "build.log").write_text(build_log)
        seconds = round(time.monotonic() - t0, 1)
        (tmp / "build.json").write_text(json.dumps({"deb": deb_path.name, "version": pkg_version, "seconds": seconds}))
        shutil.rmtree(cached, ignore_errors=True)
        os.rename(tmp, cached)
    finally:
        testbed._remove_tree(run_dir)
    log(f"debbuild: built {cached / deb_path.name} in {seconds:.0f} s")
    return Build(cached / deb_path.name, lint.stdout, pkg_version, seconds)


def _read_version(changelog: Path) -> str:
    return re.match(r"^\S+ \(([^)]+)\)", changelog.read_text()).group(1)  # type: ignore[union-attr]


def _changelog_epoch(changelog: Path) -> str:
    from email.utils import parsedate_to_datetime

    for line in changelog.read_text().splitlines():
        if line.startswith(" -- "):
            return str(int(parsedate_to_datetime(line.split(">", 1)[1].strip()).timestamp()))
    return "0"


def _set_version(src: Path, version: str) -> None:
    """Make the build copy an older (or other) release: changelog entry and __version__."""
    if not re.fullmatch(r"[0-9][A-Za-z0-9.+~]*-[A-Za-z0-9.+~]+", version):
        raise ValueError(f"bad Debian version {version!r}")
    changelog = src / "debian" / "changelog"
    text = changelog.read_text()
    entry = (
        f"ollamactl ({version}) unstable; urgency=medium\n\n"
        "  * Test build of an older release (tests/debbuild.py --version).\n\n"
        + text.splitlines(keepends=True)[-1]
        + "\n"
    )
    changelog.write_text(entry)
    init = src / "ollamactl" / "__init__.py"
    upstream = version.rsplit("-", 1)[0]
    init.write_text(re.sub(r'__version__ = "[^"]*"', f'__version__ = "{upstream}"', init.read_text()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "dist", help="where to put the .deb (default: dist/)")
    p.add_argument("--version", help="build as this Debian version instead (e.g. 0.0.9-1, for upgrade tests)")
    a = p.parse_args(argv)
    try:
        b = build(a.version, log=lambda m: print(m, file=sys.stderr))
    except testbed.TestbedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    a.out.mkdir(parents=True, exist_ok=True)
    dest = a.out / b.deb.name
    shutil.copy2(b.deb, dest)
    (a.out / "lintian.txt").write_text(b.lintian)
    counts = b.lintian_counts()
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no tags"
    print(f"{dest} ({dest.stat().st_size} bytes); lintian: {summary} (dist/lintian.txt)")
    if counts.get("E") or counts.get("W"):
        print(b.lintian, file=sys.stderr)
        print("error: lintian reports errors or warnings", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
