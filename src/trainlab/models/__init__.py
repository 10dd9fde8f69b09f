"""Models: decoder-only transformer and its layers."""
