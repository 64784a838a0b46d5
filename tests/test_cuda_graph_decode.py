"""benchmarks/cuda_graph_decode.py needs a GPU to capture graphs; without one it says so in one
line and exits 0 (so CI and CPU machines can run it blindly)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "cuda_graph_decode.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the script runs for real")
def test_without_a_gpu_it_prints_one_line_and_exits_0(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("cuda_graph_decode", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look the module up
    spec.loader.exec_module(module)
    assert module.main([]) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and "no CUDA GPU" in printed
