"""Typed wrappers of the fluid_rt kernels (``torch.ops.fluid_rt.*``).

Each family lives in its own module with its fake (meta) implementation, so the ops trace under
``torch.compile`` and capture in CUDA graphs.
"""

from fluid_rt.ops.attention import *  # noqa: F401,F403
from fluid_rt.ops.commit import *  # noqa: F401,F403
from fluid_rt.ops.entropy import *  # noqa: F401,F403
from fluid_rt.ops.layer import *  # noqa: F401,F403
from fluid_rt.ops.linear import *  # noqa: F401,F403
from fluid_rt.ops.lora import *  # noqa: F401,F403
from fluid_rt.ops.norm import *  # noqa: F401,F403
from fluid_rt.ops.quant import *  # noqa: F401,F403
from fluid_rt.ops.rope import *  # noqa: F401,F403
from fluid_rt.ops.step import *  # noqa: F401,F403
