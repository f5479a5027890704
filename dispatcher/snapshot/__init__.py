"""Project snapshots on the controller: the files of the project recorded, content-addressed,
when tasks are added, so each task remembers exactly which code it was queued with.

``tree`` lists the project's files (git or a walk), ``blobs`` keeps blobs and manifests under the
queue's ``snapshots`` directory, ``take`` snapshots at ``queue add`` and removes what no task
refers to. The pure rules (manifest, globs, sizes) live in ``core.snapshot``.
"""
