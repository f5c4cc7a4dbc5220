"""evaluate/metrics.py: each metric against its formula worked out by hand, and against the reference
implementation it must agree with (sklearn for classification, seqeval for entities, the official SQuAD
v1.1 script for QA), on hand-made and on real data."""

from __future__ import annotations

import gzip
import json
import random
import re
import string
import warnings
from collections import Counter
from pathlib import Path

import pytest

from lmforge.errors import LmforgeError
from lmforge.evaluate.metrics import (
    PRF,
    Counts,
    accuracy,
    class_counts,
    confusion_matrix,
    counts_from_sums,
    counts_to_sums,
    entities,
    entity_counts,
    exact_match,
    macro_f1,
    micro,
    normalize_answer,
    plot_confusion_matrix,
    prf,
    squad_scores,
    squad_sums,
    token_f1,
)

# --- precision, recall, F1 ----------------------------------------------------------------------------


def test_prf_is_the_formula():
    # P = 3/4, R = 3/5, F1 = 2·(3/4)(3/5) / (3/4 + 3/5) = 0.9 / 1.35 = 2/3
    assert prf(Counts(tp=3, fp=1, fn=2)) == pytest.approx(PRF(0.75, 0.6, 2 / 3), abs=1e-15)
    assert prf(Counts()) == (0.0, 0.0, 0.0)  # 0/0 counts as 0, as in seqeval and sklearn
    assert prf(Counts(fp=2)) == (0.0, 0.0, 0.0)
    assert prf(Counts(fn=2)) == (0.0, 0.0, 0.0)


def test_counts_add_and_round_trip_through_flat_sums():
    assert Counts(1, 2, 3) + Counts(10, 20, 30) == Counts(11, 22, 33)
    counts = {"location": Counts(1, 0, 2), "creative-work": Counts(0, 3, 0), "a/b": Counts(4, 5, 6)}
    sums = counts_to_sums(counts)
    assert sums["tp/location"] == 1 and sums["fp/creative-work"] == 3 and sums["fn/a/b"] == 6
    as_floats = {k: float(v) for k, v in sums.items()} | {"correct": 7.0}  # other keys are ignored
    assert counts_from_sums(as_floats) == dict(sorted(counts.items()))


# --- classification -----------------------------------------------------------------------------------

GOLD = [0, 0, 1, 1, 2, 2]
PRED = [0, 1, 1, 1, 2, 0]


def test_classification_scores_by_hand():
    matrix = confusion_matrix(GOLD, PRED, labels=[0, 1, 2])
    assert matrix == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]  # rows = gold, columns = predicted
    assert accuracy(GOLD, PRED) == 4 / 6
    counts = class_counts(matrix, [0, 1, 2])
    assert counts == {0: Counts(1, 1, 1), 1: Counts(2, 1, 0), 2: Counts(1, 0, 1)}
    # class 0: P = R = 1/2, F1 = 1/2; class 1: P = 2/3, R = 1, F1 = 0.8; class 2: P = 1, R = 1/2, F1 = 2/3
    assert prf(counts[1]) == pytest.approx((2 / 3, 1.0, 0.8))
    assert prf(counts[2]) == pytest.approx((1.0, 0.5, 2 / 3))
    assert macro_f1(counts) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)  # = 59/90
    assert micro(counts) == pytest.approx((4 / 6, 4 / 6, 4 / 6))  # single-label: micro P = R = accuracy


def test_classification_matches_sklearn():
    from sklearn import metrics as sk

    rng = random.Random(0)
    labels = ["neg", "neu", "pos", "never-seen"]
    gold = [rng.choice(labels[:3]) for _ in range(500)]
    pred = [g if rng.random() < 0.6 else rng.choice(labels[:3]) for g in gold]
    matrix = confusion_matrix(gold, pred, labels)
    assert matrix == sk.confusion_matrix(gold, pred, labels=labels).tolist()
    assert accuracy(gold, pred) == sk.accuracy_score(gold, pred)
    counts = class_counts(matrix, labels)
    p, r, f, _ = sk.precision_recall_fscore_support(gold, pred, labels=labels, zero_division=0)
    for i, label in enumerate(labels):
        assert prf(counts[label]) == pytest.approx((p[i], r[i], f[i]), rel=1e-12)
    assert macro_f1(counts) == pytest.approx(
        sk.f1_score(gold, pred, labels=labels, average="macro", zero_division=0), rel=1e-12
    )


def test_confusion_matrices_of_batches_add_up():
    labels = [0, 1, 2]
    halves = [confusion_matrix(GOLD[:3], PRED[:3], labels), confusion_matrix(GOLD[3:], PRED[3:], labels)]
    summed = [[a + b for a, b in zip(r1, r2)] for r1, r2 in zip(*halves)]
    assert summed == confusion_matrix(GOLD, PRED, labels)


def test_classification_refuses_unknown_labels_and_unpaired_lists():
    with pytest.raises(LmforgeError, match="not among"):
        confusion_matrix([0, 3], [0, 1], labels=[0, 1])
    with pytest.raises(LmforgeError, match="pair up"):
        accuracy([0, 1], [0])


def test_confusion_matrix_png(tmp_path):
    import matplotlib.image

    path = tmp_path / "plots" / "confusion.png"
    out = plot_confusion_matrix([[5, 1], [2, 7]], ["negative", "positive"], path, title="SST-2 dev")
    assert out == path and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(path).ndim == 3
    assert [p.name for p in path.parent.iterdir()] == ["confusion.png"]  # no temporary left behind


# --- token classification: entities with seqeval's rules ----------------------------------------------


def _seqeval_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    from seqeval.metrics.sequence_labeling import get_entities

    return [(kind, start, end + 1) for kind, start, end in get_entities(tags)]  # seqeval's end is inclusive


def _seqeval_scores(gold: list[list[str]], pred: list[list[str]]) -> tuple[tuple, dict[str, tuple]]:
    """(micro P, R, F1), {type: (P, R, F1)} from seqeval's default mode."""
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.metrics.sequence_labeling import get_entities, precision_recall_fscore_support

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns where a 0/0 is scored 0
        overall = (precision_score(gold, pred), recall_score(gold, pred), f1_score(gold, pred))
        p, r, f, _ = precision_recall_fscore_support(gold, pred, average=None)
    types = sorted({kind for tags in (*gold, *pred) for kind, _, _ in get_entities(tags)})
    return overall, {t: (p[i], r[i], f[i]) for i, t in enumerate(types)}


def _assert_equals_seqeval(gold: list[list[str]], pred: list[list[str]]) -> dict[str, Counts]:
    counts = entity_counts(gold, pred)
    overall, per_type = _seqeval_scores(gold, pred)
    assert tuple(micro(counts)) == overall  # exactly, not approximately
    assert {t: tuple(prf(c)) for t, c in counts.items()} == per_type
    return counts


@pytest.mark.parametrize(
    "tags, expected",
    [
        (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 2), ("LOC", 3, 4)]),
        (["I-PER", "I-PER", "O"], [("PER", 0, 2)]),  # an I- without a B- starts a chunk
        (["O", "I-LOC"], [("LOC", 1, 2)]),  # so does an I- after O
        (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 1), ("LOC", 1, 3)]),  # a type change starts one
        (["B-PER", "B-PER"], [("PER", 0, 1), ("PER", 1, 2)]),
        (["I-PER", "B-PER", "I-PER"], [("PER", 0, 1), ("PER", 1, 3)]),
        (["O", "O", "B-ORG", "I-ORG"], [("ORG", 2, 4)]),  # a chunk that runs to the end
        (["B-creative-work", "I-creative-work"], [("creative-work", 0, 2)]),
        ([], []),
        (["O", "O"], []),
    ],
)
def test_entities_by_hand_and_as_seqeval(tags, expected):
    assert entities(tags) == expected
    assert _seqeval_spans(tags) == expected


def test_entities_match_seqeval_on_random_tag_soup():
    rng = random.Random(0)
    alphabet = ["O", "B-A", "I-A", "B-B", "I-B", "B-long-type", "I-long-type"]
    for _ in range(3000):
        tags = [rng.choice(alphabet) for _ in range(rng.randrange(13))]
        assert entities(tags) == _seqeval_spans(tags), tags


def test_entity_scores_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]]
    pred = [["B-PER", "I-PER", "O", "I-LOC"], ["B-ORG", "I-ORG"]]
    # PER(0,2) and LOC(3,4) found (the I-LOC after O is a chunk); ORG predicted as (0,2), gold (1,2)
    counts = entity_counts(gold, pred, types=["PER", "LOC", "ORG", "MISC"])
    assert counts == {
        "LOC": Counts(1, 0, 0),
        "MISC": Counts(),
        "ORG": Counts(0, 1, 1),
        "PER": Counts(1, 0, 0),
    }
    assert micro(counts) == pytest.approx((2 / 3, 2 / 3, 2 / 3))


MESSY = [
    (
        [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]],
        [["B-PER", "I-PER", "O", "I-LOC"], ["B-ORG", "I-ORG"]],
    ),
    ([["B-X", "I-X", "I-X"]], [["B-X", "I-Y", "I-X"]]),  # a type change inside a chunk
    ([["O", "B-X"], ["I-X", "O"]], [["O", "I-X"], ["I-X", "I-X"]]),  # chunks never cross sentences
    ([["B-X"], ["I-X"]], [["B-X"], ["I-X"]]),
    ([["O", "O"]], [["B-X", "O"]]),  # nothing to find: recall 0/0
    ([["O", "B-X"]], [["O", "O"]]),  # nothing predicted: precision 0/0
    ([["O"]], [["O"]]),  # no entities at all
    ([["O", "B-X", "I-X"]], [["O", "O", "B-X"]]),  # trailing chunks
    ([["B-X", "B-X", "I-Y"]], [["B-X", "I-X", "B-Y"]]),
    ([["I-X", "I-Y", "B-Y", "O", "I-Z"]], [["B-X", "B-Y", "I-Y", "I-Z", "I-Z"]]),
]


@pytest.mark.parametrize("gold, pred", MESSY)
def test_entity_scores_equal_seqeval_on_messy_cases(gold, pred):
    _assert_equals_seqeval(gold, pred)


def test_entity_counts_refuse_non_bio_tags_and_unpaired_sentences():
    with pytest.raises(LmforgeError, match="not a BIO tag"):
        entities(["B-PER", "E-PER"])
    with pytest.raises(LmforgeError, match="not a BIO tag"):
        entities(["B-"])
    with pytest.raises(LmforgeError, match="pair up"):
        entity_counts([["O", "O"]], [["O"]])


def read_conll(path: Path) -> list[list[str]]:
    """The tag column of a CoNLL file, one list per sentence (blank lines between sentences)."""
    blocks = path.read_text(encoding="utf-8").strip("\n").split("\n\n")
    return [[line.split("\t")[1] for line in block.split("\n")] for block in blocks]


@pytest.fixture(scope="module")
def wnut_test(shared_data) -> list[list[str]]:
    tags = read_conll(shared_data / "ner" / "wnut17" / "emerging.test.annotated")
    assert len(tags) == 1287 and sum(len(s) for s in tags) == 23394
    return tags


WNUT_TYPES = ["corporation", "creative-work", "group", "location", "person", "product"]
WNUT_TAGS = ["O"] + [f"{p}-{t}" for t in WNUT_TYPES for p in "BI"]


def _corrupt(gold: list[list[str]], variant: str, seed: int = 0) -> list[list[str]]:
    """A prediction made from the gold tags: deterministic (fixed seed) errors of one kind."""
    rng = random.Random(seed)
    rate = {"noise10": 0.1, "noise40": 0.4}.get(variant, 0.0)

    def tag(t: str) -> str:
        prefix, _, kind = t.partition("-")
        if rng.random() < rate:
            return rng.choice(WNUT_TAGS)
        if variant == "b_to_i" and prefix == "B":
            return f"I-{kind}"  # chunks now begin with I- (IOB1 style)
        if variant == "i_to_b" and prefix == "I" and rng.random() < 0.5:
            return f"B-{kind}"  # chunks split
        if variant == "retype" and prefix != "O" and rng.random() < 0.3:
            return f"{prefix}-{rng.choice(WNUT_TYPES)}"  # I-X after B-Y
        if variant == "drop" and prefix != "O" and rng.random() < 0.3:
            return "O"  # I- after O where a B- went
        if variant == "spurious" and prefix == "O" and rng.random() < 0.05:
            return rng.choice(WNUT_TAGS[1:])
        return "O" if variant == "all_O" else t

    if variant == "shift":
        return [["O", *sentence[:-1]] for sentence in gold]  # every boundary off by one
    return [[tag(t) for t in sentence] for sentence in gold]


VARIANTS = ["gold", "noise10", "noise40", "b_to_i", "i_to_b", "retype", "drop", "spurious", "shift", "all_O"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_wnut17_entity_scores_equal_seqeval(wnut_test, variant):
    pred = _corrupt(wnut_test, variant)
    counts = _assert_equals_seqeval(wnut_test, pred)
    gold_entities = sum(c.tp + c.fn for c in counts.values())
    assert gold_entities == 1079  # the test set's entity count (shared/data/README.md)
    if variant == "gold":
        assert micro(counts) == (1.0, 1.0, 1.0)


def test_wnut17_counts_summed_over_batches_and_ranks_give_the_same_scores(wnut_test):
    """As validation does: each rank sums its batches' counts, then the ranks' sums are added."""
    pred = _corrupt(wnut_test, "noise10")
    whole = entity_counts(wnut_test, pred, types=WNUT_TYPES)
    ranks, batch = 3, 32
    total: Counter[str] = Counter()
    for rank in range(ranks):
        for start in range(rank * batch, len(wnut_test), ranks * batch):
            rows = slice(start, start + batch)
            sums = counts_to_sums(entity_counts(wnut_test[rows], pred[rows], types=WNUT_TYPES))
            assert len(sums) == 3 * len(WNUT_TYPES)  # the same keys on every batch and rank
            total.update({k: float(v) for k, v in sums.items()})
    assert counts_from_sums(total) == whole
    assert micro(counts_from_sums(total)) == micro(whole)


# --- SQuAD v1.1 ---------------------------------------------------------------------------------------
# A literal transcription of the official evaluate-v1.1.py (its scoring functions and evaluate(), without
# the command line and the message for unanswered questions), the reference the metrics must equal.


def official_normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""

    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def official_f1_score(prediction, ground_truth):
    prediction_tokens = official_normalize_answer(prediction).split()
    ground_truth_tokens = official_normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def official_exact_match_score(prediction, ground_truth):
    return official_normalize_answer(prediction) == official_normalize_answer(ground_truth)


def official_metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    scores_for_ground_truths = []
    for ground_truth in ground_truths:
        score = metric_fn(prediction, ground_truth)
        scores_for_ground_truths.append(score)
    return max(scores_for_ground_truths)


def official_evaluate(dataset, predictions):
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue
                ground_truths = list(map(lambda x: x["text"], qa["answers"]))
                prediction = predictions[qa["id"]]
                exact_match += official_metric_max_over_ground_truths(
                    official_exact_match_score, prediction, ground_truths
                )
                f1 += official_metric_max_over_ground_truths(official_f1_score, prediction, ground_truths)

    exact_match = 100.0 * exact_match / total
    f1 = 100.0 * f1 / total

    return {"exact_match": exact_match, "f1": f1}


@pytest.mark.parametrize(
    "text, normalized",
    [
        ("The Denver Broncos", "denver broncos"),
        ("an apple,  an orange!", "apple orange"),
        ("U.S.", "us"),
        ("The A-Team", "ateam"),  # punctuation goes first, so "a-team" is one word, not an article
        ("theatre and anthem", "theatre and anthem"),  # articles only as whole words
        ("  Élan\tTHE\n end ", "élan end"),
        ("“quoted”", "“quoted”"),  # string.punctuation is ASCII only
    ],
)
def test_normalize_answer(text, normalized):
    assert normalize_answer(text) == normalized == official_normalize_answer(text)


def test_squad_em_and_f1_by_hand():
    assert exact_match("the Denver Broncos.", "Denver Broncos") == 1.0
    assert token_f1("the Denver Broncos.", "Denver Broncos") == 1.0
    # "broncos" vs "denver broncos": 1 common token, P = 1/1, R = 1/2, F1 = 2·1·½ / 1½ = 2/3
    assert exact_match("Broncos", "Denver Broncos") == 0.0
    assert token_f1("Broncos", "Denver Broncos") == pytest.approx(2 / 3)
    # bags of tokens: "red blue red" and "red red green" share two tokens (red twice), P = R = 2/3
    assert token_f1("red blue red", "red red green") == pytest.approx(2 / 3)
    assert token_f1("the", "Denver") == 0.0  # nothing left after normalisation
    # max over gold answers: "Broncos" gives P = 1/3, R = 1, F1 = 0.5, "Denver Broncos" P = 2/3, F1 = 0.8
    sums = squad_sums(
        ["Denver Broncos won", "Broncos", "Carolina"],
        [["Broncos", "Denver Broncos"], ["the Broncos", "Denver Broncos"], ["Denver"]],
    )
    assert sums == pytest.approx({"exact_match": 1.0, "f1": 0.8 + 1.0 + 0.0, "total": 3})
    assert squad_scores(sums) == pytest.approx({"exact_match": 100 / 3, "f1": 100 * 1.8 / 3})


def test_squad_scores_equal_the_official_script_on_hand_made_answers():
    answers = [["Denver Broncos"], ["Santa Clara, California", "Levi's Stadium"], ["the 50th"], ["a-team"]]
    predictions = ["denver broncos!", "Levi's Stadium in Santa Clara", "50th Super Bowl", "The A Team", ""]
    dataset = [
        {"paragraphs": [{"qas": [{"id": str(i), "answers": [{"text": t} for t in golds]}]}]}
        for i, golds in enumerate(answers)
    ]
    for shift in range(2):  # score each prediction against each question's answers
        preds = predictions[shift : shift + len(answers)]
        expected = official_evaluate(dataset, {str(i): p for i, p in enumerate(preds)})
        assert squad_scores(squad_sums(preds, answers)) == expected


def _squad_prediction(qa: dict, context: str, rng: random.Random) -> str:
    """One of several kinds of realistic answers, from exact to wrong."""
    gold = qa["answers"][0]
    text, start = gold["text"], gold["answer_start"]
    words = context.split()
    kind = rng.randrange(7)
    if kind == 0:
        return text
    if kind == 1:
        return f"The {text}."
    if kind == 2:
        return " ".join(text.split()[:-1])  # too short (empty for one-word answers)
    if kind == 3:
        return context[start : start + len(text) + 25]  # runs on past the answer
    if kind == 4:
        i = rng.randrange(len(words))
        return " ".join(words[i : i + rng.randint(1, 5)])  # a span from elsewhere
    if kind == 5:
        return text.upper().replace(" ", "  ")
    return ""


@pytest.mark.slow
def test_squad_dev_scores_equal_the_official_script(shared_data):
    with gzip.open(shared_data / "qa" / "squad-v1.1" / "dev-v1.1.json.gz", "rt", encoding="utf-8") as f:
        dataset = json.load(f)["data"]
    rng = random.Random(0)
    predictions, gold_answers, exact = {}, [], []
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                predictions[qa["id"]] = _squad_prediction(qa, paragraph["context"], rng)
                gold_answers.append([a["text"] for a in qa["answers"]])
                exact.append(qa["answers"][0]["text"])
    assert len(gold_answers) == 10570
    ours = squad_scores(squad_sums(list(predictions.values()), gold_answers))
    official = official_evaluate(dataset, predictions)
    assert ours == official
    assert 20 < official["exact_match"] < official["f1"] < 80  # a real mix of right and wrong answers
    assert squad_scores(squad_sums(exact, gold_answers)) == {"exact_match": 100.0, "f1": 100.0}
