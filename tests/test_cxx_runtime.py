"""The engine package puts the system C++ runtime in the global symbol scope before llama.cpp
loads (the CUDA-build crash described in bots/engine/cxx_runtime.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# std::chrono::system_clock::now(), exported by every libstdc++.so.6.
SYMBOL = "_ZNSt6chrono3_V212system_clock3nowEv"
PROBE = f"""
import ctypes
print(hasattr(ctypes.CDLL(None), {SYMBOL!r}))
import bots.engine
print(hasattr(ctypes.CDLL(None), {SYMBOL!r}))
import llama_cpp
print(llama_cpp.llama_supports_gpu_offload() in (True, False))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="libstdc++.so.6 is Linux's")
def test_importing_the_engine_makes_libstdcxx_global_before_llama_cpp() -> None:
    # A fresh interpreter: in this one, earlier tests have loaded everything already.
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split() == ["False", "True", "True"]
