"""Per-request step caching inside batched denoising steps.

A DiT's output changes little between neighbouring steps over much of the schedule. Each
request (each of its conditional and unconditional rows) keeps its own cache and decides
every step, from its own first block's output, whether to run the rest of the transformer
or to reuse (``first_block``) or extrapolate (``taylorseer``) what the rest added last time.
In a batched step only the rows that recompute run the remaining blocks. Off by default:
it is a lossy option, and RESULTS.md reports its quality cost.
"""
