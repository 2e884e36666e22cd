"""The single controller on the Ray driver: the loop, where batches come from, checkpoints, records, and
`kubedistill run`'s work."""
