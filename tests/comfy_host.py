"""A real, headless ComfyUI for the end-to-end and browser tests.

The host is the ComfyUI 0.3.64 source tree in ``../shared/hosts`` (or a checkout named by
``COMFYUI_DIR``), run by the interpreter that runs pytest (or ``COMFYUI_PYTHON``), which must have
ComfyUI's requirements (``.ci/run`` installs them). Everything happens in a temporary base
directory (``--base-directory``): the pack is linked into its ``custom_nodes`` as a user installs
it, models, inputs and outputs live there, the source tree is never modified. Servers listen on a
free loopback port and are stopped at the end.

Without the host (no ``../shared``, no ComfyUI requirements) the tests skip with the reason;
under ``CI=true`` they fail instead, so CI can never pass by skipping.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BIREFNET_SHARED", REPO.parent / "shared"))
TARBALL = SHARED / "hosts" / "comfyui-0.3.64.tar.gz"
PACK_LINK = "birefnet-nodes"  # the folder name a user clones into custom_nodes/
PINNED_FRONTEND = "1.27.10"  # what ComfyUI 0.3.64's requirements install
NEWEST_FRONTEND = "1.38.3"  # newest frontend that works with the 0.3.64 backend
START_TIMEOUT = float(os.environ.get("COMFYUI_START_TIMEOUT", 240))
RUN_TIMEOUT = float(os.environ.get("COMFYUI_RUN_TIMEOUT", 600))
HOST_REQUIREMENTS = ("aiohttp", "alembic", "av", "comfyui_frontend_package", "yaml", "spandrel",
                     "requests")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str):
    """Skip the calling test (or fail it under ``CI=true``) because the host is missing."""
    if in_ci():
        pytest.fail(f"CI must run this test, but {reason}", pytrace=False)
    pytest.skip(reason)


def host_python() -> str:
    return os.environ.get("COMFYUI_PYTHON", sys.executable)


def comfyui_dir(cache: Path) -> Path:
    """A ComfyUI source tree: ``COMFYUI_DIR``, or the shared 0.3.64 tarball extracted into
    ``cache`` (once per cache folder)."""
    if os.environ.get("COMFYUI_DIR"):
        path = Path(os.environ["COMFYUI_DIR"]).expanduser().resolve()
        if not (path / "main.py").is_file():
            pytest.fail(f"COMFYUI_DIR={path} is not a ComfyUI source tree (no main.py)")
        return path
    if not TARBALL.is_file():
        unavailable(f"{TARBALL} is absent (../shared/hosts holds the ComfyUI used by the "
                    "end-to-end tests; or set COMFYUI_DIR to a ComfyUI checkout)")
    if "COMFYUI_PYTHON" not in os.environ:
        missing = [m for m in HOST_REQUIREMENTS if importlib.util.find_spec(m) is None]
        if missing:
            unavailable(f"ComfyUI's requirements are not installed ({', '.join(missing)} "
                        "missing): run .ci/run, or install ../shared/hosts' ComfyUI requirements "
                        "(see tests/README.md)")
    target = cache / "ComfyUI"
    if not (target / "main.py").is_file():
        with tarfile.open(TARBALL) as tar:
            tar.extractall(cache, filter="data")
    return target


def frontend_root(version: str, cache: Path) -> Path | None:
    """The ``--front-end-root`` serving frontend ``version`` (None: the host's pinned one).

    Looks in ``BIREFNET_FRONTENDS`` (a folder of ``<version>/`` trees, made by ``.ci/run``),
    then in ``cache``, else downloads the wheel from PyPI into ``cache`` (no install)."""
    if version == PINNED_FRONTEND:
        return None
    for folder in filter(None, (os.environ.get("BIREFNET_FRONTENDS"), str(cache))):
        static = Path(folder) / version / "comfyui_frontend_package" / "static"
        if (static / "index.html").is_file():
            return static
    wheels = cache / f"wheel-{version}"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels),
         f"comfyui-frontend-package=={version}"], capture_output=True, text=True)
    found = sorted(wheels.glob("*.whl"))
    if done.returncode or not found:
        unavailable(f"could not download comfyui-frontend-package=={version}: {done.stderr[-500:]}")
    with zipfile.ZipFile(found[0]) as whl:
        whl.extractall(cache / version)
    return cache / version / "comfyui_frontend_package" / "static"


def make_base(base: Path) -> Path:
    """A ComfyUI base directory with this pack installed as a user installs it."""
    for sub in ("custom_nodes", "models/birefnet", "models/background_removal", "input",
                "output", "user", "temp"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_LINK
    if not link.exists():
        os.symlink(REPO, link, target_is_directory=True)
    return base


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PromptFailed(AssertionError):
    """A queued prompt ended in an error; ``status`` is ComfyUI's history status."""

    def __init__(self, message: str, status: dict):
        super().__init__(message)
        self.status = status


class ComfyServer:
    """One ComfyUI process on a loopback port, driven through its HTTP API."""

    def __init__(self, comfy: Path, base: Path, front_end_root: Path | None = None,
                 name: str = "comfyui", env: dict[str, str] | None = None):
        self.comfy, self.base, self.front_end_root = comfy, base, front_end_root
        self.env = dict(env or {})
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.client_id = f"birefnet-tests-{os.getpid()}"

    # -- process ------------------------------------------------------------------------------
    def start(self) -> "ComfyServer":
        cmd = [host_python(), "main.py", "--cpu", "--listen", "127.0.0.1", "--port",
               str(self.port), "--base-directory", str(self.base), "--disable-auto-launch",
               "--database-url", "sqlite:///:memory:"]
        if self.front_end_root is not None:
            cmd += ["--front-end-root", str(self.front_end_root)]
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=self.comfy, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"ComfyUI exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get("/object_info/BiRefNetSegment")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        pytest.fail(f"ComfyUI did not answer within {START_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # our own process group only
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(20)
        if getattr(self, "_log", None):
            self._log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-n:])

    # -- HTTP ---------------------------------------------------------------------------------
    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read() or b"null")

    def post(self, path: str, payload: dict | None = None, *, check: bool = True):
        req = urllib.request.Request(self.url + path, data=json.dumps(payload or {}).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            if check:
                pytest.fail(f"POST {path} -> {e.code}: {e.read().decode(errors='replace')}")
            return json.loads(e.read() or b"null")
        return json.loads(body) if body.strip() else None

    def queue(self, prompt: dict) -> str:
        queued = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})
        assert not queued.get("node_errors"), queued
        return queued["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = RUN_TIMEOUT, *,
             expect_error: bool = False) -> dict:
        """Wait for ``prompt_id``'s history entry; a failed prompt raises :class:`PromptFailed`
        (returned instead when ``expect_error``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            entry = (history or {}).get(prompt_id)
            if entry:
                status = entry.get("status", {})
                if status.get("status_str") == "error":
                    if expect_error:
                        return entry
                    raise PromptFailed(f"prompt failed: {json.dumps(status)[:4000]}\n"
                                       f"{self.log_tail()}", status)
                if status.get("completed"):
                    return entry
            if not self.alive():
                pytest.fail(f"ComfyUI died while running:\n{self.log_tail()}")
            time.sleep(0.25)
        pytest.fail(f"prompt not done within {timeout:.0f} s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = RUN_TIMEOUT) -> dict:
        """Queue an API-format prompt and wait until it succeeded."""
        entry = self.wait(self.queue(prompt), timeout)
        assert entry["status"]["status_str"] == "success", entry["status"]
        return entry

    def outputs(self, entry: dict, node_id: str) -> list[Path]:
        """The files a node of a finished prompt wrote (images, videos)."""
        out = entry["outputs"].get(node_id)
        assert out, f"node {node_id} wrote nothing: {json.dumps(entry['outputs'])[:2000]}"
        files = [item for items in out.values() if isinstance(items, list)
                 for item in items if isinstance(item, dict) and "filename" in item]
        assert files, out
        return [self.base / f.get("type", "output") / f.get("subfolder", "") / f["filename"]
                for f in files]

    def messages(self) -> "Messages":
        """A listener on the websocket (``with server.messages() as m: ...``)."""
        return Messages(self)


class Messages:
    """The websocket messages the server sends to the tests' client id (progress, executing,
    ...), collected by a background thread while the ``with`` block runs.

    Prompts queued with :meth:`ComfyServer.queue` carry that client id, so their per-node
    ``progress`` events arrive here (they exist nowhere else: no HTTP route reports them)."""

    def __init__(self, server: ComfyServer):
        import threading

        self.server, self.items = server, []
        self._cond = threading.Condition()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._loop = self._ws = self._error = None

    def __enter__(self) -> "Messages":
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            pytest.fail(f"could not open the websocket of {self.server.url}: {self._error}")
        return self

    def __exit__(self, *exc) -> None:
        import asyncio

        if self._loop is not None and self._ws is not None:
            asyncio.run_coroutine_threadsafe(self._ws.close(), self._loop).result(10)
        self._thread.join(10)

    def _run(self) -> None:
        import asyncio

        try:
            asyncio.run(self._listen())
        except Exception as exc:  # noqa: BLE001 - reported by __enter__ / wait_for
            self._error = exc
            self._ready.set()

    async def _listen(self) -> None:
        import asyncio

        import aiohttp

        url = f"{self.server.url}/ws?clientId={self.server.client_id}"
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            self._loop, self._ws = asyncio.get_running_loop(), ws
            self._ready.set()
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    with self._cond:
                        self.items.append(json.loads(msg.data))
                        self._cond.notify_all()

    def events(self, kind: str, prompt_id: str | None = None) -> list[dict]:
        """The ``data`` of every message of type ``kind`` so far (of ``prompt_id``, if given)."""
        with self._cond:
            return [m["data"] for m in self.items if m.get("type") == kind
                    and (prompt_id is None or m["data"].get("prompt_id") == prompt_id)]

    def wait_for(self, predicate, timeout: float = 120.0):
        """Block until ``predicate(self)`` is truthy and return its value; fail on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(self)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0 or not self.server.alive():
                    pytest.fail(f"websocket: condition not met within {timeout:.0f} s "
                                f"(listener error: {self._error}):\n{self.server.log_tail()}")
                self._cond.wait(min(left, 1.0))


def start_server(tmp_path_factory, name: str = "comfyui",
                 frontend: str = PINNED_FRONTEND, env: dict[str, str] | None = None
                 ) -> ComfyServer:
    """Provision and start a server in a fresh base directory (the caller stops it); ``env``:
    variables set for the host process on top of this one's."""
    cache = tmp_path_factory.getbasetemp() / "comfyui_host"
    cache.mkdir(exist_ok=True)
    comfy = comfyui_dir(cache)
    root = frontend_root(frontend, cache)
    base = make_base(tmp_path_factory.mktemp(f"{name}_base"))
    return ComfyServer(comfy, base, root, name, env).start()
