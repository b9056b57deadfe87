"""Export a trial's configuration: YAML that `moa-search train` reads, and library-API Python.

    from moa_search.export import load_exported_ffn
    ffn = load_exported_ffn("best.yaml")        # an FFNConfig, validated
    layer = build_ffn(d_model=512, d_hidden=2048, config=ffn)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping

from moa_search.config import FFNConfig, RunConfig, load_run_config, run_config_to_dict
from moa_search.errors import ConfigError
from moa_search.yamlio import dump_yaml


def export_config_yaml(config: RunConfig, header: str = "") -> str:
    """Return the full run config as YAML; `header` lines are written first as comments."""
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    return comments + dump_yaml(run_config_to_dict(config))


def ffn_python_snippet(ffn: FFNConfig, ffn_per_layer: Mapping[int, FFNConfig] | None = None, header: str = "") -> str:
    """Return Python source that builds the FFN config (and per-layer overrides) with the library API."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines += ["from moa_search.config import FFNConfig", "", f"ffn = {_ffn_call(ffn)}"]
    if ffn_per_layer:
        lines.append("ffn_per_layer = {")
        for index, layer_ffn in sorted(ffn_per_layer.items()):
            lines.append(f"    {index}: {_ffn_call(layer_ffn)},")
        lines.append("}")
    return "\n".join(lines) + "\n"


def _ffn_call(ffn: FFNConfig) -> str:
    arguments = ", ".join(f"{item.name}={getattr(ffn, item.name)!r}" for item in dataclasses.fields(ffn))
    return f"FFNConfig({arguments})"


def load_exported_ffn(path: str | Path) -> FFNConfig:
    """Load the FFN config from an exported YAML file (or any run config YAML), validated.

    Raises ConfigError naming the file and line for an invalid setting. Per-layer overrides in the
    file are validated too but not returned; `load_run_config(path).ffn_per_layer` has them.
    """
    file = Path(path)
    if file.suffix == ".py":
        raise ConfigError(f"{file}: load_exported_ffn reads the exported YAML file; "
                          "the Python export is meant to be copied into your code")
    return load_run_config(file).ffn


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path`, creating parent folders; a path that cannot be written raises ConfigError."""
    file = Path(path)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text, encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot write {file}: {error}; choose another --output path") from None
    return file
