"""The package's version: the one source pyproject.toml reads it from."""
__version__ = "0.1.0"

__all__ = ["__version__"]
