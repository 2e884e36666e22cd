"""The experiment trackers of spec.tracking: sinks fed from the same records as `metrics.jsonl`."""
