"""The built-in corpus: procedurally generated children's stories.

Each story has recurring named characters with consistent pronouns, a setting, a problem, one to
three attempts, a resolution and a moral, told with varied sentence templates and some dialogue.
That gives a small language model real structure to learn (names and pronouns that must be copied,
story arcs, past tenses), so its loss falls well below the unigram entropy, while the text is
produced here from a seed and needs no download.

The generator is data: the tables and templates below, filled in by `random.Random(seed)`.
Templates use the slots listed in `_slots`; the first letter of every sentence is capitalised after
filling, so a template may start with a pronoun slot such as ``{he}``.
Bump `GENERATOR_VERSION` whenever a table or template changes: it is part of the data cache key.
"""

from __future__ import annotations

import random
import re

GENERATOR_VERSION = 1

PRONOUNS = {"f": ("she", "her", "her"), "m": ("he", "him", "his")}  # subject, object, possessive

NAMES = (
    ("Lily", "f"), ("Mia", "f"), ("Sara", "f"), ("Anna", "f"), ("Lucy", "f"), ("Ella", "f"),
    ("Zoe", "f"), ("Rosa", "f"), ("Nina", "f"), ("Emma", "f"), ("Daisy", "f"), ("Ruby", "f"),
    ("Molly", "f"), ("Kitty", "f"), ("Bella", "f"), ("Hana", "f"), ("Maya", "f"), ("Ivy", "f"),
    ("Tom", "m"), ("Ben", "m"), ("Max", "m"), ("Sam", "m"), ("Leo", "m"), ("Jack", "m"),
    ("Tim", "m"), ("Finn", "m"), ("Oscar", "m"), ("Milo", "m"), ("Noah", "m"), ("Theo", "m"),
    ("Pip", "m"), ("Spot", "m"), ("Buddy", "m"), ("Rex", "m"), ("Omar", "m"), ("Kai", "m"),
)
# Invented names, built from syllables: a long tail of rare words (as real text has) that a model can
# only predict by copying them from earlier in the story; it also lets a BPE reach a few thousand tokens.
ONSETS = ("b", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
          "br", "ch", "fl", "gr", "sh", "st", "tr", "pl", "cl")
VOWELS = ("a", "e", "i", "o", "u", "oo", "ee", "ai", "ou", "y")
CODAS = ("", "", "", "n", "l", "r", "m", "s", "k", "x", "nd")
INVENTED_NAME_SHARE = 0.5
CHILD_KINDS = {"f": "girl", "m": "boy"}
ANIMALS = (
    "cat", "dog", "rabbit", "bear", "fox", "duck", "mouse", "frog", "owl", "pig", "lion", "turtle",
    "squirrel", "deer", "bird", "puppy", "kitten", "horse", "goat", "elephant", "monkey", "hedgehog",
    "penguin", "hen", "cow", "sheep", "bunny", "tiger", "zebra", "snail",
)
BEING_ADJECTIVES = (
    "little", "small", "happy", "curious", "brave", "shy", "kind", "clever", "playful", "gentle",
    "tiny", "friendly", "silly", "quiet", "cheerful", "busy", "young", "sleepy",
)
GROWNUPS = ("mom", "dad", "grandma", "grandpa", "teacher", "big sister", "big brother", "aunt")

# (where, details of the place, spots where things end up)
PLACES = (
    ("the park", ("children played on the swings", "the grass was soft and green",
                  "ducks swam in the little pond"), ("under a bench", "behind the slide", "near the pond")),
    ("the forest", ("the trees were tall and old", "birds sang in the branches",
                    "the path was covered with leaves"), ("under a big log", "behind a bush", "in a hollow tree")),
    ("the beach", ("the waves splashed on the sand", "the sun was warm and bright",
                   "there were shells everywhere"), ("in the sand", "behind a rock", "near the water")),
    ("the garden", ("the flowers were red and yellow", "bees buzzed around the roses",
                    "the vegetables grew in neat rows"), ("under the roses", "behind the shed", "in a flower pot")),
    ("the farm", ("the cows ate hay in the barn", "the hens clucked in the yard",
                  "the fields were wide and golden"), ("in the hay", "behind the barn", "near the fence")),
    ("the school", ("the classroom was full of books", "the bell rang loudly",
                    "the children drew pictures on the wall"), ("under a desk", "behind the door", "in a box")),
    ("the village", ("the houses had red roofs", "people said hello to each other",
                     "a baker sold fresh bread"), ("under a cart", "behind a wall", "near the well")),
    ("the mountain", ("the air was cool and fresh", "snow sat on the top",
                      "the rocks were big and grey"), ("between two rocks", "in the snow", "under a pine tree")),
    ("the lake", ("the water was blue and calm", "fish jumped out of the water",
                  "a small boat floated by"), ("in the reeds", "on the dock", "under a willow tree")),
    ("the playground", ("the slide was very tall", "kids ran and laughed",
                        "the sandbox was full of toys"), ("in the sandbox", "under the swings", "behind the slide")),
    ("the zoo", ("the monkeys swung from ropes", "the lions slept in the sun",
                 "the penguins swam in cold water"), ("near the gate", "under a bench", "behind a sign")),
    ("the town square", ("a fountain sprayed water", "pigeons walked on the stones",
                         "a man played music"), ("by the fountain", "under a table", "behind a flower box")),
)
OBJECTS = (
    ("ball", ("red", "bouncy", "big", "blue")), ("kite", ("colorful", "long", "bright", "new")),
    ("hat", ("funny", "yellow", "soft", "tall")), ("key", ("shiny", "small", "golden", "old")),
    ("boat", ("toy", "little", "wooden", "fast")), ("book", ("favorite", "thick", "old", "picture")),
    ("balloon", ("red", "round", "big", "green")), ("stone", ("shiny", "smooth", "round", "pretty")),
    ("drum", ("loud", "little", "red", "new")), ("doll", ("soft", "pretty", "old", "tiny")),
    ("teddy bear", ("brown", "soft", "fluffy", "old")), ("scarf", ("warm", "long", "striped", "pink")),
    ("shell", ("pink", "pretty", "big", "shiny")), ("truck", ("toy", "yellow", "fast", "big")),
    ("crayon", ("purple", "new", "long", "bright")), ("cup", ("blue", "little", "special", "round")),
    ("bell", ("silver", "tiny", "loud", "shiny")), ("blanket", ("warm", "soft", "green", "cozy")),
    ("map", ("old", "secret", "big", "folded")), ("flower", ("red", "pretty", "tall", "white")),
    ("button", ("shiny", "round", "big", "blue")), ("whistle", ("silver", "loud", "little", "new")),
    ("puzzle", ("big", "hard", "new", "colorful")), ("robot", ("toy", "silver", "small", "funny")),
)
# (present, past): activities a character loves, told in both tenses.
ACTIVITIES = (
    ("run fast", "ran fast"), ("jump in puddles", "jumped in puddles"), ("sing songs", "sang songs"),
    ("draw pictures", "drew pictures"), ("read books", "read books"), ("build towers", "built towers"),
    ("dig holes", "dug holes"), ("fly kites", "flew kites"), ("ride a bike", "rode a bike"),
    ("play hide and seek", "played hide and seek"), ("catch bugs", "caught bugs"),
    ("make sand castles", "made sand castles"), ("swim in the lake", "swam in the lake"),
    ("climb trees", "climbed trees"), ("pick flowers", "picked flowers"),
    ("chase butterflies", "chased butterflies"), ("bake cookies", "baked cookies"),
    ("tell jokes", "told jokes"), ("dance", "danced"), ("count the stars", "counted the stars"),
    ("throw stones into the water", "threw stones into the water"), ("paint", "painted"),
    ("play with blocks", "played with blocks"), ("feed the ducks", "fed the ducks"),
    ("write stories", "wrote stories"), ("sleep in the sun", "slept in the sun"),
)
HAPPY = ("happy", "glad", "excited", "proud", "joyful", "cheerful")
SAD = ("sad", "upset", "unhappy", "worried", "gloomy")
SAID = ("said", "cried", "shouted", "whispered", "called")
ASKED = ("asked", "cried", "called", "wondered")
WEATHER = ("sunny", "windy", "warm", "bright", "lovely", "quiet", "calm", "fine")
TIMES = ("One day", "One morning", "One afternoon", "One sunny day", "Later that day", "The next day")
FEARS = ("the dark", "the loud thunder", "the deep water", "the big dog next door", "the tall slide")
SKILLS = (("ride a bike", "rode the bike"), ("swim", "swam"), ("whistle", "whistled"),
          ("tie a bow", "tied a bow"), ("climb the big tree", "climbed the big tree"), ("skip", "skipped"))
FIXES = (("glue", "glued"), ("tape", "taped"), ("string", "tied"), ("a needle and thread", "sewed"))

OPENINGS = (
    "Once upon a time, there was a {adj} {kind} named {name}.",
    "There once was a {adj} {kind} called {name}.",
    "{name} was a {adj} {kind} who lived near {place}.",
    "Once upon a time, in a small house near {place}, there lived a {adj} {kind} named {name}.",
)
TRAITS = (
    "{he} loved to {act}.", "Every day, {he} liked to {act}.", "{name} loved to {act} more than anything.",
    "{his} favorite thing was {his} {objadj} {obj}.", "{name} had {a_obj} that {he} took everywhere.",
    "{he} was always {happy} when {he} could {act}.",
)
SETTINGS = (
    "{time}, {name} went to {place} with {his} friend {friend}, a {fadj} {fkind}.",
    "{time}, {name} and {his} friend {friend} the {fkind} walked to {place}.",
    "It was a {weather} day, so {name} went to {place}. There {he} met {friend}, a {fadj} {fkind}.",
)
DETAILS = ("At {place}, {detail}.", "{name} saw that {detail}.", "It was a {weather} day and {detail}.")
SCENES = (
    "First, they {fact_past} and laughed.", "{friend} told a funny joke, and {name} laughed so hard.",
    '"What a {weather} day!" {friend} {said}. "Yes, it is," {name} said.',
    '"Do you want to {act} with me?" {name} asked {friend}. "Yes, please!" {fhe} said.',
    "{name} showed {friend} {his} {obj}, and {friend} said it was very nice.",
    "They sat in the shade and ate some apples.", "{friend} wanted to {act} too, so they did it together.",
    "{he} felt {happy}, because {he} loved {place}.", "A bird sang a song, and {name} sang along.",
)
ENDINGS = (
    "From that day on, {name} and {friend} were the best of friends.",
    "After that, {name} and {friend} {fact_past} together every day.",
    "That night, {name} went to bed {happy} and smiled.",
    "{name} hugged {friend}, and they went home {happy}.",
    "They {fact_past} together until the sun went down.",
)

# Each problem: start (the trouble), say (a line of dialogue), tries (failed attempts, 1-3 used),
# solve (the resolution, every sentence used in order), moral (one used).
PROBLEMS = {
    "lost": {
        "start": ("When {name} looked for {his} {objadj} {obj}, it was gone!",
                  "{time}, {name} could not find {his} {objadj} {obj}."),
        "say": ('"Oh no! Where is my {obj}?" {he} {asked}.', '"{friend}, have you seen my {obj}?" {name} {asked}.'),
        "tries": ("{he} looked {spot}, but the {obj} was not there.",
                  "{name} and {friend} searched {spot}. They did not find it.",
                  "{he} asked {his} {grownup}, but {his} {grownup} had not seen it.",
                  "{friend} looked {spot}, but there was only a leaf."),
        "solve": ("Then {friend} saw something {objadj} {spot}.", '"Look, {name}! Here is your {obj}!" {fhe} {said}.',
                  "{name} was so {happy}. {he} thanked {friend} with a big hug."),
        "moral": ("{name} learned that friends help each other look for lost things.",
                  "{name} learned to keep {his} things in a safe place."),
    },
    "stuck": {
        "start": ("The wind blew {name}'s {obj} up into a tall tree.",
                  "{name} threw {his} {obj} too high, and it got stuck on the roof."),
        "say": ('"How will I get my {obj} back?" {name} {asked}.', '"My {obj} is stuck!" {he} {said} to {friend}.'),
        "tries": ("{he} jumped as high as {he} could, but {he} could not reach it.",
                  "{name} tried to climb up, but {he} slipped and fell on the grass.",
                  "{friend} threw a stick at it, but the {obj} did not move.",
                  "{he} waited for the wind to blow it down, but it stayed there."),
        "solve": ("Then {friend} had an idea.", '"Let us ask your {grownup} for the long ladder," {fhe} {said}.',
                  "{name}'s {grownup} climbed the ladder and gave the {obj} back to {him}."),
        "moral": ("{name} learned that it is good to ask for help.",
                  "{name} learned that two heads are better than one."),
    },
    "share": {
        "start": ("{friend} wanted to play with {name}'s {objadj} {obj}.",
                  "{friend} saw {name}'s {obj} and asked to hold it."),
        "say": ('"No! It is mine!" {name} {said}.', '"You can not have it," {name} {said}, and {he} held it tight.'),
        "tries": ("{friend} felt {sad} and sat down alone.", "{friend} walked away and did not smile.",
                  "{name} played with the {obj} alone, but it was not fun anymore."),
        "solve": ("{name} saw that {friend} was {sad}, and {he} felt bad.",
                  '"I am sorry, {friend}. We can play with my {obj} together," {he} {said}.',
                  "{friend} smiled, and they played with the {obj} all afternoon."),
        "moral": ("{name} learned that sharing makes everyone {happy}.",
                  "{name} learned that toys are more fun with a friend."),
    },
    "fear": {
        "start": ("{name} was afraid of {fear}.", "{time}, {name} had to face {fear}, and {he} felt scared."),
        "say": ('"I am too scared," {name} {said} to {friend}.', '"What if something bad happens?" {name} {asked}.'),
        "tries": ("{he} closed {his} eyes, but {he} still felt afraid.", "{he} hid behind {friend} and did not move.",
                  "{he} tried to be brave, but {his} legs were shaking."),
        "solve": ('"I will stay with you," {friend} {said}. "We can do it together."',
                  "{friend} held {name}'s hand, and they faced {fear} together.",
                  "It was not so bad after all. {name} felt brave and {happy}."),
        "moral": ("{name} learned that being brave is easier with a friend.",
                  "{name} learned that many scary things are not so scary when you try."),
    },
    "broken": {
        "start": ("{name} dropped {his} {objadj} {obj}, and it broke.", "{time}, {name}'s {obj} fell and broke."),
        "say": ('"My {obj} is broken!" {name} {said}, and {he} began to cry.',
                '"Can we fix it?" {name} asked {his} {grownup}.'),
        "tries": ("{he} tried to put the pieces together, but they fell apart.",
                  "{friend} pressed the pieces together hard, but it did not work.",
                  "{he} looked at the pieces and felt {sad}."),
        "solve": ("Then {his} {grownup} came with some {fix}.",
                  "Together they {fix_past} the {obj}, slowly and carefully.",
                  "Soon the {obj} was as good as new, and {name} was {happy} again."),
        "moral": ("{name} learned that broken things can often be fixed with patience.",
                  "{name} learned to be careful with the things {he} loves."),
    },
    "skill": {
        "start": ("{name} wanted to learn how to {skill}.",
                  "{time}, {name} saw {friend} {skill}, and {he} wanted to try."),
        "say": ('"I want to {skill} too!" {name} {said}.', '"Will you teach me?" {name} asked {friend}.'),
        "tries": ("{he} tried once, but {he} fell down.", "{he} tried again, but it was too hard.",
                  "{he} felt {sad} and wanted to stop."),
        "solve": ('"Do not give up," {friend} {said}. "Try one more time."',
                  "{name} took a deep breath and tried again.", "This time {he} {skill_past} all by {him}self!"),
        "moral": ("{name} learned that practice makes things easier.",
                  "{name} learned never to give up, even when something is hard."),
    },
    "gift": {
        "start": ("{time}, {name} wanted to make a present for {his} {grownup}.",
                  "It was {his} {grownup}'s birthday, and {name} wanted to give a special present."),
        "say": ('"What can I give?" {name} asked {friend}.', '"It has to be special," {name} {said}.'),
        "tries": ("{he} tried to make a card, but the paint made a big mess.",
                  "{he} looked {spot} for something pretty, but found only mud.",
                  "{friend} gave an idea, but it was too big to carry."),
        "solve": ('"Give something you made with love," {friend} {said}.',
                  "So {name} picked flowers and drew a picture of {his} {grownup}.",
                  "{his} {grownup} smiled and gave {name} a big hug."),
        "moral": ("{name} learned that the best gifts come from the heart.",
                  "{name} learned that love matters more than things."),
    },
}
# A lowercase letter that starts a sentence: at the start, or after ". " / "! " / "? ", maybe behind an
# opening quote. After a closing quote ('?" she said') the sentence goes on, so no capital there.
_SENTENCE_START = re.compile(r'(?:^|(?<=[.!?] ))"?[a-z]')


def generate_stories(n_bytes: int, seed: int) -> list[str]:
    """Generate stories (one document each) until their UTF-8 sizes add up to at least `n_bytes`."""
    if n_bytes < 0:
        raise ValueError(f"n_bytes must be >= 0, got {n_bytes}")
    rng = random.Random(seed)
    stories: list[str] = []
    total_bytes = 0
    while total_bytes < n_bytes:
        story = _story(rng)
        stories.append(story)
        total_bytes += len(story.encode("utf-8"))
    return stories


def _story(rng: random.Random) -> str:
    """One story: opening, setting, problem, attempts, resolution, moral; paragraphs joined by newlines."""
    slots, spots = _slots(rng)
    problem = PROBLEMS[rng.choice(tuple(PROBLEMS))]

    def fill(template: str) -> str:
        return _fill(rng, template, slots, spots)

    opening = [fill(rng.choice(OPENINGS))] + [fill(t) for t in rng.sample(TRAITS, rng.randint(1, 2))]
    setting = [fill(rng.choice(SETTINGS)), fill(rng.choice(DETAILS))]
    setting += [fill(t) for t in rng.sample(SCENES, rng.randint(0, 3))]
    trouble = [fill(rng.choice(problem["start"])), fill(rng.choice(problem["say"]))]
    trouble += [fill(t) for t in rng.sample(problem["tries"], rng.randint(1, min(3, len(problem["tries"]))))]
    resolution = [fill(t) for t in problem["solve"]]
    ending = [fill(rng.choice(ENDINGS)), fill(rng.choice(problem["moral"]))]
    paragraphs = (opening + setting, trouble, resolution + ending)
    return "\n".join(" ".join(p) for p in paragraphs)


def _invented_name(rng: random.Random) -> str:
    """A pronounceable made-up name of two or three syllables, e.g. 'Brelo' or 'Tishnoo'."""
    syllables = [rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(rng.randint(2, 3))]
    return ("".join(syllables) + rng.choice(CODAS)).capitalize()


def _being(rng: random.Random, avoid: str = "") -> dict[str, str]:
    """A character: a child or an animal with a name and the pronouns that go with it."""
    if rng.random() < INVENTED_NAME_SHARE:
        name, gender = _invented_name(rng), rng.choice("fm")
    else:
        name, gender = rng.choice([n for n in NAMES if n[0] != avoid])
    kind = CHILD_KINDS[gender] if rng.random() < 0.4 else rng.choice(ANIMALS)
    he, him, his = PRONOUNS[gender]
    return {"name": name, "kind": kind, "adj": rng.choice(BEING_ADJECTIVES), "he": he, "him": him, "his": his}


def _slots(rng: random.Random) -> tuple[dict[str, str], tuple[str, ...]]:
    """The values fixed for one story (characters, place, object, problem details) and the place's spots."""
    hero = _being(rng)
    friend = _being(rng, avoid=hero["name"])
    place, details, spots = rng.choice(PLACES)
    obj, obj_adjectives = rng.choice(OBJECTS)
    objadj = rng.choice(obj_adjectives)
    act, act_past = rng.choice(ACTIVITIES)
    skill, skill_past = rng.choice(SKILLS)
    fix, fix_past = rng.choice(FIXES)
    slots = {
        **hero,
        "friend": friend["name"], "fkind": friend["kind"], "fadj": friend["adj"],
        "fhe": friend["he"], "fhim": friend["him"], "fhis": friend["his"],
        "place": place, "detail": rng.choice(details),
        "obj": obj, "objadj": objadj, "a_obj": f"{'an' if objadj[0] in 'aeiou' else 'a'} {objadj} {obj}",
        "act": act, "act_past": act_past, "fact_past": rng.choice(ACTIVITIES)[1],
        "skill": skill, "skill_past": skill_past, "fix": fix, "fix_past": fix_past,
        "fear": rng.choice(FEARS), "grownup": rng.choice(GROWNUPS), "weather": rng.choice(WEATHER),
    }
    return slots, spots


def _fill(rng: random.Random, template: str, slots: dict[str, str], spots: tuple[str, ...]) -> str:
    """Fill one sentence template; slots that vary per sentence (time, feelings, spot) are drawn here."""
    text = template.format(
        **slots, time=rng.choice(TIMES), happy=rng.choice(HAPPY), sad=rng.choice(SAD),
        said=rng.choice(SAID), asked=rng.choice(ASKED), spot=rng.choice(spots),
    )
    return _SENTENCE_START.sub(lambda m: m.group(0).upper(), text)
