"""Built-in strategy ``beam``: beam search (filled in by the beam-search work)."""
