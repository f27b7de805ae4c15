"""Benchmarks through the pipeline (issue 18): `python -m demo.eval mme | captions | pocket`.

Modules: `runner` (samples -> answers, cached per sample in a JSONL; scores files), `mme` (MME
loading and the official scoring), `captions` (caption sets of any modality, BLEU / CIDEr),
`pocket` (the pocket world's table), `lmms` (the lmms-eval model plugin), `vlmeval` (a VLMEvalKit
model wrapper). Nothing here is imported by the app; docs/evaluation.md has the commands.
"""
