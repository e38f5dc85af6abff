"""mem_toolkit: multimodal unlearnable examples (MEM, EM, UAP) for image-caption data, and the tools to test them."""
from __future__ import annotations

__version__ = "0.1.0"
