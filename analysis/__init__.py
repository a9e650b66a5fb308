"""Image analysis: pure functions on arrays, the streaming worker, statistics and reports."""
