"""medsamkit: Segment-Anything-family models on medical images (prompt, evaluate, adapt, SAMAug, 3D)."""

__version__ = "0.1.0"
