"""Many Ollama instances on one host: the config's [instances.NAME] tables, and each unit's own OLLAMA_HOST."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from ollamactl import unitenv
from ollamactl.config import Instance, load_config
from ollamactl.errors import ConfigError
from ollamactl.probe import server_url

# -- OLLAMA_HOST as the server reads it (envconfig.Var trims spaces and quotes; envconfig.Host), made reachable --


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("", "http://127.0.0.1:11434"),  # the default
        ("127.0.0.1:11501", "http://127.0.0.1:11501"),
        ('"127.0.0.1:11501"', "http://127.0.0.1:11501"),  # quotes trimmed
        (" '10.0.0.5:7' ", "http://10.0.0.5:7"),
        ("0.0.0.0", "http://127.0.0.1:11434"),  # every interface: reached through loopback; bare host: 11434
        ("0.0.0.0:11502", "http://127.0.0.1:11502"),
        (":11500", "http://127.0.0.1:11500"),  # no host: every interface
        ("::", "http://[::1]:11434"),
        ("[::]:11503", "http://[::1]:11503"),
        ("gpu-box", "http://gpu-box:11434"),  # a bare host gets 11434
        ("http://gpu-box", "http://gpu-box:80"),  # http:// without a port is 80
        ("https://gpu-box", "https://gpu-box:443"),
        ("http://0.0.0.0:8080/ollama", "http://127.0.0.1:8080/ollama"),
        ("127.0.0.1:99999", "http://127.0.0.1:11434"),  # a bad port: Ollama falls back to the default
    ],
)
def test_ollama_host_as_the_server_listens_on_it(value, url):
    assert server_url(value) == url


# -- environment files, as systemd reads them ---------------------------------------------------------------------


def test_environment_file_syntax():
    text = (
        "# comment\n; also a comment\n\nOLLAMA_HOST = 127.0.0.1:11501  \nexport A=1\nQ='lit $x \\\\n'\n"
        'D="say \\"hi\\"\\\\"\nC=one \\\ntwo\nM="multi\nline"\n9BAD=1\nNOEQUALS\n'
    )
    assert unitenv.parse(text) == {
        "OLLAMA_HOST": "127.0.0.1:11501",
        "A": "1",
        "Q": "lit $x \\\\n",
        "D": 'say "hi"\\',
        "C": "one two",
        "M": "multi\nline",
    }


def test_files_override_environment_and_the_last_assignment_wins(tmp_path: Path):
    a, b = tmp_path / "a.env", tmp_path / "b.env"
    a.write_text("OLLAMA_HOST=127.0.0.1:1\nOLLAMA_HOST=127.0.0.1:2\n")
    b.write_text("OTHER=x\n")
    env = ["OLLAMA_HOST=127.0.0.1:9", "PATH=/bin"]
    found = unitenv.lookup("OLLAMA_HOST", env, [(str(a), False), (str(b), False), (str(tmp_path / "gone"), True)])
    assert (found.value, found.where, found.problems) == ("127.0.0.1:2", str(a), ())
    assert unitenv.lookup("OLLAMA_HOST", env, []).where == "Environment="
    assert unitenv.lookup("OLLAMA_HOST", [], []) == unitenv.Found(None, "")


def test_a_file_that_cannot_be_read_is_reported_and_the_rest_still_counts(tmp_path: Path):
    big = tmp_path / "big.env"
    big.write_bytes(b"A=" + b"x" * unitenv.MAX_FILE)
    found = unitenv.lookup("OLLAMA_HOST", ["OLLAMA_HOST=127.0.0.1:9"], [(str(big), False), (str(tmp_path), False)])
    assert found.value == "127.0.0.1:9" and len(found.problems) == 2
    assert "larger than" in found.problems[0] and "not a regular file" in found.problems[1]


def test_a_fifo_in_place_of_the_file_is_refused_without_blocking(tmp_path: Path):
    fifo = tmp_path / "fifo.env"
    os.mkfifo(fifo)
    done: list[unitenv.Found] = []
    t = threading.Thread(target=lambda: done.append(unitenv.lookup("OLLAMA_HOST", [], [(str(fifo), False)])))
    t0 = time.monotonic()
    t.start()
    t.join(5)
    assert not t.is_alive() and time.monotonic() - t0 < 1, "reading a FIFO blocked"
    assert done[0].value is None and "not a regular file" in done[0].problems[0]


# -- the config's instances ------------------------------------------------------------------------------------------

INSTANCES = """\
timeout = 30

[instances.gpu0]
unit = "ollama@11501.service"

[instances.gpu1]
unit = "ollama@11502"
url = "http://127.0.0.1:11502"
model = "llama3"
"""


def _load(tmp_path: Path, text: str = INSTANCES, env: dict[str, str] | None = None, **overrides):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(overrides, config_file=path, environ=env or {})


def test_instances_are_read_in_order_with_their_units_urls_and_models(tmp_path: Path):
    cfg = _load(tmp_path)
    assert cfg.instances == (
        Instance("gpu0", "ollama@11501.service", None, None),
        Instance("gpu1", "ollama@11502.service", "http://127.0.0.1:11502", "llama3"),
    )
    assert cfg.unit == "ollama.service" and cfg.instance is None and cfg.all_instances() == cfg.instances
    gpu0 = cfg.for_instance(cfg.instances[0])
    assert (gpu0.unit, gpu0.url_from_unit, gpu0.instance, gpu0.timeout) == ("ollama@11501.service", True, "gpu0", 30)


@pytest.mark.parametrize("name", ["gpu1", "ollama@11502.service", "ollama@11502"])
def test_unit_names_an_instance_by_its_name_or_its_unit(tmp_path: Path, name):
    cfg = _load(tmp_path, unit=name)
    assert (cfg.unit, cfg.url, cfg.model, cfg.instance) == (
        "ollama@11502.service", "http://127.0.0.1:11502", "llama3", "gpu1"
    )  # fmt: skip
    assert not cfg.url_from_unit and "[instances.gpu1]" in cfg.sources["url"]


def test_a_unit_without_a_url_reads_its_own_and_ignores_the_callers_ollama_host(tmp_path: Path):
    env = {"OLLAMA_HOST": "127.0.0.1:11434"}  # the caller's server: ollama.service's
    cfg = _load(tmp_path, env=env, unit="gpu0")
    assert cfg.url_from_unit and cfg.unit == "ollama@11501.service"
    assert _load(tmp_path, env={"OLLAMA_HOST": "127.0.0.1:7"}).url == "http://127.0.0.1:7"  # ollama.service: theirs
    assert not _load(tmp_path, env={"OLLAMA_HOST": "127.0.0.1:7"}).url_from_unit
    assert _load(tmp_path, url="http://127.0.0.1:8", unit="gpu1").url == "http://127.0.0.1:8"  # --url wins


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[instances."bad name"]\nunit = "a.service"\n', "instance name"),
        ('[instances.-x]\nunit = "a.service"\n', "instance name"),
        ('[instances.a]\nurl = "http://h:1"\n', "needs unit"),
        ('[instances.a]\nunit = "a.service"\nport = 1\n', "unknown key 'port'"),
        ('[instances.a]\nunit = "ollama@.service"\n', "invalid unit"),
        ('[instances.a]\nunit = "a.service"\nurl = "ftp://x"\n', "invalid url"),
        ('[instances.a]\nunit = "a.service"\n[instances.b]\nunit = "a"\n', "also instance 'a'"),
        ('instances = "gpu0"\n', "must be tables"),
        ("".join(f'[instances.i{n}]\nunit = "o@{n}.service"\n' for n in range(65)), "more than 64"),
    ],
)
def test_bad_instances_are_refused_naming_the_table(tmp_path: Path, text, message):
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, text)


@pytest.mark.parametrize(
    ("sources", "value", "unknown"),
    [
        pytest.param(["env", "unreadable"], "127.0.0.1:9", ["unreadable"], id="Environment= then an unreadable file"),
        pytest.param(["unreadable"], None, ["unreadable"], id="only an unreadable file: not even the default"),
        pytest.param(["sets", "unreadable"], "127.0.0.1:1", ["unreadable"], id="an unreadable file after the value"),
        pytest.param(["unreadable", "sets"], "127.0.0.1:1", [], id="a later file sets it: it wins, whatever"),
        pytest.param(["unreadable", "other"], None, ["unreadable"], id="a later file that does not set it"),
        pytest.param(["env", "optional-missing"], "127.0.0.1:9", [], id="a missing -file: nothing set there"),
    ],
)
def test_a_file_after_the_values_source_that_cannot_be_read_makes_the_value_unknown(
    tmp_path: Path, sources, value, unknown
):
    """systemd applies Environment=, then each EnvironmentFile= in order, the last assignment winning."""
    paths = {"sets": tmp_path / "sets.env", "other": tmp_path / "other.env", "unreadable": tmp_path}  # a directory
    paths["sets"].write_text("OLLAMA_HOST=127.0.0.1:1\n")
    paths["other"].write_text("CUDA_VISIBLE_DEVICES=1\n")
    paths["optional-missing"] = tmp_path / "gone.env"
    env = ["OLLAMA_HOST=127.0.0.1:9"] if "env" in sources else []
    files = [(str(paths[s]), s == "optional-missing") for s in sources if s != "env"]
    found = unitenv.lookup("OLLAMA_HOST", env, files)
    assert found.value == value
    assert [path for path, _ in found.unknown] == [str(paths[s]) for s in unknown]
    assert all(why == "not a regular file" for _, why in found.unknown)
