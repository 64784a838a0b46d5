"""Guards every op shares before a launch: sizes beyond 32-bit indexing are refused without
allocating anything, and CPU tensors outside the interpreter get one clear line."""
import os
import subprocess
import sys

import pytest
import torch

from seqtune.checks import MAX_INDEX, expect_tensor
from seqtune.kernels import attention, linear_scan
from seqtune.launch import new_output


def test_a_tensor_past_int32_indexing_is_refused_by_its_name():
    huge = torch.zeros(1, 1, 1, 64).expand(2**25, 1, 1, 64)  # 2**31 elements, no memory
    with pytest.raises(ValueError, match=r"q with shape \(33554432, 1, 1, 64\).*32-bit"):
        expect_tensor("q", huge, 4)


def test_strides_reaching_past_int32_are_refused():
    view = torch.empty(8, device="meta").as_strided((2, 2), (2**31, 1))
    with pytest.raises(ValueError, match="farthest offset 2,147,483,649"):
        expect_tensor("k", view, 2)


def test_the_largest_indexable_tensor_passes():
    expect_tensor("v", torch.zeros(1).expand(MAX_INDEX), 1)


def test_an_op_refuses_before_allocating():
    q = torch.zeros(1, 1, 1, 64).expand(2**25, 1, 1, 64)
    with pytest.raises(ValueError, match="32-bit"):
        attention(q, q, q)


def test_outputs_past_int32_are_refused_before_allocation():
    with pytest.raises(ValueError, match="output with shape .*32-bit"):
        new_output((2**16, 2**16), torch.float32, "cpu")


def test_linear_scan_refuses_a_huge_expanded_input():
    a = torch.zeros(1, 1, 1).expand(2**11, 2**10, 2**10)
    with pytest.raises(ValueError, match="32-bit"):
        linear_scan(a, a)


def test_cpu_tensors_without_the_interpreter_get_one_line():
    code = ("import torch\nfrom seqtune.kernels import linear_scan\n"
            "linear_scan(torch.zeros(1, 3, 4), torch.zeros(1, 3, 4))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: linear_scan_kernel: CPU tensors need the Triton "
                           "interpreter: set TRITON_INTERPRET=1")
