"""detres.evaluation."""
