"""The paper's evaluation metrics as Keras metrics: top-1 and top-5 error rates."""

import keras


@keras.saving.register_keras_serializable(package="keras_alexnet")
class TopKError(keras.metrics.SparseTopKCategoricalAccuracy):
    """Top-k error rate, ``1 - top-k accuracy``, as the paper's tables report it.

    A label counts as found when its score is among the ``k`` largest; ties at the k-th
    place are resolved as `tf.math.in_top_k` documents (a label whose score ties the
    k-th largest counts as found).
    """

    def __init__(self, k=5, name=None, **kwargs):
        super().__init__(k=k, name=name or f"top{k}_error", **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        # Fewer classes than k: every label is among the top k. TensorFlow's in_top_k says
        # so; PyTorch's topk refuses a k larger than the classes, so k is capped here.
        self._fn_kwargs["k"] = min(self.k, y_pred.shape[-1] or self.k)
        return super().update_state(y_true, y_pred, sample_weight)

    def result(self):
        return 1.0 - super().result()


def error_metrics():
    return [TopKError(1), TopKError(5)]
