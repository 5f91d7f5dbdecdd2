"""Input workers on other machines: a tf.data service dispatcher and workers.

``train.py --data-service grpc://HOST:PORT`` sends the training input pipeline (decode,
resize, crops, flips, mean, PCA noise, batching: `keras_alexnet.data.training_dataset`)
to a tf.data service (``tf.data.experimental.service``) and trains on what its workers
send back, so that the input is made by as many machines as the GPUs need. One dispatcher,
and a worker on each input machine (each must read the data at the same path)::

    python -m keras_alexnet.data_service dispatcher --port 5050
    python -m keras_alexnet.data_service worker --dispatcher HOST:5050 --port 5051
    python train.py --data-dir /data/imagenet-256 --data-service grpc://HOST:5050

The workers need TensorFlow only (the pipeline travels as a graph); this command is the
package's for convenience. Processing mode ``distributed_epoch``
(`keras_alexnet.data.SERVICE_PROCESSING_MODE`): the dispatcher splits the list of images
(or of prepared shard files) between the workers, so each pass over the data delivers
every image once (tested with two workers on 127.0.0.1).

**A worker that dies can stall the pass it serves** (TensorFlow 2.21, measured with 400
images: a worker killed with SIGKILL as a pass started left the pass at 206 of 400 images,
each delivered once, waiting for good, although the dispatcher dropped the worker after
1.5 s; killed a second into a pass of train.py, the survivor served the rest). So train.py
watches its input (`keras_alexnet.callbacks.InputWatchdog`): when no training batch came for
``--data-service-timeout`` seconds (600 by default) it exits with status 5 and a message;
every saved epoch is whole, and the same command resumes (tests/test_data_service.py;
``tools/data_service_kill_check.py`` by hand).

Under the service, undecodable files are dropped on the workers with a logged warning
but not counted in the run's metrics (the counter lives in the training process).
"""

from __future__ import annotations

import argparse
import sys


def start_dispatcher(port=0, worker_timeout_ms=10_000):
    """A `tf.data.experimental.service.DispatchServer` on ``port`` (0: any free port)."""
    import tensorflow as tf

    config = tf.data.experimental.service.DispatcherConfig(port=port, worker_timeout_ms=worker_timeout_ms)
    return tf.data.experimental.service.DispatchServer(config)


def start_worker(dispatcher, port=0, heartbeat_interval_ms=1_000):
    """A `tf.data.experimental.service.WorkerServer` registered with ``dispatcher``
    (``HOST:PORT``, with or without ``grpc://``)."""
    import tensorflow as tf

    address = dispatcher.split("://", 1)[-1]
    config = tf.data.experimental.service.WorkerConfig(
        dispatcher_address=address, port=port, heartbeat_interval_ms=heartbeat_interval_ms)
    return tf.data.experimental.service.WorkerServer(config)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m keras_alexnet.data_service",
                                     description="A tf.data service dispatcher or worker for train.py --data-service.")
    sub = parser.add_subparsers(dest="role", required=True)
    d = sub.add_parser("dispatcher", help="the one dispatcher (train.py --data-service grpc://HOST:PORT)")
    d.add_argument("--port", type=int, default=5050)
    d.add_argument("--worker-timeout-ms", type=int, default=10_000,
                   help="a worker silent this long is dropped and its splits of the pass lost")
    w = sub.add_parser("worker", help="one input worker (one per input machine)")
    w.add_argument("--dispatcher", required=True, help="HOST:PORT of the dispatcher")
    w.add_argument("--port", type=int, default=0, help="0: any free port")
    w.add_argument("--heartbeat-interval-ms", type=int, default=1_000)
    args = parser.parse_args(argv)
    if args.role == "dispatcher":
        server = start_dispatcher(args.port, args.worker_timeout_ms)
        print(f"dispatcher at {server.target}", flush=True)
    else:
        server = start_worker(args.dispatcher, args.port, args.heartbeat_interval_ms)
        print(f"worker for {args.dispatcher}", flush=True)
    try:
        server.join()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    from keras_alexnet import startup

    startup.own_process()  # the package is imported: freeze it (keras_alexnet/startup.py)
    sys.exit(main())
