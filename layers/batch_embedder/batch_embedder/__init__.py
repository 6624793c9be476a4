"""batch_embedder: the shared library behind every Lambda of the batch-embedder workflow.

Layout (handlers -> logic -> data access):

- ``models``: the pydantic contracts that travel between Step Functions states.
- ``steps``: one module of logic per workflow state.
- ``aws``: small named modules around S3, DynamoDB and Secrets Manager, and the two
  DynamoDB limiters (``rate_bucket``: RPM/TPM; ``batch_queue``: the Batch API's pool).
- ``db``: the Postgres/pgvector schema, the bulk writer and the search query.
- ``documents`` / ``chunking`` / ``tokenizer``: text extraction and token-exact chunking.
- ``openai``: the provider side: client, files, batch request lines, synchronous
  embedding, rate-limit headers and prices.
"""

__version__ = "0.1.0"
