"""The engine: the devices and their compiled calls (`device`), a batch's pieces packed into
them (`packing`), the tables and where they live (`placement`, `mapped_file`), the prefix
cache, and the model versions served (`versions`, `reload`). `runner.ModelRunner` is the
batcher's `Runner`."""
