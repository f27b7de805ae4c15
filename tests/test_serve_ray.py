"""The OpenAI-compatible API on Ray Serve (demo/serve/ray_app.py): a local Ray instance on CPU,
2 replicas of the tiny preset, driven by the `openai` client."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

ray = pytest.importorskip("ray")  # ray[serve] pinned in requirements.txt
openai = pytest.importorskip("openai")

MODEL = "imagebind-llm-tiny"


@pytest.fixture(scope="module")
def ray_server(tiny_pipeline):  # tiny_pipeline: the tiny preset is written once, before the replicas read it
    from ray import serve

    from demo.serve.content import ServeOptions
    from demo.serve.ray_app import RayServeConfig, run_ray

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        run_ray("tiny", ServeOptions(model_name=MODEL), RayServeConfig(replicas=2, cpus_per_replica=1), "127.0.0.1", port, blocking=False)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_share_the_requests(ray_server):
    client = openai.OpenAI(base_url=ray_server, api_key="unused", max_retries=0, timeout=120)

    def ask(i: int) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": f"Hi {i}"}], max_tokens=3, temperature=0)
        assert raw.parse().choices[0].message.content is not None
        return raw.headers["x-imagebind-replica"]

    replicas = set()
    deadline = time.time() + 60
    while len(replicas) < 2 and time.time() < deadline:
        with ThreadPoolExecutor(4) as pool:
            replicas |= set(pool.map(ask, range(8)))
    assert len(replicas) == 2
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=5, stream=True)
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    error = httpx.post(f"{ray_server}/chat/completions", json={"messages": []}, timeout=60)
    assert error.status_code == 400 and error.json()["error"]["param"] == "messages"


def test_a_killed_replica_fails_its_request_without_hanging(ray_server):
    from ray.util import list_named_actors

    body = {"model": MODEL, "messages": [{"role": "user", "content": "Talk"}], "max_tokens": 512, "stream": True,
            "temperature": 1.0, "seed": 5}
    began = time.time()
    events, failed = [], False
    with httpx.Client(timeout=httpx.Timeout(60)) as http:
        with http.stream("POST", f"{ray_server}/chat/completions", json=body) as response:
            replica = response.headers["x-imagebind-replica"]
            try:
                for line in response.iter_lines():
                    events.append(line)
                    if len(events) == 3:  # mid-stream: kill the replica serving it
                        name = next(a["name"] for a in list_named_actors(all_namespaces=True) if replica in a["name"])
                        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=False)
            except httpx.HTTPError:
                failed = True
    assert time.time() - began < 60
    assert failed or "data: [DONE]" not in events or any('"error"' in e for e in events)
    # The service goes on: the other replica answers (Ray restarts the killed one).
    client = openai.OpenAI(base_url=ray_server, api_key="unused", max_retries=2, timeout=120)
    assert client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2).choices


def test_the_serve_config_file_builds_the_command_line_application():
    """demo/serve/ray_serve.yaml through Ray's own code, without a cluster: the schema `serve run`
    and `serve deploy` validate, the builder they call, the build and the config's overrides the
    controller applies. The result is the deployment of the equivalent command line."""
    from pathlib import Path

    import yaml
    from ray.serve._private import deploy_utils
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.application_state import import_attr, override_deployment_info
    from ray.serve._private.build_app import build_app
    from ray.serve.schema import ServeDeploySchema

    from demo.serve.options import build_parser, settings
    from demo.serve.ray_app import build_ray_app, ray_config

    def deployment(application, name, config=None):
        (built,) = build_app(application, name=name).deployments
        args = deploy_utils.get_deploy_args(name=built.name, replica_config=built._replica_config, ingress=True,
                                            deployment_config=built._deployment_config)
        info = deploy_utils.deploy_args_to_deployment_info(**args, app_name=name)
        return override_deployment_info({built.name: info}, config)[built.name], built

    path = Path(__file__).resolve().parents[1] / "demo" / "serve" / "ray_serve.yaml"
    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    (app,) = config.applications
    from_file, built = deployment(call_user_app_builder_with_args_if_necessary(import_attr(app.import_path), app.args), app.name, app)

    argv = ["--ray", "--replicas", "2", "--gpus-per-replica", "0.5", "--weights", "/models/imagebind-llm/7B", "--device", "cuda",
            "--dtype", "float16"]
    args = build_parser().parse_args(argv)
    weights, options, kwargs = settings(args)
    from_cli, cli_built = deployment(build_ray_app(weights, options, ray_config(args, kwargs)), "imagebind-llm")

    assert from_file.deployment_config.num_replicas == from_cli.deployment_config.num_replicas == 2
    assert from_file.deployment_config.max_ongoing_requests == from_cli.deployment_config.max_ongoing_requests == 8 + 64
    assert from_file.replica_config.ray_actor_options["num_gpus"] == from_cli.replica_config.ray_actor_options["num_gpus"] == 0.5
    assert built._replica_config.init_args == cli_built._replica_config.init_args  # weights, API options, from_pretrained keywords
    assert built._replica_config.init_args[0] == "/models/imagebind-llm/7B" and built._replica_config.init_args[2]["dtype"] == "float16"
    with pytest.raises(ValueError, match="unknown args in the Serve config: \\['--colour'"):
        call_user_app_builder_with_args_if_necessary(import_attr(app.import_path), {"colour": "blue"})
