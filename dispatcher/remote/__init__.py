"""The remote side of labtasker: the stdlib-only helper shipped to hosts, its wire protocol, and the
controller-side client that speaks it over any pair of byte streams."""
