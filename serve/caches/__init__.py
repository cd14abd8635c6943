"""The conditioning cache: a cluster-wide, byte-bounded LRU cache of conditioning tensors in Ray's object store.

Text embeddings (above all Wan's long default negative prompt) and image-to-video
first-frame conditioning repeat across many requests. One named actor per application,
``ConditioningCacheActor``, maps a content key to an ObjectRef that the actor itself put,
so every replica of every stage shares the entries and a value outlives the replica that
computed it. Replicas talk to it through ``ConditioningCache`` (client.py); keys.py names the
values, tensor_values.py measures and copies them.

Lifetime: the first replica that needs the cache creates the actor (``get_if_exists``),
``detached`` so it survives the replicas that come and go under autoscaling. It is not
removed with the Serve application: ``shutdown_cache(name, namespace)`` kills it and drops
every value (a replica that uses it afterwards starts a fresh, empty one). Because it
outlives deployments, keys carry ``KEY_SCHEMA``: bump it when a code change alters what a
key's value would be, so a redeployed app never reads the old values.

Values are read-only by contract: the same object is handed to every request. The client
stores tensors on the CPU (a CUDA tensor could not be unpickled in the GPU-less actor) and
returns CPU tensors. numpy arrays come back zero-copy as read-only views of shared memory,
so writing to one raises. torch tensors come back as a fresh copy per ``get`` (Ray pickles
them through torch's own reducer), so writing to one cannot reach the cached copy; where
the actor's process has ``RAY_ENABLE_ZERO_COPY_TORCH_TENSORS`` set they would alias shared
memory instead, and ``get`` then clones them.
"""

