"""The deployable bundle, built from the pipeline's results (``nnbridge.predict`` reads it)."""
