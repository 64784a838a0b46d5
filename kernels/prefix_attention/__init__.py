"""prefix_attention: attention as an RNN (Aaren), every prefix's softmax attention by a scan."""
