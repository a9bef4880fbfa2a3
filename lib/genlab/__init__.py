"""genlab: the shared library of the generative-AI course.

Modules (read them in this order): ``masks``, ``attention``, ``plots``; later
``encoder`` (BERT), ``decoder`` (GPT), ``scgpt``.  Conventions used everywhere:
boolean masks with ``True`` = may attend; blocked scores filled with
``torch.finfo(dtype).min``; every random choice takes a seed or a generator.
"""

__version__ = "0.1.0"
