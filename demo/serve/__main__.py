"""`python -m demo.serve`: the OpenAI-compatible API without the web UI (options: demo/serve/options.py)."""

from __future__ import annotations

import logging

from .options import build_parser, settings


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    from .openai_api import create_app
    from .zerogpu import pipeline_class

    weights, options, kwargs = settings(args)
    if args.ray:
        from .ray_app import ray_config, run_ray  # imports ray: only when asked for

        config = ray_config(args, kwargs)
        print(f"serving {options.model_name!r} on Ray Serve ({args.replicas} replicas) at http://{args.host}:{args.port}/v1", flush=True)
        run_ray(weights, options, config, args.host, args.port)
        return
    pipe = pipeline_class().from_pretrained(weights, **kwargs)  # on a ZeroGPU Space: ZeroGPUPipeline
    pipe.engine.max_waiting = args.max_waiting
    print(f"serving {options.model_name!r} on http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(create_app(pipe, options), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
