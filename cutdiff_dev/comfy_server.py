"""A real ComfyUI server with the pack installed the way a user installs it, for the server and
browser tests: a fresh --base-directory whose custom_nodes/ holds a copy of this repository.

    server = comfy_server.shared()      # started once per test session, killed at exit
    server.get_json("/object_info")

The server runs in its own process group (killed as a group at interpreter exit or on a
failed start), logs to BASE/server.log, and every wait is bounded.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from . import comfy_runtime as rt

PACK_DIR_NAME = "comfyui-cutdiffusion"   # the folder a git clone / the registry creates
START_TIMEOUT_S = 90
# Not a user's install: the venvs (.venv, .venv-comfyui-<version>) and .cache (unpacked ComfyUIs).
_COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", ".venv-*", ".cache", "__pycache__", ".pytest_cache",
                                      ".hypothesis", "out", "*.pyc")


# A frontend's static folder (comfyui_frontend_package/static) for the server to serve instead of
# the one installed with ComfyUI: how CI runs the browser test on the newest frontend (.ci/run).
FRONTEND_ROOT_ENV = "CUTDIFF_FRONTEND_ROOT"


class ServerError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self):
        self.base = Path(tempfile.mkdtemp(prefix="cutdiff_server_"))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log_path = self.base / "server.log"

    def install_pack(self) -> Path:
        for sub in ("custom_nodes", "input", "output", "temp", "user", "models/checkpoints"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        target = self.base / "custom_nodes" / PACK_DIR_NAME
        shutil.copytree(rt.REPO_ROOT, target, ignore=_COPY_IGNORE, symlinks=False)
        return target

    def start(self) -> "ComfyServer":
        self.install_pack()
        command = [sys.executable, str(Path(__file__).with_name("server_launcher.py")), rt.COMFY_DIR,
                   "--cpu", "--listen", "127.0.0.1", "--port", str(self.port), "--base-directory", str(self.base),
                   "--database-url", f"sqlite:///{self.base}/user/comfyui.db", "--disable-auto-launch",
                   "--preview-method", "none"]
        if os.environ.get(FRONTEND_ROOT_ENV):   # another frontend than the one this ComfyUI's requirements pin
            command += ["--front-end-root", os.environ[FRONTEND_ROOT_ENV]]
        log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        cwd=self.base, start_new_session=True)
        atexit.register(self.stop)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.get_json("/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.5)
        self.stop()
        raise ServerError(f"ComfyUI did not answer within {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def request(self, path: str, data: bytes | None = None, method: str | None = None, timeout: float = 30):
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data is not None else {})
        return urllib.request.urlopen(req, timeout=timeout)

    def get_json(self, path: str, timeout: float = 30):
        with self.request(path, timeout=timeout) as response:
            return json.loads(response.read())

    def get_bytes(self, path: str) -> bytes:
        with self.request(path) as response:
            return response.read()

    def post_json(self, path: str, value) -> None:
        with self.request(path, data=json.dumps(value).encode(), method="POST"):
            pass


_shared: ComfyServer | None = None
_start_error: ServerError | None = None


def shared() -> ComfyServer:
    """One server for the whole test session (starting one costs 10-20 s of CPU); a failed
    start is remembered, so later tests fail at once with the same log instead of retrying."""
    global _shared, _start_error
    if _start_error is not None:
        raise _start_error
    if _shared is None:
        try:
            _shared = ComfyServer().start()
        except ServerError as e:
            _start_error = e
            raise
    return _shared
