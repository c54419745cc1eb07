"""Load the system C++ runtime into the process's global symbol scope before llama.cpp.

A Python process has no C++ runtime of its own: libstdc++ arrives as a dependency of libllama,
behind libggml-cuda in the lookup order, so C++ library code that libggml-cuda.so also carries
can bind to libggml-cuda's copy. In a CUDA 13.0 build on an H200 that crashed llama.cpp's
tokenizer (std::regex) while the engine loaded the model; `LD_PRELOAD` of the system libstdc++
fixed it, and a C++ program such as llama-server, which loads libstdc++ first, never crashed.
Opening it with RTLD_GLOBAL before llama_cpp gives it the same precedence from inside Python.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

LIBSTDCXX = "libstdc++.so.6"


def preload_libstdcxx() -> bool:
    """Make the system libstdc++ global on Linux; False where there is none to load."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        ctypes.CDLL(LIBSTDCXX, mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        log.debug("no %s to preload: %s", LIBSTDCXX, exc)
        return False
    return True
