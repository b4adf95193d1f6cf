"""Loading Hugging Face checkpoints by hub id or local path, and what identifies them.

Model-agnostic: an adapter passes its ``transformers`` model class to
:func:`load_pretrained` and its loaded model to :func:`model_identity`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tokenbench.errors import ModelLoadError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype named ``float32``, ``float16`` or ``bfloat16``."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {name!r}; use one of {', '.join(_DTYPES)}") from None


def load_pretrained(
    model_cls: Any,
    source: str,
    *,
    device: str,
    dtype: str,
    processor_options: dict[str, Any] | None = None,
    processor_loader: Callable[..., Any] | None = None,
    **options: Any,
) -> tuple[Any, Any]:
    """The model (eval mode; SDPA attention unless ``attn_implementation`` says otherwise) and its processor, from a path or a hub id.

    ``processor_loader(source, **processor_options)`` replaces ``AutoProcessor.from_pretrained``.
    """
    from transformers import AutoProcessor

    kernel = str(options.pop("attn_implementation", None) or "sdpa")
    if kernel.startswith("flash_attention"):
        _check_flash_attention(kernel, device)

    local = Path(source).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        raise ModelLoadError(f"{source}: no config.json there; point --model at a saved Hugging Face checkpoint directory")
    try:
        processor = (processor_loader or AutoProcessor.from_pretrained)(str(local) if local.exists() else source, **(processor_options or {}))
        model = model_cls.from_pretrained(
            str(local) if local.exists() else source,
            dtype=torch_dtype(dtype),
            attn_implementation=kernel,
            **options,
        )
    except OSError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in str(exc).lower() or "connect" in str(exc).lower()
        if offline:
            raise ModelLoadError(
                f"cannot load model {source!r}: it is not in the local Hugging Face cache and the hub cannot be reached "
                f"(offline); fetch it where there is network with 'hf download {source}', or pass a local checkpoint path"
            ) from None
        raise ModelLoadError(f"cannot load model {source!r}: {str(exc).splitlines()[0]}; pass a local checkpoint path instead") from None
    return model.to(device).eval(), processor


def _check_flash_attention(kernel: str, device: str) -> None:
    """One line when FlashAttention cannot run here, before any weight loads."""
    import importlib.util

    package = "flash_attn_interface" if kernel == "flash_attention_3" else "flash_attn"
    if not str(device).startswith("cuda"):
        raise ModelLoadError(f"--attn-implementation {kernel} runs on CUDA devices only (--device {device}); use sdpa or eager here")
    if importlib.util.find_spec(package) is None:
        raise ModelLoadError(f"--attn-implementation {kernel} needs the {package} package, which is not installed (pip install flash-attn); or use sdpa")


def model_identity(model: Any, source: str, device: str, dtype: str, **extra: Any) -> dict[str, Any]:
    """What identifies the weights and the runtime: path or hub id, revision or weight-file hash."""
    local = Path(source).expanduser()
    ident: dict[str, Any] = {"model": source, "model_type": model.config.model_type}
    if local.is_dir():
        digest = hashlib.sha256()
        for f in sorted(local.glob("*.safetensors")) + sorted(local.glob("config.json")):
            digest.update(f.name.encode())
            digest.update(hashlib.sha256(f.read_bytes()).digest())
        ident["weights_sha256"] = digest.hexdigest()[:16]
    else:
        ident["revision"] = getattr(model.config, "_commit_hash", None)
    ident.update(
        device=str(device),
        device_name=torch.cuda.get_device_name() if str(device).startswith("cuda") else "cpu",
        dtype=dtype,
        attention=getattr(model.config, "_attn_implementation", "sdpa"),
        **extra,
    )
    return ident
