"""Faust agents and the processing logic they run."""
