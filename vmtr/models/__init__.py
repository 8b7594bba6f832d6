"""Model wrappers: the VideoLM interface and its backends, embedders, the tiny model."""
