"""A self-hosted daily digest newsletter."""

__version__ = "0.1.0"
