"""The embedded reference model, registered as the default ``--model`` like any named checkpoint plugin."""

from __future__ import annotations

from importlib import resources

from tokenbench.errors import ModelLoadError
from tokenbench.hookspecs import Register, hookimpl
from tokenbench.named_model import NamedModel


class ReferenceModel(NamedModel):
    name = "reference"
    description = "The embedded LLaVA-architecture reference model (2.58 M parameters, 144 visual tokens), trained on shapes."

    @classmethod
    def location(cls) -> str:
        path = resources.files(__name__) / "checkpoint"
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"the embedded reference checkpoint is not installed ({path}); pass --model PATH")
        return str(path)


@hookimpl
def register_models(register: Register) -> None:
    register(ReferenceModel, default=True)
