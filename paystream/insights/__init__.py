"""Analytics windows and fraud alerts derived from the outcome stream (see README: Insights)."""
