"""The one version string of mia_fast: the package metadata reads it from here (pyproject.toml)."""

__version__ = "0.1.0"
