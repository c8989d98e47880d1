"""Ember's version (``ember.__version__``), here so that every layer can read it."""

__version__ = "0.1.0"
