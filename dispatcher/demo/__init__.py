"""The built-in demo: a small grid run on this machine through the `local` host."""
