"""Identities: password hashing, JWT issue and verification, API keys, role checks."""
