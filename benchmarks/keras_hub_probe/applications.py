"""`keras.applications` models for `check.py` (`run.py --set applications`): the smallest member of each
family, `weights=None` (nothing downloaded), 10 classes with logits out (a softmax of a freshly initialized
network is about 1/10 everywhere and hides differences), at the smallest input each accepts; each builder
returns `(model, inputs)`, a batch of 8 (in a batch of 2 BatchNormalization makes a few SGD steps blow activations
up to thousands, where float32 rounding alone moves outputs by 1e-3)."""
import numpy as np


def _image(size):
    return np.random.default_rng(0).uniform(0, 255, (8, size, size, 3)).astype("float32")


def _application(constructor, size=32, **arguments):
    def build():
        import keras

        model = getattr(keras.applications, constructor)(weights=None, input_shape=(size, size, 3), classes=10,
                                                         classifier_activation=None, **arguments)
        return model, _image(size)

    build.__name__ = constructor
    return build


BUILDERS = {
    "ConvNeXtTiny": _application("ConvNeXtTiny"),
    "DenseNet121": _application("DenseNet121"),
    "EfficientNetB0": _application("EfficientNetB0"),
    "EfficientNetV2B0": _application("EfficientNetV2B0"),
    "InceptionResNetV2": _application("InceptionResNetV2", size=75),
    "InceptionV3": _application("InceptionV3", size=75),
    "MobileNet": _application("MobileNet", alpha=0.25),
    "MobileNetV2": _application("MobileNetV2", alpha=0.35),
    "MobileNetV3Small": _application("MobileNetV3Small", alpha=0.75),
    "MobileNetV3Large": _application("MobileNetV3Large", alpha=0.75),
    "NASNetMobile": _application("NASNetMobile"),
    "ResNet50": _application("ResNet50"),
    "ResNet50V2": _application("ResNet50V2"),
    "VGG19": _application("VGG19"),
    "Xception": _application("Xception", size=71),
}
