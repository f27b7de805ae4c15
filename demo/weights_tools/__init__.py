"""Tooling that makes the files under weights/: download, convert, build or compact a visual cache.

    download.py   the released files (`ibllm download`)
    convert.py    the command line of demo.convert (`ibllm convert`)
    cache.py      building and compacting visual caches (`ibllm cache`); retrieval is demo.cache

Nothing here is imported when the app or the pipeline runs.
"""
