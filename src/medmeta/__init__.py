"""medmeta: meta-learning (few-shot learning) for medical image analysis.

`import medmeta` needs only torch and numpy; optional parts load on use.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
