"""Checkpoint loaders: HF safetensors directories and the FLUID K-head file.

(``fluid_rt.weights.gguf`` - GGUF files - is imported on demand by ``fluid_rt.loader``.)
"""

from fluid_rt.weights.khead import find_khead, load_khead
from fluid_rt.weights.safetensors_loader import load_hf_checkpoint, read_config, read_safetensors_header

__all__ = ["load_hf_checkpoint", "read_config", "read_safetensors_header", "load_khead", "find_khead"]
