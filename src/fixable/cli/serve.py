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
@click.option(
    "--max-body-mb",
    type=float,
    default=8.0,
    show_default=True,
    help="Largest request body; larger ones get a 400.",
)
@click.option(
    "--max-completions",
    type=int,
    default=1024,
    show_default=True,
    help="Most completions (prompts × n) one request may ask for.",
)
@click.option(
    "--max-queued",
    type=int,
    default=4096,
    show_default=True,
    help="Most completions queued or running over all requests; beyond, a 429 with Retry-After.",
)
@click.option(
    "--context-tokens",
    type=int,
    default=8192,
    show_default=True,
    help="Prompt + completion tokens for a model that states no context length itself.",
)
def command(
    models,
    backend,
    host,
    port,
    batch_window_ms,
    backend_options,
    max_body_mb,
    max_completions,
    max_queued,
    context_tokens,
):
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
    from fixable.serve import ServeLimits, serve

    for library in ("fastapi", "uvicorn"):  # before a model is loaded or a line printed
        require(library)

    if batch_window_ms < 0:
        raise ConfigError(f"--batch-window-ms must be >= 0, got {batch_window_ms}")
    if not 0 < port < 65536:
        raise ConfigError(f"--port must be in [1, 65535], got {port}")
    if not max_body_mb > 0:
        raise ConfigError(f"--max-body-mb must be > 0, got {max_body_mb}")
    limits = ServeLimits(
        max_body_bytes=max(1, int(max_body_mb * (1 << 20))),
        max_completions=max_completions,
        max_queued_completions=max_queued,
        default_context_tokens=context_tokens,
    )
    options = _parse_options(backend_options, "--backend-option") or {}
    click.echo(
        f"serving {', '.join(models)} ({backend}) on http://{host}:{port}/v1 - Ctrl-C stops",
        err=True,
    )
    serve(
        models,
        backend=backend,
        host=host,
        port=port,
        batch_window_ms=batch_window_ms,
        limits=limits,
        **options,
    )
