"""Training ImageBind-LLM's adapter (reference section 11): feature cache, stage 1, stage 2, export.

    python -m demo.train --help

Modules: `data` (caption / instruction files, bad-data reports, tokenisation), `features`
(ImageBind features computed once, resumable), `adapter_model` (the frozen base LLaMA with the
adapter unfolded on top, read and written in the official `7B.pth` layout), `trainer` (loop,
schedule, checkpoints, resume), `plot` (SVG loss curve), `cli` (the command line).
"""
