"""Siamese networks for image pair verification.

Importing the package imports nothing heavy: `siamese.runtime`, `siamese.images`,
`siamese.pairs`, `siamese.metrics` and `siamese.evaluate` work without PyTorch, so a
deployment machine needs only numpy, Pillow (and scikit-learn for metrics). In a script of the
toolkit run as a program, importing it makes Ctrl-C one line at any moment (interrupts.py).
"""

from . import interrupts as _interrupts

_interrupts.install()  # first: a script's own imports come after this

__version__ = "1.0.0"
