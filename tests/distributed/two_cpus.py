"""Two logical CPUs and one MirroredStrategy over them, for the check scripts
(tests/distributed/mirrored_checks.py, tests/variants/distributed_checks.py)
when they run in one process: logical devices must be set before TensorFlow
starts its runtime, and two strategies in one process would share collective
instance keys. Import it before anything starts TensorFlow's runtime."""

import tensorflow as tf

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)

STRATEGY = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
