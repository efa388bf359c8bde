"""Networks, the model registry and shipped weights (arrives with the analysis issues)."""
