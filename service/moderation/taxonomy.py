"""The canonical moderation categories every model label maps to (see the model manifest)."""

from __future__ import annotations

# In the spirit of Perspective's attributes and OpenAI's moderation categories.
CATEGORIES: dict[str, str] = {
    "toxicity": "Rude, disrespectful or unreasonable language likely to make people leave a "
    "discussion.",
    "severe_toxicity": "Very hateful, aggressive or disrespectful language; a stricter subset of "
    "toxicity.",
    "hate": "Attacks or demeans a group or a person for a protected attribute such as race, "
    "religion, gender, sexual orientation or disability.",
    "insult": "Insulting, inflammatory or negative language aimed at a person or group.",
    "profanity": "Swear words, curse words or other obscene language.",
    "threat": "Expresses an intention to inflict pain, injury or violence on a person or group.",
    "harassment": "Targets a person to intimidate, bully, humiliate or degrade them.",
    "sexual": "Sexually explicit content or references to sexual acts.",
    "violence": "Depicts, glorifies or incites death, violence or physical injury.",
    "self_harm": "Promotes, encourages or depicts suicide, self-injury or eating disorders.",
}

# Words a human explanation may use for a category (the category's own name, with "_" read as
# a space or a hyphen, always counts). Used by the explanation guard.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "toxicity": ("toxic", "offensive", "offense", "offence", "abusive", "abuse", "rude"),
    "severe_toxicity": ("severely toxic", "severe toxicity", "extremely toxic", "very toxic"),
    "hate": (
        "hateful",
        "hate speech",
        "hatred",
        "racist",
        "racism",
        "bigoted",
        "bigotry",
        "sexist",
        "homophobic",
        "slur",
        "slurs",
    ),
    "insult": (
        "insults",
        "insulting",
        "insulted",
        "demeaning",
        "belittling",
        "name-calling",
        "name calling",
        "derogatory",
    ),
    "profanity": (
        "profane",
        "profanities",
        "swear",
        "swearing",
        "swear word",
        "curse",
        "cursing",
        "obscene",
        "obscenity",
        "vulgar",
        "vulgarity",
        "expletive",
        "expletives",
        "foul language",
    ),
    "threat": ("threats", "threatening", "threaten", "threatens", "intimidation"),
    "harassment": ("harass", "harassing", "bullying", "bully", "intimidating"),
    "sexual": ("sexually", "explicit", "sex"),
    "violence": ("violent", "violently", "gore", "physical harm"),
    "self_harm": ("self-harm", "self harm", "suicide", "suicidal", "self-injury"),
}


def is_category(name: str) -> bool:
    return name in CATEGORIES


def terms(category: str) -> tuple[str, ...]:
    """Every word or phrase that counts as naming `category` in free text (lower case)."""
    own = {category, category.replace("_", " "), category.replace("_", "-")}
    return tuple(sorted(own | set(SYNONYMS.get(category, ())), key=len, reverse=True))
