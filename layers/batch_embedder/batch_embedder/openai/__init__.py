"""The provider side: everything that speaks to OpenAI's API (or a compatible one).

- ``client``: the ``openai`` SDK client from the settings, provider checks, quota errors.
- ``files``: uploading, streaming and deleting files; decoding base64 embeddings.
- ``batch_files``: the Batch API's request lines, ``custom_id`` and input-file packing.
- ``sync_embed``: the synchronous Embeddings API under the shared token bucket.
- ``headers``: ``x-ratelimit-*`` and ``retry-after`` headers, read as seconds.
- ``pricing``: USD per 1M tokens, standard and batch (``docs/openai-limits.md``).

Inside this package ``import openai`` is the SDK: imports are absolute.
"""
