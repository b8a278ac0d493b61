"""Lily: an open, real-time, multi-tenant metadata platform on PostgreSQL."""

__version__ = "0.1.0"
