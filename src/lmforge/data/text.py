"""Text helpers shared by several stages: the word tokenizer and sentence counter (cached per chunk and per
text), the sentence-terminal and symbol sets, and MinHash normalisation.

The tokenizer applies the rules of spaCy's rule-based English tokenizer (``spacy.blank("en")``), which is what
datatrove's filters count words and sentences with, without spaCy. The text is cut at whitespace into chunks;
each chunk loses prefixes and suffixes one at a time (punctuation, quotes, currency signs, a unit after a
number, a final period after a lower-case letter or two capitals, the clitic "'s") until what is left is a
special case (contractions "don't" -> "do" "n't", abbreviations "Gov.", "Jan.", "e.g.", emoticons) or nothing;
what remains is kept whole if it is a URL and otherwise cut at infixes (hyphens and "/" ":" "=" "," between
letters, "." between a lower-case and an upper-case letter, operators between digits). So "449,000", "3.8",
"U.S.", "Gov." and "https://example.com/a-b" are one token each; "well-known" and "it's" are three and two.

Speed: each distinct chunk is tokenized once and remembered (web text repeats its chunks, and most new ones
have a simple shape), so tokenizing a document is a ``str.split`` plus one dictionary look-up per chunk, in C.
Tokenizing once per document and sharing the tokens between the repetition, quality and FineWeb filters is the
other big saving over running each filter on its own (spec §16, speed notes).
"""

from __future__ import annotations

import string
import unicodedata
from functools import lru_cache
from itertools import chain, filterfalse, pairwise

import regex

# ---------------------------------------------------------------- character classes

_ALPHA = r"\p{L}"
_LOWER = r"\p{Ll}\p{Lo}"  # letters of scripts without case count as both lower and upper case
_UPPER = r"\p{Lu}\p{Lt}\p{Lo}"
_PUNCT = "…,:;!?¿؟¡()[]{}<>_#*&。？！，、；：～·।،۔؛٪"
_QUOTES = "'\"”“`‘´’‚„»«「」『』（）〔〕【】《》〈〉〈〉⟦⟧"
_CURRENCY = r"US\$|C\$|A\$|[$£€¥฿﷼\u20a0-\u20bf]"
_UNITS = (
    "km km² km³ m m² m³ dm dm² dm³ cm cm² cm³ mm mm² mm³ ha µm nm yd in ft kg g mg µg t lb oz m/s km/h kmh "
    "mph hPa Pa mbar mb MB kb KB gb GB tb TB T G M K % км км² км³ м м² м³ дм дм² дм³ см см² см³ мм мм² мм³ "
    "нм кг г мг м/с км/ч кПа Па мбар Кб КБ кб Мб МБ мб Гб ГБ гб Тб ТБ "
    "كم كم² كم³ م م² م³ سم سم² سم³ مم مم² مم³ غرام جرام جم كغ ملغ كوب اكواب"
)


def _cls(chars: str) -> str:
    """Characters, escaped for use inside a regex character class."""
    return "".join(regex.escape(c) for c in chars)


_P, _Q = _cls(_PUNCT), _cls(_QUOTES)
_UNIT_ALT = "|".join(regex.escape(u) for u in sorted(_UNITS.split(), key=len, reverse=True))

_PREFIX_RE = regex.compile(rf"(?:{_CURRENCY}|\.\.+|\+(?![0-9])|[§%=—–{_P}{_Q}\p{{So}}])")
_SUFFIX_RE = regex.compile(
    rf"(?:[{_P}{_Q}\p{{So}}—–]|……|\.\.+|['’][sS]|(?<=[0-9])(?:\+|{_CURRENCY}|{_UNIT_ALT})"
    rf"|(?<=°[FfCcKk])\.|(?<=[0-9{_LOWER}%²\-+|{_P}{_Q}])\.|(?<=[{_UPPER}][{_UPPER}])\.)$"
)
_INFIX_RE = regex.compile(
    rf"\.\.+|…|\p{{So}}|(?<=[0-9])[-+*^](?=[0-9-])|(?<=[{_LOWER}{_Q}])\.(?=[{_UPPER}{_Q}])"
    rf"|(?<=[{_ALPHA}]),(?=[{_ALPHA}])|(?<=[{_ALPHA}0-9])(?:-{{1,3}}|–|—{{1,2}}|~)(?=[{_ALPHA}])"
    rf"|(?<=[{_ALPHA}0-9])[:<>=/](?=[{_ALPHA}])"
)
# A URL: scheme, user, a public IPv4 address or host names with a lower-case top-level domain, port, path.
_HOST = r"A-Za-z0-9\u00a1-\uffff"
_PUBLIC_IPV4 = (
    r"(?!(?:10|127)\.|169\.254\.|192\.168\.|172\.(?:1[6-9]|2\d|3[01])\.)"
    r"(?:22[0-3]|2[01]\d|1\d\d|[1-9]\d?)(?:\.(?:25[0-5]|2[0-4]\d|1?\d?\d)){2}\.(?:25[0-4]|2[0-4]\d|1\d\d|[1-9]\d?)"
)
_URL_RE = regex.compile(
    rf"(?:[\w+\-.]{{2,}}://)?(?:\S+@)?(?:{_PUBLIC_IPV4}|(?:(?:[{_HOST}][{_HOST}_-]{{0,62}})?[{_HOST}]\.)+"
    rf"[{_LOWER}]{{2,63}})(?::\d{{2,5}})?(?:[/?#]\S*)?$"
)

# ---------------------------------------------------------------- special cases


_REAL_WORDS = "Ill ill Its its Hell hell Shell shell Shed shed were Were Well well Whore whore"


def _capitalised(parts: tuple[str, ...]) -> tuple[str, ...]:
    return (parts[0][:1].upper() + parts[0][1:], *parts[1:])


def _contractions() -> dict[str, tuple[str, ...]]:
    """English contractions split the way spaCy splits them ("don't" -> "do" "n't"), with and without the
    apostrophe ("dont" -> "do" "nt") and capitalised; spellings that are real words ("were", "its") stay."""
    clitics = {  # hosts: what may follow them ("+" separates tokens)
        "i": "'m 'm+a 'll 'll+'ve 'd 'd+'ve 've",
        "you we they": "'ll 'll+'ve 'd 'd+'ve 've 're",
        "he she it": "'ll 'll+'ve 'd 'd+'ve 's",
        "who what when where why how there": "'s 'll 'll+'ve 'd 'd+'ve 're 've",
        "that this": "'s 'll 'll+'ve 'd 'd+'ve",
        "these those": "'ll 'll+'ve 'd 'd+'ve 're 've",
        "could might must should would not": "'ve",
        "could did do does had may might must need ought should would ca sha wo": "n't n't+'ve",
        "ai are dare has have is was were": "n't",
    }
    out: dict[str, tuple[str, ...]] = {}
    for hosts, ends in clitics.items():
        for host in hosts.split():
            for end in ends.split():
                parts = (host, *end.split("+"))
                for form in (parts, tuple(p.replace("'", "") for p in parts)):
                    for cased in (form, _capitalised(form)):
                        out["".join(cased)] = cased
    for word in _REAL_WORDS.split():
        del out[word]
    return out


# Chunks never split by the affix rules: clitics, words with a leading or trailing apostrophe, abbreviations
# (months, US states, titles), emoticons.
_WHOLE = (
    "'s 'S 'd 'll 're 'em 'nuff 'bout 'cause 'Cause 'cos 'Cos 'coz 'Coz 'cuz 'Cuz ' '' ‘s ‘S C++ and/or w/o "
    "doin' Doin' goin' Goin' havin' Havin' lovin' Lovin' nothin' Nothin' nuthin' Nuthin' somethin' Somethin' "
    "ol' Ol' a.m. p.m. e.g. E.g. E.G. i.e. I.e. I.E. v.s. vs. Ph.D. co. Co. Corp. Inc. Ltd. Bros. Messrs. "
    "Adm. Dr. Gen. Gov. Jr. Mr. Mrs. Ms. Mt. Prof. Rep. Rev. Sen. St. D.C. "
    "Jan. Feb. Mar. Apr. Jun. Jul. Aug. Sep. Sept. Oct. Nov. Dec. "
    "Ak. Ala. Ariz. Ark. Calif. Colo. Conn. Del. Fla. Ga. Ia. Id. Ill. Ind. Kan. Kans. Ky. La. Mass. Md. "
    "Mich. Minn. Miss. Mo. Mont. N.C. N.D. N.H. N.J. N.M. N.Y. Neb. Nebr. Nev. Okla. Ore. Pa. S.C. Tenn. "
    "Va. Wash. Wis. "
    ":) :-) :)) :-)) :))) :-))) (: (-: =) (= :] :-] [: [-: [= =] :o) (o: :} :-} 8) 8-) (-8 ;) ;-) (; (-; "
    ":( :-( :(( :-(( :((( :-((( ): )-: =( >:( :') :'-) :'( :'-( :/ :-/ =/ =| :| :-| ]= =[ :1 :P :-P :p "
    ":-p :O :-O :o :-o :0 :-0 :() >:o :* :-* :3 :-3 =3 :> :-> :X :-X :x :-x :D :-D ;D ;-D =D xD XD xDD XDD "
    "8D 8-D ^_^ ^__^ ^___^ >.< >.> <.< ._. ;_; -_- -__- v.v V.V v_v V_V o_o o_O O_o O_O 0_o o_0 0_0 o.O "
    "O.o O.O o.o 0.0 o.0 0.o @_@ <3 <33 <333 </3 (^_^) (-_-) (._.) (>_<) (*_*) (¬_¬) ಠ_ಠ ಠ︵ಠ (ಠ_ಠ) "
    "¯\\(ツ)/¯ (╯°□°）╯︵┻━┻ ><(((*>"
)
# Chunks split their own way (also capitalised): "cannot" -> "can" "not".
_SPLIT = {"cannot": "can not", "gonna": "gon na", "gotta": "got ta", "let's": "let 's", "c'mon": "c'm on"}


def _special_cases() -> dict[str, tuple[str, ...]]:
    """spaCy's English exceptions: chunks kept whole or split their own way; every form with "'" also
    exists with "’"."""
    out = {w: (w,) for w in _WHOLE.split()}
    out.update({f"{c}.": (f"{c}.",) for c in "abcdefghijklmnopqrstuvwxyzäöü"})
    out.update(_contractions())
    for word, parts in _SPLIT.items():
        out[word] = tuple(parts.split())
        out[_capitalised((word,))[0]] = _capitalised(out[word])
    out.update({"how'd'y": ("how", "'d", "'y"), "How'd'y": ("How", "'d", "'y")})
    out.update({"y'all": ("y'", "all"), "yall": ("y", "all")})
    out.update({f"°{u}.": ("°", u, ".") for u in "cfkCFK"})
    for h in range(1, 13):
        out.update({f"{h}{p}": (str(h), p) for p in ("a.m.", "am", "p.m.", "pm")})
    out.update(
        {k.replace("'", "’"): tuple(p.replace("'", "’") for p in v) for k, v in out.items() if "'" in k}
    )
    return out


SPECIAL_CASES = _special_cases()

# ---------------------------------------------------------------- the tokenizer


def _split_infixes(s: str) -> tuple[str, ...]:
    """Cut at infixes; an infix at the very start stays part of the next piece."""
    out: list[str] = []
    start = 0
    for m in _INFIX_RE.finditer(s):
        if m.start() == 0:
            continue
        if m.start() != start:
            out.append(s[start : m.start()])
        out.append(m.group())
        start = m.end()
    if start < len(s):
        out.append(s[start:])
    return tuple(out)


def _suffix_len(s: str) -> int:
    """Length of the suffix at the end of ``s`` (0: none). A suffix is a run of dots or at most 4 characters,
    so the search starts near the end: stripping a long run ("!!!!...") stays linear."""
    start = min(len(s) - 8, len(s.rstrip(".")))
    m = _SUFFIX_RE.search(s, max(start, 0))
    return len(s) - m.start() if m else 0


def _split_affixes(chunk: str, specials: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """Strip prefixes and suffixes one at a time until a special case or nothing is left, then keep a
    special case, a URL or split the rest at infixes."""
    prefixes: list[str] = []
    suffixes: list[str] = []
    s, last = chunk, -1
    while s and len(s) != last and s not in specials:
        last = len(s)
        m = _PREFIX_RE.match(s)
        pre = m.end() if m else 0
        if pre and s[pre:] in specials:
            prefixes.append(s[:pre])
            s = s[pre:]
            break
        suf = _suffix_len(s[pre:])  # on the rest only: look-behinds do not see the prefix
        if suf and s[:-suf] in specials:
            suffixes.append(s[-suf:])
            s = s[:-suf]
            break
        if pre:
            prefixes.append(s[:pre])
        if suf:
            suffixes.append(s[-suf:])
        s = s[pre : len(s) - suf]
    if not s:
        middle: tuple[str, ...] = ()
    elif s in specials:
        middle = specials[s]
    elif _URL_RE.match(s):
        middle = (s,)
    else:
        middle = _split_infixes(s)
    return (*prefixes, *middle, *reversed(suffixes))


def _has_affix(s: str) -> bool:
    return bool(_PREFIX_RE.match(s) or _SUFFIX_RE.search(s) or _INFIX_RE.search(s))


# Special cases that the affix rules cut up ("Rep." -> "Rep" "."), by the tokens they are cut into: where
# such tokens meet again inside a chunk ("z.B." -> "z" "." "B."), they are put back together ("z." "B.").
_REJOIN = {_split_affixes(k, {}): k for k in SPECIAL_CASES if _has_affix(k)}
_REJOIN_MAX = max(map(len, _REJOIN))
_REJOIN_PAIRS = {p[:2] for p in _REJOIN}


def _rejoin_specials(toks: tuple[str, ...]) -> tuple[str, ...]:
    """Merge runs of tokens that spell a special case; longer runs first, then earlier ones; a run whose
    first or last token was already part of another run is skipped."""
    runs = [
        (j - i, i, j)
        for i in range(len(toks))
        for j in range(i + 2, min(len(toks), i + _REJOIN_MAX) + 1)
        if toks[i:j] in _REJOIN
    ]
    seen: set[int] = set()
    keep: dict[int, int] = {}
    for _, i, j in sorted(runs, key=lambda r: (-r[0], r[1])):
        if i not in seen and j - 1 not in seen:
            keep[i] = j
        seen.update(range(i, j))
    out: list[str] = []
    i = 0
    while i < len(toks):
        if i in keep:
            out.extend(SPECIAL_CASES[_REJOIN[toks[i : keep[i]]]])
            i = keep[i]
        else:
            out.append(toks[i])
            i += 1
    return tuple(out)


def split_chunk(chunk: str) -> tuple[str, ...]:
    """Tokens of one whitespace-free chunk, as spaCy's English tokenizer cuts it."""
    toks = _split_affixes(chunk, SPECIAL_CASES)
    if any(pair in _REJOIN_PAIRS for pair in pairwise(toks)):
        return _rejoin_specials(toks)
    return toks


# One punctuation character that is always cut off at the start or at the end of a chunk.
_LEAD = frozenset(_PUNCT + _QUOTES + "§%=—–")
_TRAIL = frozenset(_PUNCT + _QUOTES + "—–")


def _split_simple(chunk: str) -> tuple[str, ...] | None:
    """The common shapes without the rules: a word ("cats"), a number ("2024"), a word with one punctuation
    mark before or after it ("(cats", "cats,", "cats."); None for anything else or a special case."""
    if chunk in SPECIAL_CASES:
        return None
    if chunk.isalpha() or (chunk.isdigit() and chunk.isascii()):
        return (chunk,)
    head, stem, tail = chunk[0], chunk[1:], chunk[-1]
    if head in _LEAD and stem.isalpha() and stem not in SPECIAL_CASES:
        return (head, stem)
    stem = chunk[:-1]
    if not stem.isalpha() or stem in SPECIAL_CASES:
        return None
    if tail in _TRAIL:
        return (stem, tail)
    if tail == "." and stem.isascii():  # a period after a lower-case letter or two capitals: "cats." "NATO."
        return (stem, ".") if stem[-1].islower() or (len(stem) > 1 and stem[-2:].isupper()) else (chunk,)
    return None


# ---------------------------------------------------------------- symbols and sentence ends

# Unicode's sentence terminals ("." "!" "?" "।" "。" ...; not "…"): the ends of sentences and of lines.
SENTENCE_TERMINALS = frozenset(regex.findall(r"\p{Sentence_Terminal}", "".join(map(chr, range(0x20000)))))
# What is not a word for Gopher's word counts: ASCII punctuation and symbols, control characters, sentence
# terminals and common non-ASCII quotes, dashes and CJK brackets.
SYMBOLS = (
    frozenset(string.punctuation + "‘’“”„«»´–—…∶━►、。〈〉《》「」【】！％（），．：；？～")
    | frozenset(map(chr, [*range(32), *range(127, 160)]))
    | SENTENCE_TERMINALS
)


def is_punct(token: str) -> bool:
    """Every character is Unicode punctuation (category P*), as spaCy's ``is_punct``."""
    return all(unicodedata.category(c)[0] == "P" for c in token)


# ---------------------------------------------------------------- cached tokens and sentences


class _ChunkCache(dict):
    """chunk -> tokens; a miss tokenizes the chunk (most by their shape alone, the rest by the rules)."""

    def __missing__(self, chunk: str) -> tuple[str, ...]:
        toks = _split_simple(chunk) or split_chunk(chunk)
        self[chunk] = toks
        return toks


class _SentenceMarks(dict):
    """chunk -> one letter per token: T a sentence terminal ("." "!" "।" ... alone), P other punctuation, W
    anything else (what spaCy's sentencizer looks at)."""

    def __missing__(self, chunk: str) -> str:
        marks = "W" if chunk.isalnum() else "".join(map(_mark, _CHUNKS[chunk]))  # "WW..." counts as "W"
        self[chunk] = marks
        return marks


def _mark(token: str) -> str:
    if token in SENTENCE_TERMINALS:
        return "T"
    return "W" if token.isalnum() or not is_punct(token) else "P"


_CHUNKS = _ChunkCache()
_MARKS = _SentenceMarks()
_CACHE_LIMIT = 1 << 17  # chunks (about 30 MB); the caches are emptied when they grow past this
_SENTENCE_BREAK_RE = regex.compile("T[TP]*W")
_ODD_SPACE_RE = regex.compile(r"[^\S ]|  ")  # whitespace other than single spaces
_SPACE_RUN_RE = regex.compile(r"(\s+)")


def tokens(text: str) -> tuple[str, ...]:
    """Word and punctuation tokens of ``text`` (whitespace is never a token)."""
    if len(_CHUNKS) > _CACHE_LIMIT:
        clear_caches()
    return tuple(chain.from_iterable(map(_CHUNKS.__getitem__, text.split())))


def count_sentences(line: str) -> int:
    """Sentences in a (stripped) line as spaCy's sentencizer finds them in the tokens: a new one starts at the
    first token that is not punctuation after a sentence-terminal token, so "Mr." (one token) ends none and
    closing quotes stay with their sentence."""
    if len(_MARKS) > _CACHE_LIMIT:
        clear_caches()
    if _ODD_SPACE_RE.search(line):
        return 1 + len(_SENTENCE_BREAK_RE.findall(_marks_with_spaces(line)))
    return 1 + len(_SENTENCE_BREAK_RE.findall("".join(map(_MARKS.__getitem__, line.split()))))


def _marks_with_spaces(line: str) -> str:
    """Marks of a line with whitespace other than single spaces: spaCy makes each such run a token (not
    punctuation, so it can start a sentence)."""
    pieces = _SPACE_RUN_RE.split(line)  # chunk, whitespace, chunk, ...
    return "".join(_MARKS[p] if i % 2 == 0 else "W" * (p != " ") for i, p in enumerate(pieces) if p)


@lru_cache(maxsize=8)
def words(text: str) -> tuple[str, ...]:
    """``tokens(text)``, cached because consecutive filters ask for the same document's tokens."""
    return tokens(text)


def non_symbol_words(toks: tuple[str, ...]) -> list[str]:
    """The tokens with a character that is not a symbol: Gopher's "words" (datatrove's non-symbol words)."""
    return list(filterfalse(SYMBOLS.issuperset, toks))


def clear_caches() -> None:
    """Forget every tokenized chunk and text (benchmarks time a cold start with this)."""
    _CHUNKS.clear()
    _MARKS.clear()
    words.cache_clear()


# ---------------------------------------------------------------- MinHash normalisation

_PUNCT_RE = regex.compile(r"[\p{P}\p{S}]+")
_DIGITS_RE = regex.compile(r"\d+")
_MARKS_RE = regex.compile(r"\p{Mn}+")


def normalize_for_dedup(text: str) -> str:
    """Lower-case, punctuation to spaces, digits to 0, accents removed, whitespace collapsed (spec §10).

    Punctuation becomes a space (datatrove HEAD) rather than being deleted (FineWeb era), so "a-b" stays two
    words.
    """
    text = _DIGITS_RE.sub("0", _PUNCT_RE.sub(" ", text.lower()))
    text = _MARKS_RE.sub("", unicodedata.normalize("NFD", text))
    return " ".join(text.split())
