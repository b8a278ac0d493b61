"""Inbound sources: OpenLineage, webhooks, pollers, CDC. Each turns outside input into log events."""
