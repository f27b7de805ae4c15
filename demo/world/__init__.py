"""The pocket world (issue 8): a procedural world, a micro ImageBind and a micro LLaMA trained on
it on CPU, and the project's own adapter training on top; `python -m demo.world --help`.

Modules: `scene` (objects and their six modalities), `encoder` (micro ImageBind training),
`language` (tokenizer, texts and the micro LLaMA), `evaluate` (the paper's claims as a table),
`build` (the whole recipe, one command)."""
