"""Serving: SavedModel export of a trained classifier, and prediction on image files."""
