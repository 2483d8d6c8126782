"""The engines a model object may name, as the catalog and the runners both know them."""

from __future__ import annotations

ENGINES = ("llamacpp", "api", "tensorrt")
DEFAULT_ENGINE = "llamacpp"
# Engines whose models run elsewhere (a remote API, a Triton server): nothing to download or materialise.
REMOTE_ENGINES = frozenset({"api", "tensorrt"})
