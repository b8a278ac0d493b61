"""Outbound delivery: channels (plugins), the retry schedule, and the dispatcher that sends deliveries."""
