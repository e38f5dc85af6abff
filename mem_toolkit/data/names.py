"""Invented person names: deterministic pseudonyms for synthetic people and for renaming real ones.

Both lists are invented for this toolkit (unusual first names, made-up surnames), so a full name
never points at a real public figure; the face case study renames every person, as the paper does.
"""
from __future__ import annotations

import itertools

import numpy as np

FIRST_NAMES = (
    "Aldric", "Brenna", "Calder", "Darya", "Elowen", "Fenwick", "Galena", "Halvard", "Isolde", "Jorvik",
    "Kestrel", "Liora", "Maddox", "Nerys", "Orrin", "Perrin", "Quinella", "Rowan", "Sabeth", "Tamsin",
    "Ulric", "Vesna", "Wendel", "Xanthe", "Yorick", "Zelda", "Anselm", "Briony", "Corvin", "Delphine",
    "Emrys", "Faelan", "Gisela", "Hollis", "Ivo", "Jessamy", "Kasimir", "Lucan", "Mirela", "Nolan",
    "Odessa", "Piran", "Rosalind", "Soren", "Thessaly", "Ysolde", "Wystan", "Marisol", "Teodor", "Aurelie",
)
LAST_NAMES = (
    "Ashgrove", "Brackwell", "Coldharbour", "Dunmere", "Elderby", "Fairlock", "Gorsefield", "Hallowmere",
    "Ivesdale", "Juniperwood", "Kettleburn", "Larkspire", "Mossbank", "Nettlecombe", "Oakhollow", "Pennywhistle",
    "Quarrington", "Ravensholt", "Saltmarsh", "Thornquist", "Underhay", "Valecrest", "Wetherby", "Yarrowfield",
    "Zennor", "Amberlough", "Birchenough", "Cranleigh", "Draycott", "Emberton", "Foxhollow", "Greyfriars",
    "Hazelrigg", "Inchcombe", "Kilbride", "Lowestoft", "Marchbanks", "Northcote", "Orchardson", "Pendragon",
    "Rookwood", "Stonebridge", "Tallowmere", "Umberleigh", "Winterbourne", "Applethwaite", "Brightwater",
    "Copperfold", "Dovecote", "Fernsby",
)


def pseudonyms(count: int, seed: int = 0) -> list[str]:
    """`count` distinct invented full names, the same for the same seed (first-come order)."""
    pool = [f"{first} {last}" for first, last in itertools.product(FIRST_NAMES, LAST_NAMES)]
    if count > len(pool):
        raise ValueError(f"only {len(pool)} distinct pseudonyms exist; asked for {count}")
    order = np.random.default_rng([seed, 0x6E616D65]).permutation(len(pool))[:count]
    return [pool[i] for i in order]
