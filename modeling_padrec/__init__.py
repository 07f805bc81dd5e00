"""padrec: PAD-Rec position-aware drafting for LLM-based generative list-wise recommendation."""

__version__ = "0.1.0"
