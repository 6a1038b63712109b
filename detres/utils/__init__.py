"""Small utilities: drawing, image IO."""
