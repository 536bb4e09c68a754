"""GPU side: the batch worker, its model loading, decoding and RQ bookkeeping."""
