"""seqtune inside other libraries' models: ``transformers.py`` swaps a loaded Hugging Face
model's sequence-mixing kernels for seqtune's; ``model_config.py`` derives the seqtune problems a
model's ``config.json`` produces, so a user tunes exactly what their model runs."""
