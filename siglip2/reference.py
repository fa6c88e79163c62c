"""The SigLIP2 / SigLIP model classes bound to the "reference" impl: pure PyTorch, padded with masks,
transformers' numerics. Same module tree and state dicts as `siglip2.fast`."""
from . import modeling

_NAMES = ["Siglip2Model", "Siglip2VisionModel", "Siglip2TextModel", "Siglip2ForImageClassification",
          "SiglipModel", "SiglipVisionModel", "SiglipTextModel"]


def bind(impl: str, module_name: str) -> dict:
    """Subclasses of the modeling classes whose default impl is `impl` (isinstance of the base classes holds)."""
    out = {}
    for name in _NAMES:
        base = getattr(modeling, name)
        out[name] = type(name, (base,), {"default_impl": impl, "__module__": module_name, "__doc__": base.__doc__,
                                         "__qualname__": name})
    return out


globals().update(bind("reference", __name__))
__all__ = list(_NAMES)
