"""Word n-grams after stop words, as scikit-learn forms them: our converter for a
CountVectorizer or TfidfVectorizer (whose own converter counts through this one) with
`ngram_range` beyond one word and `stop_words`, registered with skl2onnx in front of its own.

scikit-learn removes stop words from a text's tokens, then forms n-grams from what is left,
so "love the price" has the bigram "love price". ONNX's TfIdfVectorizer counts n-grams of
adjacent tokens, so the graph moves each row's stop words behind its other tokens (a stable
TopK on "is a stop word, then position") and blanks them to the padding token before
counting. Every other vectorizer goes to skl2onnx's converter unchanged.

`sublinear_tf=True` is scikit-learn's 1 + log(tf) on the counts that are not zero; skl2onnx
writes log(1 + tf) (0.69 for a word seen once, where scikit-learn has 1). Our TfidfTransformer
converter (which a TfidfVectorizer's goes through) writes scikit-learn's, then hands the rest
(idf, norm) to skl2onnx's.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from onnx import TensorProto
from skl2onnx import update_registered_converter
from skl2onnx.common._registration import get_converter, get_shape_calculator
from skl2onnx.common.data_types import guess_proto_type
from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer

ALIAS = "SklearnCountVectorizer"
TFIDF_ALIAS = "SklearnTfidfTransformer"
PAD = "#"  # the Tokenizer's padding; scikit-learn's word tokens never hold it
DEFAULT_TOKEN_PATTERN = r"(?u)\b\w\w+\b"
# scikit-learn's default token, runs of two or more Unicode word characters, in RE2's terms:
# skl2onnx writes [a-zA-Z0-9_]+, which splits "café" into "caf" and joins words across "a".
WORD_TOKENS = r"[\p{L}\p{N}_]{2,}"


def default_words(part: Any) -> bool:
    return (
        isinstance(part, CountVectorizer)  # TfidfVectorizer too
        and part.analyzer == "word"
        and part.tokenizer is None
        and part.preprocessor is None
        and part.token_pattern == DEFAULT_TOKEN_PATTERN
    )


def _ngrams_across_stop_words(part: Any) -> bool:
    return default_words(part) and part.ngram_range[1] > 1 and bool(part.get_stop_words())


class _Nodes:
    def __init__(self, scope: Any, container: Any) -> None:
        self.scope, self.container = scope, container

    def const(self, values: Any, proto: int) -> str:
        array = np.asarray(values)
        name: str = self.scope.get_unique_variable_name("text_const")
        flat = [str(v) for v in array.ravel()] if proto == TensorProto.STRING else array.ravel().tolist()
        self.container.add_initializer(name, proto, list(array.shape), flat)
        return name

    def op(self, kind: str, *inputs: str, domain: str = "", out: str | None = None, **attrs: Any) -> str:
        target: str = out or self.scope.get_unique_variable_name(kind.lower())
        self.container.add_node(kind, list(inputs), [target], op_domain=domain,
                                name=self.scope.get_unique_operator_name(kind), **attrs)  # fmt: skip
        return target


def _pool(vocabulary: dict[str, int], lowest: int, highest: int) -> dict[str, Any]:
    """TfIdfVectorizer's attributes: the n-grams grouped by length, each mapped to its column."""
    pool: list[str] = []
    counts: list[int] = []
    indexes: list[int] = []
    for n in range(1, highest + 1):
        counts.append(len(pool))
        grams = sorted((g, i) for g, i in vocabulary.items() if g.count(" ") + 1 == n and n >= lowest)
        for gram, index in grams:
            pool.extend(gram.split(" "))
            indexes.append(index)
    table = {"pool_strings": pool, "ngram_counts": counts, "ngram_indexes": indexes}
    return {**table, "min_gram_length": lowest, "max_gram_length": highest, "max_skip_count": 0, "mode": "TF"}


def _without_stop_words(g: _Nodes, tokens: str, stop_words: list[str]) -> str:
    """Each row's tokens with its stop words moved to the end and blanked to padding."""
    stop = g.op("LabelEncoder", tokens, domain="ai.onnx.ml", keys_strings=stop_words,
                values_int64s=[1] * len(stop_words), default_int64=0)  # fmt: skip
    width = g.op("Gather", g.op("Shape", tokens), g.const(1, TensorProto.INT64), axis=0)
    position = g.op("Range", g.const(0, TensorProto.INT64), width, g.const(1, TensorProto.INT64))
    key = g.op("Add", g.op("Mul", stop, width), position)
    k = g.op("Reshape", width, g.const([1], TensorProto.INT64))
    order = g.scope.get_unique_variable_name("order")
    g.container.add_node("TopK", [key, k], [g.scope.get_unique_variable_name("sorted"), order], axis=1,
                         largest=0, sorted=1, name=g.scope.get_unique_operator_name("TopK"))  # fmt: skip
    moved = g.op("GatherElements", tokens, order, axis=1)
    moved_stop = g.op("Cast", g.op("GatherElements", stop, order, axis=1), to=TensorProto.BOOL)
    return g.op("Where", moved_stop, g.const([PAD], TensorProto.STRING), moved)


def _convert(scope: Any, operator: Any, container: Any) -> None:
    model = operator.raw_operator
    if not _ngrams_across_stop_words(model):
        ORIGINAL(scope, operator, container)
        return
    options = container.get_options(model, {"locale": None})
    g = _Nodes(scope, container)
    flat = g.op("Reshape", operator.inputs[0].full_name, g.const([-1], TensorProto.INT64))
    normalizer: dict[str, Any] = {
        "case_change_action": "LOWER" if model.lowercase else "NONE",
        "is_case_sensitive": 1,
    }
    if options.get("locale"):
        normalizer["locale"] = options["locale"]
    text = g.op("StringNormalizer", flat, **normalizer)
    tokens = g.op("Tokenizer", text, domain="com.microsoft", mark=0, mincharnum=1, pad_value=PAD,
                  tokenexp=WORD_TOKENS)  # fmt: skip
    kept = _without_stop_words(g, tokens, sorted(model.get_stop_words()))
    counts = g.op("TfIdfVectorizer", kept, **_pool(model.vocabulary_, *model.ngram_range))
    if model.binary:
        counts = g.op("Cast", g.op("Cast", counts, to=TensorProto.BOOL), to=TensorProto.FLOAT)
    g.op("Identity", counts, out=operator.outputs[0].full_name)


def _tfidf_convert(scope: Any, operator: Any, container: Any) -> None:
    model = operator.raw_operator
    if not model.sublinear_tf:
        ORIGINAL_TFIDF(scope, operator, container)
        return
    g = _Nodes(scope, container)
    counts = operator.inputs[0]
    proto = guess_proto_type(counts.type)
    logged = g.op("Add", g.op("Log", counts.full_name), g.const(1.0, proto))
    tf = scope.declare_local_variable("sublinear_tf", type(counts.type)(counts.type.shape))
    g.op("Where", g.op("Greater", counts.full_name, g.const(0.0, proto)), logged, g.const(0.0, proto),
         out=tf.full_name)  # fmt: skip
    plain = copy.copy(model)
    plain.sublinear_tf = False
    inputs, raw = operator.inputs, operator.raw_operator
    operator.inputs, operator.raw_operator = [tf], plain
    try:
        ORIGINAL_TFIDF(scope, operator, container)
    finally:
        operator.inputs, operator.raw_operator = inputs, raw


ORIGINAL = get_converter(ALIAS)
ORIGINAL_TFIDF = get_converter(TFIDF_ALIAS)


def register() -> None:
    update_registered_converter(
        CountVectorizer, ALIAS, get_shape_calculator(ALIAS), _convert, overwrite=True,
        options={"tokenexp": None, "separators": None, "nan": [True, False],
                 "keep_empty_string": [True, False], "locale": None},
    )  # fmt: skip
    update_registered_converter(
        TfidfTransformer, TFIDF_ALIAS, get_shape_calculator(TFIDF_ALIAS), _tfidf_convert, overwrite=True,
        options={"nan": [True, False]},
    )  # fmt: skip
