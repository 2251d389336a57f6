"""Tiny random-init keras-hub tasks with their preprocessors (no downloads).

Each builder returns a fresh task; `twin(task)` a second one with the same
weights, for comparisons against the plain task.
"""

import keras
import keras_hub
import numpy as np

WORDS = [f"w{i}" for i in range(12)]
SEQUENCE_LENGTH = 8
IMAGE_SIZE = (16, 16)


def bert_classifier(lora_rank=None, dropout=0.0, compile=True):
    """BERT text classifier whose preprocessor tokenizes raw strings."""
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=SEQUENCE_LENGTH
    )
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocabulary),
        num_layers=1,
        num_heads=2,
        hidden_dim=4,
        intermediate_dim=8,
        max_sequence_length=SEQUENCE_LENGTH,
        dropout=dropout,
    )
    task = keras_hub.models.BertTextClassifier(
        backbone,
        num_classes=2,
        preprocessor=preprocessor,
        dropout=dropout,
        compile=compile,
    )
    if lora_rank is not None:
        task.backbone.enable_lora(lora_rank)
    return task


def bert_classifier_uncompiled():
    return bert_classifier(compile=False)


def gpt2_causal_lm():
    """GPT-2 causal LM with a byte-pair tokenizer on a tiny vocabulary."""
    merges = ["Ġ a", "Ġ t", "a i", "p l", "n e", "Ġa t", "p o", "r t"]
    merges += ["ai r", "pl a", "po rt", "Ġa i", "Ġai r", "pla ne"]
    tokens = ["<|endoftext|>", "!"]
    for merge in merges:
        a, b = merge.split(" ")
        tokens += [t for t in (*a, *b, a, b, a + b) if t not in tokens]
    vocabulary = {token: i for i, token in enumerate(tokens)}
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=merges)
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
        tokenizer, sequence_length=SEQUENCE_LENGTH
    )
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(tokens),
        num_layers=1,
        num_heads=2,
        hidden_dim=4,
        intermediate_dim=8,
        max_sequence_length=SEQUENCE_LENGTH,
        dropout=0.0,
    )
    return keras_hub.models.GPT2CausalLM(backbone, preprocessor=preprocessor)


def vit_classifier():
    """ViT image classifier whose preprocessor resizes images of any size."""
    converter = keras_hub.layers.ViTImageConverter(image_size=IMAGE_SIZE, scale=1 / 255)
    preprocessor = keras_hub.models.ViTImageClassifierPreprocessor(converter)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(*IMAGE_SIZE, 3),
        patch_size=8,
        num_layers=1,
        num_heads=2,
        hidden_dim=4,
        mlp_dim=8,
    )
    return keras_hub.models.ViTImageClassifier(
        backbone, num_classes=3, preprocessor=preprocessor
    )


BUILDERS = {
    "bert": bert_classifier,
    "gpt2": gpt2_causal_lm,
    "vit": vit_classifier,
    "bert_lora": lambda: bert_classifier(lora_rank=2),
}


def raw_data(name, n=8, seed=0):
    """(x, y) raw inputs the task's preprocessor takes: strings, or images of
    a size other than the model's; y is None for the causal LM."""
    rng = np.random.default_rng(seed)
    if name.startswith("bert"):
        texts = [" ".join(rng.choice(WORDS, rng.integers(2, 7))) for _ in range(n)]
        return texts, rng.integers(0, 2, n)
    if name == "gpt2":
        phrases = ["airplane at airport", "airport airplane", "air at plane !"]
        return [phrases[i % len(phrases)] for i in range(n)], None
    images = rng.integers(0, 256, (n, 24, 20, 3)).astype("float32")
    return images, rng.integers(0, 3, n)


def build(name, weights=None):
    """A fresh task `name`, with `weights` (from `task.get_weights()`) if given."""
    task = BUILDERS[name]()
    if weights is not None:
        task.set_weights(weights)
    return task


def max_difference(a, b):
    """Largest absolute difference between two lists of weights / arrays."""
    numpy = keras.ops.convert_to_numpy
    return max(float(np.max(np.abs(numpy(u) - numpy(v)))) for u, v in zip(a, b))
