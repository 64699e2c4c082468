"""One decorator so that every saved object loads back with no `custom_objects`."""

import keras

register = keras.saving.register_keras_serializable(package="clusterloss")
