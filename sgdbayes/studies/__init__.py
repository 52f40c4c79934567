"""Canonical study declarations (``NAME.toml``), shipped with the package.

The repository's top-level ``studies/`` folder is a symlink to this directory.
See :mod:`sgdbayes.runner.config` for the file format and
``python -m sgdbayes.study --list`` for the studies and their presets.
"""
