"""Semore pipeline: simulators, dataset stages, formats and command-line tools."""

__version__ = "0.1.0"
