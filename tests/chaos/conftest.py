"""The chaos tests use the integration tests' ``lab`` and ``faults`` fixtures."""

from tests.integration.conftest import faults, lab

__all__ = ["faults", "lab"]
