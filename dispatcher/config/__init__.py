"""Configuration: hosts.toml and its value checkers, and where the queue and its files live."""
