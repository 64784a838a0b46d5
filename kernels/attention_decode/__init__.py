"""KV-cache decoding attention with split-KV (flash-decoding): one new query token per sequence
attends to its own prefix of a padded KV cache; the cache is cut into splits processed in
parallel, then merged with a log-sum-exp reduction."""
