"""The package version (pyproject.toml reads it from here), below every module that records it."""
__version__ = "0.1.0"
