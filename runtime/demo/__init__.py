"""`make demo` and its assets: tiny models built from configs, and the data they learn."""
