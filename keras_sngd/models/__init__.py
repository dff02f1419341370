"""The paper's reference networks as plain Keras models, ready for `keras_sngd.reconstruct`.

Liu et al., "Reconstructing Deep Neural Networks: Unleashing the Optimization Potential of Natural Gradient
Descent": an MLP and a small CNN for (Fashion-)MNIST, VGG-16 and ResNet-18 for CIFAR, and a word-level
LSTM language model; and CPU-sized convolutional, residual and recurrent networks for 28x28 images
(`plain_cnn`, `cnn_bn`, `resnet_small`, `lstm_rows`). Every builder returns a built Sequential or Functional model with logits outputs and
only `keras.layers` layers, so `reconstruct` and `fold` process it directly.

```python
model = keras_sngd.models.REFERENCE_MODELS["resnet18"](width=0.25)
sngd, report = keras_sngd.reconstruct(model, return_report=True)
```
"""

from keras_sngd.models.language_model import lstm_language_model
from keras_sngd.models.mlp import paper_mlp
from keras_sngd.models.mlp import small_cnn
from keras_sngd.models.resnet import resnet18_cifar
from keras_sngd.models.small_nets import cnn_bn
from keras_sngd.models.small_nets import deep_plain_cnn
from keras_sngd.models.small_nets import lstm_rows
from keras_sngd.models.small_nets import plain_cnn
from keras_sngd.models.small_nets import resnet_small
from keras_sngd.models.vgg import vgg16_cifar

REFERENCE_MODELS = {
    "mlp": paper_mlp,
    "small_cnn": small_cnn,
    "vgg16": vgg16_cifar,
    "resnet18": resnet18_cifar,
    "lstm": lstm_language_model,
    "plain_cnn": plain_cnn,
    "cnn_bn": cnn_bn,
    "resnet_small": resnet_small,
    "lstm_rows": lstm_rows,
}

__all__ = [
    "REFERENCE_MODELS",
    "cnn_bn",
    "lstm_language_model",
    "lstm_rows",
    "paper_mlp",
    "plain_cnn",
    "resnet18_cifar",
    "resnet_small",
    "small_cnn",
    "vgg16_cifar",
]
