"""Template tags of the usage and statement pages."""
