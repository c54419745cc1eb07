"""llama.cpp's own `llama-server`, built from the source vendored in the llama-cpp-python sdist.

The benchmark compares our engine with the reference implementation of the same llama.cpp
version, so it builds that version rather than trusting whatever binary is on the PATH. Nothing
is downloaded but the sdist from PyPI (pip's cache usually has it), and no binary is committed:
the build lands in a cache folder, keyed by the llama-cpp-python version.

Run it ahead of the benchmark with `python -m bots.bench.llama_server` (about 5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

DEFAULT_CACHE_DIR = Path("~/.cache/bots/llama-server").expanduser()
BINARIES = ("llama-server", "llama-bench")
# The server must not try to fetch its web UI (no network here) and needs no HTTPS or curl.
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
)
SERVER_START_TIMEOUT_S = 60.0
SERVER_POLL_INTERVAL_S = 0.2
SERVER_STOP_TIMEOUT_S = 10.0
LOG_TAIL_BYTES = 2000


class BuildError(RuntimeError):
    """llama-server could not be built; the message names the failing step."""


def llama_cpp_python_version() -> str:
    """The installed llama-cpp-python version: the llama.cpp we build is the one it vendors."""
    return importlib.metadata.version("llama-cpp-python")


def installed_binary(
    name: str = "llama-server", cache_dir: Path = DEFAULT_CACHE_DIR
) -> Path | None:
    """The cached binary built for the installed llama-cpp-python, or None when not built yet."""
    path = cache_dir / llama_cpp_python_version() / "bin" / name
    return path if path.is_file() and os.access(path, os.X_OK) else None


def _run(cmd: Sequence[str], step: str, cwd: Path | None = None) -> None:
    print(f"[llama-server build] {step}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    result = subprocess.run(cmd, cwd=cwd, check=False)
    if result.returncode != 0:
        raise BuildError(f"{step} failed (exit {result.returncode}): {' '.join(cmd)}")


def _download_sdist(version: str, dest: Path) -> Path:
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            f"llama-cpp-python=={version}",
            "--no-binary",
            ":all:",
            "--no-deps",
            "-d",
            str(dest),
        ],
        "download the llama-cpp-python sdist",
    )
    found = sorted(dest.glob("llama_cpp_python-*.tar.gz"))
    if not found:
        raise BuildError(f"pip download left no llama_cpp_python-*.tar.gz in {dest}")
    return found[0]


def _extract_vendored_llama_cpp(sdist: Path, dest: Path) -> Path:
    with tarfile.open(sdist) as tar:
        tar.extractall(dest, filter="data")
    roots = list(dest.glob("llama_cpp_python-*/vendor/llama.cpp"))
    if not roots:
        raise BuildError(f"{sdist.name} has no vendor/llama.cpp folder")
    return roots[0]


def build_llama_server(
    cache_dir: Path = DEFAULT_CACHE_DIR,
    *,
    sdist: Path | None = None,
    jobs: int | None = None,
    extra_cmake_args: Sequence[str] = (),
) -> Path:
    """Build llama-server and llama-bench for the installed llama-cpp-python; return the server.

    A finished build is reused. `sdist` skips the download; `extra_cmake_args` adds options such
    as `-DGGML_CUDA=ON` (the default build matches the CPU wheel: `-march=native`).
    """
    version = llama_cpp_python_version()
    existing = installed_binary("llama-server", cache_dir)
    if existing is not None:
        return existing
    out_dir = cache_dir / version / "bin"
    jobs = jobs or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bots-llama-build-") as tmp_name:
        tmp = Path(tmp_name)
        source = _extract_vendored_llama_cpp(sdist or _download_sdist(version, tmp), tmp)
        build = tmp / "build"
        _run(
            ["cmake", "-S", str(source), "-B", str(build), *CMAKE_OPTIONS, *extra_cmake_args],
            "configure",
        )
        _run(
            ["cmake", "--build", str(build), "-j", str(jobs), "--target", *BINARIES],
            "compile",
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in BINARIES:
            shutil.copy2(build / "bin" / name, out_dir / name)
    return out_dir / "llama-server"


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the benchmark never listens anywhere else)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def running_llama_server(
    binary: Path, model: Path, *, args: Sequence[str] = (), port: int | None = None
) -> Iterator[str]:
    """Start llama-server on 127.0.0.1 with `args`; yield its base URL; stop it on exit."""
    port = port or free_port()
    cmd = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), *args]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_healthy(proc, url, log)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(SERVER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, log: IO[bytes]) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            tail = log.read()[-LOG_TAIL_BYTES:].decode(errors="replace")
            raise BuildError(f"llama-server exited with {proc.returncode}: {tail}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(SERVER_POLL_INTERVAL_S)
    raise BuildError(f"llama-server did not become healthy in {SERVER_START_TIMEOUT_S:.0f}s")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bots.bench.llama_server`: build (or find) llama-server and print its path."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument(
        "--sdist", type=Path, default=None, help="use this sdist, skip pip download"
    )
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("cmake_args", nargs="*", help="extra cmake options, e.g. -DGGML_CUDA=ON")
    # argparse takes "-DGGML_CUDA=ON" for an unknown option, and click drops the "--" that would
    # have said otherwise: whatever it does not know must be a cmake -D option.
    ns, unknown = parser.parse_known_args(argv)
    not_cmake = [arg for arg in unknown if not arg.startswith("-D")]
    if not_cmake:
        parser.error(f"unrecognized arguments: {' '.join(not_cmake)} (cmake options start with -D)")
    try:
        path = build_llama_server(
            ns.cache_dir, sdist=ns.sdist, jobs=ns.jobs, extra_cmake_args=[*ns.cmake_args, *unknown]
        )
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
