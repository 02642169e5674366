"""Galleries: enroll reference images once, then verify against a subject or identify 1:N.

``store.py`` is the interface both stores implement (``sqlite.py``, the embedded default, and
``postgres.py``, for replicas sharing one database); ``index.py`` searches a gallery held in
memory, exactly or with faiss; ``search.py`` keeps each process's indexes in step with the store.
"""
