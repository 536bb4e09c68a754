"""The wire contract between producer and worker, and the only part of ``producer`` the worker imports.

- ``serializer``: msgpack behind one ``dumps``/``loads`` pair (RQ's serializer protocol); never pickle.
- ``jobs``: the task's name, the allow-list, a job's keyword arguments and their limits.
- ``results``: the result map, its error shapes, the templates the store's scripts complete, the version.
- ``keys``: every Redis key and channel name (RQ's layout and ours).
- ``cache``: the result cache's key, value and the workers' announcement.

Nothing here imports redis, rq, torch, Pillow or the rest of ``producer`` (tests/unit/test_imports.py).
"""
