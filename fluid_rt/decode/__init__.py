"""Elastic-horizon (FLUID) decoding and greedy AR decoding on one static KV cache.

``Decoder`` (decoder.py) runs the loop; ``DecodeConfig`` (config.py) holds a request's parameters
with all their checks and defaults; ``Batch`` (batch.py) is the state of one call; the phases
between two forwards are in phases.py, the ways a step runs (eager, static width, CUDA graph) in
runner.py, and the block trace records in trace.py.
"""

from fluid_rt.decode.batch import Generation, OnCommit
from fluid_rt.decode.config import DecodeConfig
from fluid_rt.decode.decoder import BatchStats, Decoder
from fluid_rt.decode.trace import BlockRecord

__all__ = ["BatchStats", "BlockRecord", "DecodeConfig", "Decoder", "Generation", "OnCommit"]
