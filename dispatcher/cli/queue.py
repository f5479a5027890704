"""``labtasker queue ...``: add, ls, cancel, retry, update, rm. (being written)"""
