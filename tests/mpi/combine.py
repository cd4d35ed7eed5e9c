"""combine_gradients' layout contract under a real ``mpiexec -n 2``, for tests/test_distributed.py:

    mpiexec -n 2 python tests/mpi/combine.py [--mixed]

Each rank sums gradients laid out as the engine hands them out (C order, channels-last conv
weights, a size-1 axis, a strided non-dense view; with --mixed also a float64 one) plus a
few extras; rank 0 prints one JSON
line describing what came back.
"""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from autotrain import distributed  # noqa: E402

comm = distributed.init()
rng = np.random.default_rng(comm.rank)
arrays = [
    rng.standard_normal((4, 3, 3, 3)).astype(np.float32),                                   # C order
    rng.standard_normal((4, 3, 3, 2)).astype(np.float32).transpose(0, 3, 1, 2),             # channels-last
    rng.standard_normal((1, 3, 3, 5)).astype(np.float32).transpose(0, 3, 1, 2),             # size-1 axis
    rng.standard_normal((6, 8)).astype(np.float32)[:, ::2],                                 # not one block
]
if "--mixed" in sys.argv:  # a float64 gradient among float32 ones: the buffer is float64
    arrays.append(rng.standard_normal(5))
inputs = [a.copy() for a in arrays]
everyone = comm.comm.allgather(inputs)
summed, extras = comm.combine_gradients(arrays, [comm.rank + 1.0, 2.0])
report = {
    "extras": extras.tolist(),
    "values": [bool(np.allclose(s, sum(r[i] for r in everyone), rtol=1e-6)) for i, s in enumerate(summed)],
    "same_strides": [s.strides == a.strides for s, a in zip(summed, arrays)],
    "views_of_buffer": [bool(np.shares_memory(s, comm._buffer)) for s in summed],
    "strided_is_input": summed[3] is arrays[3],
    "dtypes_kept": [s.dtype == a.dtype for s, a in zip(summed, arrays)],
}
if comm.rank == 0:
    print(json.dumps(report))
