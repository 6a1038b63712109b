"""Small utilities at the bottom of the house: distributed helpers, drawing, image IO."""
