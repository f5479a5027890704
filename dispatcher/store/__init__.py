"""The queue file (DuckDB): schema and migrations, transactions, the one move path, adds, edits,
suspensions and results.
"""
