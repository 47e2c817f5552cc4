"""Feature visualization (being written)."""
