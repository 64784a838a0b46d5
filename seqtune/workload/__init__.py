"""Kernels seqtune tunes from a recorded workload rather than from a kernel folder: any
``triton.autotune`` or ``seqtune.autotune`` kernel. ``calls.py`` describes a kernel and one call
of it (its problem, its configs, a JSON record of its arguments) and rebuilds the arguments;
``spec.py`` turns a kernel's records into a ``KernelSpec``, so the tuner, the profile, verify and
report treat it like a built-in kernel."""
