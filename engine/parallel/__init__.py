"""Multi-rank DiT over torch.distributed: tensor parallel, Ulysses sequence parallel, and
classifier-free-guidance parallel (alone or around Ulysses).

Every rank holds the whole request state and runs the same scheduler step on the same
(replicated or gathered) model output, so only new requests' conditioning and the ids
in each step cross process boundaries outside the model's own collectives.
"""
