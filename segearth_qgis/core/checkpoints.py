"""Reading weight files without executing code: safetensors, or torch pickles through ``weights_only=True``."""

from pathlib import Path


def load_state_dict(path, map_location="cpu"):
    """A flat ``{name: tensor}`` from a ``.safetensors`` file, a raw state dict, or ``{'state_dict': ...}``.

    A ``module.`` prefix (DataParallel) is removed, as open_clip does.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device=str(map_location))
    else:
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as error:
            raise ValueError(f"{path} could not be read as plain weights ({error.__class__.__name__}: {error}); "
                             "only files that load with torch.load(weights_only=True) or .safetensors are accepted"
                             ) from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path} holds no state dict")
    if all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state
