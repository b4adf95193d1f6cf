"""Loading a checkpoint's stock processor where its video half cannot be built.

``AutoProcessor.from_pretrained`` of a LLaVA-OneVision or InternVL checkpoint builds a
video processor too, and in ``transformers`` 5.x video processors need torchvision:
without it the whole processor fails to load, images included. :func:`load_processor`
loads the stock processor when it can; otherwise it rebuilds the same stock processor
class from the checkpoint's saved files (tokenizer, image processor, chat template,
settings) with no video processor, through a subclass that does not ask for one (no
class of ``transformers`` is changed). Such a processor handles text and images;
:func:`video_unavailable` says why it takes no video.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: set on a processor rebuilt without its video processor: the reason, for error messages
NO_VIDEO = "_tokenbench_no_video"


def load_processor(source: str, *, without_torchvision: Callable[..., Any] | None = None, **options: Any) -> Any:
    """The checkpoint's ``AutoProcessor``; where that fails for want of torchvision,
    ``without_torchvision(source, **options)`` (default: the same stock class without a video processor)."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(source, **options)
    except ImportError as exc:
        if "torchvision" not in str(exc).lower():
            raise
    return (without_torchvision or _without_video)(source, **options)


def video_unavailable(processor: Any) -> str | None:
    """Why ``processor`` takes no video (``None``: it may)."""
    return getattr(processor, NO_VIDEO, None)


def read_chat_template(source: str) -> str | None:
    """The processor's chat template file (``chat_template.jinja`` or ``.json``), local or cached from the hub."""
    from transformers.utils import cached_file

    for name in ("chat_template.jinja", "chat_template.json"):
        try:
            path = cached_file(source, name, _raise_exceptions_for_missing_entries=False)
        except OSError:
            path = None
        if path:
            text = Path(path).read_text()
            return str(json.loads(text)["chat_template"]) if name.endswith(".json") else text
    return None


def without_video_check(stock: type) -> type:
    """A subclass of the stock processor class ``stock`` that does not check its video processor's class.

    ``ProcessorMixin.__init__`` checks every sub-processor's class, and for a video
    processor that check itself needs torchvision, even for ``video_processor=None``.
    The subclass skips that one check and nothing else; it keeps the stock class's name,
    so what it saves names the stock class.
    """

    class WithoutVideo(stock):
        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument_name == "video_processor":
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    WithoutVideo.__name__, WithoutVideo.__qualname__ = stock.__name__, stock.__qualname__
    return WithoutVideo


def _without_video(source: str, **options: Any) -> Any:
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer
    from transformers.utils import cached_file

    config_file = cached_file(source, "processor_config.json", _raise_exceptions_for_missing_entries=False)
    settings: dict[str, Any] = json.loads(Path(config_file).read_text()) if config_file else {}
    name = settings.pop("processor_class", None)
    stock = getattr(transformers, str(name), None) if name else None
    if stock is None:
        raise ImportError(f"{source}: its processor needs torchvision (for video) and names no processor class to rebuild without it; pip install torchvision")
    settings = {k: v for k, v in settings.items() if k not in ("image_processor", "video_processor", "audio_processor")}

    processor = without_video_check(stock)(
        image_processor=AutoImageProcessor.from_pretrained(source, **options),
        tokenizer=AutoTokenizer.from_pretrained(source),
        video_processor=None,
        chat_template=read_chat_template(source),
        **settings,
    )
    setattr(processor, NO_VIDEO, f"video needs torchvision, which is not installed (the {stock.__name__} video processor); pip install torchvision")
    return processor
