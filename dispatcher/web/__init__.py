"""The local web dashboard (``labtasker ui``): a stdlib HTTP server (``server``), its JSON reads of
the queue (``data``), the once-a-second gate every queue read goes through (``reader``), and the
static page it serves (``static/``, package data). It changes tasks only through the store's own
operations (cancel, retry, update), as the CLI does.
"""
