"""Bundled default input photos (from scikit-image's data set); see ATTRIBUTION.md."""
