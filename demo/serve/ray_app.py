"""The OpenAI-compatible API on Ray Serve: N replicas, each one pipeline with its own engine.

    python -m demo.serve --ray --replicas 2 --weights pocket          # a local Ray instance
    RAY_ADDRESS=ray://head:10001 python -m demo.serve --ray ...       # an existing cluster
    serve run demo/serve/ray_serve.yaml                               # the same, from a Serve config file

Ray Serve's HTTP proxy spreads requests over the replicas (each replica batches its own requests
in its engine); a replica that dies is restarted by Ray, and requests it held fail with an HTTP
error rather than hang. Each replica asks Ray for `gpus_per_replica` GPUs (a fraction shares a
GPU) and `cpus_per_replica` CPUs. Answers carry the header `x-imagebind-replica` (the replica's
id) to see the spread.

The config file (demo/serve/ray_serve.yaml, `serve run` / `serve deploy`) names `build_app`: its
`args:` are `python -m demo.serve`'s options, and its `deployments:` section sets what Ray Serve
lets a config change (replicas, GPU fraction, CPUs). README "Scale-out with Ray Serve" has the
multi-node set-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import serve

from demo.serve.content import ServeOptions

REPLICA_HEADER = "x-imagebind-replica"
ROOT = Path(__file__).resolve().parents[2]  # the checkout: replicas import `demo` from here


@dataclass
class RayServeConfig:
    replicas: int = 1
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    max_ongoing_requests: int = 64  # per replica; Ray's router queues beyond that
    pipeline_kwargs: dict[str, Any] = field(default_factory=dict)  # from_pretrained's keywords besides the name


@serve.ingress()
class ImageBindLLMReplica:
    """One replica: a pipeline (its own engine) behind the OpenAI-compatible app."""

    def __init__(self, weights: str, options: ServeOptions, pipeline_kwargs: dict):
        from demo.pipeline import ImageBindLLMPipeline

        self.pipe = ImageBindLLMPipeline.from_pretrained(weights, **pipeline_kwargs)
        self.options = options
        self.replica = str(serve.get_replica_context().replica_id.unique_id)

    def __serve_build_asgi_app__(self):
        from demo.serve.openai_api import create_app

        app = create_app(self.pipe, self.options)
        replica = self.replica

        @app.middleware("http")
        async def name_the_replica(request, call_next):
            response = await call_next(request)
            response.headers[REPLICA_HEADER] = replica
            return response

        return app


def build_ray_app(weights: str, options: ServeOptions, config: RayServeConfig):
    """A Ray Serve application (`serve.run(app)`) of `config.replicas` API replicas. Replicas
    import `demo` from this checkout (PYTHONPATH): on a multi-node cluster every node needs the
    checkout at the same path (or start Ray with a runtime_env working_dir)."""
    deployment = serve.deployment(
        ImageBindLLMReplica,
        name="imagebind-llm",
        num_replicas=config.replicas,
        max_ongoing_requests=config.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.cpus_per_replica, "num_gpus": config.gpus_per_replica,
                           "runtime_env": {"env_vars": {"PYTHONPATH": str(ROOT)}}},
    )
    return deployment.bind(str(weights), options, config.pipeline_kwargs)


def build_app(args: dict[str, Any]):
    """The application of a Serve config file (`import_path: demo.serve.ray_app:build_app`).
    `args`: `python -m demo.serve`'s long options without the dashes (`weights`, `device`,
    `concurrency`, `max-waiting`, `replicas`, `gpus-per-replica`, ...; `true` for a flag), parsed
    by the same parser with the same defaults; relative paths are taken from the checkout."""
    from demo.serve.options import build_parser, settings

    argv = []
    for key, value in args.items():
        option = "--" + str(key).replace("_", "-")
        if value is True:
            argv.append(option)
        elif value not in (None, False):
            argv += [option, str(value)]
    parser = build_parser()
    try:
        parsed, unknown = parser.parse_known_args(argv)
    except SystemExit:  # argparse has printed why
        raise ValueError(f"bad args in the Serve config: {args!r} (see `python -m demo.serve --help`)") from None
    if unknown:
        raise ValueError(f"unknown args in the Serve config: {unknown} (the options of `python -m demo.serve --help`, without the dashes)")
    weights, options, kwargs = settings(parsed, base=ROOT)
    return build_ray_app(weights, options, ray_config(parsed, kwargs))


def ray_config(args, pipeline_kwargs: dict) -> RayServeConfig:
    """`python -m demo.serve`'s parsed options -> the deployment's settings."""
    return RayServeConfig(replicas=args.replicas, gpus_per_replica=args.gpus_per_replica, cpus_per_replica=args.cpus_per_replica,
                          max_ongoing_requests=args.concurrency + args.max_waiting, pipeline_kwargs=pipeline_kwargs)


def run_ray(weights: str, options: ServeOptions, config: RayServeConfig, host: str, port: int, blocking: bool = True) -> None:
    """Start Ray Serve's proxy on host:port and deploy; with `blocking`, serve until Ctrl-C."""
    import ray

    if not ray.is_initialized():
        ray.init()  # RAY_ADDRESS (an existing cluster) or a local instance
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_ray_app(weights, options, config), name="imagebind-llm", route_prefix="/", blocking=blocking)
