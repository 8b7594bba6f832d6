"""What the agent calls: video decoding, the segment store and frame selection."""
