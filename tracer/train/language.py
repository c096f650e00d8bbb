"""The small German→English language the bundled models learn, as a seeded sentence generator.

Every sentence is produced as a (German, English) pair by the same random choices, so the
English is right by construction: agreement (he drinks, i am, they were), "an" before a
vowel, accusative articles (den, einen), and the pronoun of a "weil" clause translated by
what it refers to (he for mann/lehrer, she for frau, it for every other noun).

The German side varies in what the issue says must not matter: the first letter's case and
German noun capitals, the comma before weil/aber, and a final ".". The English side is
always lowercase without punctuation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Person index: 0 = 1st singular, 1 = 2nd singular, 2 = 3rd singular, 3..5 = plural.
PRONOUNS = [  # (german, english, person)
    ("ich", "i", 0), ("du", "you", 1), ("er", "he", 2), ("sie", "she", 2), ("es", "it", 2),
    ("wir", "we", 3), ("ihr", "you", 4), ("sie", "they", 5),
]

# German verb forms by person, present then simple past.
GERMAN_VERBS = {
    "sein": (["bin", "bist", "ist", "sind", "seid", "sind"], ["war", "warst", "war", "waren", "wart", "waren"]),
    "haben": (["habe", "hast", "hat", "haben", "habt", "haben"], ["hatte", "hattest", "hatte", "hatten", "hattet", "hatten"]),
    "trinken": (["trinke", "trinkst", "trinkt", "trinken", "trinkt", "trinken"], ["trank", "trankst", "trank", "tranken", "trankt", "tranken"]),
    "essen": (["esse", "isst", "isst", "essen", "esst", "essen"], ["aß", "aßest", "aß", "aßen", "aßt", "aßen"]),
    "sehen": (["sehe", "siehst", "sieht", "sehen", "seht", "sehen"], ["sah", "sahst", "sah", "sahen", "saht", "sahen"]),
    "lieben": (["liebe", "liebst", "liebt", "lieben", "liebt", "lieben"], ["liebte", "liebtest", "liebte", "liebten", "liebtet", "liebten"]),
    "lesen": (["lese", "liest", "liest", "lesen", "lest", "lesen"], ["las", "last", "las", "lasen", "last", "lasen"]),
    "mögen": (["mag", "magst", "mag", "mögen", "mögt", "mögen"], ["mochte", "mochtest", "mochte", "mochten", "mochtet", "mochten"]),
    "heißen": (["heiße", "heißt", "heißt", "heißen", "heißt", "heißen"], ["hieß", "hießest", "hieß", "hießen", "hießt", "hießen"]),
}

# English: (base, 3rd singular, past); "be" is irregular and handled by english_verb.
ENGLISH_VERBS = {
    "haben": ("have", "has", "had"), "trinken": ("drink", "drinks", "drank"), "essen": ("eat", "eats", "ate"),
    "sehen": ("see", "sees", "saw"), "lieben": ("love", "loves", "loved"), "lesen": ("read", "reads", "read"),
    "mögen": ("like", "likes", "liked"),
}
BE_PRESENT = ["am", "are", "is", "are", "are", "are"]
BE_PAST = ["was", "were", "was", "were", "were", "were"]


@dataclass(frozen=True)
class Noun:
    german: str
    gender: str      # m, f, n
    english: str
    animate: bool
    kind: str        # being, drink, food, book, thing
    countable: bool = True


NOUNS = [
    Noun("hund", "m", "dog", True, "being"), Noun("katze", "f", "cat", True, "being"),
    Noun("kind", "n", "child", True, "being"), Noun("mann", "m", "man", True, "being"),
    Noun("frau", "f", "woman", True, "being"), Noun("lehrer", "m", "teacher", True, "being"),
    Noun("apfel", "m", "apple", False, "food"), Noun("brot", "n", "bread", False, "food"),
    Noun("milch", "f", "milk", False, "drink", countable=False),
    Noun("wasser", "n", "water", False, "drink", countable=False),
    Noun("buch", "n", "book", False, "book"), Noun("haus", "n", "house", False, "thing"),
]
BEINGS = [n for n in NOUNS if n.animate]

# German pronoun that refers back to a noun, and the English one the issue asks for.
GERMAN_PRONOUN = {"m": "er", "f": "sie", "n": "es"}
ENGLISH_PRONOUN = {"mann": "he", "lehrer": "he", "frau": "she"}  # every other noun: "it"

DEFINITE = {("m", "nom"): "der", ("f", "nom"): "die", ("n", "nom"): "das",
            ("m", "acc"): "den", ("f", "acc"): "die", ("n", "acc"): "das"}
INDEFINITE = {("m", "nom"): "ein", ("f", "nom"): "eine", ("n", "nom"): "ein",
              ("m", "acc"): "einen", ("f", "acc"): "eine", ("n", "acc"): "ein"}

ADJECTIVES = {
    "müde": "tired", "hungrig": "hungry", "durstig": "thirsty", "glücklich": "happy", "traurig": "sad",
    "groß": "big", "klein": "small", "süß": "sweet", "kalt": "cold", "warm": "warm", "alt": "old",
    "jung": "young", "krank": "sick",
}
# What a thing (not a being) can sensibly be; beings can be everything.
THING_ADJECTIVES = ["groß", "klein", "süß", "kalt", "warm", "alt"]

# Objects each verb takes (sein and heißen are handled by their own sentence shapes).
OBJECT_KINDS = {
    "trinken": {"drink"}, "essen": {"food"}, "lesen": {"book"},
    "sehen": {"being", "food", "drink", "book", "thing"}, "lieben": {"being", "food", "drink", "book", "thing"},
    "mögen": {"being", "food", "drink", "book", "thing"}, "haben": {"being", "food", "drink", "book", "thing"},
}
NAME_OBJECT_VERBS = {"sehen", "lieben", "mögen"}

VOWEL_SOUND = set("aeiou")


def german_words() -> set[str]:
    words = {p[0] for p in PRONOUNS} | {n.german for n in NOUNS} | set(ADJECTIVES)
    for present, past in GERMAN_VERBS.values():
        words |= set(present) | set(past)
    words |= set(DEFINITE.values()) | set(INDEFINITE.values()) | {"sehr", "nicht", "weil", "und", "aber"}
    return words


def english_words() -> set[str]:
    words = {p[1] for p in PRONOUNS} | {n.english for n in NOUNS} | set(ADJECTIVES.values())
    for forms in ENGLISH_VERBS.values():
        words |= set(forms)
    words |= set(BE_PRESENT) | set(BE_PAST) | {"the", "a", "an", "very", "not", "because", "and", "but",
                                                "my", "your", "his", "her", "name"}
    return words


LEXICON = german_words() | english_words()


@dataclass(frozen=True)
class Phrase:
    """A noun phrase or pronoun, with what a later pronoun needs to know about it."""

    german: str
    english: str
    person: int
    animate: bool
    noun: Noun | None = None   # set for noun phrases
    name: bool = False


def english_verb(verb: str, person: int, past: bool) -> str:
    if verb == "sein":
        return (BE_PAST if past else BE_PRESENT)[person]
    base, third, past_form = ENGLISH_VERBS[verb]
    if past:
        return past_form
    return third if person == 2 else base


def german_verb(verb: str, person: int, past: bool) -> str:
    return GERMAN_VERBS[verb][1 if past else 0][person]


class LanguageGenerator:
    """Seeded (German, English) sentence pairs; names come from the pool it is given."""

    def __init__(self, seed: int, names: list[str]):
        self.rng = random.Random(seed)
        self.names = names

    # -- pieces -------------------------------------------------------------------------------

    def name(self) -> str:
        return self.rng.choice(self.names)

    def noun_phrase(self, noun: Noun, case: str) -> Phrase:
        definite = not noun.countable or self.rng.random() < 0.6
        article = (DEFINITE if definite else INDEFINITE)[(noun.gender, case)]
        if definite:
            english_article = "the"
        else:
            english_article = "an" if noun.english[0] in VOWEL_SOUND else "a"
        return Phrase(f"{article} {noun.german}", f"{english_article} {noun.english}", 2, noun.animate, noun=noun)

    def subject(self, animate: bool, allow_name: bool = True) -> Phrase:
        roll = self.rng.random()
        if roll < 0.42:
            german, english, person = self.rng.choice(PRONOUNS)
            return Phrase(german, english, person, True)
        if roll < 0.82 or not allow_name:
            noun = self.rng.choice(BEINGS if animate else NOUNS)
            return self.noun_phrase(noun, "nom")
        name = self.name()
        return Phrase(name, name, 2, True, name=True)

    def adjective(self, animate: bool) -> str:
        return self.rng.choice(list(ADJECTIVES) if animate else THING_ADJECTIVES)

    def degree(self) -> tuple[str, str]:
        """An optional sehr/nicht before an adjective, as (german prefix, english prefix)."""
        roll = self.rng.random()
        if roll < 0.2:
            return "sehr ", "very "
        if roll < 0.35:
            return "nicht ", "not "
        return "", ""

    # -- clauses: each returns (german, english, phrases a pronoun may refer to) ----------------

    def clause_be_adjective(self, allow_name: bool = True):
        subject = self.subject(animate=self.rng.random() < 0.75, allow_name=allow_name)
        past = self.rng.random() < 0.5
        adjective = self.adjective(subject.animate)
        de_deg, en_deg = self.degree()
        german = f"{subject.german} {german_verb('sein', subject.person, past)} {de_deg}{adjective}"
        english = f"{subject.english} {english_verb('sein', subject.person, past)} {en_deg}{ADJECTIVES[adjective]}"
        return german, english, [subject]

    def clause_be_name(self):
        subject = self.subject(animate=True)
        past = self.rng.random() < 0.3
        name = self.name()
        german = f"{subject.german} {german_verb('sein', subject.person, past)} {name}"
        english = f"{subject.english} {english_verb('sein', subject.person, past)} {name}"
        return german, english, [subject]

    def clause_be_noun(self):
        """"er ist ein lehrer" -> "he is a teacher" (singular subjects only)."""
        while True:
            subject = self.subject(animate=True)
            if subject.person in (0, 1, 2) and subject.noun is None:
                break
        people = [n for n in BEINGS if n.german in ("kind", "mann", "frau", "lehrer")]
        noun = self.rng.choice(BEINGS if subject.german == "es" else people)
        past = self.rng.random() < 0.3
        article = INDEFINITE[(noun.gender, "nom")]
        german = f"{subject.german} {german_verb('sein', subject.person, past)} {article} {noun.german}"
        english = f"{subject.english} {english_verb('sein', subject.person, past)} a {noun.english}"
        return german, english, [subject]

    def clause_name(self):
        """"ich heiße NAME" -> "my name is NAME" (and du/er/sie, present or past)."""
        german_pronoun, possessive, person = self.rng.choice(
            [("ich", "my", 0), ("ich", "my", 0), ("du", "your", 1), ("er", "his", 2), ("sie", "her", 2)])
        past = self.rng.random() < 0.25
        name = self.name()
        german = f"{german_pronoun} {german_verb('heißen', person, past)} {name}"
        english = f"{possessive} name {'was' if past else 'is'} {name}"
        return german, english, []

    def clause_object(self, allow_name: bool = True):
        verb = self.rng.choice(list(OBJECT_KINDS))
        subject = self.subject(animate=True, allow_name=allow_name)
        past = self.rng.random() < 0.5
        if allow_name and verb in NAME_OBJECT_VERBS and self.rng.random() < 0.3:
            name = self.name()
            obj = Phrase(name, name, 2, True, name=True)
        else:
            obj = self.noun_phrase(self.rng.choice([n for n in NOUNS if n.kind in OBJECT_KINDS[verb]]), "acc")
        german = f"{subject.german} {german_verb(verb, subject.person, past)} {obj.german}"
        english = f"{subject.english} {english_verb(verb, subject.person, past)} {obj.english}"
        return german, english, [subject, obj]

    def main_clause(self):
        roll = self.rng.random()
        if roll < 0.3:
            return self.clause_be_adjective()
        if roll < 0.45:
            return self.clause_be_name()
        if roll < 0.5:
            return self.clause_be_noun()
        if roll < 0.6:
            return self.clause_name()
        return self.clause_object()

    def because(self, referents: list[Phrase]):
        """"weil" + pronoun + adjective + sein, the pronoun translated by what it refers to.

        A pronoun must be unambiguous: when two phrases share the German pronoun but not the
        English one (die frau ... die milch ... sie), the adjective must fit only one of them.
        """
        candidates = []
        for phrase in referents:
            if phrase.name:
                continue  # a name has no grammatical gender to resolve a pronoun by
            if phrase.noun is not None:
                candidates.append((GERMAN_PRONOUN[phrase.noun.gender], 2,
                                   ENGLISH_PRONOUN.get(phrase.noun.german, "it"), phrase.animate))
            else:
                german, english, person = next(p for p in PRONOUNS if (p[0], p[1]) == (phrase.german, phrase.english))
                candidates.append((german, person, english, True))
        free = [p for p in PRONOUNS if p[2] not in (2,)]  # ich, du, wir, ihr, sie (they): need no antecedent
        for _ in range(50):
            if candidates and self.rng.random() < 0.85:
                german, person, english, animate = self.rng.choice(candidates)
            else:
                german, english, person = self.rng.choice(free)
                animate = True
            adjective = self.adjective(animate)
            clash = any(
                (g, p) == (german, person) and e != english and (a or adjective in THING_ADJECTIVES)
                for g, p, e, a in candidates
            )
            if not clash:
                break
        else:
            return None
        past = self.rng.random() < 0.6
        de_deg, en_deg = self.degree()
        german_text = f"weil {german} {de_deg}{adjective} {german_verb('sein', person, past)}"
        english_text = f"because {english} {english_verb('sein', person, past)} {en_deg}{ADJECTIVES[adjective]}"
        return german_text, english_text

    # -- sentences ------------------------------------------------------------------------------

    def pair(self) -> tuple[str, str]:
        roll = self.rng.random()
        if roll < 0.2:
            while True:
                if self.rng.random() < 0.7:
                    german, english, referents = self.clause_object(allow_name=False)
                else:
                    german, english, referents = self.clause_be_adjective(allow_name=False)
                clause = self.because(referents)
                if clause is not None:
                    break
            comma = "," if self.rng.random() < 0.5 else ""
            german = f"{german}{comma} {clause[0]}"
            english = f"{english} {clause[1]}"
        elif roll < 0.35:
            g1, e1, _ = self.main_clause()
            g2, e2, _ = self.main_clause()
            if self.rng.random() < 0.5:
                german, english = f"{g1} und {g2}", f"{e1} and {e2}"
            else:
                comma = "," if self.rng.random() < 0.5 else ""
                german, english = f"{g1}{comma} aber {g2}", f"{e1} but {e2}"
        else:
            german, english, _ = self.main_clause()
        return self.surface(german), english

    def surface(self, german: str) -> str:
        """Vary what must not matter: capitals (first letter, German nouns, names) and a final "."."""
        roll = self.rng.random()
        if roll < 0.3:
            nouns = {n.german for n in NOUNS}
            words = [w.capitalize() if w in nouns or w not in LEXICON else w for w in german.split(" ")]
            german = " ".join(words)
            german = german[0].upper() + german[1:]
        elif roll < 0.4:
            german = german[0].upper() + german[1:]
        elif roll < 0.42:
            german = "".join(c if c == "ß" else c.upper() for c in german)  # str.upper turns ß into SS
        if self.rng.random() < 0.4:
            german += "."
        return german


# -- names ----------------------------------------------------------------------------------------

ONSETS = ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "y", "z",
          "br", "ch", "dr", "fl", "gr", "kr", "pr", "sh", "st", "th", "tr", "q", "x", "sch", "pi"]
VOWELS = ["a", "e", "i", "o", "u", "a", "e", "i", "o", "u", "y", "ai", "ei", "ou", "ia", "ee", "oo"]
CODAS = ["", "", "", "n", "r", "s", "l", "m", "t", "k", "sh", "x", "ng", "nd", "ck"]
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def make_name(rng: random.Random) -> str:
    """A made-up name of 2-12 Latin letters: syllables most of the time, random letters sometimes."""
    while True:
        if rng.random() < 0.75:
            name = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)
                           for _ in range(rng.choice([1, 1, 2, 2, 2, 3, 3, 4])))
        else:
            name = "".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 12)))
        if 2 <= len(name) <= 12 and name not in LEXICON:
            return name


def make_names(rng: random.Random, count: int, exclude: set[str] = frozenset()) -> list[str]:
    names: dict[str, None] = {}
    while len(names) < count:
        name = make_name(rng)
        if name not in exclude:
            names[name] = None
    return list(names)
