"""One router per resource. ``API_ROUTERS`` in ``lily.api.app`` lists them all, in match order."""
