"""Segment: placeholder until the segment stage lands."""
