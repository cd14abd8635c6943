"""Per-request step caching inside batched denoising steps.

A DiT's output changes little between neighbouring steps over much of the schedule. Each
request (each of its conditional and unconditional rows) keeps its own cache and decides
every step whether to run the transformer: from its own first block's output, then reusing
(``first_block``) or extrapolating (``taylorseer``) what the rest added last time; or,
before any block, from how the magnitude of the whole transformer's residual has been
changing (``magcache``, the default), then reusing every block's residual. In a batched
step only the rows that recompute run the blocks. Off by default: it is a lossy option,
and RESULTS.md reports its quality cost.
"""
