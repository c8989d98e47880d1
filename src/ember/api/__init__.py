"""The public API's implementation; ``ember/__init__.py`` re-exports it."""
