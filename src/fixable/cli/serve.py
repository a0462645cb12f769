"""``fixable serve``: run the OpenAI-compatible server over organism or hf models.

A thin shell over ``fixable.serve.serve``. Every MODEL given is served under its own
name as the ``model`` id; the first answers requests that name none. It listens on
127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import click

from fixable.cli.sample import _parse_options


@click.command("serve")
@click.argument("models", nargs=-1, required=True)
@click.option(
    "--backend",
    "-b",
    default="organism",
    show_default=True,
    help="Backend that runs the models: organism (zoo names, checkpoint "
    "directories) or hf (transformers model directories).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; anything but loopback exposes the models.",
)
@click.option("--port", "-p", type=int, default=8000, show_default=True)
@click.option(
    "--batch-window-ms",
    type=float,
    default=5.0,
    show_default=True,
    help="How long a request waits for others to be decoded in the same batch.",
)
@click.option(
    "--backend-option",
    "-B",
    "backend_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Backend constructor option, e.g. -B device=cuda (repeatable).",
)
def command(models, backend, host, port, batch_window_ms, backend_options):
    """Serve MODELS over /v1/completions and /v1/chat/completions.

    \b
    fixable serve llama-rl-s0 llama-base
    fixable serve --backend hf out/llama-rl-s0-hf -B device=cuda -B dtype=bfloat16
    curl -s localhost:8000/v1/completions -H 'content-type: application/json' \\
      -d '{"model": "llama-rl-s0", "prompt": "4821|a27 s13|", "max_tokens": 40,
           "logprobs": 5, "seed": 1}'
    """
    from fixable.errors import ConfigError
    from fixable.extras import require
    from fixable.serve import serve

    require("fastapi"), require("uvicorn")  # before a model is loaded or a line printed

    if batch_window_ms < 0:
        raise ConfigError(f"--batch-window-ms must be >= 0, got {batch_window_ms}")
    if not 0 < port < 65536:
        raise ConfigError(f"--port must be in [1, 65535], got {port}")
    options = _parse_options(backend_options, "--backend-option") or {}
    click.echo(
        f"serving {', '.join(models)} ({backend}) on http://{host}:{port}/v1 - Ctrl-C stops",
        err=True,
    )
    serve(models, backend=backend, host=host, port=port, batch_window_ms=batch_window_ms, **options)
