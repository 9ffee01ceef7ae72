"""Tests of the Ollama stand-in (tests/standin/ollama_standin.py) on this host.

The stand-in replaces Ollama in ollamactl's container tests, so these tests
check it the way those tests will use it: through the official ``ollama``
Python client, plain HTTP, and signals, with each fault mode switched on.
Run with ``python3 -m pytest tests/test_standin.py``.  Set
OLLAMACTL_STANDIN_PYTHON to run the stand-in under another interpreter.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest

ollama = pytest.importorskip("ollama", reason="the real ollama client from PyPI is needed (pip install ollama)")
httpx = pytest.importorskip("httpx", reason="httpx comes with the ollama client")

STANDIN_DIR = Path(__file__).resolve().parent / "standin"
STANDIN = STANDIN_DIR / "ollama_standin.py"
UNIT = STANDIN_DIR / "ollama.service"
PYTHON = os.environ.get("OLLAMACTL_STANDIN_PYTHON") or sys.executable
MODEL = "standin:latest"


@functools.cache
def load_standin() -> ModuleType:
    """Import the stand-in by path: it is a script, not part of a package."""
    spec = importlib.util.spec_from_file_location("ollama_standin", STANDIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def can_connect(port: int, host: str = "127.0.0.1") -> bool:
    """True if a TCP connection to host:port is accepted."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Standin:
    """One running stand-in process and the files it uses."""

    proc: subprocess.Popen[bytes]
    port: int
    mode_file: Path
    log_path: Path
    started: float
    _log_file: object = field(repr=False, default=None)

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    def set_mode(self, text: str) -> None:
        """Switch fault modes while it runs (request-time modes apply at once)."""
        self.mode_file.write_text(text)

    def log(self) -> str:
        """Everything it wrote to stderr so far."""
        return self.log_path.read_text()

    def wait_port(self, timeout: float = 5.0) -> float:
        """Wait until the port accepts connections; return seconds since start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if can_connect(self.port):
                return time.monotonic() - self.started
            if self.proc.poll() is not None:
                raise AssertionError(f"stand-in exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.02)
        raise AssertionError(f"port {self.port} not open after {timeout}s:\n{self.log()}")

    def wait_log(self, needle: str, timeout: float = 3.0) -> None:
        """Wait until the stand-in has logged a line containing needle."""
        deadline = time.monotonic() + timeout
        while needle not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} never logged:\n{self.log()}")
            time.sleep(0.02)

    def client(self, **kwargs: object) -> ollama.Client:
        """The official client pointed at this server."""
        return ollama.Client(host=self.url, **kwargs)


Launcher = Callable[..., Standin]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launcher]:
    """Start stand-ins with given modes; kill whatever is left afterwards."""
    started: list[Standin] = []

    def _launch(modes: str = "", wait: bool = True, host: str | None = None) -> Standin:
        n = len(started)
        port = free_port()
        mode_file = tmp_path / f"mode{n}"
        mode_file.write_text(modes)
        log_path = tmp_path / f"standin{n}.log"
        log_file = open(log_path, "wb")  # noqa: SIM115 - closed at teardown
        env = dict(os.environ)
        env["OLLAMA_HOST"] = host.format(port=port) if host else f"127.0.0.1:{port}"
        env["OLLAMA_STANDIN_MODE_FILE"] = str(mode_file)
        proc = subprocess.Popen(
            [PYTHON, str(STANDIN), "serve"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
        )
        s = Standin(proc, port, mode_file, log_path, time.monotonic(), log_file)
        started.append(s)
        if wait:
            s.wait_port()
        return s

    yield _launch
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
        s.proc.wait(timeout=5)
        s._log_file.close()  # type: ignore[attr-defined]


def get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """GET with urllib, returning status and body even for HTTP errors."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def post(url: str, data: bytes, timeout: float = 2.0) -> tuple[int, str]:
    """POST raw bytes with urllib, returning status and body."""
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


# ---------------------------------------------------------------------------
# OLLAMA_HOST parsing
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ("http", "127.0.0.1", "11434", "")),
        ("0.0.0.0", ("http", "0.0.0.0", "11434", "")),
        (":8080", ("http", "", "8080", "")),
        ("http://example:9", ("http", "example", "9", "")),
        ("https://h", ("https", "h", "443", "")),
        ("[::1]:5", ("http", "::1", "5", "")),
        ("127.0.0.1:11434", ("http", "127.0.0.1", "11434", "")),
        # more cases read off envconfig.Host() in ollama v0.12.3
        ("http://1.2.3.4", ("http", "1.2.3.4", "80", "")),
        ("::1", ("http", "::1", "11434", "")),
        ("[::1]", ("http", "::1", "11434", "")),
        ("::ffff:10.0.0.1", ("http", "10.0.0.1", "11434", "")),
        ("example.com", ("http", "example.com", "11434", "")),
        ("example.com:abc", ("http", "example.com", "11434", "")),
        ("example.com:99999", ("http", "example.com", "11434", "")),
        ("host:", ("http", "host", "11434", "")),
        ("  '0.0.0.0:1234' ", ("http", "0.0.0.0", "1234", "")),
        ("http://h:7/base/x", ("http", "h", "7", "base/x")),
        ("https://[fe80::1]:443", ("https", "fe80::1", "443", "")),
        ("ollama.com", ("http", "ollama.com", "11434", "")),
    ],
)
def test_parse_ollama_host(value: str, expected: tuple[str, str, str, str]) -> None:
    """The stand-in must listen exactly where real ollama would for OLLAMA_HOST."""
    mod = load_standin()
    assert tuple(mod.parse_ollama_host(value)) == expected


def test_hostport_brackets_ipv6() -> None:
    """The listen address is joined like Go's net.JoinHostPort."""
    mod = load_standin()
    assert mod.parse_ollama_host("[::1]:5").hostport == "[::1]:5"
    assert mod.parse_ollama_host(":8080").hostport == ":8080"
    assert mod.parse_ollama_host(None).hostport == "127.0.0.1:11434"


def test_bare_port_listens_on_all_addresses(launch: Launcher) -> None:
    """OLLAMA_HOST=:PORT is reachable on loopback, as with real ollama."""
    s = launch(host=":{port}")
    assert get(s.url + "/api/version")[0] == 200


# ---------------------------------------------------------------------------
# Files and command line
# ---------------------------------------------------------------------------


def test_script_has_system_python_shebang() -> None:
    """It is installed as /usr/local/bin/ollama and run by the distribution's python3."""
    assert STANDIN.read_text().splitlines()[0] == "#!/usr/bin/python3"


def test_unknown_argument_is_a_usage_error() -> None:
    """Only ``serve`` is accepted; anything else must not start a server."""
    r = subprocess.run([PYTHON, str(STANDIN), "run", "x"], capture_output=True, timeout=10)
    assert r.returncode == 2
    assert b"usage" in r.stderr


def test_unit_matches_upstream_shape() -> None:
    """The unit restarts like upstream's and sets no stop timeout or type."""
    lines = [ln.strip() for ln in UNIT.read_text().splitlines()]
    for want in (
        "ExecStart=/usr/local/bin/ollama serve",
        "User=ollama",
        "Group=ollama",
        "Restart=always",
        "RestartSec=3",
        "WantedBy=default.target",
    ):
        assert want in lines
    keys = {ln.split("=", 1)[0] for ln in lines if "=" in ln}
    assert not keys & {"Type", "TimeoutStopSec", "TimeoutSec", "WatchdogSec", "KillSignal"}


# ---------------------------------------------------------------------------
# The API, through the official client
# ---------------------------------------------------------------------------


def test_plain_http_endpoints(launch: Launcher) -> None:
    """What curl and ollamactl's probes see."""
    s = launch()
    assert get(s.url + "/") == (200, "Ollama is running")
    assert json.loads(get(s.url + "/api/version")[1]) == {"version": "0.12.3"}
    assert get(s.url + "/nope") == (404, "404 page not found")
    status, body = post(s.url + "/api/generate", b"{not json")
    assert status == 400
    assert "error" in json.loads(body)
    status, body = post(s.url + "/api/generate", b"")
    assert (status, json.loads(body)) == (400, {"error": "missing request body"})
    s.wait_log("GET /api/version 200 mode=ok")


def test_client_list(launch: Launcher) -> None:
    """ollama list sees the one model with the real fields filled."""
    models = launch().client().list().models
    assert [m.model for m in models] == [MODEL]
    m = models[0]
    assert m.size and m.size > 0
    assert m.digest and len(m.digest) == 64
    assert m.modified_at is not None
    assert m.details is not None
    assert m.details.format == "gguf"
    assert m.details.family and m.details.families
    assert m.details.parameter_size and m.details.quantization_level


def test_client_generate(launch: Launcher) -> None:
    """A non-streamed generate honours num_predict and reports timings."""
    r = launch().client().generate(MODEL, "why is the sky blue?", options={"num_predict": 3})
    assert r.done is True
    assert r.done_reason == "length"
    assert r.eval_count == 3
    assert r.response.strip()
    assert len(r.response.split()) == 3
    assert r.total_duration and r.load_duration and r.eval_duration and r.prompt_eval_count
    assert r.context


def test_client_generate_stream(launch: Launcher) -> None:
    """A streamed generate yields token chunks, then one done chunk."""
    c = launch().client()
    parts = list(c.generate("standin", "hello", stream=True))
    assert len(parts) >= 3
    assert all(not p.done for p in parts[:-1])
    last = parts[-1]
    assert last.done is True
    assert last.done_reason == "stop"
    assert last.eval_count == len(parts) - 1
    assert last.context
    whole = c.generate("standin", "hello").response
    assert "".join(p.response for p in parts) == whole


def test_client_empty_prompt_only_loads(launch: Launcher) -> None:
    """An empty prompt is Ollama's "load the model" request."""
    r = launch().client().generate(MODEL, "")
    assert r.done is True
    assert r.done_reason == "load"
    assert r.response == ""


def test_client_ps_after_generate(launch: Launcher) -> None:
    """ollama ps is empty until something has loaded the model."""
    c = launch().client()
    assert c.ps().models == []
    c.generate(MODEL, "hi", options={"num_predict": 1})
    models = c.ps().models
    assert [m.model for m in models] == [MODEL]
    assert models[0].expires_at is not None
    assert models[0].size and models[0].details is not None


def test_client_chat(launch: Launcher) -> None:
    """Chat answers as the assistant, streamed or not."""
    c = launch().client()
    r = c.chat(MODEL, messages=[{"role": "user", "content": "hi"}], options={"num_predict": 4})
    assert r.done is True
    assert r.message.role == "assistant"
    assert len(r.message.content.split()) == 4
    parts = list(c.chat(MODEL, messages=[{"role": "user", "content": "hi"}], stream=True))
    assert len(parts) >= 3 and parts[-1].done
    assert "".join(p.message.content for p in parts).strip()


def test_client_embed(launch: Launcher) -> None:
    """Embed returns one vector per input, for a string or a list."""
    c = launch().client()
    one = c.embed(MODEL, input="hello")
    assert len(one.embeddings) == 1
    assert len(one.embeddings[0]) > 0
    assert all(isinstance(x, float) for x in one.embeddings[0])
    two = c.embed(MODEL, input=["hello", "world"])
    assert len(two.embeddings) == 2
    assert two.embeddings[0] == one.embeddings[0]
    assert two.embeddings[0] != two.embeddings[1]


def test_client_unknown_model(launch: Launcher) -> None:
    """An unknown model is a 404 ResponseError, as with real ollama."""
    with pytest.raises(ollama.ResponseError) as err:
        launch().client().generate("nosuch:7b", "hi")
    assert err.value.status_code == 404
    assert "not found" in err.value.error


# ---------------------------------------------------------------------------
# Request-time fault modes
# ---------------------------------------------------------------------------


def test_hang_generate_switched_at_run_time(launch: Launcher) -> None:
    """A wedged runner: the server looks alive, but generation never answers."""
    s = launch()
    c = s.client(timeout=1)
    assert c.generate(MODEL, "warm up", options={"num_predict": 1}).done

    s.set_mode("hang-generate\n")
    assert json.loads(get(s.url + "/api/version", timeout=1)[1]) == {"version": "0.12.3"}
    assert [m.model for m in c.list().models] == [MODEL]
    t0 = time.monotonic()
    with pytest.raises(httpx.TimeoutException):
        c.generate(MODEL, "hello")
    assert time.monotonic() - t0 < 2.0
    with pytest.raises(httpx.TimeoutException):
        c.chat(MODEL, messages=[{"role": "user", "content": "hi"}])
    s.wait_log("POST /api/generate - mode=hang-generate")

    s.set_mode("ok")
    r = c.generate(MODEL, "hello", options={"num_predict": 2})
    assert r.done and r.eval_count == 2
    assert s.proc.poll() is None  # same process: no restart was needed


def test_sigusr1_wedges_generate_until_the_process_exits(launch: Launcher) -> None:
    """SIGUSR1 is a wedge that only a restart clears: version answers, generate hangs."""
    s = launch()
    c = s.client(timeout=1)
    assert c.generate(MODEL, "warm up", options={"num_predict": 1}).done
    s.proc.send_signal(signal.SIGUSR1)
    s.wait_log("received SIGUSR1")
    assert json.loads(get(s.url + "/api/version", timeout=1)[1]) == {"version": "0.12.3"}
    with pytest.raises(httpx.TimeoutException):
        c.generate(MODEL, "hello")
    s.set_mode("ok")  # the mode file cannot clear a process wedge
    with pytest.raises(httpx.TimeoutException):
        c.generate(MODEL, "hello")


def test_silent_accepts_but_never_answers(launch: Launcher) -> None:
    """Silent: connections are accepted (not refused) and requests go unanswered."""
    s = launch("silent")
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):  # a refused connection would be URLError
        urllib.request.urlopen(s.url + "/api/version", timeout=1)
    assert time.monotonic() - t0 < 2.0
    s.wait_log("GET /api/version - mode=silent")

    with socket.create_connection(("127.0.0.1", s.port), timeout=1.2) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(TimeoutError):
            data = sock.recv(100)  # b"" here would mean the server closed it
            pytest.fail(f"got {data!r} from a silent server")


def test_trickle_sends_headers_then_a_byte_a_second(launch: Launcher) -> None:
    """Trickle: the answer starts but never finishes."""
    s = launch("trickle")
    with socket.create_connection(("127.0.0.1", s.port), timeout=3) as sock:
        sock.sendall(b"GET /api/version HTTP/1.1\r\nHost: x\r\n\r\n")
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(4096)
            assert chunk, "closed before the headers"
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 2.0
        closed = False
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            body += chunk
    assert not closed
    assert 1 <= len(body) <= 4
    assert body == b'{"version":"0.12.3"}'[: len(body)]


# ---------------------------------------------------------------------------
# Start-time fault modes and signals
# ---------------------------------------------------------------------------


def test_slow_start_delays_listening(launch: Launcher) -> None:
    """slow-start=2: refused well after a normal start, then answering after ~2 s."""
    s = launch("slow-start=2", wait=False)
    time.sleep(max(0.0, s.started + 1.0 - time.monotonic()))
    assert s.proc.poll() is None
    assert not can_connect(s.port)
    took = s.wait_port(timeout=5)
    assert 1.9 <= took < 4.0
    assert get(s.url + "/api/version")[0] == 200


def test_exit_at_start(launch: Launcher) -> None:
    """exit-at-start: status 1 at once, without ever listening."""
    s = launch("exit-at-start", wait=False)
    assert s.proc.wait(timeout=2) == 1
    assert not can_connect(s.port)
    assert "exit-at-start" in s.log()
    assert "Listening" not in s.log()


def test_ignore_sigterm(launch: Launcher) -> None:
    """ignore-sigterm: SIGTERM changes nothing, SIGKILL still works."""
    s = launch("ignore-sigterm")
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert s.proc.poll() is None
    assert get(s.url + "/api/version", timeout=1)[0] == 200
    s.proc.kill()
    assert s.proc.wait(timeout=2) == -signal.SIGKILL


def test_sigterm_ends_it_despite_hung_request(launch: Launcher) -> None:
    """Without ignore-sigterm, a hung generate must not keep the process alive."""
    s = launch("hang-generate")
    body = json.dumps({"model": MODEL, "prompt": "hi"}).encode()
    request = (
        b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    with socket.create_connection(("127.0.0.1", s.port), timeout=3) as sock:
        sock.sendall(request)
        s.wait_log("POST /api/generate - mode=hang-generate")
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(timeout=2) == 0
        assert time.monotonic() - t0 < 2.0
        assert sock.recv(100) == b""  # closed by the exit, with no answer sent


def test_unknown_mode_is_warned_and_ignored(launch: Launcher) -> None:
    """A typo in the mode file must not silently change behaviour."""
    s = launch(" bogus-mode ,ok ")
    assert get(s.url + "/api/version")[0] == 200
    assert "unknown mode 'bogus-mode'" in s.log()
