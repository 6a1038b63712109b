"""detres.engine."""
