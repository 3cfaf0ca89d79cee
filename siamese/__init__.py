"""Siamese networks for image pair verification.

Importing the package imports nothing heavy: `siamese.runtime`, `siamese.images`,
`siamese.pairs`, `siamese.metrics` and `siamese.evaluate` work without PyTorch, so a
deployment machine needs only numpy, Pillow (and scikit-learn for metrics).
"""

__version__ = "1.0.0"
