"""The boundary to the network: running an argv on a host over SSH or locally, SSH targets,
host-key trust, error mapping, and copying output files back.
"""
