"""The one storage layer: every file sftbench reads or writes goes through here.

- schema.py: the schema policy (schema 2, one envelope per kind of file; strict checks naming the file and field;
  the migration from schema 1; unknown schemas refused),
- results.py: result files, and reading a result from a result or a baseline file,
- baselines.py: the baselines of each GPU model,
- records.py: run records and self-test summaries,
- files.py: atomic writes, the rescue folder, the repository root,
- locks.py: one run at a time per results folder and per baselines folder being written.
"""
