"""Bulk ingestion: stream a JSON array or NDJSON body, validate each item alone, stage, then append.

``parse`` turns a stream of byte chunks into items (or per-item errors) without holding the body;
``items`` validates one item as ``POST /metadata`` would; ``ingest`` drives both into the store.
"""
