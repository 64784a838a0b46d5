"""linear_scan: the diagonal linear recurrence h_t = a_t * h_{t-1} + b_t (RG-LRU, LRU, S5)."""
