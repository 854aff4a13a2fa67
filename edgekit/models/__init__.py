"""The reference model zoo (torchvision key names, deterministic default weights)."""
from .build import Weights, build, create_model, load_weights, read_state_dict
from .registry import ModelSpec, aliases, get_spec, list_models, list_specs, register_alias, register_model, resolve_name

__all__ = ["ModelSpec", "Weights", "aliases", "build", "create_model", "get_spec", "list_models", "list_specs",
           "load_weights", "read_state_dict", "register_alias", "register_model", "resolve_name"]
