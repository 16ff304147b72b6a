"""autointerp: automated interpretability labeling, scoring and a searchable feature catalog."""

__version__ = "0.1.0"
