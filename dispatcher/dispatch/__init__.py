"""The dispatch loop and its parts: placement, host reports and calls, logs, hooks, recovery."""
