"""Drop-in entry points with the signatures of the libraries model code is written against
(flash-linear-attention, mamba_ssm, flash-attn, causal-conv1d), backed by seqtune's tuned
kernels: switching is an import change. Each module's docstrings name the original function and
the subset of it that is supported; an unsupported argument raises NotImplementedError naming it.
"""
