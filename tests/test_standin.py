"""Tests of the Ollama stand-in (tests/standin/ollama_standin.py) on this host.

The stand-in replaces Ollama in ollamactl's container tests, so these tests
check it the way those tests will use it: through the official ``ollama``
Python client, plain HTTP, and signals, with each fault mode switched on.
Run with ``python3 -m pytest tests/test_standin.py``.  Set
OLLAMACTL_STANDIN_PYTHON to run the stand-in under another interpreter.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
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
MODEL2 = "standin2:latest"


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

    def gin_lines(self, path: str | None = None) -> list[str]:
        """The gin access lines written so far (for ``path`` only, if given)."""
        lines = [ln for ln in self.log().splitlines() if ln.startswith("[GIN] ")]
        return [ln for ln in lines if path is None or ln.endswith(f'"{path}"')]

    def client(self, **kwargs: object) -> ollama.Client:
        """The official client pointed at this server."""
        return ollama.Client(host=self.url, **kwargs)


Launcher = Callable[..., Standin]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launcher]:
    """Start stand-ins with given modes; kill whatever is left afterwards."""
    started: list[Standin] = []

    def _launch(
        modes: str = "", wait: bool = True, host: str | None = None, env: dict[str, str] | None = None
    ) -> Standin:
        """``env`` sets Ollama's variables and the STANDIN_* knobs; inherited ones are dropped."""
        n = len(started)
        port = free_port()
        mode_file = tmp_path / f"mode{n}"
        mode_file.write_text(modes)
        os.utime(mode_file, ns=(time.time_ns() - 10**9,) * 2)  # written "before" this process starts
        log_path = tmp_path / f"standin{n}.log"
        log_file = open(log_path, "wb")  # noqa: SIM115 - closed at teardown
        proc_env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "STANDIN_"))}
        proc_env.update(env or {})
        env = proc_env
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


def gen(model: str = MODEL, prompt: str = "hi", n: int | None = 1, **extra: object) -> dict[str, object]:
    """A non-streamed generate body producing ``n`` tokens (``prompt=""`` and ``n=None``: the load-only body)."""
    body: dict[str, object] = {"model": model, "prompt": prompt, "stream": False, **extra}
    if n is not None:
        body["options"] = {"num_predict": n}
    if prompt == "":
        del body["prompt"], body["stream"]
    return body


def call(url: str, body: dict[str, object], timeout: float = 10.0, path: str = "/api/generate") -> tuple[int, str]:
    """POST a JSON body; (status, body), or (0, error kind) when no answer came."""
    try:
        return post(url + path, json.dumps(body).encode(), timeout=timeout)
    except (TimeoutError, urllib.error.URLError, ConnectionError) as e:
        return 0, type(getattr(e, "reason", e)).__name__


class Call(threading.Thread):
    """One request in the background; status, body and when it ended."""

    def __init__(self, url: str, body: dict[str, object], timeout: float = 10.0) -> None:
        super().__init__(daemon=True)
        self.url, self.body, self.timeout = url, body, timeout
        self.status, self.text = -1, ""
        self.started = self.ended = 0.0

    def run(self) -> None:
        self.started = time.monotonic()
        self.status, self.text = call(self.url, self.body, self.timeout)
        self.ended = time.monotonic()

    @property
    def latency(self) -> float:
        return self.ended - self.started


class StreamReader(threading.Thread):
    """A streamed generate read in the background, noting when each chunk arrives."""

    def __init__(self, port: int, body: dict[str, object]) -> None:
        super().__init__(daemon=True)
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.body = dict(body, stream=True)
        self.times: list[float] = []
        self.done = False

    def run(self) -> None:
        try:
            self.conn.request("POST", "/api/generate", json.dumps(self.body), {"Content-Type": "application/json"})
            for line in self.conn.getresponse():
                self.times.append(time.monotonic())
                self.done = self.done or json.loads(line).get("done", False)
        except (OSError, http.client.HTTPException, ValueError):
            pass

    def wait_chunks(self, n: int, timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.times) < n:
            assert time.monotonic() < deadline, f"only {len(self.times)} chunks"
            time.sleep(0.01)


def ps(url: str, timeout: float = 2.0) -> dict[str, float]:
    """/api/ps as {model: expires_at as a Unix time}."""
    status, body = get(url + "/api/ps", timeout=timeout)
    assert status == 200
    return {m["model"]: go_timestamp(m["expires_at"]) for m in json.loads(body)["models"]}


def go_timestamp(text: str) -> float:
    """A Go time from JSON (RFC 3339, up to ns) as a Unix time."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))
    return datetime.fromisoformat(text).timestamp()


def settled(url: str, model: str) -> bool:
    """True once ``model``'s expires_at has stopped moving (the estimate before a finish moves with the clock)."""
    before = ps(url)[model]
    time.sleep(0.03)
    return ps(url)[model] == before


def eventually(check: Callable[[], bool], timeout: float = 2.0) -> None:
    """Wait until ``check()`` holds; the scheduler's completion loop runs just after a response."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.02)


def runner_ports(s: Standin) -> list[int]:
    """The ``--port`` of every "starting llama-server" line logged so far, oldest first."""
    return [int(p) for p in re.findall(r'msg="starting llama-server" cmd="[^"\n]* --port (\d+) ', s.log())]


def runner_get(port: int, path: str, timeout: float = 1.0) -> tuple[int, object]:
    """GET from a runner child's port: (status, decoded JSON body)."""
    status, body = get(f"http://127.0.0.1:{port}{path}", timeout=timeout)
    return status, json.loads(body)


def runner_hangs(port: int, path: str, timeout: float = 0.4) -> bool:
    """True if the runner accepts a GET for ``path`` but sends no answer within ``timeout``."""
    try:
        get(f"http://127.0.0.1:{port}{path}", timeout=timeout)
    except (TimeoutError, urllib.error.URLError) as e:
        return isinstance(getattr(e, "reason", e), TimeoutError)
    return False


def slots(port: int, timeout: float = 1.0) -> list[dict[str, object]]:
    """The runner's /slots array."""
    status, body = runner_get(port, "/slots", timeout)
    assert status == 200 and isinstance(body, list)
    return body


def next_token(slot: dict[str, object]) -> dict[str, object]:
    """A slot's ``next_token`` (llama.cpp sends it as a one-element array)."""
    value = slot["next_token"]
    assert isinstance(value, list) and len(value) == 1
    return value[0]


def listening_ports(pid: int) -> set[int]:
    """TCP ports process ``pid`` listens on, from its socket fds and /proc/net/tcp{,6}."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd))
        except OSError:
            continue
        if m:
            inodes.add(m.group(1))
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # TCP_LISTEN
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


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
    """ollama list sees the installed models, newest (standin:latest) first, with the real fields filled."""
    models = launch().client().list().models
    assert [m.model for m in models] == [MODEL, MODEL2, "standin3:latest", "standin4:latest"]
    assert len({m.digest for m in models}) == 4
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
    assert [m.model for m in c.list().models][0] == MODEL
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


def test_sigusr1_is_stuck_inference_until_the_process_exits(launch: Launcher) -> None:
    """SIGUSR1 is the deep wedge, stuck-inference, that only a restart clears.

    /api/version answers, the runner's /health answers, its /slots and generate hang.
    """
    s = launch()
    c = s.client(timeout=1)
    assert c.generate(MODEL, "warm up", options={"num_predict": 1}).done
    [port] = runner_ports(s)
    assert slots(port)
    s.proc.send_signal(signal.SIGUSR1)
    s.wait_log("received SIGUSR1: stuck-inference until this process exits")
    time.sleep(0.4)  # the mode is seen within 0.2 s
    assert json.loads(get(s.url + "/api/version", timeout=1)[1]) == {"version": "0.12.3"}
    assert runner_get(port, "/health", timeout=0.5) == (200, {"status": "ok"})
    assert runner_hangs(port, "/slots")
    with pytest.raises(httpx.TimeoutException):
        c.generate(MODEL, "hello")
    s.set_mode("ok")  # the mode file cannot clear a process wedge
    time.sleep(0.4)
    assert runner_hangs(port, "/slots")
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
        assert s.proc.wait(timeout=30) == 0
        took = time.monotonic() - t0
        # It exits at once (a healthy Ollama takes about a second); a stop that waited for the hung
        # handler would take its whole timeout.  The wait above is only the bound on a broken stand-in.
        assert took < 1.0, f"SIGTERM took {took:.2f}s to end the stand-in with a request hung"
        assert sock.recv(100) == b""  # closed by the exit, with no answer sent


def test_unknown_mode_is_warned_and_ignored(launch: Launcher) -> None:
    """A typo in the mode file must not silently change behaviour."""
    s = launch(" bogus-mode ,ok ")
    assert get(s.url + "/api/version")[0] == 200
    assert "unknown mode 'bogus-mode'" in s.log()


# ---------------------------------------------------------------------------
# The scheduler: slots, the load queue, keep-alive, eviction, logs
# ---------------------------------------------------------------------------

MAX_QUEUE_BODY = '{"error":"server busy, please try again.  maximum pending requests exceeded"}'


def test_config_reads_ollamas_variables_with_its_defaults() -> None:
    """The knobs parse like envconfig: Go durations or seconds, 0 loaded models = 3, negative keep-alive = forever."""
    mod = load_standin()
    d = mod.Config.from_env({})
    assert (d.num_parallel, d.max_queue, d.max_loaded, d.num_ctx) == (1, 512, 3, 4096)
    assert d.keep_alive_ns == d.load_timeout_ns == 300 * 10**9
    assert (d.token_seconds, d.load_seconds, d.ps_blocks_during_load) == (0.01, 0.05, True)
    c = mod.Config.from_env(
        {
            "OLLAMA_NUM_PARALLEL": "0",
            "OLLAMA_MAX_LOADED_MODELS": "0",
            "OLLAMA_KEEP_ALIVE": "-1",
            "OLLAMA_LOAD_TIMEOUT": "0",
            "STANDIN_PS_BLOCKS_DURING_LOAD": "0",
        }
    )
    assert (c.num_parallel, c.max_loaded, c.ps_blocks_during_load) == (1, 3, False)
    assert c.keep_alive_ns == c.load_timeout_ns == mod.FOREVER_NS
    assert mod.Config.from_env({"OLLAMA_KEEP_ALIVE": "90"}).keep_alive_ns == 90 * 10**9
    assert mod.Config.from_env({"OLLAMA_KEEP_ALIVE": "'1h30m'"}).keep_alive_ns == 5400 * 10**9
    assert mod.Config.from_env({"OLLAMA_KEEP_ALIVE": "soon"}).keep_alive_ns == 300 * 10**9
    assert mod.Config.from_env({"OLLAMA_MAX_QUEUE": "-3"}).max_queue == 512


def test_gin_line_is_gins_default_format() -> None:
    """Byte for byte the line in Ollama's own app/server test, and Go's Duration strings."""
    mod = load_standin()
    line = mod.gin_line(200, 50_263, "100.126.204.152", "HEAD", "/", datetime(2025, 7, 1, 18, 0, 9))
    assert line == '[GIN] 2025/07/01 - 18:00:09 | 200 |      50.263µs | 100.126.204.152 | HEAD     "/"'
    line = mod.gin_line(200, 1_234_567_000, "127.0.0.1", "POST", "/api/generate", datetime(2026, 8, 21, 12, 0, 1))
    assert line == '[GIN] 2026/08/21 - 12:00:01 | 200 |     1.234567s |       127.0.0.1 | POST     "/api/generate"'
    durations = {0: "0s", 999: "999ns", 3_402_500: "3.4025ms", 61_500_000_000: "1m1.5s", 7_200 * 10**9: "2h0m0s"}
    assert {ns: mod.go_duration(ns) for ns in durations} == durations


def test_one_slot_serves_requests_in_arrival_order(launch: Launcher) -> None:
    """OLLAMA_NUM_PARALLEL=1: a busy slot makes the rest wait, first come first served, without a bound."""
    s = launch(env={"STANDIN_TOKEN_SECONDS": "0.05"})
    assert call(s.url, gen())[0] == 200
    busy = Call(s.url, gen(n=8))  # 0.4 s in the slot
    busy.start()
    time.sleep(0.1)
    queued = [Call(s.url, gen(prompt=f"q{i}")) for i in range(4)]
    for c in queued:
        c.start()
        time.sleep(0.05)
    for c in [busy, *queued]:
        c.join(5)
    assert [c.status for c in [busy, *queued]] == [200] * 5
    ends = [c.ended for c in [busy, *queued]]
    assert ends == sorted(ends)
    assert queued[0].latency >= 0.15  # it waited for the busy slot


def test_num_parallel_slots_run_side_by_side(launch: Launcher) -> None:
    """OLLAMA_NUM_PARALLEL=2: two generations share the time, the third waits for a slot."""
    s = launch(env={"OLLAMA_NUM_PARALLEL": "2", "STANDIN_TOKEN_SECONDS": "0.05"})
    assert call(s.url, gen())[0] == 200
    calls = [Call(s.url, gen(n=8, prompt=f"p{i}")) for i in range(3)]
    for c in calls:
        c.start()
        time.sleep(0.02)
    for c in calls:
        c.join(5)
    assert [c.status for c in calls] == [200] * 3
    assert calls[0].latency < 0.6 and calls[1].latency < 0.6
    assert calls[2].latency >= 0.7


def test_load_queue_overflow_is_503_with_ollamas_body(launch: Launcher) -> None:
    """Requests that need a load share OLLAMA_MAX_QUEUE; requests for a loaded model never see that bound."""
    s = launch(env={"OLLAMA_MAX_QUEUE": "1", "STANDIN_LOAD_SECONDS": "0.6"})
    loading = Call(s.url, gen())
    loading.start()
    s.wait_log("loading model via llama-server")  # taken off the channel by the scheduler
    waiting = Call(s.url, gen(prompt="second"))
    waiting.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    assert call(s.url, gen(prompt="third")) == (503, MAX_QUEUE_BODY)
    assert time.monotonic() - t0 < 0.3
    loading.join(5)
    waiting.join(5)
    assert (loading.status, waiting.status) == (200, 200)
    eventually(lambda: len(s.gin_lines("/api/generate")) == 3)
    assert " | 503 | " in s.gin_lines("/api/generate")[0]

    many = [Call(s.url, gen(prompt=f"m{i}")) for i in range(5)]
    for c in many:
        c.start()
    for c in many:
        c.join(5)
    assert [c.status for c in many] == [200] * 5


def test_a_load_is_logged_and_takes_load_seconds(launch: Launcher) -> None:
    """The first request loads the model (STANDIN_LOAD_SECONDS), bracketed by Ollama's slog lines."""
    s = launch(env={"STANDIN_LOAD_SECONDS": "0.4"})
    t0 = time.monotonic()
    assert call(s.url, gen())[0] == 200
    assert time.monotonic() - t0 >= 0.4
    t0 = time.monotonic()
    assert call(s.url, gen())[0] == 200
    assert time.monotonic() - t0 < 0.2
    stamp = r"time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(?:Z|[+-]\d\d:\d\d) level=INFO"
    expected = [
        rf'{stamp} source=llama_server\.go:433 msg="starting llama-server" cmd=".*llama-server --model \S+ .*-np 1"',
        rf"{stamp} source=llama_server\.go:1048 msg=\"loading model via llama-server\" model=\S+/sha256-[0-9a-f]{{64}}",
        rf'{stamp} source=llama_server\.go:1362 msg="llama-server started in 0\.[45]\d seconds"',
        rf"{stamp} source=sched\.go:728 msg=\"loaded runners\" count=1",
    ]
    lines = s.log().splitlines()
    at = [next(i for i, ln in enumerate(lines) if re.fullmatch(rx, ln)) for rx in expected]
    assert at == sorted(at)
    assert sum("loading model via" in ln for ln in lines) == 1


def test_ps_waits_while_a_model_loads(launch: Launcher) -> None:
    """/api/ps blocks during a load (v0.32.4+), unless STANDIN_PS_BLOCKS_DURING_LOAD=0."""
    for blocks in (True, False):
        s = launch(env={"STANDIN_LOAD_SECONDS": "0.6", "STANDIN_PS_BLOCKS_DURING_LOAD": str(int(blocks))})
        loading = Call(s.url, gen(MODEL2, prompt="", n=None))
        loading.start()
        s.wait_log("loading model via llama-server")
        t0 = time.monotonic()
        models = ps(s.url)
        took = time.monotonic() - t0
        if blocks:
            assert took >= 0.3 and list(models) == [MODEL2]
        else:
            assert took < 0.2 and models == {}
        loading.join(5)
        assert loading.status == 200


def test_a_stalled_load_fails_after_load_timeout(launch: Launcher) -> None:
    """OLLAMA_LOAD_TIMEOUT bounds a load that makes no progress, not one that is slow but progressing."""
    s = launch(env={"STANDIN_LOAD_SECONDS": "0.7", "OLLAMA_LOAD_TIMEOUT": "400ms"})
    assert call(s.url, gen())[0] == 200  # 0.7 s of progress outlasts the 0.4 s stall timeout
    s.set_mode("stall-load")
    t0 = time.monotonic()
    status, body = call(s.url, gen(MODEL2))
    assert (status, json.loads(body)) == (500, {"error": "timed out waiting for llama-server to start - "})
    assert 0.4 <= time.monotonic() - t0 < 1.2
    assert 'msg="Load failed"' in s.log()
    assert call(s.url, gen())[0] == 200  # the loaded model is not affected
    s.set_mode("ok")
    assert call(s.url, gen(MODEL2))[0] == 200


def test_expires_at_is_set_when_the_model_goes_idle(launch: Launcher) -> None:
    """expires_at: now + keep-alive while the first request runs, then fixed at the last finish + keep-alive."""
    s = launch(env={"OLLAMA_KEEP_ALIVE": "500ms", "STANDIN_TOKEN_SECONDS": "0.03"})
    first = Call(s.url, gen(n=12))  # 0.36 s, before any request has finished
    first.start()
    s.wait_log("loaded runners")
    a = ps(s.url)[MODEL]
    time.sleep(0.2)
    b = ps(s.url)[MODEL]
    assert b - a >= 0.15  # an estimate that moves with the clock
    first.join(5)
    finished_at = time.time() - (time.monotonic() - first.ended)
    eventually(lambda: settled(s.url, MODEL))  # the completion loop has set it
    idle = ps(s.url)[MODEL]
    assert abs(idle - (finished_at + 0.5)) < 0.15

    busy = Call(s.url, gen(n=30))  # 0.9 s busy
    busy.start()
    time.sleep(0.7)
    during = ps(s.url)
    assert during[MODEL] == idle  # not moved by the busy request
    assert during[MODEL] < time.time()  # drifted into the past; still loaded
    busy.join(5)
    eventually(lambda: ps(s.url)[MODEL] > idle + 0.5)
    eventually(lambda: ps(s.url) == {}, timeout=1.5)  # expired and unloaded

    assert call(s.url, gen(keep_alive="1h"))[0] == 200
    eventually(lambda: abs(ps(s.url).get(MODEL, 0) - (time.time() + 3600)) < 1)
    status, body = call(s.url, gen(prompt="", n=None, keep_alive=0))
    assert json.loads(body)["done_reason"] == "unload"
    eventually(lambda: ps(s.url) == {})


def test_load_only_generate_skips_the_slot_queue(launch: Launcher) -> None:
    """{"model": M} answers "load" at once for a loaded model however busy it is; a 1-token probe queues."""
    s = launch(env={"STANDIN_TOKEN_SECONDS": "0.1", "STANDIN_LOAD_SECONDS": "0.3"})
    assert call(s.url, gen())[0] == 200
    busy, queued = Call(s.url, gen(n=12)), Call(s.url, gen(prompt="queued"))
    busy.start()
    time.sleep(0.1)
    queued.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    status, body = call(s.url, gen(prompt="", n=None))
    assert time.monotonic() - t0 < 0.2
    assert status == 200 and json.loads(body)["done_reason"] == "load"
    assert call(s.url, gen(prompt="probe"), timeout=0.4)[0] == 0  # the token probe waits its turn
    assert list(ps(s.url)) == [MODEL]
    t0 = time.monotonic()
    status, body = call(s.url, gen(MODEL2, prompt="", n=None))  # not loaded: this LOADS it
    assert time.monotonic() - t0 >= 0.3 and json.loads(body)["done_reason"] == "load"
    assert set(ps(s.url)) == {MODEL, MODEL2}
    busy.join(5)
    queued.join(5)
    assert (busy.status, queued.status) == (200, 200)


def test_max_loaded_models_evicts(launch: Launcher) -> None:
    """At OLLAMA_MAX_LOADED_MODELS a load evicts the idle model with the shortest keep-alive; 0 means 3."""
    s = launch(env={"OLLAMA_MAX_LOADED_MODELS": "2"})
    assert call(s.url, gen(MODEL, prompt="", n=None, keep_alive="10m"))[0] == 200
    assert call(s.url, gen(MODEL2, prompt="", n=None, keep_alive="1m"))[0] == 200
    eventually(lambda: settled(s.url, MODEL2))  # idle: its finish is processed just after the answer
    assert call(s.url, gen("standin3", prompt="", n=None))[0] == 200
    eventually(lambda: set(ps(s.url)) == {MODEL, "standin3:latest"})

    s = launch()
    for name in ("standin", "standin2", "standin3", "standin4"):
        assert call(s.url, gen(name))[0] == 200
    eventually(lambda: len(ps(s.url)) == 3 and "standin4:latest" in ps(s.url))


def test_a_load_waits_for_a_busy_model_to_be_evicted(launch: Launcher) -> None:
    """Eviction waits until the chosen model's in-flight requests finish."""
    s = launch(env={"OLLAMA_MAX_LOADED_MODELS": "1", "STANDIN_TOKEN_SECONDS": "0.05"})
    assert call(s.url, gen())[0] == 200
    busy = Call(s.url, gen(n=12))  # 0.6 s
    busy.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    assert call(s.url, gen(MODEL2, prompt="", n=None))[0] == 200
    assert time.monotonic() - t0 >= 0.35
    busy.join(5)
    assert busy.status == 200
    assert list(ps(s.url)) == [MODEL2]


def test_other_num_ctx_reloads_the_model(launch: Launcher) -> None:
    """Options that differ from the loaded ones force a reload, even from a request without options."""
    s = launch()
    assert call(s.url, gen())[0] == 200
    assert call(s.url, {"model": MODEL, "prompt": "x", "stream": False, "options": {"num_ctx": 8192}})[0] == 200
    assert json.loads(get(s.url + "/api/ps")[1])["models"][0]["context_length"] == 8192
    assert call(s.url, gen())[0] == 200
    assert json.loads(get(s.url + "/api/ps")[1])["models"][0]["context_length"] == 4096
    assert s.log().count("loading model via llama-server") == 3


def test_gin_line_written_only_when_a_request_completes(launch: Launcher) -> None:
    """A streaming generate appears in the access log when it ends, with its whole latency."""
    s = launch(env={"STANDIN_TOKEN_SECONDS": "0.05"})
    assert call(s.url, gen())[0] == 200
    reader = StreamReader(s.port, gen(n=16))  # 0.8 s
    reader.start()
    reader.wait_chunks(3)
    assert len(s.gin_lines("/api/generate")) == 1
    reader.join(5)
    assert reader.done
    eventually(lambda: len(s.gin_lines("/api/generate")) == 2)
    lines = s.gin_lines("/api/generate")
    m = re.fullmatch(
        r'\[GIN\] \d{4}/\d\d/\d\d - \d\d:\d\d:\d\d \| 200 \| (.{13}) \| (.{15}) \| POST {5}"/api/generate"', lines[1]
    )
    assert m is not None, lines[1]
    assert m.group(2) == "      127.0.0.1"
    latency = re.fullmatch(r" *([0-9.]+)(ms|s)", m.group(1))
    assert latency is not None
    assert 0.75 <= float(latency.group(1)) / (1000 if latency.group(2) == "ms" else 1) < 1.5

    get(s.url + "/api/version")
    version_line = r'\| 200 \| .{13} \|       127\.0\.0\.1 \| GET      "/api/version"$'
    eventually(lambda: any(re.search(version_line, ln) for ln in s.gin_lines("/api/version")))

    busy = Call(s.url, gen(n=10))
    busy.start()
    time.sleep(0.1)
    assert call(s.url, gen(prompt="gives up"), timeout=0.2)[0] == 0
    eventually(lambda: any(" | 500 | " in ln for ln in s.gin_lines("/api/generate")))  # the client left the queue
    busy.join(5)


# ---------------------------------------------------------------------------
# The runner children's own ports (llama-server's /health and /slots)
# ---------------------------------------------------------------------------

RUNNER_404 = {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}}
RUNNER_LOADING = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}


def test_runner_port_is_logged_and_answers_health_and_slots(launch: Launcher) -> None:
    """The load's --port is a real listening socket of the process: /health, /slots, 404 JSON otherwise."""
    s = launch(env={"OLLAMA_NUM_PARALLEL": "2", "STANDIN_LOAD_SECONDS": "0.5"})
    loading = Call(s.url, gen(n=3))
    loading.start()
    s.wait_log("starting llama-server")
    [port] = runner_ports(s)
    assert port in listening_ports(s.proc.pid)
    assert runner_get(port, "/health") == (503, RUNNER_LOADING)  # llama-server's middleware during a load
    loading.join(5)
    assert loading.status == 200

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
        assert (r.status, r.headers["Content-Type"]) == (200, "application/json; charset=utf-8")
        assert r.read() == b'{"status":"ok"}'
    used, fresh = slots(port)
    assert (used["id"], used["n_ctx"], used["is_processing"]) == (0, 4096, False)
    assert isinstance(used["id_task"], int) and used["id_task"] >= 0
    assert next_token(used) == {"has_next_token": False, "has_new_line": False, "n_remain": 0, "n_decoded": 3}
    assert fresh == {"id": 1, "n_ctx": 4096, "speculative": False, "is_processing": False}  # never ran a task
    assert runner_get(port, "/completion") == (404, RUNNER_404)
    assert runner_get(port, "/api/version") == (404, RUNNER_404)
    assert runner_ports(s) == [port]  # the loaded model is reused: no new child

    s.proc.terminate()
    s.proc.wait(timeout=2)
    assert not can_connect(port)


def test_runner_slots_show_a_busy_slot_decoding(launch: Launcher) -> None:
    """While a slow generation runs and another waits in the FIFO, /slots answers at once, n_decoded rising."""
    s = launch(env={"STANDIN_TOKEN_SECONDS": "0.05"})
    assert call(s.url, gen())[0] == 200
    [port] = runner_ports(s)
    busy = Call(s.url, gen(n=20))  # 1 s in the slot
    busy.start()
    time.sleep(0.1)
    queued = Call(s.url, gen(prompt="queued", n=2))
    queued.start()
    time.sleep(0.15)
    seen = []
    for _ in range(2):
        t0 = time.monotonic()
        [slot] = slots(port)
        assert time.monotonic() - t0 < 0.3
        seen.append(slot)
        time.sleep(0.2)
    assert [x["is_processing"] for x in seen] == [True, True]
    assert seen[0]["id_task"] == seen[1]["id_task"]
    first, second = (next_token(x) for x in seen)
    assert 1 <= first["n_decoded"] < second["n_decoded"] < 20
    assert first["has_next_token"] and second["n_remain"] == 20 - second["n_decoded"]
    assert queued.ended == 0.0  # still waiting for the slot
    busy.join(5)
    queued.join(5)
    assert (busy.status, queued.status) == (200, 200)
    [slot] = slots(port)
    assert slot["is_processing"] is False
    assert slot["id_task"] > seen[0]["id_task"]  # the queued request's task
    assert next_token(slot)["n_decoded"] == 2  # counted afresh for each task


def test_runner_port_closes_on_unload_eviction_and_failed_load(launch: Launcher) -> None:
    """Each load gets its own port; eviction, keep_alive 0 and a failed load close it."""
    s = launch(env={"OLLAMA_MAX_LOADED_MODELS": "1", "OLLAMA_LOAD_TIMEOUT": "300ms"})
    assert call(s.url, gen(MODEL, prompt="", n=None))[0] == 200
    [first] = runner_ports(s)
    assert can_connect(first)
    assert call(s.url, gen(MODEL2, prompt="", n=None))[0] == 200  # evicts MODEL
    [_, second] = runner_ports(s)
    assert second != first
    assert not can_connect(first)
    assert listening_ports(s.proc.pid) == {s.port, second}
    assert runner_get(second, "/health") == (200, {"status": "ok"})
    assert json.loads(call(s.url, gen(MODEL2, prompt="", n=None, keep_alive=0))[1])["done_reason"] == "unload"
    eventually(lambda: not can_connect(second))
    s.set_mode("stall-load")
    time.sleep(0.3)
    assert call(s.url, gen(MODEL))[0] == 500
    assert len(runner_ports(s)) == 3
    assert listening_ports(s.proc.pid) == {s.port}


# ---------------------------------------------------------------------------
# Faithful wedges
# ---------------------------------------------------------------------------


def test_stuck_inference(launch: Launcher) -> None:
    """#15950: tokens stop, queued requests never finish; load-only, version and ps still answer.

    The runner's /health still answers (its HTTP thread).  Its /slots, as the real llama-server's
    (build 11669, frozen inside a decode), still answers while a slot is busy, with the counters
    standing still; with no slot busy it does not answer at all (test_once_wedge_...).
    """
    s = launch(env={"STANDIN_TOKEN_SECONDS": "0.05"})
    assert call(s.url, gen())[0] == 200
    [port] = runner_ports(s)
    reader = StreamReader(s.port, gen(n=40))  # 2 s when healthy
    reader.start()
    reader.wait_chunks(2)
    s.set_mode("stuck-inference")
    time.sleep(0.4)
    seen = len(reader.times)
    [before] = slots(port, timeout=0.5)
    time.sleep(0.3)
    [after] = slots(port, timeout=0.5)
    assert before["is_processing"] is True and before["id_task"] == after["id_task"]
    assert next_token(before)["n_decoded"] == next_token(after)["n_decoded"] < 40  # flat: no progress
    assert runner_get(port, "/health", timeout=0.5) == (200, {"status": "ok"})
    assert call(s.url, gen(prompt="queued"), timeout=0.6)[0] == 0
    assert len(reader.times) == seen  # no token for 0.6 s
    status, body = call(s.url, gen(prompt="", n=None), timeout=0.5)
    assert status == 200 and json.loads(body)["done_reason"] == "load"
    assert get(s.url + "/api/version", timeout=0.5)[0] == 200
    assert list(ps(s.url, timeout=0.5)) == [MODEL]
    assert not reader.done
    assert sum(" | 200 | " in ln for ln in s.gin_lines("/api/generate")) == 2  # warm-up and load-only
    s.set_mode("ok")  # the plain form lasts while it is in the file
    [slot] = slots(port, timeout=1.5)  # the main loop is back
    assert slot["is_processing"] is True
    reader.join(5)
    assert reader.done
    assert next_token(slots(port)[0])["n_decoded"] == 40


def test_once_wedge_lasts_until_the_process_exits(launch: Launcher) -> None:
    """NAME=once latches in the running process; a process started after the write ignores it."""
    s = launch(env={"STANDIN_TOKEN_SECONDS": "0.02"})
    assert call(s.url, gen())[0] == 200
    [port] = runner_ports(s)
    s.set_mode("stuck-inference=once")
    s.wait_log("stuck-inference=once: latched")
    s.set_mode("ok")
    time.sleep(0.3)
    assert call(s.url, gen(), timeout=0.5)[0] == 0
    assert runner_hangs(port, "/slots")
    assert runner_get(port, "/health")[0] == 200
    fresh = launch("stuck-inference=once", env={"STANDIN_TOKEN_SECONDS": "0.02"})
    assert call(fresh.url, gen(), timeout=2)[0] == 200
    [fresh_port] = runner_ports(fresh)
    assert next_token(slots(fresh_port)[0])["n_decoded"] == 1


def test_stuck_eviction(launch: Launcher) -> None:
    """#17408: loaded models keep answering, loads hang silently, then the pending channel overflows."""
    s = launch(env={"OLLAMA_MAX_QUEUE": "2"})
    assert call(s.url, gen())[0] == 200
    s.set_mode("stuck-eviction")
    time.sleep(0.3)
    assert call(s.url, gen(), timeout=1)[0] == 200
    assert call(s.url, gen(prompt="", n=None), timeout=1)[0] == 200
    hung = [Call(s.url, gen(MODEL2, prompt=f"h{i}"), timeout=0.5) for i in range(3)]
    for c in hung:
        c.start()
        time.sleep(0.05)
    for c in hung:
        c.join(3)
    assert [c.status for c in hung] == [0, 0, 0]
    assert call(s.url, gen(MODEL2), timeout=1) == (503, MAX_QUEUE_BODY)
    assert list(ps(s.url, timeout=0.5)) == [MODEL]
    assert get(s.url + "/api/tags", timeout=0.5)[0] == 200
    assert s.log().count("loading model via llama-server") == 1  # no log line for the hung loads
    assert not any(" | 500 | " in ln for ln in s.gin_lines())  # nor access lines
    s.set_mode("ok")  # the scheduler moves on: the hung loads are dropped (their clients left), new ones load
    time.sleep(0.5)
    assert call(s.url, gen(MODEL2), timeout=3)[0] == 200


def test_stuck_child_outlives_sigterm(launch: Launcher) -> None:
    """D state: generation hangs, an unload holds the scheduler, SIGTERM only closes the port; SIGKILL ends it."""
    s = launch(env={"STANDIN_TOKEN_SECONDS": "0.02"})
    assert call(s.url, gen())[0] == 200
    [port] = runner_ports(s)
    s.set_mode("stuck-child")
    time.sleep(0.3)
    assert call(s.url, gen(), timeout=0.5)[0] == 0
    assert runner_hangs(port, "/slots", timeout=0.3)
    assert runner_get(port, "/health", timeout=0.5)[0] == 200
    assert json.loads(call(s.url, gen(prompt="", n=None, keep_alive=0), timeout=0.5)[1])["done_reason"] == "unload"
    s.wait_log("stuck-child: unloading")
    assert runner_hangs(port, "/health", timeout=0.3)  # killed in D state: the port stays bound, nothing answers
    assert port in listening_ports(s.proc.pid)
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        get(s.url + "/api/ps", timeout=0.5)  # waits for the unload, which waits for the child
    assert get(s.url + "/api/version", timeout=0.5)[0] == 200
    s.proc.send_signal(signal.SIGTERM)
    s.wait_log("only SIGKILL ends this process")
    time.sleep(0.5)
    assert s.proc.poll() is None
    assert not can_connect(s.port)
    s.proc.kill()
    assert s.proc.wait(timeout=2) == -signal.SIGKILL

    idle = launch("stuck-child")  # no model loaded: no child to wait for
    idle.proc.send_signal(signal.SIGTERM)
    assert idle.proc.wait(timeout=2) == 0


def test_silent_runner_is_a_stopped_child(launch: Launcher) -> None:
    """silent-runner: the runner as if SIGSTOPped: /health and /slots unanswered, tokens stop; back when it clears."""
    s = launch(env={"STANDIN_TOKEN_SECONDS": "0.05"})
    assert call(s.url, gen())[0] == 200
    [port] = runner_ports(s)
    reader = StreamReader(s.port, gen(n=40))
    reader.start()
    reader.wait_chunks(2)
    s.set_mode("silent-runner")
    time.sleep(0.4)
    seen = len(reader.times)
    assert runner_hangs(port, "/health") and runner_hangs(port, "/slots")
    time.sleep(0.3)
    assert len(reader.times) == seen
    assert get(s.url + "/api/version", timeout=0.5)[0] == 200
    s.set_mode("ok")
    assert runner_get(port, "/health", timeout=1.5)[0] == 200
    reader.join(5)
    assert reader.done


def test_kill_runner_fails_its_requests_and_the_next_one_reloads(launch: Launcher) -> None:
    """kill-runner: the child dies once.  Ollama's in-flight stream ends with an error line; its next request
    finds the runner gone (needsReload's Ping), reloads it on a new port, and answers."""
    s = launch(env={"STANDIN_TOKEN_SECONDS": "0.05"})
    assert call(s.url, gen())[0] == 200
    [port] = runner_ports(s)
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
    conn.request("POST", "/api/generate", json.dumps(gen(n=200, stream=True)), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    first = json.loads(resp.readline())
    assert first["done"] is False
    s.set_mode("kill-runner=once")
    lines = [json.loads(ln) for ln in resp if ln.strip()]
    assert lines[-1] == {"error": "an error was encountered while running the model: unexpected EOF"}
    assert not can_connect(port)
    s.set_mode("ok")
    status, body = call(s.url, gen(), timeout=15)
    assert status == 200 and json.loads(body)["done"] is True
    ports = runner_ports(s)
    assert len(ports) == 2 and ports[1] != port
    assert "llama-server process no longer running" in s.log()
