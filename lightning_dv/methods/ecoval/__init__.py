"""EcoVal: cluster-level values from a production function, propagated to points and to unseen points.

Reference: Tarun, Chundawat, Mandal, Tan, Chen, Kankanhalli, "EcoVal: An Efficient Data Valuation
Framework for Machine Learning", arXiv 2402.09288 (only the abstract is public; the details below
are the project's own reading, documented with their measurements in ``docs/ecoval.md``).

Rows are clustered (k-means, per class); models are trained on random subsets keeping a fraction
of every cluster; a Cobb-Douglas production function ``log U = log A + sum_k alpha_k log n_k`` is
fitted to the validation utilities. A row's value is

    value(i) = intrinsic(i) + w * e_k(i),   e_k = (alpha_k / sum_j |alpha_j|) / (n_k / N),

with ``intrinsic`` the share of its nearest distinct neighbours sharing its label and ``w`` the
``harm_weight`` when ``e_k < 0`` else ``extrinsic_weight``. Valuing clusters instead of points
needs far fewer trainings, and new points are valued without retraining (:meth:`EcoVal.value`).
"""

from lightning_dv.methods.ecoval.neighbours import neighbour_agreement
from lightning_dv.methods.ecoval.production import ProductionFit, fit_cobb_douglas, sample_subsets
from lightning_dv.methods.ecoval.training import softmax_log_utility, train_softmax_batched
from lightning_dv.methods.ecoval.valuation import EcoVal

__all__ = [
    "EcoVal",
    "ProductionFit",
    "fit_cobb_douglas",
    "neighbour_agreement",
    "sample_subsets",
    "softmax_log_utility",
    "train_softmax_batched",
]
