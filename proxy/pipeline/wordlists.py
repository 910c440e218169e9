"""Word lists behind the semantic cache's guards: categories of words, not sentences.

Each list names a kind of word whose change flips what a question asks: negations,
opposite directions, who is meant, when, and families of named things. They are
curated for English chat traffic and meant to grow with it.
"""

from __future__ import annotations

NEGATIONS = frozenset(
    "not no never without none nothing nobody nowhere neither nor cannot cant dont doesnt "
    "didnt isnt arent wasnt werent shouldnt wouldnt couldnt wont havent hasnt hadnt aint "
    "mustnt neednt".split())

# Opposite poles on one axis: a question about one pole is not one about the other.
# Texts that move on different MAGNITUDE_AXES ("recover faster" / "take longer") differ too.
# ("up" is left out: "wake up", "set up" and "speed up" say nothing about amounts.)
ANTONYM_AXES: dict[str, tuple[str, str]] = {
    "amount": ("increase increasing raise raising higher high highest more gain gaining add "
               "adding boost grow spike rise rising maximum max bulk bulking",
               "decrease decreasing reduce reducing lower lowering down low lowest less fewer lose "
               "losing remove removing cut cutting shrink minimum min"),
    "speed": ("faster fast quicker quickly speed", "slower slow slowly"),
    "depth": ("deeper deep", "shallower shallow"),
    "size": ("bigger larger largest big", "smaller smallest small tiny"),
    "length": ("longer long longest", "shorter short shortest"),
    "difficulty": ("harder hard difficult tough", "easier easy simple"),
    "strength": ("stronger strong heavier heavy", "weaker weak lighter light"),
    "order": ("ascending top", "descending bottom"),
    "temperature": ("hot hottest hotter warm warmer warmest heat",
                    "cold coldest colder cool cooler coolest freezing"),
    "quality": ("good better best healthy healthier", "bad worse worst unhealthy"),
    "onset": ("start starting begin beginning build building form create pick enable on",
              "stop stopping quit quitting break breaking end ending kick drop rid ditch "
              "disable off"),
    "timing": ("early earlier earliest sooner", "late later latest"),
    "sequence": ("first", "last"),
    "mood": ("happy happier motivated energized calm relaxed",
             "sad unhappy unmotivated tired stressed anxious"),
}

MAGNITUDE_AXES = frozenset(
    "amount speed depth size length difficulty strength temperature timing".split())

# What a question asks for. "how many/much/long/often" ask for quantities, which the number
# and time-frame guards compare, so only a bare "how" asks for a manner.
QUESTION_FOCUS: dict[str, str] = {
    **dict.fromkeys("when time timing".split(), "time"),
    **dict.fromkeys("where place".split(), "place"),
    **dict.fromkeys("who whom".split(), "person"),
    **dict.fromkeys("why reason reasons cause causes".split(), "reason"),
    **dict.fromkeys("how way ways method methods".split(), "manner"),
}

# Chat spellings read as the word they stand for.
SLANG: dict[str, str] = {
    "u": "you", "ur": "your", "r": "are", "b4": "before", "w": "with", "abt": "about",
    "enuf": "enough", "tmrw": "tomorrow", "tmr": "tomorrow", "wanna": "want", "gonna": "going",
    "pls": "please", "plz": "please", "thx": "thanks", "bc": "because", "cuz": "because",
    "ppl": "people", "nite": "night", "2day": "today", "2morrow": "tomorrow",
}

FIRST_PERSON = frozenset("i me my mine myself im ive id ill we us our ours ourselves".split())
SECOND_PERSON = frozenset("you your yours yourself u ur youre youve youll".split())

# Words that name a time frame, mapped to the frame they name. Frames in LOOSE_TIME_FRAMES
# (periods and sequence) conflict only when both texts name one; the others also when only
# one text does ("tips for mornings" is not "tips").
TIME_FRAMES: dict[str, str] = {
    **dict.fromkeys("morning mornings sunrise".split(), "morning"),
    **dict.fromkeys("afternoon afternoons noon midday lunchtime".split(), "afternoon"),
    **dict.fromkeys("evening evenings tonight sunset".split(), "evening"),
    **dict.fromkeys("night nights nightly bedtime bed midnight overnight".split(), "night"),
    **dict.fromkeys("breakfast".split(), "breakfast"),
    **dict.fromkeys("lunch".split(), "lunch"),
    **dict.fromkeys("dinner supper".split(), "dinner"),
    **dict.fromkeys("today".split(), "today"),
    **dict.fromkeys("tomorrow tmrw tmr".split(), "tomorrow"),
    **dict.fromkeys("yesterday".split(), "yesterday"),
    **dict.fromkeys("weekend weekends saturday sunday".split(), "weekend"),
    **dict.fromkeys("holiday holidays vacation christmas".split(), "holiday"),
    **dict.fromkeys("daily day days everyday".split(), "day"),
    **dict.fromkeys("weekly week weeks".split(), "week"),
    **dict.fromkeys("monthly month months".split(), "month"),
    **dict.fromkeys("yearly annual annually year years".split(), "year"),
    **dict.fromkeys("hour hours hourly".split(), "hour"),
    **dict.fromkeys("minute minutes min mins".split(), "minute"),
    **dict.fromkeys("before prior pre".split(), "before"),
    **dict.fromkeys("after afterwards post".split(), "after"),
    **dict.fromkeys("during while mid".split(), "during"),
    **dict.fromkeys("summer winter spring autumn".split(), "season"),
}

LOOSE_TIME_FRAMES = frozenset("day week month year hour minute before after during".split())

# Families of named things: two questions about different members are different questions.
ENTITY_FAMILIES: dict[str, frozenset[str]] = {
    "programming language": frozenset(
        "python java javascript typescript rust golang c# c++ cpp php ruby kotlin "
        "swift scala perl haskell elixir erlang lua dart r julia matlab sql bash shell "
        "powershell html css".split()),
    "country": frozenset(
        "france germany spain italy portugal uk england scotland ireland usa america canada "
        "mexico brazil argentina chile peru colombia japan china india korea thailand vietnam "
        "indonesia australia zealand russia ukraine poland turkey egypt greece sweden norway "
        "finland denmark netherlands belgium switzerland austria nigeria kenya morocco israel "
        "iran iraq pakistan philippines singapore malaysia cuba".split()),
    "food": frozenset(
        "egg eggs milk chicken beef pork salmon tuna fish shrimp rice oat oats oatmeal banana "
        "apple apples berries blueberries orange avocado bread pasta potato potatoes lentil "
        "lentils bean beans chickpeas tofu tempeh whey yogurt yoghurt cheese almond almonds "
        "peanut peanuts nuts broccoli spinach kale quinoa coffee tea chocolate sugar honey "
        "turkey steak butter cereal granola".split()),
    "exercise": frozenset(
        "squat squats deadlift deadlifts bench lunge lunges plank planks burpee burpees pullup "
        "pullups pushup pushups row rows kettlebell swing curl curls dip dips crunch crunches "
        "situp situps press yoga pilates hiit".split()),
    "race": frozenset("5k 10k marathon half triathlon ultra trail mile".split()),
}

# "one" is left out: it is far more often a pronoun ("which one", "use one") than a count.
NUMBER_WORDS: dict[str, str] = {
    word: str(value) for value, word in enumerate(
        "zero - two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()) if word != "-"
} | {"thirty": "30", "forty": "40", "fifty": "50", "hundred": "100", "thousand": "1000",
     "dozen": "12", "twice": "2", "double": "2", "triple": "3"}
