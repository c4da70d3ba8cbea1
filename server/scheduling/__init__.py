"""Scheduling: which calls are queued (`admission`), which pieces form the next batch
(`composition`) over which padded shapes (`buckets`), and the batcher that waits and
dispatches to a `Runner`. Numpy only: the engine implements the runner, the door submits."""
