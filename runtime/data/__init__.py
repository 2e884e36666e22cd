"""Training data: reading records, tokenising them with loss masks, and forming batches."""
