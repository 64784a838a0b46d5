"""selective_scan: Mamba's selective state-space scan with input-dependent delta, B and C."""
