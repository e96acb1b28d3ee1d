"""Training a gated FLUID adapter for a Llama-family base model on the CPU (``fluid-rt adapt``).

``prompts`` (the prompt set) -> ``data`` (self-distilled answers) -> ``layout`` (Stage I / II masks,
labels, attention bias) -> ``model`` (frozen base + gated LoRA, split forward) -> ``objectives``
(Stage I CE, Stage II K-head) -> ``trainer`` (loop, checkpoints) -> ``run`` / ``cli``; ``report``
measures tokens per forward of the result. The runtime side is ``fluid_rt.adapter``.
"""
