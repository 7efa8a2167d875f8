"""The network, its preprocessing, training and evaluation.

TensorFlow reads ``TF_ENABLE_ONEDNN_OPTS`` once, when it is first imported, and turns oneDNN's
kernels on by default only for CPUs with AVX-512 VNNI, BF16 or AMX. On an AVX2-only CPU (many
AMD EPYC and older Xeon hosts) its default Eigen convolutions ran the shipped network at 100
images/s, oneDNN at 223 (``docs/performance.md``). Every process that runs the network imports
this package before TensorFlow, so it is set here; an operator's own value wins.
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
