"""Multi-rank DiT: tensor parallel and Ulysses sequence parallel over torch.distributed.

Every rank holds the whole request state and runs the same scheduler step on the same
(replicated or gathered) model output, so only new requests' conditioning and the ids
in each step cross process boundaries outside the model's own collectives.
"""
