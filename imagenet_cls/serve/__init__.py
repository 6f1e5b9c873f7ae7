"""``python cli.py serve``: a trained model behind HTTP (LitServe), with a page, dynamic batching and probes."""
