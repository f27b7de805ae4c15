"""lmms-eval plugin: `--model imagebind_llm` runs lmms-eval's tasks through the pipeline.

    LMMS_EVAL_PLUGINS=demo.eval.lmms_plugin lmms-eval --model imagebind_llm \\
        --model_args pretrained=weights/converted/7B,max_new_tokens=16 --tasks mme --limit 8

lmms-eval reads `LMMS_EVAL_PLUGINS` packages for `models.AVAILABLE_MODELS` (the model class) and
`tasks/` (extra task YAMLs; none yet). When the project is installed as a distribution, the entry
point group `lmms_eval.models` can name `demo.eval.lmms_plugin:manifest` instead.
"""


def manifest():
    """The entry-point payload lmms-eval's registry accepts (group `lmms_eval.models`)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="imagebind_llm", simple_class_path="demo.eval.lmms_plugin.models.imagebind_llm.ImageBindLLM")
