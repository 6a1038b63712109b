"""Config system: YAML with ``_base_`` inheritance, dotlist overrides, validation."""
from __future__ import annotations

from detres.config.loader import apply_overrides, infer_num_classes, load_config, save_config, validate_config
from detres.config.validate import INJECTED_ARGS, ConfigError

__all__ = ["load_config", "apply_overrides", "infer_num_classes", "save_config", "validate_config", "ConfigError", "INJECTED_ARGS"]
