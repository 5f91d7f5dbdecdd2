"""Every use of Keras internals, in one place, each with the Keras version and why.

The package runs on public Keras 3 APIs except for what is here. Each item was written
against Keras 3.15 (requirements pin ``keras==3.15.*``); ``tests/test_keras_compat.py``
has a fast test per item that fails when Keras changes under it, so a Keras upgrade
starts with that file.

1. `TowerTrainStep.train_step`: Keras' TensorFlow train step takes gradients with
   `tf.GradientTape`, whose gradient ops carry no device, so both towers' backward pass
   lands on the first device. This step takes them with `tf.gradients`, which colocates
   each gradient with its forward op (tower b's ``Conv2DBackpropFilter`` on tower b's
   device). It re-implements Keras 3.15's ``TensorFlowTrainer.train_step`` on its private
   members ``_compute_loss``, ``_loss_tracker`` and
   ``keras.src.losses.loss.unscale_loss_for_distribution``; Keras' main branch (3.16 in
   development) has changed that step, so re-read it before moving the pin.
2. `TowerTrainStep._maybe_symbolic_build`: under a strategy Keras 3.15 all-reduces the
   first distributed batch eagerly, only to learn its shapes, and
   `MultiWorkerMirroredStrategy` fails there ("Attempt to convert a value (PerReplica
   ...) to a Tensor"); the first replica's local batch has the same shapes.
3. `colocate_optimizer_slots`: Keras creates optimizer slots (SGD momentum) wherever the
   optimizer is built, so tower b's momentum would live on tower a's device; this wraps
   the public ``add_variable_from_reference`` of one optimizer instance so that each slot
   is created under its variable's device.
4. `patch_multi_worker_reduce`: Keras 3.15 reduces every value a train step returns with
   ``strategy.reduce("MEAN", v, axis=0)`` under multi-worker collectives; logged metrics
   are scalars, so ``model.fit`` fails with "Invalid reduction dimension 0 for input with
   0 dimensions" (tensorflow/tensorflow#72388, closed unfixed). This replaces
   ``keras.src.backend.tensorflow.trainer.reduce_per_replica`` process-wide with a
   version that reduces rank-0 values with ``axis=None``; idempotent.
5. `call_has_training_arg`: whether a layer's ``call`` takes ``training`` (Keras'
   private ``Layer._call_has_training_arg``), for the `OnDevice` wrapper to pass it on.
6. `onednn_enabled` (a TensorFlow internal, not Keras'): whether TensorFlow runs its CPU
   ops through oneDNN (``tensorflow.python.util._pywrap_util_port.IsMklEnabled``). It
   is on by default only on CPUs with AVX-512 and newer; without it the grouped
   convolution of `GroupedConv2D` takes a per-group path.
7. `freeze_variables` (a TensorFlow internal): a concrete function with its variables as
   constants (``tensorflow.python.framework.convert_to_constants``, the TF2 form of graph
   freezing, stable since TF 2.2), so the TFLite export (`keras_alexnet.export`) gets
   FULLY_CONNECTED with constant filters instead of resource-variable ops.
8. `DataLayer` (Keras' private ``keras.src.layers.preprocessing.data_layer.DataLayer``,
   named ``TFDataLayer`` before Keras 3.12): the base of Keras' own preprocessing layers,
   which runs a layer on TensorFlow inside a `tf.data` pipeline whatever the backend, and
   on the backend otherwise (``self.backend``, ``self._get_seed_generator``).

Items 1-4, 6 and 7 are TensorFlow's and import it when used; this module imports only Keras,
so that the package's layers and model load on a backend without TensorFlow.
"""

import keras

try:
    from keras.src.layers.preprocessing.data_layer import DataLayer
except ImportError:  # Keras before 3.12
    from keras.src.layers.preprocessing.tf_data_layer import TFDataLayer as DataLayer

TESTED_KERAS = "3.15"  # the minor version these items were written and tested against


class TowerTrainStep:
    """Mixin for a `keras.Model` (first in the bases) whose compiled train step keeps
    each gradient on its forward op's device (items 1 and 2 above). Eagerly
    (``run_eagerly=True``) there is no graph, and it falls back to Keras' step."""

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        import tensorflow as tf

        if self._distribute_strategy is None or iterator is None:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            data_batch = tf.nest.map_structure(
                lambda v: self.distribute_strategy.experimental_local_results(v)[0]
                if isinstance(v, tf.distribute.DistributedValues)
                else v,
                next(it),
            )
            break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def train_step(self, data):
        import tensorflow as tf
        from keras.src.losses.loss import unscale_loss_for_distribution

        if tf.executing_eagerly():
            return super().train_step(data)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = self(x, training=True)
        loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
        self._loss_tracker.update_state(unscale_loss_for_distribution(loss), sample_weight=tf.shape(x)[0])
        if self.optimizer is not None:
            loss = self.optimizer.scale_loss(loss)
        trainable_weights = self.trainable_weights
        gradients = tf.gradients(loss, [v.value for v in trainable_weights])
        self.optimizer.apply_gradients(zip(gradients, trainable_weights))
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def colocate_optimizer_slots(optimizer):
    """Makes ``optimizer`` create each slot (e.g. SGD momentum) on its variable's device
    (item 3). Follows a `keras.optimizers.LossScaleOptimizer` to its inner optimizer."""
    inner = getattr(optimizer, "inner_optimizer", None)
    if inner is not None:
        colocate_optimizer_slots(inner)
    if getattr(optimizer, "_keras_alexnet_colocated", False):
        return
    import tensorflow as tf

    original = optimizer.add_variable_from_reference

    def add_variable_from_reference(reference_variable, name=None, initializer="zeros"):
        with tf.device(reference_variable.value.device):
            return original(reference_variable, name=name, initializer=initializer)

    optimizer.add_variable_from_reference = add_variable_from_reference
    optimizer._keras_alexnet_colocated = True


def patch_multi_worker_reduce():
    """Makes ``model.fit`` work under `MultiWorkerMirroredStrategy` (item 4)."""
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    if getattr(tf_trainer, "_keras_alexnet_patched", False):
        return
    original = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):

            def mean(v):
                local = strategy.experimental_local_results(v)[0] if tf_trainer._is_per_replica_instance(v) else v
                return strategy.reduce("MEAN", v, axis=None if local.shape.rank == 0 else 0)

            return tf.nest.map_structure(mean, values)
        return original(values, strategy, reduction)

    tf_trainer.reduce_per_replica = reduce_per_replica
    tf_trainer._keras_alexnet_patched = True


def call_has_training_arg(layer):
    """Whether ``layer.call`` takes a ``training`` argument (item 5)."""
    return bool(layer._call_has_training_arg)


def onednn_enabled():
    """Whether TensorFlow's CPU kernels are oneDNN's (item 6); False if TF cannot say."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return False
    return bool(_pywrap_util_port.IsMklEnabled())


def freeze_variables(concrete_function):
    """``concrete_function`` with its variables folded into constants (item 7)."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    return convert_variables_to_constants_v2(concrete_function)
